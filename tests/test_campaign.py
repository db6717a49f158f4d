import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proact_jax as pj
from proact_jax.core.evaluate import evaluate, make_eval_set
from proact_jax.faults import activations as activation_faults
from proact_jax.faults import campaign
from proact_jax.faults import injection as faults

from child_env import cpu_devices_env  # tests/child_env.py

BERS = [1e-4, 1e-3]


def _setup(n_images=24):
  base = pj.create_model("small_cnn", 10)
  variables = base.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (n_images, 8, 8, 1)))
  y = np.argmax(np.asarray(base.apply(variables, x)), -1).astype(np.int32)  # clean acc = 1
  clipped = pj.create_model("small_cnn", 10, "zero", "layer")
  thr = {f"act{i}": {"lam": jnp.float32(2.0 + i)} for i in range(3)}
  variants = {"relu": (base, dict(variables)),
              "ranger": (clipped, {**variables, "thresholds": thr})}
  return variants, make_eval_set(x, y, batch_size=16)


VARIANTS, DATA = _setup()
KEY = jax.random.PRNGKey(7)


def _subset_data(n_images=40):
  """Labels right on even images and wrong on odd ones: clean accuracy near 1/2, so which
  images a trial sees matters."""
  model, v = VARIANTS["relu"]
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (n_images, 8, 8, 1)))
  pred = np.argmax(np.asarray(model.apply(v, x)), -1)
  y = np.where(np.arange(n_images) % 2 == 0, pred, (pred + 1) % 10).astype(np.int32)
  return make_eval_set(x, y, batch_size=16)


SUB_DATA, SUB_BERS, SUB_M, SUB_T = _subset_data(), [0.0, 1e-3], 20, 24  # 2 padded batches of 16


def _trials(result, name):
  return {f: np.stack([t[f] for t in result.trials[name]]) for f in
          ("accuracy", "loss", "n_flips_weights", "n_flips_thresholds")}


_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
assert jax.device_count() == 4, jax.devices()
import test_campaign as tc
r = tc.campaign.run_campaign(tc.KEY, tc.VARIANTS, tc.DATA, tc.BERS, 6, progress=False, chunk=6)
s = tc.campaign.run_campaign(tc.KEY, tc.VARIANTS, tc.SUB_DATA, tc.SUB_BERS, tc.SUB_T,
                             progress=False, chunk=10, images_per_trial=tc.SUB_M)
print(json.dumps({{k: {{n: {{f: a.tolist() for f, a in tc._trials(res, n).items()}}
                        for n in tc.VARIANTS}} for k, res in (("full", r), ("subset", s))}}))
"""


@pytest.fixture(scope="module")
def four_devices():
  """The same campaign on 4 (virtual CPU) devices, started first so it compiles in parallel."""
  proc = subprocess.Popen([sys.executable, "-c", _SCRIPT.format(tests=os.path.dirname(__file__))],
                          env=cpu_devices_env(4), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  yield proc
  proc.kill()


@pytest.fixture(scope="module")
def reference(four_devices):
  return campaign.run_campaign(KEY, VARIANTS, DATA, BERS, 6, progress=False, chunk=6)


@pytest.fixture(scope="module")
def subset_reference(four_devices):
  return campaign.run_campaign(KEY, VARIANTS, SUB_DATA, SUB_BERS, SUB_T, progress=False,
                               chunk=SUB_T, images_per_trial=SUB_M)


def _assert_same(a, b):
  for name in VARIANTS:
    ta, tb = _trials(a, name), _trials(b, name)
    np.testing.assert_array_equal(ta["accuracy"], tb["accuracy"])
    np.testing.assert_array_equal(ta["n_flips_weights"], tb["n_flips_weights"])
    np.testing.assert_array_equal(ta["n_flips_thresholds"], tb["n_flips_thresholds"])
    np.testing.assert_allclose(ta["loss"], tb["loss"], rtol=1e-5)


def test_results_do_not_depend_on_batching(reference):
  model, v = VARIANTS["relu"]
  acc = campaign.accuracy_under_faults(KEY, model, v, DATA, BERS, 6, mode="vmap")
  np.testing.assert_array_equal(acc, _trials(reference, "relu")["accuracy"])


def test_accuracy_under_faults_matches_campaign(reference):
  model, v = VARIANTS["ranger"]
  acc = campaign.accuracy_under_faults(KEY, model, v, DATA, BERS, 6)
  assert acc.shape == (2, 6)
  np.testing.assert_array_equal(acc, _trials(reference, "ranger")["accuracy"])
  assert reference.clean["relu"]["accuracy"] == 1.0
  assert _trials(reference, "relu")["accuracy"][1].mean() < 1.0  # faults do something


def test_four_devices_give_the_same_numbers(reference, subset_reference, four_devices):
  stdout, stderr = four_devices.communicate(timeout=300)
  assert four_devices.returncode == 0, stderr[-2000:]
  out = json.loads(stdout.strip().splitlines()[-1])
  for got, want in ((out["full"], reference), (out["subset"], subset_reference)):
    for name in VARIANTS:
      ref = _trials(want, name)
      for f in ("accuracy", "n_flips_weights", "n_flips_thresholds"):
        np.testing.assert_array_equal(np.asarray(got[name][f]), ref[f])
      np.testing.assert_allclose(np.asarray(got[name]["loss"]), ref["loss"], rtol=1e-5)


def test_paired_variants_get_identical_weight_faults(reference):
  plans = {n: campaign.make_plan(v, "q15.16", None, 1e-3) for n, (_, v) in VARIANTS.items()}
  assert plans["relu"].thresholds is None and plans["ranger"].thresholds is not None
  assert plans["relu"].weights == plans["ranger"].weights
  space = faults.FaultSpace(layer="Dense_1")  # a small space keeps the eager check quick
  small = {n: campaign.make_plan(v, "q15.16", space, 1e-2) for n, (_, v) in VARIANTS.items()}
  key = jax.random.PRNGKey(3)
  out = {n: campaign.corrupt(key, faults.quantize_variables(v), 1e-2, small[n])
         for n, (_, v) in VARIANTS.items()}
  a, b = out["relu"][0]["params"], out["ranger"][0]["params"]
  assert int(out["relu"][1]) > 0 and int(out["relu"][1]) == int(out["ranger"][1])
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(_trials(reference, "relu")["n_flips_weights"],
                                _trials(reference, "ranger")["n_flips_weights"])
  rows = reference.summary_rows()
  ranger = [r for r in rows if r["variant"] == "ranger"]
  assert all(np.isfinite(r["diff_mean"]) for r in ranger)



@pytest.mark.parametrize("fmt", ["q15.16", "int8"])
def test_prequantized_corrupt_equals_corrupt(fmt):
  model, v = VARIANTS["ranger"]
  plan = campaign.make_plan(v, fmt, None, 1e-2)
  clean, aux = faults.quantize_with_aux(v, fmt)
  f = jax.jit(lambda k, c, a: campaign.corrupt(k, c, 1e-2, plan, prequantized=True, aux=a))
  g = jax.jit(lambda k, v: campaign.corrupt(k, v, 1e-2, plan))
  for t in range(3):
    key = jax.random.fold_in(KEY, t)
    (a, *na), (b, *nb) = f(key, clean, aux), g(key, v)
    assert [int(n) for n in na] == [int(n) for n in nb] and int(na[0]) > 0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      # int8 too: its encoding is the same eagerly and under jit (issue 11)
      np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))

class _Stop(Exception):
  pass


def _stop_at_third_chunk():
  """An ``on_chunk`` callback that interrupts the campaign after its third saved chunk."""
  calls = []

  def boom(name, b, trials):
    calls.append((name, b))
    if len(calls) == 3:
      raise _Stop

  return calls, boom


def test_resume_equals_uninterrupted_run(tmp_path, reference):
  path = str(tmp_path / "r.jsonl")
  calls, boom = _stop_at_third_chunk()

  with pytest.raises(_Stop):
    campaign.run_campaign(KEY, VARIANTS, DATA, BERS, 6, progress=False, chunk=6,
                          results_path=path, on_chunk=boom)
  with open(path, "a") as f:
    f.write('{"type": "trial", "variant": "re')  # a torn line, as from a crash mid-write
  resumed = campaign.run_campaign(KEY, VARIANTS, DATA, BERS, 6, progress=False, chunk=6,
                                  results_path=path)
  _assert_same(reference, resumed)
  rows = [json.loads(line) for line in open(path)]
  keys = [(r["variant"], r["ber_index"], r["trial"]) for r in rows if r["type"] == "trial"]
  assert len(keys) == len(set(keys)) == 2 * 2 * 6
  assert sum(r["type"] == "clean" for r in rows) == 2
  loaded = campaign.load_results(path)
  _assert_same(reference, loaded)
  assert loaded.format_table() == resumed.format_table()


def test_refuses_a_different_configuration(tmp_path):
  path = str(tmp_path / "r.jsonl")
  model, v = VARIANTS["relu"]
  campaign.run_campaign(KEY, {"relu": (model, v)}, DATA, BERS, 6, progress=False, chunk=6,
                        results_path=path)
  before = open(path).read()
  with pytest.raises(ValueError, match="different configuration.*differs in: key"):
    campaign.run_campaign(jax.random.PRNGKey(8), {"relu": (model, v)}, DATA, BERS, 6,
                          progress=False, results_path=path)
  assert open(path).read() == before


def test_float32_faults_make_nan_logits_count_as_wrong():
  model, v = VARIANTS["relu"]
  space = faults.FaultSpace(layer="Dense_1", bit_lo=23, bit_hi=31)  # exponent bits: Inf, NaN
  acc = campaign.accuracy_under_faults(KEY, model, v, DATA, [0.3], 1, fmt="float32", space=space)
  trial_key = jax.random.fold_in(jax.random.fold_in(KEY, 0), 0)
  plan = campaign.make_plan(v, "float32", space, 0.3)
  bad, _, _ = campaign.corrupt(trial_key, v, 0.3, plan)
  x, y = DATA.x.reshape(-1, 8, 8, 1)[:DATA.n], np.asarray(DATA.y).reshape(-1)[:DATA.n]
  logits = np.asarray(model.apply(bad, x))
  finite = np.all(np.isfinite(logits), -1)
  assert not finite.all()
  assert acc[0, 0] == np.mean(finite & (logits.argmax(-1) == y))


def test_sequential_mode_stops_at_the_target():
  model, v = VARIANTS["ranger"]
  loose = campaign.run_campaign(KEY, {"r": (model, v)}, DATA, BERS, 60, progress=False,
                                ci_target=90.0, min_trials=6, chunk=6)
  assert [r["n"] for r in loose.summary_rows()] == [6, 6]
  tight = campaign.run_campaign(KEY, {"r": (model, v)}, DATA, BERS, 12, progress=False,
                                ci_target=1e-6, min_trials=6, chunk=6)
  assert [r["n"] for r in tight.summary_rows()] == [12, 12]  # never met: runs to max_trials


def test_unknown_layer_and_bad_inputs_raise():
  model, v = VARIANTS["relu"]
  with pytest.raises(ValueError, match="matches no leaf"):
    campaign.accuracy_under_faults(KEY, model, v, DATA, BERS, 2,
                                   space=faults.FaultSpace(layer="nope"))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    campaign.run_campaign(KEY, VARIANTS, DATA, [2.0], 2, progress=False)
  with pytest.raises(ValueError, match="trials"):
    campaign.run_campaign(KEY, VARIANTS, DATA, BERS, 0, progress=False)
  # a threshold site exists in one variant only: allowed, the other gets no faults
  plan = campaign.make_plan(VARIANTS["ranger"][1], space=faults.FaultSpace(layer="act1"))
  assert plan.weights is None and plan.bits_thresholds == 32


def test_activation_distance_and_samples():
  model, v = VARIANTS["ranger"]
  x = DATA.x[0]
  dist = activation_faults.activation_distance(KEY, model, v, x, 1e-2, trials=2, layer="Dense_0")
  assert list(dist) == ["act0", "act1", "act2"]
  assert dist["act0"] == dist["act1"] == 0 and dist["act2"] > 0  # only after the faulty layer
  samples = activation_faults.activation_samples(KEY, model, v, x, 1e-2, trials=2, max_samples=100,
                                        layer="Dense_0")
  assert samples["act0"]["clean"].shape == (100,) and samples["act0"]["faulty"].shape == (200,)
  np.testing.assert_array_equal(samples["act1"]["faulty"], np.tile(samples["act1"]["clean"], 2))


def _trial_subset(ber_index, t):
  trial_key = jax.random.fold_in(jax.random.fold_in(KEY, ber_index), t)
  idx = campaign.trial_image_indices(jax.random.fold_in(trial_key, 2), SUB_DATA.n, SUB_M)
  return np.asarray(idx)


def test_trial_image_indices_are_distinct_and_in_range():
  subsets = [_trial_subset(0, t) for t in range(5)]
  for idx in subsets:
    assert idx.shape == (SUB_M,) and len(set(idx.tolist())) == SUB_M
    assert idx.min() >= 0 and idx.max() < SUB_DATA.n
  assert len({tuple(i) for i in subsets}) == 5  # a fresh subset per trial
  everything = campaign.trial_image_indices(KEY, 7, 7)
  assert sorted(np.asarray(everything).tolist()) == list(range(7))


def test_subset_at_ber0_is_clean_accuracy_on_those_images(subset_reference):
  x = np.asarray(SUB_DATA.x).reshape(-1, 8, 8, 1)[:SUB_DATA.n]
  y = np.asarray(SUB_DATA.y).reshape(-1)[:SUB_DATA.n]
  for name, (model, v) in VARIANTS.items():
    clean = faults.quantize_with_aux(v)[0]  # what the campaign corrupts (nothing at BER 0)
    got = _trials(subset_reference, name)["accuracy"][0]
    for t in range(SUB_T):
      idx = _trial_subset(0, t)  # the same images for both variants
      want, _ = evaluate(model, clean, x[idx], y[idx], batch_size=16)
      assert got[t] == np.rint(want * SUB_M) / SUB_M, (name, t)
    assert len(set(got.tolist())) > 1  # the subsets differ across trials
  # The mean over trials of the subset accuracy estimates the full-set accuracy p. One subset
  # of m of N images has a hypergeometric count: Var = p(1-p)/m * (N-m)/(N-1); trials draw
  # independent subsets, so the mean of T trials has SE = sqrt(Var / T). 4 SE (~1 in 16,000 for
  # a normal tail; here a fixed seed, so deterministic) bounds it without being trivially loose.
  p = subset_reference.clean["relu"]["accuracy"]
  n, m = SUB_DATA.n, SUB_M
  se = np.sqrt(p * (1 - p) / m * (n - m) / (n - 1) / SUB_T)
  mean = _trials(subset_reference, "relu")["accuracy"][0].mean()
  assert 0.2 < p < 0.8 and abs(mean - p) <= 4 * se, (mean, p, se)


def test_subset_results_do_not_depend_on_batching(subset_reference):
  model, v = VARIANTS["ranger"]
  want = _trials(subset_reference, "ranger")["accuracy"]
  for mode, tb in (("vmap", 5), ("map", 4)):
    acc = campaign.accuracy_under_faults(KEY, model, v, SUB_DATA, SUB_BERS, SUB_T, mode=mode,
                                         trial_batch=tb, images_per_trial=SUB_M)
    np.testing.assert_array_equal(acc, want, err_msg=f"{mode}, trial_batch {tb}")
  assert want[1].mean() < want[0].mean()  # faults do something


def test_subset_resume_and_chunks_equal_the_uninterrupted_run(tmp_path, subset_reference):
  path = str(tmp_path / "s.jsonl")
  calls, boom = _stop_at_third_chunk()

  kw = dict(progress=False, chunk=7, results_path=path, images_per_trial=SUB_M)
  with pytest.raises(_Stop):
    campaign.run_campaign(KEY, VARIANTS, SUB_DATA, SUB_BERS, SUB_T, on_chunk=boom, **kw)
  resumed = campaign.run_campaign(KEY, VARIANTS, SUB_DATA, SUB_BERS, SUB_T, **kw)
  _assert_same(subset_reference, resumed)
  _assert_same(subset_reference, campaign.load_results(path))
  assert resumed.config["images_per_trial"] == SUB_M
  before = open(path).read()
  with pytest.raises(ValueError, match="different configuration.*images_per_trial"):
    campaign.run_campaign(KEY, VARIANTS, SUB_DATA, SUB_BERS, SUB_T,
                          **{**kw, "images_per_trial": SUB_M - 1})
  with pytest.raises(ValueError, match="different configuration.*images_per_trial"):
    campaign.run_campaign(KEY, VARIANTS, SUB_DATA, SUB_BERS, SUB_T,
                          **{**kw, "images_per_trial": None})
  assert open(path).read() == before


def test_images_per_trial_none_is_the_full_set_campaign(reference):
  unset = campaign.run_campaign(KEY, VARIANTS, DATA, BERS, 6, progress=False, chunk=6,
                                images_per_trial=None)
  _assert_same(reference, unset)
  for cfg in (reference.config, unset.config):
    assert "images_per_trial" not in cfg and "image_key" not in cfg
  model, v = VARIANTS["relu"]
  acc = campaign.accuracy_under_faults(KEY, model, v, DATA, BERS, 6, images_per_trial=None)
  np.testing.assert_array_equal(acc, _trials(reference, "relu")["accuracy"])


@pytest.mark.parametrize("m", [0, -1, SUB_DATA.n + 1, 2.5, True])
def test_bad_images_per_trial_raises(tmp_path, m):
  model, v = VARIANTS["relu"]
  path = str(tmp_path / "r.jsonl")
  with pytest.raises(ValueError, match=r"images_per_trial must be an integer in \[1, 40\]"):
    campaign.run_campaign(KEY, VARIANTS, SUB_DATA, SUB_BERS, 2, progress=False,
                          results_path=path, images_per_trial=m)
  assert not os.path.exists(path)
  with pytest.raises(ValueError, match="images_per_trial"):
    campaign.accuracy_under_faults(KEY, model, v, SUB_DATA, SUB_BERS, 2, images_per_trial=m)
