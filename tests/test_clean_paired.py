"""Paired clean accuracies: McNemar by hand, the Holm family, and `proact clean`."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax import cli
from proact_jax.core.evaluate import predict
from proact_jax.faults import stats
from proact_jax.report.clean_paired import clean_paired
from proact_jax.training import checkpoint as ckpt
from proact_jax.training.checkpoint_data import checkpoint_data

from test_sweep_cli import META


def test_mcnemar_by_hand():
  # 10 images: a alone right on 5, b alone right on 1, both right on 3, both wrong on 1
  a = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], bool)
  b = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0], bool)
  r = stats.mcnemar(a, b)
  assert (r["n"], r["n10"], r["n01"]) == (10, 5, 1)
  assert r["diff"] == pytest.approx(0.4)
  # exact: 2 P(X <= 1), X ~ Bin(6, 1/2) = 2 (1 + 6) / 64
  assert r["p"] == pytest.approx(14 / 64)
  half = 1.959964 * math.sqrt((0.6 - 0.16) / 10)
  assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.4 - half, 0.4 + half), abs=1e-6)
  assert stats.mcnemar(a, a)["p"] == 1.0 and stats.mcnemar(a, a)["diff"] == 0.0
  with pytest.raises(ValueError, match="same, nonzero length"):
    stats.mcnemar(a, b[:5])


def test_clean_paired_family_is_every_pair_holm_adjusted():
  rng = np.random.default_rng(0)
  truth = rng.random(2000) < 0.8
  correct = {"relu": truth, "ranger": truth.copy(),
             "proact": truth & (rng.random(2000) > 0.05),   # loses about 4 points
             "fitact": truth ^ (rng.random(2000) < 0.01)}
  r = clean_paired(correct)
  assert [(q["a"], q["b"]) for q in r["pairs"]] == [
      ("relu", "ranger"), ("relu", "proact"), ("relu", "fitact"), ("ranger", "proact"),
      ("ranger", "fitact"), ("proact", "fitact")]
  np.testing.assert_allclose([q["p_holm"] for q in r["pairs"]],
                             stats.holm([q["p"] for q in r["pairs"]]))
  relu_proact = r["pairs"][1]
  assert relu_proact["n01"] == 0 and relu_proact["p_holm"] < 1e-6 and relu_proact["ci_low"] > 0
  assert r["pairs"][0]["p"] == 1.0 and "6 pairs of the 4 variants" in r["family"]
  with pytest.raises(ValueError, match="at least 2 variants"):
    clean_paired({"relu": truth})


def test_cli_clean_compares_checkpoints_and_refuses_bad_input(tmp_path, capsys):
  model_meta = dict(META)
  from proact_jax import create_model
  model = create_model("small_cnn", 10)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  base = ckpt.save_checkpoint(str(tmp_path / "base"), v, model_meta)
  thr = {f"act{i}": {"lam": jnp.float32(0.05)} for i in range(3)}  # tight: changes predictions
  ranger = ckpt.save_checkpoint(str(tmp_path / "ranger"), {**v, "thresholds": thr},
                                {**model_meta, "kind": "zero", "method": "ranger"})
  out = str(tmp_path / "clean.json")
  assert cli.main(["clean", "--checkpoint", base, "--checkpoint", ranger, "--out", out]) == 0
  r = json.load(open(out))
  assert set(r["accuracy"]) == {"relu", "ranger"} and os.path.exists(out[:-5] + ".md")
  # the accuracies are the checkpoints' own on the test set
  m, vr, meta = ckpt.load_checkpoint(ranger)
  d = checkpoint_data(meta, profile_images=1)
  want = np.mean(np.argmax(predict(m, vr, d.x_test), -1) == d.y_test)
  assert r["accuracy"]["ranger"] == pytest.approx(want)
  q = r["pairs"][0]
  assert q["diff"] == pytest.approx(r["accuracy"]["relu"] - r["accuracy"]["ranger"])
  assert q["n10"] + q["n01"] > 0
  capsys.readouterr()
  for argv, msg in ((["--checkpoint", base, "--out", str(tmp_path / "x.json")], "at least 2"),
                    (["--checkpoint", base, "--checkpoint", ranger, "--out", out], "exists"),
                    (["--checkpoint", base, "--checkpoint", ranger, "--out",
                      str(tmp_path / "x.txt")], ".json")):
    assert cli.main(["clean", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err
