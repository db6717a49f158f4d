"""Top-1 accuracy and loss of a model on a fixed set of images, jitted, no image dropped.

The images are padded once to a whole number of batches and a mask removes the padding from the
counts, so every batch has one shape (one compilation) and the final partial batch counts.
Non-finite logits (from float faults) count as wrong predictions and add no loss.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class EvalSet(NamedTuple):
  """Images padded to ``n_batches * batch_size`` and laid out as [n_batches, batch, ...]."""
  x: jax.Array      # [n_batches, batch_size, H, W, C] float32 (normalised)
  y: jax.Array      # [n_batches, batch_size] int32
  mask: jax.Array   # [n_batches, batch_size] bool, False on padding
  n: int


def make_eval_set(x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> EvalSet:
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  if len(x) != len(y):
    raise ValueError(f"{len(x)} images but {len(y)} labels")
  if len(x) == 0:
    raise ValueError("no images to evaluate")
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  batch_size = min(batch_size, len(x))
  nb = -(-len(x) // batch_size)
  pad = nb * batch_size - len(x)
  mask = np.concatenate([np.ones(len(x), bool), np.zeros(pad, bool)])
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
  y = np.concatenate([y, np.zeros(pad, np.int32)])
  return EvalSet(jnp.asarray(x.reshape(nb, batch_size, *x.shape[1:])),
                 jnp.asarray(y.reshape(nb, batch_size)), jnp.asarray(mask.reshape(nb, batch_size)),
                 int(len(mask) - pad))


def batch_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
  """(number correct, summed loss) of one batch; non-finite rows are wrong and add no loss."""
  chex.assert_rank(logits, 2)
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  correct = (jnp.argmax(logits, -1) == labels) & finite & mask
  safe = jnp.where(finite[:, None], logits, 0.0)
  loss = optax.softmax_cross_entropy_with_integer_labels(safe, labels)
  return jnp.sum(correct), jnp.sum(jnp.where(finite & mask, loss, 0.0))


def accuracy_and_loss(apply_fn: Callable, variables, data: EvalSet) -> tuple[jax.Array, jax.Array]:
  """Traceable: (top-1 accuracy in [0, 1], mean loss) of ``apply_fn(variables, x)`` on ``data``.

  Batches are visited with ``lax.map`` so this composes with an outer ``lax.map``/``vmap``
  over trials (the campaign does that).
  """
  def one(batch):
    x, y, m = batch
    return batch_counts(apply_fn(variables, x), y, m)

  correct, loss = jax.lax.map(one, (data.x, data.y, data.mask))
  return jnp.sum(correct) / data.n, jnp.sum(loss) / data.n


def take_images(data: EvalSet, idx: jax.Array) -> EvalSet:
  """Traceable: the images ``idx`` (indices into the ``data.n`` valid images) as an EvalSet.

  They are laid out in ``idx`` order in padded batches of ``min(batch_size, len(idx))`` (as
  :func:`make_eval_set` would) with a mask; ``n`` is ``len(idx)``.
  """
  chex.assert_rank(idx, 1)
  m = int(idx.shape[0])
  bs = min(int(data.x.shape[1]), m)
  nb = -(-m // bs)
  pad = nb * bs - m
  idx = jnp.concatenate([idx.astype(jnp.int32), jnp.zeros(pad, jnp.int32)])
  x = data.x.reshape(-1, *data.x.shape[2:])[idx]
  y = data.y.reshape(-1)[idx]
  mask = jnp.arange(nb * bs) < m
  return EvalSet(x.reshape(nb, bs, *x.shape[1:]), y.reshape(nb, bs), mask.reshape(nb, bs), m)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate_jit(apply_fn, variables, data):
  return accuracy_and_loss(apply_fn, variables, data)


def evaluate(model, variables, x: np.ndarray | EvalSet, y: np.ndarray | None = None,
             batch_size: int = 256) -> tuple[float, float]:
  """(accuracy, loss) of a Flax model (or a Network) in eval mode on normalised images ``x``
  with labels ``y``."""
  data = x if isinstance(x, EvalSet) else make_eval_set(x, y, batch_size)
  acc, loss = _evaluate_jit(eval_apply(model), dict(variables), data)
  return float(acc), float(loss)


@functools.lru_cache(maxsize=64)
def eval_apply(model) -> Callable:
  """A hashable ``f(variables, x) -> logits`` for eval mode (cached so jit caches hit).

  ``model``: a linen module (called with ``train=False``) or any network with
  ``apply(variables, x)`` (:class:`proact_jax.transform.network.Network`).
  """
  if not isinstance(model, nn.Module):
    return model.apply

  def f(variables, x):
    return model.apply(variables, x, train=False)
  return f


def predict(model, variables, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Eval-mode logits of all images (the final partial batch included), as numpy."""
  data = make_eval_set(x, np.zeros(len(x), np.int32), batch_size)
  out = _predict_jit(eval_apply(model), dict(variables), data.x)
  return np.asarray(out).reshape(-1, out.shape[-1])[:data.n]


@functools.partial(jax.jit, static_argnums=0)
def _predict_jit(apply_fn, variables, xs):
  return jax.lax.map(lambda x: apply_fn(variables, x), xs)
