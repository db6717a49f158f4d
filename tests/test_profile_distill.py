import jax
import jax.numpy as jnp
import numpy as np

import proact_jax as pj


def test_profile_max_equals_numpy_max_over_batches():
  model = pj.create_model("small_cnn", 10, "smooth", "hybrid")
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  frozen, _ = pj.split(v)
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(n, 8, 8, 1)).astype(np.float32) for n in (7, 16, 3)]
  prof = pj.profile_max(model, v, batches)
  # Reference: the pre-activation of each site captured with relu everywhere, max in numpy.
  relu_model = pj.create_model("small_cnn", 10, "relu")
  acts = {s: [] for s in ("act0", "act1", "act2")}
  for b in batches:
    _, inter = relu_model.apply(frozen, b, capture_intermediates=True, mutable=["intermediates"])
    for s in acts:
      acts[s].append(np.asarray(inter["intermediates"][s]["__call__"][0]))
  for s, a in acts.items():
    ref = np.max(np.concatenate(a), axis=0)  # per element of one example: batch axis only
    np.testing.assert_array_equal(np.asarray(prof[s]), ref)
    assert prof[s].shape == ref.shape
  lm = pj.layer_max(prof)
  assert float(lm["act1"]) == float(np.max(np.concatenate(acts["act1"])))
  thr = pj.thresholds_from_profile(v[pj.THRESHOLDS], prof)
  assert pj.get_site(thr, "act0").shape == ()
  np.testing.assert_array_equal(np.asarray(pj.get_site(thr, "act2")), np.maximum(prof["act2"], 0))


def _np_kl(s, t, T):
  def logsm(z):
    z = z / T
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  ls, lt = logsm(s.astype(np.float64)), logsm(t.astype(np.float64))
  return np.mean(np.sum(np.exp(ls) * (ls - lt), -1))


def test_kd_loss_zero_for_identical_and_matches_numpy():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(9, 10)).astype(np.float32) * 3
  t = rng.normal(size=(9, 10)).astype(np.float32) * 3
  assert abs(float(pj.kd_loss(s, s, temperature=4.0, ce_weight=0))) < 1e-6
  for T in (1.0, 4.0):
    np.testing.assert_allclose(float(pj.kd_loss_jit(s, t, temperature=T, ce_weight=0.0)),
                               _np_kl(s, t, T), rtol=1e-5)
  y = rng.integers(0, 10, size=9)
  thr = {"a": {"lam": jnp.float32(2.0)}, "b": {"lam": jnp.ones((3,))}}
  full = float(pj.kd_loss(s, t, y, thr, temperature=2.0, ce_weight=1.0, gamma=0.1))
  z = s - s.max(-1, keepdims=True)
  ce = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(9), y])
  np.testing.assert_allclose(full, _np_kl(s, t, 2.0) + ce + 0.1 * (4 + 3), rtol=1e-5)


def test_kd_loss_stable_for_huge_logits():
  s = jnp.array([[1e4, -1e4, 0.0]])
  t = jnp.array([[-1e4, 1e4, 0.0]])
  assert np.isfinite(float(pj.kd_loss(s, t, ce_weight=0.0)))


def test_kd_loss_shape_checks():
  import pytest
  with pytest.raises(AssertionError):
    pj.kd_loss(jnp.ones((3, 10)), jnp.ones((3, 9)))
