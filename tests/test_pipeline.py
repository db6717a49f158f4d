"""Input pipeline: stats, normalisation, augmentation, batching, seeded subsets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax.data import pipeline
from proact_jax.data.sources import Dataset


def test_channel_stats_matches_numpy():
  x = np.random.default_rng(0).integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
  mean, std = pipeline.channel_stats(x, chunk=8)
  f = x.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, f.mean((0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, f.std((0, 1, 2)), rtol=1e-9)
  with pytest.raises(ValueError):
    pipeline.channel_stats(x[:0])


def test_normalize_values():
  x = np.array([[[[0, 255, 51]]]], np.uint8)
  out = pipeline.normalize(x, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], [0.0, 1.0, 0.0], atol=1e-6)
  with pytest.raises(ValueError):
    pipeline.normalize(x, 0.5, 0.0)


def _batch(n=6, h=8, w=7, c=2):
  return jnp.arange(n * h * w * c, dtype=jnp.float32).reshape(n, h, w, c) + 1.0


def test_augment_shape_and_determinism():
  x = _batch()
  aug = jax.jit(pipeline.augment, static_argnames=("pad", "flip"))
  a = aug(jax.random.key(0), x)
  b = aug(jax.random.key(0), x)
  c = aug(jax.random.key(1), x)
  assert a.shape == x.shape and a.dtype == x.dtype
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(pipeline.augment(jax.random.key(3), x, pad=0, flip=False), x)


def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """``img`` moved by (dy, dx) with zeros coming in: a pad-and-crop at offset (pad-dy, pad-dx)."""
  h, w = img.shape[:2]
  out = np.zeros_like(img)
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


def test_augment_is_a_shifted_possibly_flipped_copy():
  x = np.asarray(_batch(n=16))
  pad = 2
  out = np.asarray(pipeline.augment(jax.random.key(7), jnp.asarray(x), pad=pad))
  shifts, flips = set(), 0
  for img, res in zip(x, out):
    matches = [(dy, dx, f) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
               for f in (False, True)
               if np.array_equal(res, _shifted(img[:, ::-1] if f else img, dy, dx))]
    assert len(matches) == 1, "each output must be exactly one shifted (and maybe flipped) copy"
    shifts.add(matches[0][:2])
    flips += matches[0][2]
  assert len(shifts) > 1 and 0 < flips < len(x)  # examples get independent crops and flips


def test_augment_rejects_bad_input():
  with pytest.raises(ValueError):
    pipeline.augment(jax.random.key(0), jnp.zeros((4, 4, 3)))
  with pytest.raises(ValueError):
    pipeline.augment(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), pad=-1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_iterate_batches_covers_every_example_once(shuffle):
  x, y = np.arange(23) * 10, np.arange(23)
  batches = list(pipeline.iterate_batches(x, y, 5, seed=0, shuffle=shuffle))
  assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
  assert len(batches) == pipeline.num_batches(23, 5)
  seen = np.concatenate([b[1] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), y)
  np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), seen * 10)
  assert shuffle != np.array_equal(seen, y)
  dropped = list(pipeline.iterate_batches(x, y, 5, drop_remainder=True))
  assert len(dropped) == 4 == pipeline.num_batches(23, 5, drop_remainder=True)


def test_shuffle_is_seeded():
  x = y = np.arange(50)
  order = lambda seed: np.concatenate(  # noqa: E731
      [b for _, b in pipeline.iterate_batches(x, y, 8, seed=seed, shuffle=True)])
  np.testing.assert_array_equal(order(3), order(3))
  assert not np.array_equal(order(3), order(4))


def test_batching_bad_inputs():
  x = np.zeros(4)
  with pytest.raises(ValueError, match="batch_size"):
    list(pipeline.iterate_batches(x, x, 0))
  with pytest.raises(ValueError, match="lengths differ"):
    list(pipeline.iterate_batches(x, np.zeros(3), 2))
  with pytest.raises(ValueError):
    pipeline.num_batches(4, 0)


def test_subset_and_split_are_seeded_and_disjoint():
  x, y = np.arange(100) * 2, np.arange(100)
  xs, ys = pipeline.subset(x, y, 30, seed=1)
  np.testing.assert_array_equal(xs, ys * 2)
  assert len(set(ys)) == 30
  np.testing.assert_array_equal(ys, pipeline.subset(x, y, 30, seed=1)[1])
  assert not np.array_equal(ys, pipeline.subset(x, y, 30, seed=2)[1])
  with pytest.raises(ValueError):
    pipeline.subset(x, y, 101, seed=0)
  with pytest.raises(ValueError):
    pipeline.subset(x, y[:5], 3, seed=0)

  x_tr, y_tr, x_val, y_val = pipeline.split_train_val(x, y, 20, seed=5)
  assert len(y_val) == 20 and len(y_tr) == 80
  assert not set(y_tr) & set(y_val) and set(y_tr) | set(y_val) == set(range(100))
  np.testing.assert_array_equal(x_val, y_val * 2)
  np.testing.assert_array_equal(y_val, pipeline.split_train_val(x, y, 20, seed=5)[3])
  with pytest.raises(ValueError):
    pipeline.split_train_val(x, y, 101, seed=0)


def test_profiling_subset():
  rng = np.random.default_rng(0)
  ds = Dataset("t", rng.integers(0, 255, (50, 2, 2, 1), dtype=np.uint8),
               np.arange(50, dtype=np.int32), np.zeros((2, 2, 2, 1), np.uint8),
               np.zeros(2, np.int32), ("a",) * 50)
  x, y = pipeline.profiling_subset(ds, n=10, seed=0)
  assert x.shape == (10, 2, 2, 1)
  np.testing.assert_array_equal(x, ds.x_train[y])
  assert len(pipeline.profiling_subset(ds)[1]) == 50  # capped at the train size
