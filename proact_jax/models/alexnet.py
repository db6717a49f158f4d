"""AlexNet for 32x32 inputs, exactly as in the authors' toolbox (DESIGN.md section 5).

23,272,266 parameters at 10 classes; 7 activation sites, the last after the second dense layer.
"""

import flax.linen as nn
import jax

from proact_jax.core.activations import Activation
from proact_jax.models.fast_ops import Conv, max_pool_2x2
from proact_jax.models.registry import register_model


class AlexNet(nn.Module):
  num_classes: int = 10
  act: Activation = Activation()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    pool = max_pool_2x2
    x = pool(self.act(name="act0")(Conv(64, (3, 3), strides=2, padding=1)(x)))
    x = pool(self.act(name="act1")(Conv(192, (3, 3), padding=2)(x)))
    x = self.act(name="act2")(Conv(384, (3, 3), padding=1)(x))
    x = self.act(name="act3")(Conv(256, (3, 3), padding=1)(x))
    x = pool(self.act(name="act4")(Conv(256, (3, 3), padding=1)(x)))
    x = x.reshape((x.shape[0], -1))
    x = self.act(name="act5")(nn.Dense(4096)(x))
    x = self.act(name="act6", last=True)(nn.Dense(4096)(x))
    return nn.Dense(self.num_classes)(x)


@register_model("alexnet")
def alexnet(num_classes, act):
  return AlexNet(num_classes=num_classes, act=act)
