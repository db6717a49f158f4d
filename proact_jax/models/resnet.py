"""CIFAR ResNets: ResNet-20 (basic blocks, 3 stages of 16/32/64) and ResNet-50 (bottleneck blocks,
3x3 stem without max-pool). The last activation site is the one after the final residual add."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from proact_jax.core.activations import Activation
from proact_jax.models.registry import register_model

# flax's own convolution (XLA's weight gradient), not models/fast_ops.Conv: measured on this CPU
# (docs/benchmarks.md, "ResNet-20 weight gradient"), the patches-times-gradient weight gradient
# that rescues AlexNet's second convolution is 1.5-4x slower on every ResNet-20 shape, and the
# ResNets have no output of <= 4 pixels on CIFAR, where fast_ops' forward would differ.
Conv = nn.Conv


def _bn(train):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9)


class _Block(nn.Module):
  """A residual block's fields and its end: the shortcut (projected when the shape changes),
  the add and the activation after it (the model's last site in the final block)."""
  filters: int
  strides: int
  act: Activation
  last: bool = False

  def _add(self, x, y, train, name):
    if x.shape != y.shape:
      x = Conv(y.shape[-1], (1, 1), self.strides, use_bias=False)(x)
      x = _bn(train)(x)
    return self.act(name=name, last=self.last)(x + y)


class BasicBlock(_Block):

  @nn.compact
  def __call__(self, x, train):
    y = Conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False)(x)
    y = self.act(name="act0")(_bn(train)(y))
    y = Conv(self.filters, (3, 3), padding=1, use_bias=False)(y)
    return self._add(x, _bn(train)(y), train, "act1")


class Bottleneck(_Block):

  @nn.compact
  def __call__(self, x, train):
    y = Conv(self.filters, (1, 1), use_bias=False)(x)
    y = self.act(name="act0")(_bn(train)(y))
    y = Conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False)(y)
    y = self.act(name="act1")(_bn(train)(y))
    y = Conv(self.filters * 4, (1, 1), use_bias=False)(y)
    return self._add(x, _bn(train)(y), train, "act2")


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block: type
  num_classes: int = 10
  act: Activation = Activation()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False)(x)
    x = self.act(name="stem_act")(_bn(train)(x))
    n_stages = len(self.stage_sizes)
    for s, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(n_blocks):
        last = s == n_stages - 1 and b == n_blocks - 1
        x = self.block(width, 2 if (b == 0 and s > 0) else 1, self.act, last,
                       name=f"stage{s}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


@register_model("resnet20")
def resnet20(num_classes, act):
  return ResNet((3, 3, 3), (16, 32, 64), BasicBlock, num_classes, act)


@register_model("resnet50")
def resnet50(num_classes, act):
  return ResNet((3, 4, 6, 3), (64, 128, 256, 512), Bottleneck, num_classes, act)
