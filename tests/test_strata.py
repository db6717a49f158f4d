"""The stratified estimator's arithmetic (proact_jax.strata): weights, tail table, CI, allocation."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from proact_jax.faults import strata


def test_weights_are_the_binomial_strata():
  w = strata.stratum_weights(1000, 1e-3, 3)
  assert w.shape == (4,)
  np.testing.assert_allclose(w[:3], [math.comb(1000, k) * 1e-3 ** k * (1 - 1e-3) ** (1000 - k)
                                     for k in range(3)], rtol=1e-12)
  assert w.sum() == pytest.approx(1.0, abs=1e-15)
  tiny = strata.stratum_weights(100, 1e-9, 4)[4]  # the tail stays accurate when tiny
  assert tiny == pytest.approx(math.comb(100, 4) * 1e-36, rel=1e-6)
  np.testing.assert_array_equal(strata.stratum_weights(10, 0.0, 2), [1, 0, 0])
  np.testing.assert_array_equal(strata.stratum_weights(10, 1.0, 2), [0, 0, 1])
  np.testing.assert_array_equal(strata.stratum_weights(1, 1.0, 3), [0, 1, 0, 0])
  assert strata.stratum_weights(2, 0.5, 5)[3:].sum() == 0  # strata above n_C are empty
  with pytest.raises(ValueError):
    strata.stratum_weights(0, 0.1, 2)
  with pytest.raises(ValueError):
    strata.stratum_weights(10, 0.1, 0)


@pytest.mark.parametrize("n,p,k", [(50, 0.02, 1), (10_000, 3e-4, 3), (300_000, 1e-5, 2),
                                   (5, 0.9, 2)])
def test_tail_table_inverts_the_truncated_binomial(n, p, k):
  length = strata.tail_length(n, p, k)
  table = strata.tail_thresholds(n, p, k, length + 3)
  t = (table[0].astype(object) << 32) + table[1].astype(object)
  pmf = strata.tail_pmf(n, p, k, length + 3)
  # the probability of count k + j is (T_j - T_{j-1}) / 2^64 (T_{-1} = 0; the last T = 2^64)
  edges = np.concatenate([[0], t, [1 << 64]]).astype(object)
  probs = np.array([float(b - a) for a, b in zip(edges[:-1], edges[1:])]) / 2.0 ** 64
  np.testing.assert_allclose(probs, pmf, atol=2e-19)
  direct = sps.binom.pmf(k + np.arange(length), n, p) / sps.binom.sf(k - 1, n, p)
  np.testing.assert_allclose(pmf[:length], direct, rtol=1e-9, atol=1e-300)
  assert pmf[length - 1:].sum() < 2.0 ** -64  # the table is long enough
  with pytest.raises(ValueError, match="shorter"):
    strata.tail_thresholds(n, p, k, max(2, length - 1)) if length > 2 else (_ for _ in ()).throw(
        ValueError("shorter"))


def test_stratified_summary_hand_values():
  w = [0.5, 0.3, 0.2]
  s = [[1.0, 2.0, 3.0], [4.0, 6.0], [5.0, 5.0, 5.0, 5.0]]
  out = strata.stratified_summary(s, w)
  assert out["mean"] == pytest.approx(0.5 * 2 + 0.3 * 5 + 0.2 * 5)
  terms = [0.25 * 1.0 / 3, 0.09 * 2.0 / 2, 0.0]
  var = sum(terms)
  dof = var ** 2 / (terms[0] ** 2 / 2 + terms[1] ** 2 / 1)
  assert out["var"] == pytest.approx(var) and out["dof"] == pytest.approx(dof)
  assert out["half_width"] == pytest.approx(sps.t.ppf(0.975, dof) * math.sqrt(var))
  assert out["n"] == 9 and out["n_strata"] == [3, 2, 4]
  # one stratum: the plain t interval
  x = [0.1, 0.5, 0.4, 0.9]
  one = strata.stratified_summary([x], [1.0])
  assert one["half_width"] == pytest.approx(sps.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2)
  # zero-weight strata are ignored; a live stratum with one trial: infinite interval
  assert strata.stratified_summary([x, []], [1.0, 0.0])["mean"] == pytest.approx(np.mean(x))
  assert strata.stratified_summary([x, [1.0]], [0.9, 0.1])["half_width"] == math.inf
  assert math.isnan(strata.stratified_summary([x, []], [0.9, 0.1])["mean"])
  const = strata.stratified_summary([[1.0, 1.0], [0.0, 0.0]], [0.7, 0.3])
  assert const["mean"] == pytest.approx(0.7) and const["half_width"] == 0
  with pytest.raises(ValueError, match="sum to 1"):
    strata.stratified_summary([x], [0.5])


def test_stratified_difference_is_summary_of_differences():
  a = [[0.9, 0.8, 0.85], [0.2, 0.4]]
  b = [[0.7, 0.8, 0.6], [0.1, 0.1]]
  d = strata.stratified_difference(a, b, [0.6, 0.4])
  ref = strata.stratified_summary([np.subtract(x, y) for x, y in zip(a, b)], [0.6, 0.4])
  assert d == ref
  with pytest.raises(ValueError):
    strata.stratified_difference([[1.0]], [[1.0, 2.0]], [1.0])


def test_stratified_ci_coverage_on_normal_strata():
  # 2000 repetitions, 3 strata of unequal variances and sizes: coverage ~ Binomial(2000, 0.95)
  # if the Satterthwaite interval is right; accept within its central 99.9 %.
  rng = np.random.default_rng(0)
  w, mu, sd, n = np.array([0.6, 0.3, 0.1]), [1.0, 3.0, -2.0], [0.5, 2.0, 4.0], [6, 5, 4]
  truth = float(w @ mu)
  reps = 2000
  covered = 0
  for _ in range(reps):
    s = [rng.normal(m, d, k) for m, d, k in zip(mu, sd, n)]
    r = strata.stratified_summary(s, w)
    covered += r["ci_low"] <= truth <= r["ci_high"]
  lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, 0.95)
  assert lo <= covered <= hi, covered


def test_neyman_allocation():
  w, s = [0.9, 0.09, 0.01], [0.01, 0.2, 0.4]
  out = strata.neyman_allocation(w, s, 100)
  assert out.sum() == 100
  score = np.multiply(w, s)
  np.testing.assert_allclose(out, 100 * score / score.sum(), atol=1)
  low = strata.neyman_allocation(w, s, 100, lower=[5, 5, 20])  # shares 29, 58, 13
  assert low[2] == 20 and low.sum() == 100  # fixed at its bound; the rest shared 1 : 2
  assert abs(low[1] - 2 * low[0]) <= 2
  assert list(strata.neyman_allocation([0.5, 0.5, 0.0], [0, 0, 1], 10, [1, 1, 3])) == [5, 5, 0]
  assert list(strata.neyman_allocation(w, s, 4, [2, 2, 2])) == [2, 2, 2]  # below the bounds


def test_target_allocation_meets_the_target():
  w = np.array([0.95, 0.04, 0.01])
  sig = np.array([[0.02, 0.3, 0.4], [0.05, 0.1, 0.4]])
  e = 0.005
  n = strata.target_allocation(w, sig, e, lower=[2, 2, 2])
  z = sps.norm.ppf(0.975)
  for s in sig:
    assert z * math.sqrt(np.sum(w ** 2 * s ** 2 / n)) <= e * (1 + 1e-9)
  # the single-target optimum: N = (z sum W s / e)^2
  one = strata.target_allocation(w, sig[:1], e)
  assert one.sum() == pytest.approx((z * np.sum(w * sig[0]) / e) ** 2, abs=3)  # 3 ceilings


def test_allocation_sigmas_shrink_towards_pooled():
  w = [0.5, 0.5]
  s = strata.allocation_sigmas([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]], w)
  pooled = np.var([1, 1, 1, 1, 0, 1, 0, 1], ddof=1)
  assert s[0] == pytest.approx(math.sqrt(pooled / 4))
  assert s[1] == pytest.approx(math.sqrt((3 * np.var([0, 1, 0, 1], ddof=1) + pooled) / 4))


def test_grow_counts():
  assert list(strata.grow_counts([2, 2, 2], [10, 2, 4], 100)) == [10, 2, 4]
  g = strata.grow_counts([2, 2, 2], [10, 2, 4], 5)
  assert g.sum() == 11 and np.all(g <= [10, 2, 4]) and np.all(g >= 2)
  assert list(strata.grow_counts([5, 5], [1, 1], 3)) == [5, 5]
