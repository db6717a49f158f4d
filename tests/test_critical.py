"""Critical sets and the stratified weight sampler (proact_jax.critical), on a tiny tree.

Statistical checks use fixed seeds with tolerances from the distributions they test
(chi-square quantile 1 - 1e-4, normal 4.5 sigma), so they are deterministic and not flaky.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from proact_jax.faults import critical, critical_faults, strata
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import get_format

FMT = get_format("q7.8")  # 16-bit words: every flipped word is exact in float32
TREE = {"params": {"a": {"kernel": jnp.zeros((50,))},
                   "b": {"bias": jnp.zeros((5,)), "kernel": jnp.zeros((6, 5))}}}
PATHS = ["params/a/kernel", "params/b/bias", "params/b/kernel"]
SIZES = [50, 5, 30]
C = critical.CriticalSet.from_pairs([("params/a/kernel", [3, 12]), ("params/b/bias", range(16))])
N_C = 50 * 2 + 5 * 16
N_W = sum(SIZES) * 16
CRIT = np.zeros((sum(SIZES), 16), bool)  # [value, bit] in C
CRIT[:50, [3, 12]] = True
CRIT[50:55, :] = True


def test_parse_critical():
  assert critical.parse_critical("Dense_2:24:32, Conv_0/kernel:31,act2") == [
      ("Dense_2", 24, 32, None), ("Conv_0/kernel", 31, 32, None), ("act2", 0, None, None)]
  assert critical.parse_critical("Dense_0::16") == [("Dense_0", 0, 16, None)]
  assert critical.parse_critical("Dense_0:8:") == [("Dense_0", 8, None, None)]
  assert critical.parse_critical("Dense_2:24:32:raise,b:lower, c:3 : lower") == [
      ("Dense_2", 24, 32, "raise"), ("b", 0, None, "lower"), ("c", 3, 4, "lower")]
  for bad in ("", "Dense_0:5:5", "Dense_0:x", " , ", "Dense_0:1:2:up", "Dense_0:1:2:3"):
    with pytest.raises(ValueError):
      critical.parse_critical(bad)


def test_resolve_against_a_fault_space():
  space = faults.FaultSpace(bit_lo=0, bit_hi=16)
  got = critical.CriticalSet.resolve(TREE, space, FMT, [("a", 3, 4), ("a", 12, 13),
                                                        ("b/bias", 0, None)])
  assert got == C and C.n_bits(TREE) == N_C
  assert got.describe() == "params/a/kernel:3+12, params/b/bias:0-15"
  both = critical.CriticalSet.resolve(TREE, space, FMT, [("b", 14, 20)])  # clipped to 16
  assert both.sites == (("params/b/bias", (14, 15)), ("params/b/kernel", (14, 15)))
  with pytest.raises(ValueError, match="matches no leaf"):
    critical.CriticalSet.resolve(TREE, space, FMT, [("nope", 0, 1)])
  with pytest.raises(ValueError, match="no bit inside"):
    critical.CriticalSet.resolve(TREE, faults.FaultSpace(bit_lo=0, bit_hi=8), FMT,
                                 [("a", 10, 12)])


def test_directed_sets_merge_and_hold_the_raising_positions():
  # both directions of a bit are every position: the bit becomes an undirected class
  cs = critical.CriticalSet.from_pairs([("params/b/bias", [0])], [
      ("params/a/kernel", [3, 4], "raise"), ("params/a/kernel", [4, 5], "lower"),
      ("params/b/bias", [0, 1], "raise")])
  assert cs.sites == (("params/a/kernel", (4,)), ("params/b/bias", (0,)))
  assert cs.directed == (("params/a/kernel", (5,), "lower"), ("params/a/kernel", (3,), "raise"),
                         ("params/b/bias", (1,), "raise"))
  assert cs.describe().endswith("params/b/bias:1:raise")
  with pytest.raises(ValueError, match="direction"):
    critical.CriticalSet.from_pairs([], [("params/a/kernel", [3], "up")])
  # worked by hand in q7.8 (two's complement, 8 fraction bits): 1.0 = 0x0100, -1.0 = 0xFF00,
  # 0.5 = 0x0080. Flipping bit 8 of 1.0 gives 0 (lowers), bit 9 gives 3.0 (raises), the sign
  # bit 15 gives -127.0 (lowers); of -1.0, bit 8 gives -2.0 (lowers), bit 15 gives 127.0
  # (raises), bit 9 is set (-1.0 = ...1111 0000 0000) and gives -3.0 (lowers); of 0.5, bit 8
  # gives 1.5 (raises).
  tree = {"params": {"w": {"kernel": jnp.asarray([1.0, -1.0, 0.5])}}}
  raise_ = critical.CriticalSet.resolve(tree, faults.FaultSpace(), FMT,
                                        critical.parse_critical("w:8:10:raise,w:15:raise"))
  lower = critical.CriticalSet.resolve(tree, faults.FaultSpace(), FMT,
                                       critical.parse_critical("w:8:10:lower,w:15:lower"))
  up = raise_.value_masks(tree, FMT)["params/w/kernel"]
  down = lower.value_masks(tree, FMT)["params/w/kernel"]
  np.testing.assert_array_equal(up, [1 << 9, 1 << 15, (1 << 8) | (1 << 9)])
  np.testing.assert_array_equal(down, [(1 << 8) | (1 << 15), (1 << 8) | (1 << 9), 1 << 15])
  assert raise_.n_bits(tree, FMT) == 4 and lower.n_bits(tree, FMT) == 5  # together all 9
  with pytest.raises(ValueError, match="number format"):
    raise_.n_bits(tree)
  v, b, m = critical.CriticalSet.positions({"params/w/kernel": up}, ["params/a", "params/w/kernel"],
                                           [4, 3])
  np.testing.assert_array_equal(v, [4, 5, 6, 6])  # after the 4 values of the first leaf
  np.testing.assert_array_equal(b, [9, 15, 8, 9])
  np.testing.assert_array_equal(m, up)
  with pytest.raises(ValueError, match="another size"):
    critical.CriticalSet.positions({"params/w/kernel": up}, ["params/w/kernel"], [4])


def test_tail_count_has_the_truncated_binomial_law():
  n, p, k_max = 400, 0.01, 3
  length = strata.tail_length(n, p, k_max)
  table = jnp.asarray(strata.tail_thresholds(n, p, k_max, length))
  keys = jax.random.split(jax.random.PRNGKey(0), 40_000)
  k = np.asarray(jax.jit(jax.vmap(lambda key: critical_faults.tail_count(key, table, k_max)))(keys))
  assert k.min() >= k_max and k.max() <= k_max + length - 1
  pmf = strata.tail_pmf(n, p, k_max, length)
  obs = np.bincount(k - k_max, minlength=length)
  # pool the cells with expected count < 5 into the last one
  exp = pmf * k.size
  cut = int(np.argmax(exp < 5)) if np.any(exp < 5) else length
  o = np.concatenate([obs[:cut], [obs[cut:].sum()]])
  e = np.concatenate([exp[:cut], [exp[cut:].sum()]])
  chi2 = float(np.sum((o - e) ** 2 / e))
  assert chi2 < sps.chi2.ppf(1 - 1e-4, len(o) - 1), (chi2, o, e)


# a value-dependent C on random weights: bit 5 of b/bias (every value, a class), and the
# positions of bits 8-15 of a/kernel whose flip raises the value, of b/kernel's bit 14 lowering
RAND = {"params": {"a": {"kernel": jax.random.normal(jax.random.PRNGKey(7), (50,))},
                   "b": {"bias": jax.random.normal(jax.random.PRNGKey(8), (5,)),
                         "kernel": jax.random.normal(jax.random.PRNGKey(9), (6, 5))}}}
RAND = jax.tree_util.tree_map(lambda x: FMT.decode(*FMT.encode(x)), RAND)  # exact in q7.8
C_DIR = critical.CriticalSet.resolve(RAND, faults.FaultSpace(), FMT, critical.parse_critical(
    "b/bias:5,a:8:16:raise,b/kernel:14:lower"))
MASKS = C_DIR.value_masks(RAND, FMT)
DIRECTED = tuple(jnp.asarray(x) for x in critical.CriticalSet.positions(MASKS, PATHS, SIZES))
CRIT_DIR = np.zeros((sum(SIZES), 16), bool)
CRIT_DIR[50:55, 5] = True
CRIT_DIR[:50] = (MASKS["params/a/kernel"][:, None] >> np.arange(16)) & 1
CRIT_DIR[55:] = (MASKS["params/b/kernel"][:, None] >> np.arange(16)) & 1
SETS = {"classes": (C, TREE, None, CRIT), "directed": (C_DIR, RAND, DIRECTED, CRIT_DIR)}


@functools.partial(jax.jit, static_argnames=("cap", "cap_c", "sparse_only", "which"))
def _run(keys, ber, k_c, cap, cap_c, sparse_only=False, which="classes"):
  cs, tree, directed, _ = SETS[which]
  geo = critical_faults._geometry(PATHS, SIZES, cs, 0 if directed is None else directed[0].size)
  leaves = [tree["params"]["a"]["kernel"], tree["params"]["b"]["bias"],
            tree["params"]["b"]["kernel"].reshape(-1)]
  aux = [jnp.float32(1)] * 3

  def one(key):
    kw = dict(fmt=FMT, lo=0, hi=16, cap=cap, cap_c=cap_c, geo=geo, directed=directed)
    out = critical_faults.stratified_weight_faults(
        jax.random.fold_in(key, 0), jax.random.fold_in(key, 3), leaves, aux, ber, k_c, **kw)
    new, n_out, _ = out
    bits = jnp.concatenate([FMT.encode(x.reshape(-1))[0] for x in new])
    upd, ok, n2, _ = critical_faults.stratified_weight_faults(
        jax.random.fold_in(key, 0), jax.random.fold_in(key, 3), leaves, aux, ber, k_c,
        sparse_only=True, **kw)
    applied = [x.reshape(-1).at[loc].set(v, mode="drop") for x, (loc, v) in zip(leaves, upd)]
    same = jnp.all(jnp.concatenate(applied) == jnp.concatenate([x.reshape(-1) for x in new]))
    return bits, n_out, ok, same | ~ok, (n2 == n_out) | ~ok

  return jax.lax.map(one, keys)


def _unpack(bits):
  return (np.asarray(bits)[..., None] >> np.arange(16)) & 1  # [trials, values, 16]


@pytest.mark.parametrize("which", ["classes", "directed"])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_stratified_faults_split_exactly_at_c(path, which):
  cs, tree, _, CRIT = SETS[which]
  N_C = int(CRIT.sum())
  if which == "directed":
    assert N_C == cs.n_bits(tree, FMT) and 50 * 8 * 0.3 < CRIT[:50].sum() < 50 * 8 * 0.7
  trials, ber = 3000, 2e-3
  k_c = 3 if path == "sparse" else 20
  caps = dict(cap=64, cap_c=8) if path == "sparse" else dict(cap=1, cap_c=1)
  keys = jax.random.split(jax.random.PRNGKey(1 if path == "sparse" else 2), trials)
  bits, n_out, ok, same, n_same = _run(keys, ber, k_c, which=which, **caps)
  clean = np.concatenate([np.asarray(FMT.encode(x.reshape(-1))[0]) for x in
                          jax.tree_util.tree_leaves(tree)])
  bits = np.asarray(bits) ^ clean  # the flipped bits
  ok = np.asarray(ok)
  assert ok.all() if path == "sparse" else not ok.any()  # the path under test
  assert np.asarray(same).all() and np.asarray(n_same).all()  # sparse updates == the leaves
  hits = _unpack(bits).astype(bool)
  # exactly k_c flips inside C in every trial; the outside count is what was reported
  np.testing.assert_array_equal(hits[:, CRIT].sum(-1), k_c)
  out = hits[:, ~CRIT].sum(-1)
  np.testing.assert_array_equal(out, np.asarray(n_out))
  # outside: Binomial(n_W - n_C, p) counts ...
  n_o = N_W - N_C
  mean, sd = n_o * ber, np.sqrt(n_o * ber * (1 - ber))
  assert abs(out.mean() - mean) < 4.5 * sd / np.sqrt(trials), (out.mean(), mean)
  assert abs(out.var() / sd ** 2 - 1) < 4.5 * np.sqrt(2 / trials) * 1.2
  # ... uniform over the complement of C; inside: a uniform k_c-subset of C
  for mask, k in ((~CRIT, None), (CRIT, k_c)):
    counts = hits[:, mask].sum(0)
    exp = counts.sum() / counts.size
    chi2 = float(np.sum((counts - exp) ** 2 / exp))
    # a k-subset has a smaller variance per position than independent cells: the chi-square
    # bound of independent cells is conservative for it
    assert chi2 < sps.chi2.ppf(1 - 1e-4, counts.size - 1), (mask.sum(), chi2)


def test_ber_zero_and_stratum_zero_leave_the_tree_clean():
  keys = jax.random.split(jax.random.PRNGKey(3), 3000)  # shapes of the sparse test: cached
  bits, n_out, ok, _, _ = _run(keys, 0.0, 0, cap=64, cap_c=8)  # the sparse test's compilation
  assert np.asarray(ok).all() and not np.asarray(bits).any() and not np.asarray(n_out).any()
