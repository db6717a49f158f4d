import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proact_jax as pj

RNG = np.random.default_rng(0)


def _np_smooth(x, lam, k=20.0):
  with np.errstate(over="ignore"):  # exp overflows to inf far above lam: x / inf = 0, exact
    return np.maximum(x / (1 + np.exp(-k * (lam - x))), 0)


REFS = {
    "relu": lambda x, lam: np.maximum(x, 0),
    "zero": lambda x, lam: np.where((x >= 0) & (x <= lam), x, 0),
    "threshold": lambda x, lam: np.minimum(np.maximum(x, 0), lam),
    "smooth": _np_smooth,
}


@pytest.mark.parametrize("kind", sorted(REFS))
@pytest.mark.parametrize("neuron", [False, True])
def test_activation_matches_numpy(kind, neuron):
  x = RNG.normal(0, 2, size=(16, 4, 4, 3)).astype(np.float32)
  lam = (RNG.uniform(0.1, 3, size=(4, 4, 3)) if neuron else np.float32(1.3)).astype(np.float32)
  got = np.asarray(pj.activation_fn(kind)(jnp.asarray(x), jnp.asarray(lam)))
  np.testing.assert_allclose(got, REFS[kind](x, lam), rtol=1e-5, atol=1e-6)


def test_smooth_clip_grad_wrt_lam_matches_numpy():
  x = RNG.normal(1, 1, size=(32, 6)).astype(np.float32)
  lam = RNG.uniform(0.5, 2, size=(6,)).astype(np.float32)
  g = jax.grad(lambda l: jnp.sum(pj.smooth_clip(jnp.asarray(x), l)))(jnp.asarray(lam))
  # d/dlam x*s(k(lam-x)) = x*k*s*(1-s) where the output is positive, else 0.
  s = 1 / (1 + np.exp(-20 * (lam - x)))
  ref = np.where(x * s > 0, x * 20 * s * (1 - s), 0).sum(0)
  np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-5)
  # And against central finite differences in float64 numpy.
  eps = 1e-4
  fd = np.array([(_np_smooth(x.astype(np.float64), lam + eps * (np.arange(6) == i)).sum()
                  - _np_smooth(x.astype(np.float64), lam - eps * (np.arange(6) == i)).sum())
                 / (2 * eps) for i in range(6)])
  np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-2, atol=1e-3)


def test_layer_vs_neuron_broadcasting():
  x = jnp.asarray(RNG.normal(0, 2, size=(5, 3, 7)).astype(np.float32))
  scalar = pj.clip_to_zero(x, jnp.float32(1.0))
  full = pj.clip_to_zero(x, jnp.ones((3, 7), jnp.float32))
  np.testing.assert_array_equal(np.asarray(scalar), np.asarray(full))
  lam = jnp.asarray(RNG.uniform(0, 2, size=(3, 7)).astype(np.float32))
  per_neuron = np.asarray(pj.clip_to_zero(x, lam))
  for i in range(5):  # each example is clipped by the same per-element thresholds
    np.testing.assert_array_equal(per_neuron[i], np.asarray(pj.clip_to_zero(x[i], lam)))


def test_module_granularity_and_shapes():
  x = jnp.ones((2, 4, 4, 3))
  for granularity, shape in [("layer", ()), ("neuron", (4, 4, 3))]:
    act = pj.Activation("smooth", granularity)()
    v = act.init(jax.random.PRNGKey(0), x)
    assert set(v) == {pj.THRESHOLDS}
    assert v[pj.THRESHOLDS]["lam"].shape == shape
  v = pj.Activation("relu", "neuron")().init(jax.random.PRNGKey(0), x)
  assert pj.THRESHOLDS not in v  # relu has no thresholds


def test_bad_kind_granularity_and_threshold_shape():
  with pytest.raises(ValueError, match="unknown activation kind 'bogus'"):
    pj.Activation("bogus")
  with pytest.raises(ValueError, match="unknown granularity 'chan'"):
    pj.Activation("smooth", "chan")
  with pytest.raises(ValueError, match="unknown activation kind"):
    pj.activation_fn("leaky")
  act = pj.Activation("zero", "neuron")()
  x = jnp.ones((2, 4, 3))
  with pytest.raises(ValueError, match=r"threshold shape \(3,\) does not match"):
    act.apply({pj.THRESHOLDS: {"lam": jnp.ones((3,))}}, x)
