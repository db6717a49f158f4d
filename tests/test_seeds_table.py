"""Headlines over seeds (report/seeds.py) and the CIFAR seeds driver (experiments/cifar10_seeds.py)."""

import json
import os

import numpy as np
import pytest

from proact_jax.faults import campaign, stats
from proact_jax.report.seeds import seeds_table

from test_campaign import DATA, KEY, VARIANTS
from test_faithful_pipeline import _load

METHODS = ("relu", "ranger", "ft-clipact", "fitact", "proact")


def _run(seed, drops, accs):
  """A seed's record: clean drops (fractions) and, at BER 1e-6, the accuracy per method."""
  return {"seed": seed, "baseline_accuracy": 0.8,
          "clean_drop": dict(zip(METHODS, drops)),
          "campaign": {"bernoulli": {f"{m}@1e-06": {"mean": a} for m, a in zip(METHODS, accs)}}}


def test_seeds_table_by_hand():
  runs = [_run(0, [0, 0.000, 0.002, 0.010, 0.004], [0.5, 0.70, 0.71, 0.60, 0.72]),
          _run(1, [0, 0.001, 0.003, 0.020, 0.012], [0.4, 0.69, 0.70, 0.62, 0.73]),
          _run(2, [0, 0.002, 0.001, 0.030, 0.005], [0.6, 0.71, 0.69, 0.61, 0.74])]
  text = seeds_table(runs, [1e-6], METHODS, ("bernoulli",), "Intro.")
  # ProAct's drops 0.4, 1.2, 0.5 pp: mean 0.7, sd 0.4359, t(0.975, 2) = 4.3027
  half = 4.3027 * np.std([0.4, 1.2, 0.5], ddof=1) / np.sqrt(3)
  assert f"0.70 [{0.7 - half:.2f}, {0.7 + half:.2f}] (0.40-1.20)" in text
  assert "ProAct's clean test drop < 1 pp in 2 of 3 seeds (largest 1.20 pp)." in text
  # proact - ranger: +2, +4, +3 pp: mean 3, sd 1; Holm over the 3 comparisons
  pv = [stats.paired_pvalue([.72, .73, .74], [.70, .69, .71]),
        stats.paired_pvalue([.72, .73, .74], [.71, .70, .69]),
        stats.paired_pvalue([.72, .73, .74], [.60, .62, .61])]
  ph = stats.holm(pv)
  h = 4.3027 / np.sqrt(3)
  assert (f"| proact - ranger | +3.00 [{3 - h:.2f}, {3 + h:.2f}], p_Holm {ph[0]:.2g}, "
          "3/3 seeds > 0 |") in text
  assert f"p_Holm {ph[2]:.2g}, 3/3 seeds > 0" in text
  assert "3 pairs x 1 BERs" in text and "Mean flips" not in text  # no flips recorded
  with pytest.raises(ValueError, match="at least 2 seeds"):
    seeds_table(runs[:1], [1e-6], METHODS, ("bernoulli",), "x")


def _fake_seed(mod, d, key, finished=True):
  """A seed's results directory: stages.json, hardened/*.json and a real (tiny) campaign."""
  os.makedirs(os.path.join(d, "hardened"), exist_ok=True)
  for i, m in enumerate(METHODS[1:]):
    with open(os.path.join(d, "hardened", f"{m}.json"), "w") as f:
      json.dump({"method": m, "accuracy": 0.9 - 0.01 * i, "baseline_accuracy": 0.9}, f)
  model, v = VARIANTS["ranger"]
  variants = {"relu": VARIANTS["relu"], **{m: (model, v) for m in METHODS[1:]}}
  campaign.run_campaign(key, variants, DATA, [1e-3], 4, progress=False,
                        results_path=os.path.join(d, "campaign_bernoulli.jsonl"))
  stages = mod.STAGES.split(",")
  with open(os.path.join(d, "stages.json"), "w") as f:
    json.dump({s: {} for s in (stages if finished else stages[:-1])}, f)


def test_cifar10_seeds_aggregates_the_finished_seeds(tmp_path):
  mod = _load("cifar10_seeds")
  res = str(tmp_path / "results")
  _fake_seed(mod, res, KEY)
  _fake_seed(mod, mod.seed_dirs(res, 1), KEY + 1)
  _fake_seed(mod, mod.seed_dirs(res, 2), KEY + 2, finished=False)  # campaign still running
  assert mod.seed_record(mod.seed_dirs(res, 2), 2) is None
  rec = mod.seed_record(res, 0)
  assert rec["clean_drop"]["fitact"] == pytest.approx(0.02) and rec["clean_drop"]["relu"] == 0
  assert set(rec["campaign"]["bernoulli"]) == {f"{m}@0.001" for m in METHODS}
  _fake_seed(mod, mod.seed_dirs(res, 3), KEY + 3)
  # --seeds 2 alone: the table still holds every finished seed in RESULTS (0, 1, 3), not 2
  assert mod.main(["--aggregate-only", "--results", res, "--seeds", "2"]) == 0
  text = open(os.path.join(res, "seeds", "table.md")).read()
  assert text.startswith("Method seeds 0, 1, 3 (3 hardenings")
  runs = json.load(open(os.path.join(res, "seeds", "seeds.json")))["runs"]
  assert [r["seed"] for r in runs] == [0, 1, 3]
  # ranger, ft-clipact, fitact, proact share one model here: equal means in every seed
  assert "| proact - ranger | +0.00" in text
  with pytest.raises(SystemExit):
    mod.main(["--seeds", "0,1"])  # seed 0 is the main run, not a method seed


def test_cifar10_seeds_refuses_bad_input_and_stops_at_a_failed_seed(tmp_path, capsys,
                                                                    monkeypatch):
  mod = _load("cifar10_seeds")
  res = ["--results", str(tmp_path / "r"), "--data-dir", str(tmp_path)]
  for bad, words in ((["--max-trials", "29"], "start with 30 trials"),
                     (["--max-trials", "x"], "--max-trials"), (["--model", "vgg"], "--model")):
    with pytest.raises(SystemExit) as e:
      mod.main(res + bad)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and words in err[-1], (bad, err)
  calls = []
  monkeypatch.setattr(mod.subprocess, "call", lambda cmd: calls.append(cmd) or 3)
  assert mod.main(res + ["--seeds", "1,2"]) == 3
  assert len(calls) == 1 and calls[0][calls[0].index("--method-seed") + 1] == "1"
  assert capsys.readouterr().err.strip().splitlines() == [
      "cifar10_seeds: seed 1 stopped with exit code 3 (its error is above); the same command "
      "resumes it"]
  assert not (tmp_path / "r").exists()


def test_experiment_drivers_refuse_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
  """digits_seeds and the CPU-scale CIFAR script: a bad option or a missing data directory is
  one line and exit code 2, before any directory is made; a failed stage is one line with the
  stage's exit code, not a traceback."""
  import sys
  digits = _load("digits_seeds")
  out = ["--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
  for bad, words in ((["--seeds", "x"], "comma-separated"), (["--seeds", "3,3"], "2 different"),
                     (["--trials", "0"], "--trials")):
    with pytest.raises(SystemExit) as e:
      digits.main(out + bad)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and words in err[-1], (bad, err)
  cpu = _load("cifar10_alexnet_cpu")
  for argv, words in (([*out, "--data-dir", str(tmp_path / "none")], "does not exist"),
                      ([*out, "--data-dir", str(tmp_path), "--images", "0"], "--images")):
    monkeypatch.setattr(sys, "argv", ["cifar10_alexnet_cpu.py", *argv])
    with pytest.raises(SystemExit) as e:
      cpu.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and words in err[-1], (argv, err)
  assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
  def fail(name, argv, work):   # the training stage fails
    raise cpu.subprocess.CalledProcessError(2, argv)
  monkeypatch.setattr(cpu, "run_timed", fail)
  monkeypatch.setattr(sys, "argv", ["cifar10_alexnet_cpu.py", *out, "--data-dir", str(tmp_path)])
  with pytest.raises(SystemExit) as e:
    cpu.main()
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and err == [
      "cifar10_alexnet_cpu: stage train stopped with exit code 2 (its error is above); the same "
      "command resumes it"]
  assert not (tmp_path / "r" / "stages.json").exists()
