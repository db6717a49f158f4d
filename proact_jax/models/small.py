"""A small CNN sized for the 8x8 handwritten digits (also runs on any HxWxC input)."""

import flax.linen as nn
import jax

from proact_jax.core.activations import Activation
from proact_jax.models.registry import register_model


class SmallCNN(nn.Module):
  num_classes: int = 10
  act: Activation = Activation()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = self.act(name="act0")(nn.Conv(16, (3, 3), padding=1)(x))
    x = self.act(name="act1")(nn.Conv(32, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = self.act(name="act2", last=True)(nn.Dense(64)(x))
    return nn.Dense(self.num_classes)(x)


@register_model("small_cnn")
def small_cnn(num_classes, act):
  return SmallCNN(num_classes=num_classes, act=act)
