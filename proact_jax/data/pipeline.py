"""Input pipeline: normalisation, augmentation, batching and seeded subsets.

Everything is deterministic given a seed (numpy ``default_rng``) or a JAX key. Host-side helpers
work on numpy arrays; ``augment`` is a pure, jit-able JAX function (key first, vmapped over split
keys, one independent crop and flip per example).
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np


def channel_stats(x_uint8: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 NHWC images, in [0, 1] units.

  Accumulates sums in float64 chunk by chunk, so memory stays at one chunk of float64.
  """
  x = np.asarray(x_uint8)
  if x.ndim != 4 or len(x) == 0:
    raise ValueError(f"channel_stats needs a non-empty NHWC array, got shape {x.shape}")
  c = x.shape[-1]
  total, total_sq = np.zeros(c), np.zeros(c)
  for s in range(0, len(x), chunk):
    part = x[s:s + chunk].reshape(-1, c).astype(np.float64)
    total += part.sum(0)
    total_sq += np.square(part).sum(0)
  count = x.size // c
  mean = total / count
  var = np.maximum(total_sq / count - mean ** 2, 0.0)
  return mean / 255.0, np.sqrt(var) / 255.0


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
  """``(x / 255 - mean) / std`` as float32 (``mean``/``std`` per channel in [0, 1] units)."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if np.any(std <= 0):
    raise ValueError(f"std must be positive, got {std}")
  return ((np.asarray(x, np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def _augment_one(key: jax.Array, image: jax.Array, pad: int, flip: bool) -> jax.Array:
  k_crop, k_flip = jax.random.split(key)
  if pad > 0:
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), image.shape)
  if flip:
    image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
  return image


def augment(key: jax.Array, x: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
  """Random crop with zero padding and random horizontal flip, independently per example.

  Args:
    key: a PRNG key; the same key gives the same output.
    x: a batch of NHWC images (any dtype; padding is zeros, so normalise first if zero should
      mean the dataset mean).
    pad: pixels of zero padding on each side before cropping back to H x W (0: no crop).
    flip: flip left-right with probability 1/2.

  Returns:
    An array like ``x``. Jit-able with ``pad`` and ``flip`` static.
  """
  if x.ndim != 4:
    raise ValueError(f"augment needs NHWC images, got shape {x.shape}")
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}")
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(lambda k, im: _augment_one(k, im, pad, flip))(keys, x)


augment_jit = jax.jit(augment, static_argnames=("pad", "flip"))


def _check_xy(x, y) -> None:
  if len(x) != len(y):
    raise ValueError(f"x and y lengths differ: {len(x)} vs {len(y)}")


def num_batches(n: int, batch_size: int, drop_remainder: bool = False) -> int:
  """How many batches ``iterate_batches`` yields for ``n`` examples."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  return n // batch_size if drop_remainder else -(-n // batch_size)


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int | None = None,
                    shuffle: bool = False,
                    drop_remainder: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(x_batch, y_batch)`` over one epoch.

  Args:
    x, y: arrays with the same first dimension.
    batch_size: examples per batch (>= 1).
    seed: seeds ``np.random.default_rng`` for the shuffle order.
    shuffle: visit examples in a seeded random order instead of in order.
    drop_remainder: drop the final partial batch (kept by default).
  """
  _check_xy(x, y)
  nb = num_batches(len(x), batch_size, drop_remainder)
  order = np.random.default_rng(seed).permutation(len(x)) if shuffle else None
  for b in range(nb):
    sl = slice(b * batch_size, (b + 1) * batch_size)
    if order is None:
      yield x[sl], y[sl]
    else:
      yield x[order[sl]], y[order[sl]]


def subset(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``n`` examples drawn without replacement, in a seeded order."""
  _check_xy(x, y)
  if not 0 <= n <= len(x):
    raise ValueError(f"subset size {n} must be in [0, {len(x)}]")
  idx = np.random.default_rng(seed).permutation(len(x))[:n]
  return x[idx], y[idx]


def split_train_val(x: np.ndarray, y: np.ndarray, n_val: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A seeded disjoint split: ``(x_train, y_train, x_val, y_val)`` with ``n_val`` validation."""
  _check_xy(x, y)
  if not 0 <= n_val <= len(x):
    raise ValueError(f"n_val {n_val} must be in [0, {len(x)}]")
  perm = np.random.default_rng(seed).permutation(len(x))
  tr, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
  return x[tr], y[tr], x[val], y[val]


def profiling_subset(dataset, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The profiling images (paper: 3,000 training images): ``subset`` of the train split.

  ``n`` is capped at the train size so small datasets (digits) work with the default.
  """
  return subset(dataset.x_train, dataset.y_train, min(n, len(dataset.x_train)), seed)
