"""VGG-16 with batch norm for 32x32 inputs (13 conv + BN + act, then a linear classifier)."""

import flax.linen as nn
import jax

from proact_jax.core.activations import Activation
from proact_jax.models.fast_ops import Conv, max_pool_2x2
from proact_jax.models.registry import register_model

_CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
  num_classes: int = 10
  act: Activation = Activation()
  cfg: tuple = _CFG16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    n_convs = sum(1 for c in self.cfg if c != "M")
    i = 0
    for c in self.cfg:
      if c == "M":
        x = max_pool_2x2(x)
        continue
      x = Conv(c, (3, 3), padding=1)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = self.act(name=f"act{i}", last=(i == n_convs - 1))(x)
      i += 1
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


@register_model("vgg16")
def vgg16(num_classes, act):
  return VGG(num_classes=num_classes, act=act)
