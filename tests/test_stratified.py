"""Stratified campaigns: exactness and coverage on a closed-form function, then the campaign on a
digits model (agreement with the plain campaign, resume, batching independence, CLI).

The closed-form function: on a 16-bit tree of zeros, accuracy is 1 when no flip lands in a set
A of bits and 0 otherwise, so E = (1 - p)^|A|. A overlaps the critical set C only partly (A = D
+ C', D outside C, C' a part of C), so every stratum has a non-trivial conditional expectation:
E[acc | K_C = k] = (1 - p)^|D| * E[C(|C| - |C'|, K) / C(|C|, K) | stratum]. Tolerances: normal
4.5 sigma for means, the central 99.9 % of Binomial(seeds, 0.95) for coverage counts; the seeds
are fixed, so the test is deterministic.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from proact_jax.faults import critical, critical_faults, strata, stratified
from test_critical import C, FMT, N_C, PATHS, SIZES, TREE

P, K_MAX = 2e-3, 2
A = np.zeros((sum(SIZES), 16), bool)
A[55:85, 4:16] = True  # D: bits 4-15 of b/kernel, outside C (360 bits)
A[:50, 3] = True       # C': bit 3 of a/kernel, inside C (50 of its 180 bits)
TRUTH = (1 - P) ** A.sum()


def _conditional_means():
  q_d = (1 - P) ** 360
  miss = lambda k: math.comb(N_C - 50, k) / math.comb(N_C, k)
  length = strata.tail_length(N_C, P, K_MAX)
  tail = strata.tail_pmf(N_C, P, K_MAX, length)
  return np.array([q_d * miss(0), q_d * miss(1),
                   q_d * sum(t * miss(K_MAX + j) for j, t in enumerate(tail))])


# the same C as position lists: on the zero tree every flip of a/kernel's bits 3 and 12 raises
# its value, so the directed set holds exactly C's positions, numbered another way
C_DIRECTED = critical.CriticalSet((C.sites[1],), ((C.sites[0][0], C.sites[0][1], "raise"),))
DIRECTED = tuple(jnp.asarray(x) for x in critical.CriticalSet.positions(
    C_DIRECTED.value_masks(TREE, FMT), PATHS, SIZES))


@functools.partial(jax.jit, static_argnames="directed")
def _outcomes(seeds, hs, ts, table, directed=False):
  """The closed-form function on trials keyed as the campaign keys them (seed = campaign key)."""
  cs, arrays = (C_DIRECTED, DIRECTED) if directed else (C, None)
  geo = critical_faults._geometry(PATHS, SIZES, cs, 0 if arrays is None else arrays[0].size)
  leaves = [jnp.zeros((s,)) for s in SIZES]
  amask = jnp.asarray(A)

  def one(x):
    s, h, t = x
    tkey = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        jax.random.PRNGKey(s), 0), stratified.TAG), h), t)
    k_c = jnp.where(h < K_MAX, h, critical_faults.tail_count(jax.random.fold_in(tkey, 4), table, K_MAX))
    new, _, _ = critical_faults.stratified_weight_faults(
        jax.random.fold_in(tkey, 0), jax.random.fold_in(tkey, 3), leaves,
        [jnp.float32(1)] * 3, P, k_c, fmt=FMT, lo=0, hi=16, cap=32, cap_c=16, geo=geo,
        directed=arrays)
    bits = jnp.concatenate([FMT.encode(x)[0] for x in new])
    flipped = ((bits[:, None] >> jnp.arange(16, dtype=jnp.uint32)) & 1).astype(bool)
    return (~jnp.any(flipped & amask)).astype(jnp.float32)

  return jax.lax.map(one, (seeds, hs, ts))


def _campaigns(n_seeds, total, pilot=8, directed=False):
  """``n_seeds`` campaigns with the campaign's own schedule (pilot, Neyman doubling rounds)."""
  w = strata.stratum_weights(N_C, P, K_MAX)
  table = jnp.asarray(strata.tail_thresholds(N_C, P, K_MAX, strata.tail_length(N_C, P, K_MAX)))
  counts = [np.full(len(w), pilot) for _ in range(n_seeds)]
  data = [[np.zeros(0) for _ in w] for _ in range(n_seeds)]
  size = n_seeds * total // 2  # one padded shape: one compilation
  while True:
    todo = [(s, h, t) for s in range(n_seeds) for h in range(len(w))
            for t in range(len(data[s][h]), counts[s][h])]
    if not todo:
      return w, data
    for i in range(0, len(todo), size):
      part = todo[i:i + size]
      pad = part + [part[-1]] * (size - len(part))
      y = np.asarray(_outcomes(*(jnp.asarray(c, jnp.int32) for c in zip(*pad)), table,
                               directed=directed))
      for (s, h, t), v in zip(part, y[:len(part)]):
        data[s][h] = np.append(data[s][h], v)
    counts = [stratified._next_counts(w, c, [d], total=total, half_width=None, max_total=total,
                                      grow_min=8, confidence=0.95) for c, d in zip(counts, data)]


@pytest.mark.parametrize("directed", [False, True], ids=["classes", "position-list"])
def test_stratified_estimate_is_exact_and_covers_at_the_nominal_rate(directed):
  assert C_DIRECTED.n_bits(TREE, FMT) == N_C and DIRECTED[0].size == 100
  n_seeds, total = 300, 120
  w, data = _campaigns(n_seeds, total, directed=directed)
  # the sampler: every stratum's pooled mean is its closed-form conditional expectation
  want = _conditional_means()
  assert float(w @ want) == pytest.approx(TRUTH, rel=1e-12)  # the decomposition is exact
  for h in range(len(w)):
    y = np.concatenate([d[h] for d in data])
    se = math.sqrt(want[h] * (1 - want[h]) / y.size)
    assert abs(y.mean() - want[h]) < 4.5 * se, (h, y.mean(), want[h], y.size)
  # the estimator: unbiased, and its Welch-Satterthwaite interval covers at 95 %
  res = [strata.stratified_summary(d, w) for d in data]
  assert all(r["n"] == total for r in res)
  means = np.array([r["mean"] for r in res])
  assert abs(means.mean() - TRUTH) < 4.5 * means.std(ddof=1) / math.sqrt(n_seeds)
  covered = sum(r["ci_low"] <= TRUTH <= r["ci_high"] for r in res)
  lo, hi = sps.binom.ppf([0.0005, 0.9995], n_seeds, 0.95)
  assert lo <= covered <= hi, covered
  # allocation: the rare strata got their pilot, the large one most of the rest
  n = np.array([r["n_strata"] for r in res])
  assert (n >= 8).all() and (n[:, 0] > n[:, 2]).all()


# --------------------------------------------------------------------------- digits campaigns
# One configuration (BERs, caps, images per trial, chunk) throughout, so that the compiled trial
# functions are shared by the tests below: compilation, not the trials, is what costs here.

CRITICAL = "Conv_0:16:32,Conv_1:16:32,Dense_0:16:32,Dense_1:16:32"  # integer and sign bits
BERS = [1e-6, 3e-6]
N = 600  # trials per BER: cheap here (compilation dominates), and the t intervals of skewed
         # accuracies (rare catastrophic trials) need a few hundred to be accurate
KW = dict(k_max=2, images_per_trial=32, chunk=16, progress=False)


DIGITS_CKPT = []


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  """A small_cnn trained 3 epochs on the digits (about 87 %), a Ranger copy of it, and C."""
  from proact_jax.training import checkpoint as ckpt
  from proact_jax import methods
  from proact_jax.faults import injection as faults
  from proact_jax.core.evaluate import make_eval_set
  from proact_jax.faults.formats import get_format
  from proact_jax.training.loop import TrainConfig, train_and_evaluate
  from proact_jax.training.checkpoint_data import checkpoint_data
  work = tmp_path_factory.mktemp("digits")
  train_and_evaluate(TrainConfig(model="small_cnn", dataset="digits", epochs=3, batch_size=64,
                                 seed=0), str(work), progress=False)
  model, v, meta = ckpt.load_checkpoint(str(work / "model"))
  d = checkpoint_data(meta, profile_images=300)
  data = make_eval_set(d.x_test, d.y_test)
  h = methods.ranger(model, v, d.x_profile, data, "layer")
  cs = critical.CriticalSet.resolve(v, faults.FaultSpace(), get_format("q15.16"),
                                    critical.parse_critical(CRITICAL))
  DIGITS_CKPT.append(str(work / "model"))
  return {"relu": (model, v), "ranger": (h.model, h.variables)}, data, cs


@pytest.fixture(scope="module")
def reference(digits):
  variants, data, cs = digits
  return stratified.run_stratified_campaign(jax.random.PRNGKey(0), variants, data, BERS, N,
                                            critical_set=cs, **KW)


def test_stratified_and_plain_campaigns_agree_on_digits(digits, reference):
  from proact_jax.faults import campaign
  variants, data, _ = digits
  plain = campaign.run_campaign(jax.random.PRNGKey(0), variants, data, BERS, N,
                                progress=False, images_per_trial=32, chunk=60)
  for p, s in zip(plain.summary_rows(), reference.summary_rows()):
    assert (p["variant"], p["ber"]) == (s["variant"], s["ber"]) and s["n"] == N
    # the two 95 % intervals overlap (for equal widths: |difference| <= 2.8 standard errors)
    assert abs(p["mean"] - s["mean"]) <= p["half_width"] + s["half_width"], (p, s)
  p, s = plain.summary_rows()[0], reference.summary_rows()[0]
  assert s["half_width"] < p["half_width"]  # relu at 1e-6, same budget: a narrower interval
  d = reference.paired("ranger", "relu", 0)
  assert d is not None and math.isfinite(d["half_width"])
  w = reference.weights[0]
  assert w.sum() == pytest.approx(1) and len(w) == 3 and w[2] > 0
  t = reference.trials["relu"][0]
  low = t["stratum"] < 2
  np.testing.assert_array_equal(t["n_flips_critical"][low], t["stratum"][low])
  assert (t["n_flips_critical"][~low] >= 2).all()


def test_resume_and_batching_give_the_same_trials(digits, reference, tmp_path):
  variants, data, cs = digits
  path = str(tmp_path / "s.jsonl")
  calls = []

  class Stop(Exception):
    pass

  def boom(name, b, part):
    calls.append(part)
    if len(calls) == 5:
      raise Stop

  with pytest.raises(Stop):
    stratified.run_stratified_campaign(jax.random.PRNGKey(0), variants, data, BERS, N,
                                       critical_set=cs, results_path=path, on_chunk=boom, **KW)
  resumed = stratified.run_stratified_campaign(jax.random.PRNGKey(0), variants, data, BERS, N,
                                               critical_set=cs, results_path=path, **KW)
  from proact_jax.faults.results import load_results
  loaded = load_results(path)
  for got in (resumed, loaded):
    for v in variants:
      for b in range(2):
        for f in ("stratum", "trial", "accuracy", "n_flips", "n_flips_critical"):
          np.testing.assert_array_equal(got.trials[v][b][f], reference.trials[v][b][f], f)
    assert got.format_table() == reference.format_table()
  assert "diff vs relu" in reference.format_table()
  with pytest.raises(ValueError, match="different configuration.*strata"):
    stratified.run_stratified_campaign(jax.random.PRNGKey(0), variants, data, BERS, N,
                                       critical_set=cs, results_path=path, **{**KW, "k_max": 3})
  # the copying path with the dense fallback (vmap) gives the carried path's trials
  st = stratified._Static(stratified.make_plan(variants["relu"][1], "q15.16", None, max(BERS)),
                          cs, 2, reference.config["strata"]["cap"], (int(data.n), 32))
  from proact_jax.faults import injection as faults
  t = reference.trials["relu"][1]
  pairs = list(zip(t["stratum"].tolist(), t["trial"].tolist()))[:16]
  table = strata.tail_thresholds(cs.n_bits(variants["relu"][1]), BERS[1], 2,
                                 reference.config["strata"]["table_length"])
  acc, _, n_out, k_c, _ = stratified._run_pairs(
      variants["relu"][0], st, "vmap", None, faults.quantize_with_aux(variants["relu"][1]), data,
      jax.random.PRNGKey(0), 1, BERS[1], table, critical.CriticalSet.positions({}, [], []), pairs, 16)
  np.testing.assert_array_equal(acc, t["accuracy"][:16])
  np.testing.assert_array_equal(k_c, t["n_flips_critical"][:16])


def test_sequential_mode_targets_means_and_differences(digits):
  variants, data, cs = digits
  key = jax.random.PRNGKey(1)
  run = lambda **kw: stratified.run_stratified_campaign(key, variants, data, BERS, 400,
                                                        critical_set=cs, pilot=4, **KW, **kw)
  loose = run(ci_target=40.0)
  assert [r["n"] for r in loose.summary_rows()] == [12] * 4  # the pilot meets a loose target
  res = run(ci_target=6.0, ci_pairs=True)
  rows = res.summary_rows()
  assert all(r["half_width"] <= 0.06 for r in rows) and all(12 < r["n"] < 400 for r in rows)
  assert all(res.paired("ranger", "relu", b)["half_width"] <= 0.06 for b in range(2))
  assert res.config == loose.config  # the stopping rule is not part of the configuration
  tight = stratified.run_stratified_campaign(key, variants, data, BERS, 48, critical_set=cs,
                                             pilot=4, ci_target=0.01, **KW)
  assert [r["n"] for r in tight.summary_rows()] == [48] * 4  # never met: runs to max_trials


def test_stratified_pvalue_by_hand_and_in_the_results(digits, reference):
  # by hand: t = 0.02 / 0.01 = 2 on 10 degrees of freedom
  assert strata.stratified_pvalue({"mean": 0.02, "var": 1e-4, "dof": 10.0}) == pytest.approx(
      2 * sps.t.sf(2.0, 10))
  assert strata.stratified_pvalue({"mean": 0.0, "var": 0.0, "dof": 5.0}) == 1.0
  assert strata.stratified_pvalue({"mean": 0.1, "var": 0.0, "dof": 5.0}) == 0.0
  assert math.isnan(strata.stratified_pvalue({"mean": 0.1, "var": math.inf, "dof": 5.0}))
  # a stratified file's pairwise p-values come from the stratified difference, not from a
  # plain paired t-test of trials allocated unequally across strata
  d = reference.paired("ranger", "relu", 0)
  want = strata.stratified_pvalue(d)
  assert reference.paired_pvalue("ranger", "relu", 0) == pytest.approx(want)
  rows = reference.pairwise_rows(exclude=())
  assert rows[0]["p_value"] == pytest.approx(want)


def test_stop_pairwise_decides_every_pair_of_protected_variants(digits):
  """A third variant (Ranger's thresholds halved): the one protected pair must end decided at
  every BER (Holm x 2 BERs excludes 0, or its half-width is within the target) before the cap;
  relu's mean has no target."""
  import jax.tree_util as jtu
  variants, data, cs = digits
  model, v = variants["ranger"]
  half = jtu.tree_map(lambda x: x, dict(v))
  half["thresholds"] = jtu.tree_map(lambda t: 0.5 * t, v["thresholds"])
  three = {**variants, "ranger_half": (model, half)}
  target = 3.0
  res = stratified.run_stratified_campaign(jax.random.PRNGKey(2), three, data, BERS, 2000,
                                           critical_set=cs, pilot=4, ci_target=target,
                                           stop_pairwise=True, **KW)
  for b in range(2):
    d = res.paired("ranger_half", "ranger", b)
    p = min(1.0, 2 * strata.stratified_pvalue(d))
    assert p <= 0.05 or d["half_width"] <= target / 100, (b, d, p)
    assert d["n"] < 2000
  with pytest.raises(ValueError, match="stop_pairwise needs ci_target"):
    stratified.run_stratified_campaign(jax.random.PRNGKey(2), three, data, BERS, 100,
                                       critical_set=cs, stop_pairwise=True, **KW)


def test_a_network_gets_the_flax_models_trials(digits):
  """A stratified campaign takes any network: the relu model wrapped as a function (same leaf
  paths, hence the same critical set and keys) gives exactly the Flax model's trials, paired
  with the Flax Ranger variant; activation faults are refused."""
  import proact_jax as pj
  from proact_jax.faults import injection as faults
  variants, data, cs = digits
  base, v = variants["relu"]
  net, nv = pj.function_network(lambda p, x: base.apply({"params": p}, x), v["params"])
  run = lambda vs, **kw: stratified.run_stratified_campaign(  # noqa: E731
      jax.random.PRNGKey(1), vs, data, BERS, 400, critical_set=cs, pilot=4, ci_target=40.0,
      **KW, **kw)
  want, got = run(variants), run({**variants, "relu": (net, nv)})
  for name in variants:
    for b in range(2):
      for f in ("stratum", "trial", "accuracy", "n_flips", "n_flips_critical"):
        np.testing.assert_array_equal(got.trials[name][b][f], want.trials[name][b][f], f)
  assert got.format_table() == want.format_table()
  with pytest.raises(ValueError, match="activation faults are not supported"):
    run(variants, space=faults.FaultSpace(collections=("params", "activations")))


def test_cli_vulnerability_map_then_stratified_sweep(digits, tmp_path, capsys):
  import json
  import os

  from proact_jax import cli
  vmap, out = str(tmp_path / "v.jsonl"), str(tmp_path / "s.jsonl")
  assert cli.main(["vulnerability", "--checkpoint", DIGITS_CKPT[0], "--trials", "2",
                   "--bit-groups", "0:16,16:31,31:32", "--images-per-trial", "32", "--quiet",
                   "--out", vmap]) == 0
  cap = capsys.readouterr()
  assert "| relu | params/" in cap.out and "--critical-map" in cap.err
  assert open(str(tmp_path / "v.relu.png"), "rb").read(4) == b"\x89PNG"
  assert os.path.exists(str(tmp_path / "v.summary.csv"))
  argv = ["sweep", "--checkpoint", DIGITS_CKPT[0], "--bers", "1e-6,3e-6", "--trials", "60",
          "--images-per-trial", "32", "--chunk", "16", "--stratify", "2", "--quiet",
          "--out", out]
  assert cli.main(argv + ["--critical-map", vmap, "--critical-threshold", "100"]) == 2
  assert "critical set is empty" in capsys.readouterr().err
  assert not os.path.exists(out)
  assert cli.main(argv + ["--critical", CRITICAL]) == 0
  cap = capsys.readouterr()
  assert "stratified on" in cap.out and "| relu | 1e-06 | 60 |" in cap.out
  header = json.loads(open(out).readline())
  assert header["config"]["strata"]["k_max"] == 2
  assert cli.main(argv + ["--critical", CRITICAL]) == 0  # resumed: nothing new
  capsys.readouterr()
  assert cli.main(["report", out, "--out", str(tmp_path / "report")]) == 0, capsys.readouterr()
  report = open(str(tmp_path / "report" / "report.md")).read()
  assert "relu" in report
  # C from the map: the weight cells above the threshold (the sign bits at least)
  from proact_jax.commands.args import critical_set
  from proact_jax.faults import injection as faults
  from proact_jax.faults.formats import get_format
  from_map = critical_set(digits[0]["relu"][1], faults.FaultSpace(), get_format("q15.16"), None,
                          vmap, 0.5)
  assert ("params/Dense_1/kernel", (31,)) in from_map.sites or any(
      31 in bits for _, bits in from_map.sites)
  assert all(not p.startswith("thresholds/") for p, _ in from_map.sites)
  # --critical-variants: the map's cells of the named variants only (here its one variant)
  same = critical_set(digits[0]["relu"][1], faults.FaultSpace(), get_format("q15.16"), None,
                      vmap, 0.5, ["relu"])
  assert same.sites == from_map.sites
  with pytest.raises(ValueError, match="--critical-variants proact: not in"):
    critical_set(digits[0]["relu"][1], faults.FaultSpace(), get_format("q15.16"), None, vmap,
                 0.5, ["proact"])
  # value-dependent: the map cells' raising positions only, about half of their bits
  up = critical_set(digits[0]["relu"][1], faults.FaultSpace(), get_format("q15.16"), None,
                    vmap, 0.5, None, "raise")
  n_all = from_map.n_bits(digits[0]["relu"][1])
  assert not up.sites and up.directed and all(d == "raise" for _, _, d in up.directed)
  assert 0.2 * n_all < up.n_bits(digits[0]["relu"][1], get_format("q15.16")) < 0.8 * n_all
  directed = str(tmp_path / "d.jsonl")
  assert cli.main(argv[:-1] + [directed, "--critical", "Conv_0:16:32:raise,Dense_1:24:32"]) == 0
  assert "| relu | 1e-06 | 60 |" in capsys.readouterr().out
  crit = json.loads(open(directed).readline())["config"]["strata"]["critical"]
  assert ["params/Conv_0/kernel", list(range(16, 32)), "raise"] in crit
  assert ["params/Dense_1/bias", list(range(24, 32))] in crit
  assert cli.main(argv + ["--critical", CRITICAL, "--critical-variants", "relu"]) == 2
  assert "--critical-variants and --critical-direction need --critical-map" in \
      capsys.readouterr().err
  assert cli.main(["sweep", "--checkpoint", DIGITS_CKPT[0], "--stratify", "2", "--out", out]) == 2
  assert "needs the critical set" in capsys.readouterr().err
