import json
import os

import jax
import jax.numpy as jnp
import pytest

from proact_jax import cli
import proact_jax as pj
from proact_jax.faults.results import ResultsStore
from proact_jax.training import checkpoint as ckpt

META = {"model": "small_cnn", "num_classes": 10, "input_shape": [8, 8, 1], "dataset": "digits",
        "mean": [0.3], "std": [0.37], "n_val": 100, "kind": "relu", "granularity": "layer",
        "config": {"seed": 0}}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  model = pj.create_model("small_cnn", 10)
  out = {}
  for name, seed in (("base", 0), ("other", 1)):
    v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))
    out[name] = ckpt.save_checkpoint(str(root / name), v, META)
  existing = str(root / "existing.jsonl")
  ResultsStore(existing, {"something": "else"}).close()  # release its lock
  out["existing"] = existing
  out["root"] = str(root)
  return out


def _run(capsys, *argv):
  try:
    rc = cli.main(["sweep", *argv])
  except SystemExit as e:   # argparse's range check of numeric options (one line, code 2)
    rc = e.code
  return rc, capsys.readouterr()


def test_sweep_writes_results_and_summary(ckpts, capsys, tmp_path):
  out = str(tmp_path / "r.jsonl")
  rc, cap = _run(capsys, "--checkpoint", ckpts["base"], "--bers", "1e-4,1e-3", "--trials", "2",
                 "--images", "20", "--quiet", "--out", out)
  assert rc == 0, cap.err
  assert "| relu | 1e-03 | 2 |" in cap.out
  rows = [json.loads(line) for line in open(out)]
  assert rows[0]["type"] == "header" and sum(r["type"] == "trial" for r in rows) == 4
  assert os.path.exists(str(tmp_path / "r.summary.csv"))
  assert os.path.exists(str(tmp_path / "r.summary.md"))
  rc, cap = _run(capsys, "--checkpoint", ckpts["base"], "--bers", "1e-4,1e-3", "--trials", "2",
                 "--images", "20", "--quiet", "--out", out)  # resumed: nothing recomputed
  assert rc == 0 and len(open(out).readlines()) == len(rows)


def test_sweep_images_per_trial(ckpts, capsys, tmp_path):
  out = str(tmp_path / "s.jsonl")
  argv = ["--checkpoint", ckpts["base"], "--bers", "1e-4", "--trials", "3", "--images", "20",
          "--images-per-trial", "5", "--quiet", "--out", out]
  rc, cap = _run(capsys, *argv)
  assert rc == 0, cap.err
  assert "trials use random subsets of 5 of the 20 test images" in cap.out
  rows = [json.loads(line) for line in open(out)]
  assert rows[0]["config"]["images_per_trial"] == 5
  assert all(round(r["accuracy"] * 5, 9) % 1 == 0 for r in rows if r["type"] == "trial")
  rc, cap = _run(capsys, *argv[:-4], "6", "--quiet", "--out", out)  # another m: refused
  assert rc == 2 and "images_per_trial" in cap.err


@pytest.mark.parametrize("args,msg", [
    (["--bers", "2"], "outside [0, 1]"),
    (["--bers", "1e-5,abc"], "comma-separated numbers"),
    (["--bers=-1e-5"], "outside [0, 1]"),
    (["--trials", "0"], "argument --trials: expected an integer in [1, "),
    (["--format", "q40.40"], "exceeds 32"),
    (["--format", "fp8"], "unknown number format"),
    (["--layer", "nope"], "matches no leaf"),
    (["--bits", "0:40"], "not inside"),
    (["--ci-target", "0"], "--ci-target"),
    (["--images-per-trial", "0"], "argument --images-per-trial: expected an integer in [1, "),
    (["--images", "20", "--images-per-trial", "21"], "exceeds the 20 test images"),
    (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    (["--checkpoint", "OTHER"], "params differ"),
    (["--out", "EXISTING"], "different configuration"),
    (["--activation-faults", "--fault-rule", "toolbox-floor"],
     "--activation-faults injects Bernoulli flips in a plain campaign"),
    (["--activation-faults", "--stratify", "2", "--critical", "Conv_0:16:32"],
     "does not combine with --stratify"),
    (["--no-weight-faults", "--no-thresholds-faults"], "nothing to inject"),
    (["--stratify", "2", "--critical", "Conv_0:16:32", "--fault-rule", "toolbox-floor"],
     "does not combine with --fault-rule toolbox-floor"),
    (["--stratify", "2", "--critical", "Conv_0:16:32", "--ci-target", "1", "--stop-pairwise",
      "--ci-pairs"], "choose one"),
    (["--critical-direction", "raise"], "need --stratify"),
    (["--stratify", "2", "--critical", "Conv_0:16:32:up"], "expected LAYER[:LO[:HI]]"),
])
def test_bad_inputs_exit_2_with_one_line(ckpts, capsys, args, msg):
  out = ckpts["existing"]
  before = open(out).read()
  args = [ckpts["other"] if a == "OTHER" else a for a in args]
  if "--out" not in args:
    args += ["--out", out]
  args = [out if a == "EXISTING" else a for a in args]
  if "/nonexistent/ckpt" not in args:
    args = ["--checkpoint", ckpts["base"]] + args
  rc, cap = _run(capsys, "--trials", "2", "--bers", "1e-4", "--quiet", *args)
  assert rc == 2
  lines = cap.err.strip().splitlines()
  assert len(lines) == 1 and msg in lines[0], cap.err
  assert open(out).read() == before
  assert sorted(os.listdir(ckpts["root"])) == ["base", "existing.jsonl", "other"]


@pytest.fixture(scope="module")
def ranger_ckpt(ckpts, tmp_path_factory):
  """A Ranger-style checkpoint of the base model: its params and layer-wise thresholds."""
  v = ckpt.load_checkpoint(ckpts["base"])[1]
  thr = {f"act{i}": {"lam": jnp.float32(0.5 + 0.5 * i)} for i in range(3)}
  return ckpt.save_checkpoint(str(tmp_path_factory.mktemp("act") / "ranger"),
                              {**v, "thresholds": thr},
                              {**META, "kind": "zero", "method": "ranger"})


def test_sweep_activation_faults(ckpts, ranger_ckpt, capsys, tmp_path):
  """--activation-faults: the results file records the activation fault space and bits, both
  variants get the same activation flips in every trial, their number follows the binomial,
  and the same command gives the same file byte for byte."""
  ber, trials, images = 1e-3, 4, 20
  argv = ["--checkpoint", ckpts["base"], "--checkpoint", ranger_ckpt, "--bers", str(ber),
          "--trials", str(trials), "--images", str(images), "--activation-faults",
          "--no-weight-faults", "--no-thresholds-faults", "--quiet"]
  outs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
  for out in outs:
    rc, cap = _run(capsys, *argv, "--out", out)
    assert rc == 0, cap.err
  assert "| ranger | 1e-03 | 4 |" in cap.out
  assert open(outs[0], "rb").read() == open(outs[1], "rb").read()
  rows = [json.loads(line) for line in open(outs[0])]
  config = rows[0]["config"]
  assert config["space"]["collections"] == ["activations"]
  bits = 32 * (8 * 8 * 16 + 8 * 8 * 32 + 64)  # small_cnn's sites act0, act1, act2 in Q15.16
  assert config["activation_faults"]["bits_per_image"] == {"relu": bits, "ranger": bits}
  trial = {(r["variant"], r["trial"]): r for r in rows if r["type"] == "trial"}
  assert len(trial) == 2 * trials
  for t in range(trials):
    relu, ranger = trial[("relu", t)], trial[("ranger", t)]
    assert relu["n_flips_activations"] == ranger["n_flips_activations"] == relu["n_flips"]
    assert relu["n_flips_weights"] == relu["n_flips_thresholds"] == 0
  # flips of all trials ~ Binomial(trials x images x bits, BER): within 5 standard deviations
  n = trials * images * bits
  total = sum(trial[("relu", t)]["n_flips_activations"] for t in range(trials))
  assert abs(total - n * ber) < 5 * (n * ber * (1 - ber)) ** 0.5, (total, n * ber)
