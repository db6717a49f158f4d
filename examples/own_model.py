"""Clipped activations for your own model, in a few lines (issue 13).

Run:  python examples/own_model.py

Your model does not need this package's modules: any JAX function ``f(params, x)`` whose ReLUs
are ``jax.nn.relu`` (``nn.relu``, ``nnx.relu``) or ``jnp.maximum(x, 0)`` can be transformed.
Below, a flax.linen CNN and a flax.nnx CNN (untrained, on random data, to stay self-contained):
transform, initialise the thresholds from a profile of the activations (Ranger / ProAct's
initialisation, Mousavi et al., arXiv 2406.06313), evaluate, and take one gradient step on the
thresholds.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from proact_jax import clip_activations


class LinenCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
    return nn.Dense(10)(x)


class NnxCNN(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(32 * 32 * 8, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    return self.out(nnx.relu(self.dense(x.reshape((x.shape[0], -1)))))


def demo(name, f, params, batches):
  x = batches[0]
  # 1. Transform: every ReLU becomes a smooth clipped activation (ProAct's hybrid granularity:
  #    neuron-wise thresholds at the last ReLU, one per layer elsewhere).
  g = clip_activations(f, kind="smooth", granularity="hybrid")
  # 2. Thresholds from the maxima of the ReLU outputs over some data.
  thresholds = g.init_thresholds(params, x, profile=g.profile(params, batches))
  print(f"{name}: sites {g.sites}, threshold shapes {g.site_shapes}")
  # 3. Evaluate (jit it). The smooth clip already bends below the threshold (it halves an
  #    activation equal to it), so outputs move a little; predictions mostly agree.
  out = jax.jit(g)(params, thresholds, x)
  agree = float(jnp.mean(out.argmax(-1) == f(params, x).argmax(-1)))
  print(f"  top-1 agreement with the original at the profiled thresholds: {agree:.2f}")
  # 4. Thresholds are a plain dict of arrays: differentiate, vmap, optimise them as you like.
  loss = lambda t: jnp.mean((g(params, t, x) - f(params, x)) ** 2)  # noqa: E731
  grads = jax.jit(jax.grad(loss))(thresholds)
  print(f"  d loss / d threshold: { {k: float(jnp.abs(v).sum()) for k, v in grads.items()} }")


def main():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  batches = [jax.random.normal(k, (16, 32, 32, 3)) for k in keys]

  linen_model = LinenCNN()
  demo("linen", linen_model.apply, linen_model.init(jax.random.PRNGKey(1), batches[0]), batches)

  graphdef, state = nnx.split(NnxCNN(nnx.Rngs(1)))
  demo("nnx", lambda s, x: nnx.merge(graphdef, s)(x), state, batches)


if __name__ == "__main__":
  main()
