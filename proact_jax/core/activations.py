"""Clipped activation functions and the Flax activation module that carries thresholds.

The pure functions follow ProAct (Mousavi et al., arXiv 2406.06313) and the methods it compares
against; the exact formulas are those of DESIGN.md section 1:

* ``relu``:              max(0, x)                       (unprotected baseline)
* ``clip_to_zero``:      x if 0 <= x <= lam else 0       (Ranger, FT-ClipAct)
* ``clip_to_threshold``: min(max(0, x), lam)             (BReLU-style)
* ``smooth_clip``:       max(0, x * sigmoid(k (lam - x)))  (FitAct, HyReLU), k = 20

``lam`` broadcasts against one example's activation (no batch axis): a scalar is layer-wise, an
array of the activation's per-example shape is neuron-wise.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ("relu", "zero", "threshold", "smooth")
GRANULARITIES = ("layer", "neuron", "hybrid")
THRESHOLDS = "thresholds"  # the variable collection holding the trainable thresholds
ACT_STATS = "act_stats"  # the collection that profiling sows per-neuron maxima into
DEFAULT_LAM = 1e4  # initial threshold before profiling: wide open, and representable in Q15.16


def relu(x: jax.Array, lam: jax.Array | None = None) -> jax.Array:
  """max(0, x); ``lam`` is accepted and ignored so every kind has one signature."""
  del lam
  return jnp.maximum(x, 0)


def clip_to_zero(x: jax.Array, lam: jax.Array) -> jax.Array:
  """Ranger / FT-ClipAct: keep x where 0 <= x <= lam, else output 0."""
  return jnp.where((x >= 0) & (x <= lam), x, jnp.zeros_like(x))


def clip_to_threshold(x: jax.Array, lam: jax.Array) -> jax.Array:
  """BReLU-style saturation: min(max(0, x), lam)."""
  return jnp.minimum(jnp.maximum(x, 0), lam)


def smooth_clip(x: jax.Array, lam: jax.Array, k: float = 20.0) -> jax.Array:
  """FitAct / HyReLU: max(0, x * sigmoid(k * (lam - x))), differentiable in lam.

  This is what the authors' toolbox computes (``x - x*sigmoid(k(x - lam))``); the paper's Eq. 5
  has the sign of the sigmoid's argument reversed (DESIGN.md section 1).
  """
  return jnp.maximum(x * jax.nn.sigmoid(k * (lam - x)), 0)


_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "relu": relu,
    "zero": clip_to_zero,
    "threshold": clip_to_threshold,
    "smooth": smooth_clip,
}


def activation_fn(kind: str) -> Callable[..., jax.Array]:
  """Returns the pure function ``f(x, lam)`` of an activation kind."""
  if kind not in _FUNCTIONS:
    raise ValueError(f"unknown activation kind {kind!r}; expected one of {', '.join(KINDS)}")
  return _FUNCTIONS[kind]


def check_kind_granularity(kind: str, granularity: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown activation kind {kind!r}; expected one of {', '.join(KINDS)}")
  if granularity not in GRANULARITIES:
    raise ValueError(
        f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")


class ClippedAct(nn.Module):
  """One activation site. Thresholds live in the ``thresholds`` collection as ``lam``.

  Attributes:
    kind: relu | zero | threshold | smooth.
    neuron: whether ``lam`` has one value per element of the activation (else a scalar).
    k: steepness of the smooth clip.
  """
  kind: str = "relu"
  neuron: bool = False
  k: float = 20.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fn = activation_fn(self.kind)
    # Profiling: per-neuron running max of the unclipped ReLU output, only when the caller asks
    # for the `act_stats` collection to be mutable (otherwise sow is a no-op).
    if self.is_mutable_collection(ACT_STATS) and not self.is_initializing():
      self.sow(ACT_STATS, "max", jnp.max(jnp.maximum(x, 0), axis=0),
               init_fn=lambda: jnp.array(-jnp.inf, x.dtype), reduce_fn=jnp.maximum)
    if self.kind == "relu":
      return fn(x)
    shape = tuple(x.shape[1:]) if self.neuron else ()
    lam = self.variable(THRESHOLDS, "lam", lambda: jnp.full(shape, DEFAULT_LAM, jnp.float32)).value
    if tuple(lam.shape) != shape:
      raise ValueError(
          f"threshold shape {tuple(lam.shape)} does not match activation site "
          f"{'/'.join(self.scope.path)!r}: expected {shape} "
          f"({'neuron' if self.neuron else 'layer'}-wise)")
    if self.kind == "smooth":
      return smooth_clip(x, lam.astype(x.dtype), self.k)
    return fn(x, lam.astype(x.dtype))


@dataclasses.dataclass(frozen=True)
class Activation:
  """How a model builds its activation sites: the kind and granularity, injected at construction.

  A model holds one of these as a field and calls ``self.act(last=...)`` at each activation site
  (``last=True`` only at the last site before the classifier, so that ``hybrid`` granularity is
  neuron-wise there and layer-wise everywhere else).
  """
  kind: str = "relu"
  granularity: str = "layer"
  k: float = 20.0

  def __post_init__(self):
    check_kind_granularity(self.kind, self.granularity)

  def __call__(self, last: bool = False, name: str | None = None) -> ClippedAct:
    neuron = self.granularity == "neuron" or (self.granularity == "hybrid" and last)
    return ClippedAct(kind=self.kind, neuron=neuron, k=self.k, name=name)
