import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax import cli
import proact_jax as pj
from proact_jax.faults import stats
from proact_jax.faults.results import ResultsStore
from proact_jax.report import activation_stats
from proact_jax.report import tables as report
from proact_jax.training import checkpoint as ckpt

BERS = [1e-5, 1e-4]
ACC = {"relu": [[0.90, 0.80, 0.85, 0.70], [0.50, 0.40, 0.30, 0.45]],
       "ranger": [[0.92, 0.85, 0.86, 0.80], [0.60, 0.55, 0.50, 0.58]],
       "proact": [[0.94, 0.90, 0.91, 0.88], [0.80, 0.70, 0.75, 0.72]]}
CLEAN = {"relu": 0.96, "ranger": 0.95, "proact": 0.955}
INFO = {"relu": {"method": "relu", "kind": "relu", "granularity": "layer", "accuracy": 0.95,
                 "baseline_accuracy": 0.95, "memory_overhead": 0.0, "n_thresholds": 0},
        "ranger": {"method": "ranger", "kind": "zero", "granularity": "layer", "accuracy": 0.94,
                   "baseline_accuracy": 0.95, "memory_overhead": 0.003, "n_thresholds": 3},
        "proact": {"method": "proact", "kind": "smooth", "granularity": "hybrid",
                   "accuracy": 0.945, "baseline_accuracy": 0.95, "memory_overhead": 0.066,
                   "n_thresholds": 66}}
EXTRA = {"model": "small_cnn", "dataset": "digits", "n_params": 1000, "images": 0, "seed": 0,
         "memory_overhead_by_granularity": {"layer": 0.003, "neuron": 0.5, "hybrid": 0.066},
         "n_thresholds_by_granularity": {"layer": 3, "neuron": 500, "hybrid": 66},
         "variants": INFO}


def write_campaign(path, acc=ACC, clean=CLEAN, extra=EXTRA, bers=BERS, prints=None,
                   images_per_trial=None):
  prints = prints or {}
  config = {"version": 1, "key": [0, 0], "bers": bers, "format": "q15.16", "space": {},
            "variants": {v: {"model": "m", "fingerprint": prints.get(v, v)} for v in acc},
            "eval_set": {"n": 100, "hash": "h"}, "extra": extra}
  if images_per_trial is not None:
    config["images_per_trial"] = images_per_trial
  store = ResultsStore(str(path), config, {"reference": "relu"})
  for v, per_ber in acc.items():
    store.add_clean(v, clean[v], 0.1)
    store.add_trials({"type": "trial", "variant": v, "ber_index": b, "ber": bers[b], "trial": t,
                      "accuracy": a, "loss": 1.0, "n_flips": 3, "n_flips_weights": 3,
                      "n_flips_thresholds": 0}
                     for b, accs in enumerate(per_ber) for t, a in enumerate(accs))
  return str(path)


def activations_data():
  rng = np.random.default_rng(0)
  clean = rng.exponential(0.5, 1000)
  faulty = np.concatenate([clean, [50.0, np.inf, -1.0]])
  h = activation_stats.histogram_counts(clean, faulty, bins=8)
  tv = {"fitact": {"Conv_0": {"act0": 1.0, "act1": 2.0}, "Dense_0": {"act0": 0.0, "act1": 4.0}},
        "proact": {"Conv_0": {"act0": 0.5, "act1": 1.5}, "Dense_0": {"act0": 0.0, "act1": 3.0}}}
  return {"type": "activations", "model": "small_cnn", "dataset": "digits", "ber": 1e-4,
          "fmt": "q15.16", "trials": 2, "images": 8, "hist_ber": 1e-4,
          "variants": ["fitact", "proact"], "layers": ["Conv_0", "Dense_0"],
          "sites": ["act0", "act1"], "table_v": tv,
          "histograms": {"proact": {"act0": h, "act1": h}}}


@pytest.fixture()
def inputs(tmp_path):
  main = write_campaign(tmp_path / "main.jsonl")
  other = write_campaign(tmp_path / "alex.jsonl",
                         acc={"relu": [[0.5, 0.6]], "fitact": [[0.7, 0.6]]},
                         clean={"relu": 0.8, "fitact": 0.78},
                         extra={"model": "alexnet", "dataset": "cifar10"}, bers=[1e-6])
  acts = str(tmp_path / "acts.json")
  activation_stats.save_activation_report(acts, activations_data())
  return [main, other, acts]


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_tables_match_hand_computed_values(inputs, tmp_path):
  out = tmp_path / "rep"
  written = report.write_report(inputs, str(out))
  t2 = {(r["model"], r["variant"]): r for r in read_csv(written["table2_clean_drop.csv"])}
  assert float(t2["small_cnn", "ranger"]["drop"]) == pytest.approx(0.01)
  assert float(t2["small_cnn", "proact"]["drop"]) == pytest.approx(0.005)
  assert t2["small_cnn", "proact"]["source"] == "checkpoint"
  # no variant metadata: quantised clean accuracies against the relu variant
  assert float(t2["alexnet", "fitact"]["drop"]) == pytest.approx(0.02)
  assert t2["alexnet", "fitact"]["source"].startswith("campaign clean")
  assert "| small_cnn | digits | proact | hybrid | 94.50 | 95.00 | 0.50 | 95.50 |" in open(
      written["table2_clean_drop.md"]).read()

  t3 = {(r["model"], r["entry"]): r for r in read_csv(written["table3_memory.csv"])}
  assert float(t3["small_cnn", "(neuron-wise)"]["memory_overhead"]) == 0.5
  assert t3["small_cnn", "(hybrid)"]["n_thresholds"] == "66"
  assert float(t3["small_cnn", "ranger"]["memory_overhead"]) == 0.003
  assert "| small_cnn | digits | (layer-wise) | layer | 3 | 1000 | 0.3 |" in open(
      written["table3_memory.md"]).read()

  t4 = read_csv(written["table4_faults.csv"])
  assert [(r["model"], r["ber"], r["variant"]) for r in t4][:4] == [
      ("alexnet", "1e-06", "relu"), ("alexnet", "1e-06", "fitact"),
      ("small_cnn", "1e-05", "relu"), ("small_cnn", "1e-05", "ranger")]
  row = {(r["model"], r["ber"], r["variant"]): r for r in t4}["small_cnn", "0.0001", "proact"]
  s = stats.summarize(ACC["proact"][1])
  d = stats.paired_difference(ACC["proact"][1], ACC["relu"][1])
  assert float(row["mean"]) == pytest.approx(s["mean"], rel=1e-9)
  assert float(row["drop"]) == pytest.approx(CLEAN["relu"] - s["mean"], rel=1e-9)
  assert float(row["drop_ci_low"]) == pytest.approx(CLEAN["relu"] - s["ci_high"], rel=1e-9)
  assert float(row["diff_ci_high"]) == pytest.approx(d["ci_high"], rel=1e-9)
  md4 = open(written["table4_faults.md"]).read()
  assert (f"| small_cnn | digits | 1e-4 | proact | 4 | 74.25 | [{100 * s['ci_low']:.2f}, "
          f"{100 * s['ci_high']:.2f}] | 21.75 |") in md4
  assert f"| {100 * d['mean']:.2f} | [{100 * d['ci_low']:.2f}, {100 * d['ci_high']:.2f}] |" in md4

  md5 = open(written["table5_activation_distance.md"]).read().splitlines()
  assert "| faulted layer | fitact | proact |" in md5
  assert "| Conv_0 | 2 | 1.5 |" in md5 and "| mean | 3 | 2.25 |" in md5
  assert len(read_csv(written["table5_activation_distance.csv"])) == 8

  for name in ("fig_accuracy_vs_ber.png", "fig_histograms_proact.png"):
    with open(out / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(out / "fig_accuracy_vs_ber.pdf") > 1000
  text = open(written["report.md"]).read()
  assert "Table IV" in text and "fig_histograms_proact.png" in text


def test_ber_selection_reference_and_byte_identical_regeneration(inputs, tmp_path):
  a = report.write_report(inputs, str(tmp_path / "a"), bers=[1e-4], reference="ranger")
  b = report.write_report(inputs, str(tmp_path / "b"), bers=[1e-4], reference="ranger")
  t4 = read_csv(a["table4_faults.csv"])
  assert {r["ber"] for r in t4} == {"0.0001"} and {r["reference"] for r in t4} == {"ranger"}
  assert sorted(a) == sorted(b)
  for name in a:
    assert open(a[name], "rb").read() == open(b[name], "rb").read(), name


def test_report_says_when_trials_used_image_subsets(inputs, tmp_path):
  full = open(report.write_report(inputs, str(tmp_path / "full"))["report.md"]).read()
  assert "images_per_trial" not in full
  sub = write_campaign(tmp_path / "sub.jsonl", images_per_trial=40)
  text = open(report.write_report([sub], str(tmp_path / "sub"))["report.md"]).read()
  assert "random subset of 40 of the 100 test images (`images_per_trial`)" in text


def test_merges_campaigns_of_one_model(tmp_path):
  one = write_campaign(tmp_path / "one.jsonl", acc={k: ACC[k] for k in ("relu", "ranger")})
  two = write_campaign(tmp_path / "two.jsonl", acc={k: ACC[k] for k in ("relu", "proact")})
  written = report.write_report([one, two], str(tmp_path / "rep"))
  rows = read_csv(written["table4_faults.csv"])
  assert [r["variant"] for r in rows] == ["relu", "ranger", "proact"] * 2


def _cli(capsys, *argv):
  rc = cli.main(["report", *argv])
  return rc, capsys.readouterr()


def test_cli_writes_the_report(inputs, tmp_path, capsys):
  rc, cap = _cli(capsys, *inputs, "--out", str(tmp_path / "r"), "--bers", "1e-5")
  assert rc == 0, cap.err
  assert str(tmp_path / "r" / "report.md") in cap.out.splitlines()


@pytest.mark.parametrize("case,msg", [
    ("empty", "is empty"),
    ("wrong_type", "neither a campaign results file"),
    ("text", "neither a campaign results file"),
    ("missing", "no such file"),
    ("other_bers", "cannot be merged (they differ in: bers"),
    ("other_weights", "disagree on variant 'relu'"),
    ("under_file", "cannot create the output directory"),
    ("no_results", "no RESULTS given"),
    ("reference", "--reference 'nope' is not a variant of any campaign"),
    ("ber", "BER 3e-05 is not in the campaign results"),
])
def test_bad_inputs_exit_2_with_one_line(inputs, tmp_path, capsys, case, msg):
  bad = tmp_path / "bad.jsonl"
  out = str(tmp_path / "out")
  args = [inputs[0]]
  if case == "empty":
    bad.write_text("")
  elif case == "wrong_type":
    bad.write_text(json.dumps({"type": "something"}) + "\n")
  elif case == "text":
    bad.write_text("hello\n")
  elif case == "other_bers":
    write_campaign(bad, bers=[1e-5, 3e-4])
  elif case == "other_weights":
    write_campaign(bad, prints={"relu": "different"})
  if case in ("empty", "wrong_type", "text", "missing", "other_bers", "other_weights"):
    args.append(str(bad))
  elif case == "under_file":
    out = os.path.join(inputs[0], "sub")
  elif case == "no_results":
    args = []
  elif case == "reference":
    args += ["--reference", "nope"]
  elif case == "ber":
    args += ["--bers", "1e-5,3e-5"]
  rc, cap = _cli(capsys, *args, "--out", out)
  assert rc == 2
  lines = cap.err.strip().splitlines()
  assert len(lines) == 1 and msg in lines[0], cap.err
  assert not os.path.exists(out)


META = {"model": "small_cnn", "num_classes": 10, "input_shape": [8, 8, 1], "dataset": "digits",
        "mean": [0.3], "std": [0.37], "n_val": 100, "kind": "relu", "granularity": "layer",
        "accuracy": 0.9}


def test_model_and_variant_info():
  info = activation_stats.model_info(META)
  model = pj.create_model("small_cnn", 10)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  n = pj.count(v["params"])
  assert info["n_params"] == n and info["dataset"] == "digits"
  assert info["n_thresholds_by_granularity"] == {"layer": 3, "neuron": 8 * 8 * (16 + 32) + 64,
                                                 "hybrid": 2 + 64}
  assert info["memory_overhead_by_granularity"]["hybrid"] == pytest.approx(66 / n)
  vi = activation_stats.variant_info(model, v, META)
  assert vi == {"method": "relu", "kind": "relu", "granularity": "layer", "accuracy": 0.9,
                "baseline_accuracy": 0.9, "memory_overhead": 0.0, "n_thresholds": 0}
  hard = pj.create_model("small_cnn", 10, "smooth", "hybrid")
  hv = hard.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  hmeta = {**META, "method": "proact", "kind": "smooth", "granularity": "hybrid",
           "accuracy": 0.89, "baseline_accuracy": 0.9}
  hi = activation_stats.variant_info(hard, hv, hmeta)
  assert hi["baseline_accuracy"] == 0.9 and hi["n_thresholds"] == 66


def test_activation_report_feeds_the_report(tmp_path):
  base = pj.create_model("small_cnn", 10)
  v = base.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  hard = pj.create_model("small_cnn", 10, "smooth", "hybrid")
  hv = {**v, "thresholds": hard.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["thresholds"]}
  hv["thresholds"] = jax.tree_util.tree_map(lambda t: jnp.full_like(t, 2.0), hv["thresholds"])
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  data = activation_stats.activation_report(
      jax.random.PRNGKey(2), {"relu": (base, v), "proact": (hard, hv)}, x, ber=1e-3, trials=2,
      layers=["Conv_1"], hist_variants=["proact"], bins=5,
      meta={"model": "small_cnn", "dataset": "digits"})
  assert activation_stats.kernel_layers(v) == ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
  assert data["sites"] == ["act0", "act1", "act2"] and list(data["histograms"]) == ["proact"]
  assert data["table_v"]["relu"]["Conv_1"]["act0"] == 0.0  # upstream of the faulted layer
  assert data["table_v"]["relu"]["Conv_1"]["act1"] > 0
  h = data["histograms"]["proact"]["act2"]
  assert h["n_clean"] == 4 * 64 and h["n_faulty"] == 2 * 4 * 64
  assert len(h["edges_low"]) == 6 and sum(h["clean_low"]) + sum(h["clean_high"]) <= h["n_clean"]
  path = activation_stats.save_activation_report(str(tmp_path / "a.json"), data)
  written = report.write_report([path], str(tmp_path / "rep"))
  table5 = open(written["table5_activation_distance.md"]).read()
  assert "| faulted layer | relu | proact |" in table5
  assert os.path.getsize(written["fig_histograms_proact.png"]) > 0


def test_sweep_header_carries_variant_metadata(tmp_path, capsys):
  model = pj.create_model("small_cnn", 10)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  d = ckpt.save_checkpoint(str(tmp_path / "base"), v, META)
  out = str(tmp_path / "s.jsonl")
  assert cli.main(["sweep", "--checkpoint", d, "--bers", "1e-4", "--trials", "2", "--images",
                   "16", "--quiet", "--out", out]) == 0
  extra = json.loads(open(out).readline())["config"]["extra"]
  assert extra["model"] == "small_cnn" and extra["n_params"] == pj.count(v["params"])
  assert extra["variants"]["relu"]["accuracy"] == 0.9 and extra["images"] == 16
  written = report.write_report([out], str(tmp_path / "rep"))
  assert read_csv(written["table2_clean_drop.csv"])[0]["source"] == "checkpoint"
  capsys.readouterr()


def test_the_paper_table_pairs_our_cells_with_the_papers():
  from proact_jax.report import paper
  row = lambda v, ber, model="alexnet": {  # noqa: E731
      "model": model, "dataset": "cifar10", "ber": ber, "variant": v, "n": 40,
      "baseline_accuracy": 0.81, "drop": 0.05, "drop_ci_low": 0.03, "drop_ci_high": 0.07}
  t4 = [row("proact", 1e-6), row("fitact", 1.0000000001e-6), row("relu", 1e-6),
        row("proact", 3e-6), row("proact-2", 1e-6), row("proact", 1e-6, "vgg16")]
  got = paper.paper_rows(t4, {("alexnet", "cifar10"): "toolbox-floor"})
  # only the paper's cells (AlexNet / CIFAR-10 at 1e-6; VGG-16 is at 3e-6 there) and methods
  assert [(r["method"], r["ber"]) for r in got] == [("proact", 1e-6), ("fitact", 1.0000000001e-6)]
  assert got[0]["paper_drop"] == 2.52 and got[1]["paper_drop"] == 4.34
  assert got[0]["paper_baseline"] == 81.67 and got[0]["fault_rule"] == "toolbox-floor"
  assert paper.paper_rows(t4, {})[0]["fault_rule"] == "bernoulli"
  cells = [fn(got[0]) for _, fn in paper.PAPER4]
  assert "2.52 (81.67 %)" in cells and "5.00 [3.00, 7.00] (81.00 %)" in cells
