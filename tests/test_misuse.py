"""Misuse (issue 11): corrupt checkpoints, bad metadata and numbers, user files under --out, bad
data options, and two injector biases. Crashes, resumes and two writers: test_misuse_resume.py.

Every CLI refusal is checked the same way (misuse_helpers.py): exit code 2, exactly one line on
stderr, no traceback, and no file changed (a content hash of the whole directory before and
after).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proact_jax as pj
from proact_jax import cli, methods

from misuse_helpers import (  # tests/misuse_helpers.py
    HARDEN, SWEEP, _refused, _refused_unchanged, _subprocess, _garble, _meta_path, _campaign,
    _copy_ckpt)


@pytest.fixture(scope="module")
def work(misuse_work):  # conftest.py: built once per worker, read only
  return misuse_work


def test_corrupt_checkpoint_is_refused(work, tmp_path, capsys):
  bad = _copy_ckpt(work["base"], tmp_path / "bad")
  _garble(os.path.join(bad, "variables"))
  with pytest.raises(ValueError):
    pj.load_checkpoint(bad)
  _refused_unchanged(capsys, tmp_path, ["sweep", "--checkpoint", bad, *SWEEP, "--out",
                                        tmp_path / "r.jsonl"], bad)
  _refused_unchanged(capsys, tmp_path, ["harden", "--checkpoint", bad, *HARDEN, "--out",
                                        tmp_path / "h"], bad)


def test_edited_metadata_fails_the_content_hash(work, tmp_path, capsys):
  bad = _copy_ckpt(work["base"], tmp_path / "bad")
  meta = json.load(open(_meta_path(bad)))
  meta["mean"] = [m + 0.1 for m in meta["mean"]]
  json.dump(meta, open(_meta_path(bad), "w"))
  line = _refused_unchanged(capsys, tmp_path, ["sweep", "--checkpoint", bad, *SWEEP, "--out",
                                               tmp_path / "r.jsonl"], "hash")
  with pytest.raises(ValueError, match="hash"):
    pj.load_checkpoint(bad)
  assert line


@pytest.mark.parametrize("edit,match,at_load", [
    (lambda m: m.update(num_classes=None), "num_classes", True),
    (lambda m: m.pop("mean"), "mean", False),  # needed to prepare the data, not to load
    (lambda m: m.update(input_shape="8x8"), "input_shape", True),
    (lambda m: m.update(std=[0.0]), "std", True),
    (lambda m: m.update(kind="sigmoid"), "kind", True),
    (lambda m: m.update(model=3), "model", True),
])
def test_malformed_metadata_is_one_line(work, tmp_path, capsys, edit, match, at_load):
  bad = _copy_ckpt(work["base"], tmp_path / "bad")
  meta = json.load(open(_meta_path(bad)))
  for k in [k for k in meta if k.endswith("sha256")]:  # as in a 0.1 checkpoint (no hash)
    meta.pop(k)
  edit(meta)
  json.dump(meta, open(_meta_path(bad), "w"))
  _refused_unchanged(capsys, tmp_path, ["sweep", "--checkpoint", bad, *SWEEP, "--out",
                                        tmp_path / "r.jsonl"], match)
  if at_load:
    with pytest.raises(ValueError, match=match):
      pj.load_checkpoint(bad)


@pytest.mark.parametrize("argv,match", [
    (["sweep", "--trials", str(10 ** 12)], "--trials"),
    (["sweep", "--seed", str(2 ** 70)], "--seed"),
    (["sweep", "--seed", "-1"], "--seed"),
    (["sweep", "--ci-target", "nan"], "--ci-target"),
    (["sweep", "--ci-target", "inf"], "--ci-target"),
    (["sweep", "--bers", "nan"], "--bers"),
    (["sweep", "--bers", "-1e-5"], "--bers"),
    (["sweep", "--images", str(10 ** 12)], "--images"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--warmup-epochs", "-5"], "--warmup-epochs"),
    (["train", "--warmup-epochs", "nan"], "--warmup-epochs"),
    (["train", "--epochs", str(10 ** 30)], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--seed", str(2 ** 70)], "--seed"),
    (["harden", "--method", "proact", "--budget", "nan"], "--budget"),
    (["harden", "--method", "proact", "--budget", "inf"], "--budget"),
    (["harden", "--method", "proact", "--lr", "nan"], "--lr"),
    (["harden", "--method", "fitact", "--epochs", str(10 ** 30)], "--epochs"),
    (["activations", "--ber", "nan"], "--ber"),
    (["activations", "--trials", str(10 ** 12)], "--trials"),
    (["demo", "--trials", str(10 ** 12)], "--trials"),
    (["demo", "--seed", str(2 ** 70)], "--seed"),
    (["sweep", "--trials", "ten"], "--trials"),
])
def test_numeric_options_are_validated(work, tmp_path, capsys, argv, match):
  cmd, rest = argv[0], argv[1:]
  if cmd in ("sweep", "harden", "activations"):
    rest = ["--checkpoint", work["base"], *rest]
  out = tmp_path / ("out.jsonl" if cmd == "sweep" else "out")
  _refused_unchanged(capsys, tmp_path, [cmd, *rest, "--out", out], match)
  assert not os.path.exists(out)


def test_harden_out_holding_user_files_is_refused(work, tmp_path, capsys):
  w = tmp_path / "W"
  w.mkdir()
  (w / "notes.txt").write_text("mine")
  _refused_unchanged(capsys, tmp_path, ["harden", "--checkpoint", work["base"], *HARDEN,
                                        "--out", w], str(w))
  f = tmp_path / "F"
  f.write_text("mine too")
  _refused_unchanged(capsys, tmp_path, ["harden", "--checkpoint", work["base"], *HARDEN,
                                        "--out", f], str(f))
  assert not os.path.exists(str(f) + ".old")


def test_train_out_holding_user_files_or_a_checkpoint_is_refused(work, tmp_path, capsys):
  e = tmp_path / "E"
  (e / "model").mkdir(parents=True)
  (e / "model" / "user.txt").write_text("mine")
  _refused_unchanged(capsys, tmp_path, ["train", "--epochs", "1", "--out", e], str(e))
  exported = _copy_ckpt(work["base"], tmp_path / "exported")
  _refused_unchanged(capsys, tmp_path, ["train", "--epochs", "1", "--out", exported], "checkpoint")


def test_sweep_does_not_overwrite_a_user_summary(work, tmp_path, capsys):
  (tmp_path / "X.summary.md").write_text("my summary")
  _refused_unchanged(capsys, tmp_path, ["sweep", "--checkpoint", work["base"], *SWEEP,
                                        "--out", tmp_path / "X.jsonl"], "X.summary.md")
  (tmp_path / "Y.jsonl").write_text("my notes, not a results file\n")
  _refused_unchanged(capsys, tmp_path, ["sweep", "--checkpoint", work["base"], *SWEEP,
                                        "--out", tmp_path / "Y.jsonl"], "Y.jsonl")


def test_value_indices_are_exactly_uniform_on_a_large_tree():
  """6 M single-bit flips over the 23,272,266 values of AlexNet: the share landing in the first
  55 % of the values is Hypergeometric (tighter than Binomial) around 0.55. A relative excess of
  0.5 % on those values (0.12 points of share; randint's modulo bias was 0.54 %) would sit
  6 sd away, so |z| < 4 (false alarm 6e-5) catches it with probability 0.98."""
  n = 23_272_266
  n1 = int(0.55 * n)
  k, calls = 1_000_000, 6
  v = {"params": {"w": jnp.full((n,), 0.5, jnp.float32)}}
  space = pj.FaultSpace(bit_hi=1)  # one bit per value: every flip changes a distinct value

  @jax.jit
  def counts(key):
    w = pj.flip_n(key, v, k, space=space)[0]["params"]["w"]
    hit = w != 0.5
    return jnp.sum(hit[:n1]), jnp.sum(hit)

  first = total = 0
  for i in range(calls):
    a, b = counts(jax.random.PRNGKey(1000 + i))
    first, total = first + int(a), total + int(b)
  assert total == k * calls
  p = n1 / n
  z = (first - total * p) / math.sqrt(total * p * (1 - p))
  assert abs(z) < 4.0, z  # two-sided p = 6e-5 under uniformity; 0.5 % bias: z ~ 7


FORMATS = ["q15.16", "q7.8", "q3.4", "float32", "bf16", "fp16", "int8"]


def _awkward_tree():
  """Leaves with many different scales, values on int8 rounding ties and near them."""
  rng = np.random.default_rng(3)
  tree = {}
  for i in range(16):
    amax = float(np.exp(rng.uniform(-9, 5)))
    scale = np.float32(amax) / np.float32(127)
    ties = (rng.integers(-127, 127, 3000) + 0.5) * scale
    near = ties * (1 + rng.choice([-1, 1], 3000) * 2.0 ** -23)
    noise = rng.uniform(-amax, amax, 6000)
    x = np.concatenate([[amax], ties, near, noise]).astype(np.float32)
    tree[f"leaf{i}"] = jnp.asarray(x)
  return tree


@pytest.mark.parametrize("name", FORMATS)
def test_encoding_is_identical_eager_and_under_jit(name):
  fmt = pj.get_format(name)
  tree = _awkward_tree()
  jit_encode = jax.jit(fmt.encode)
  jit_quantize = jax.jit(lambda t: pj.quantize_tree(fmt, t))
  eager_q = pj.quantize_tree(fmt, tree)
  jit_q = jit_quantize(tree)
  for key, x in tree.items():
    (be, ae), (bj, aj) = fmt.encode(x), jit_encode(x)
    np.testing.assert_array_equal(np.asarray(ae), np.asarray(aj), err_msg=f"{name} {key} aux")
    np.testing.assert_array_equal(np.asarray(be), np.asarray(bj), err_msg=f"{name} {key}")
    np.testing.assert_array_equal(np.asarray(eager_q[key]), np.asarray(jit_q[key]))
    np.testing.assert_array_equal(np.asarray(fmt.decode(be, ae)),
                                  np.asarray(jax.jit(fmt.decode)(bj, aj)))


def test_clean_reference_is_the_whole_model_in_the_format(work):
  """q3.4 changes the digits model's thresholds: the clean model (a trial at BER 0) must not
  depend on which collections are fault sites, and the clean accuracy is count / n."""
  model, variables, meta = work["model"], work["variables"], work["meta"]
  ds = pj.load_dataset("digits")
  norm = lambda x: pj.normalize(x, np.asarray(meta["mean"]), np.asarray(meta["std"]))
  test = pj.make_eval_set(norm(ds.x_test[:101]), ds.y_test[:101])
  h = methods.ranger(model, variables, norm(ds.x_train[:300]), test)
  flip = jax.jit(pj.flip_bits, static_argnums=(2, 3, 4))  # one program, not op by op
  trees = [flip(jax.random.PRNGKey(0), h.variables, 0.0, "q3.4", pj.FaultSpace(collections=cols))[0]
           for cols in (("params", "thresholds"), ("params",), ("thresholds",))]
  for t in trees[1:]:
    for a, b in zip(jax.tree_util.tree_leaves(trees[0]), jax.tree_util.tree_leaves(t)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  r = _campaign().run_campaign(jax.random.PRNGKey(0), {"ranger": (h.model, h.variables)}, test,
                               [0.0], 1, fmt="q3.4", space=pj.FaultSpace(collections=("params",)),
                               progress=False)
  clean = r.clean["ranger"]["accuracy"]
  assert clean == round(clean * 101) / 101 == r.trials["ranger"][0]["accuracy"][0]
  assert clean == pytest.approx(pj.evaluate(h.model, trees[0], test)[0], abs=1e-6)


def test_garbage_archive_and_missing_data_dir_are_one_line(tmp_path, capsys):
  garbage = tmp_path / "cifar-10-python.tar.gz"
  garbage.write_bytes(bytes(range(256)) * 20)
  _refused_unchanged(capsys, tmp_path, ["train", "--dataset", "cifar10", "--data-dir", garbage,
                                        "--out", tmp_path / "o"], str(garbage))
  p = _subprocess(["train", "--dataset", "cifar10", "--data-dir", tmp_path / "missing",
                   "--out", tmp_path / "o"])
  _refused(p.returncode, p.stderr, "missing")
  assert not (tmp_path / "o").exists()


def test_data_dir_is_refused_for_digits(work, tmp_path, capsys):
  _refused_unchanged(capsys, tmp_path, ["train", "--data-dir", tmp_path, "--out",
                                        tmp_path / "o"], "digits")
  _refused_unchanged(capsys, tmp_path, ["sweep", "--checkpoint", work["base"], *SWEEP,
                                        "--data-dir", tmp_path, "--out", tmp_path / "r.jsonl"],
                     "digits")


def test_argparse_errors_are_one_line(tmp_path, capsys):
  for argv in (["sweep"], ["train", "--epochs"], ["harden", "--method", "nope"]):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    _refused(2, err)


def test_confidence_intervals_stay_inside_0_100(tmp_path):
  """Student-t intervals of mean accuracies are clipped to [0, 1] (README: 'What it
  guarantees'); three trials at 100, 90 and 100 % give [82.3, 111.0] unclipped."""
  path = tmp_path / "r.jsonl"
  rows = [{"type": "header", "config": {"bers": [1e-5], "variants": {"relu": {}}}, "run": {}},
          {"type": "clean", "variant": "relu", "accuracy": 1.0, "loss": 0.0}]
  rows += [{"type": "trial", "variant": "relu", "ber_index": 0, "ber": 1e-5, "trial": t,
            "accuracy": a, "loss": 0.1, "n_flips": 1, "n_flips_weights": 1,
            "n_flips_thresholds": 0} for t, a in enumerate((1.0, 0.9, 1.0))]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  r = _campaign().load_results(str(path))
  for row in r.summary_rows():
    assert 0.0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 1.0, row
  table = r.format_table()
  for c in [c for line in table.splitlines() for c in line.split("|")
            if c.strip().startswith("[")]:
    lo, hi = (float(v) for v in c.strip().strip("[]").split(","))
    assert 0.0 <= lo <= hi <= 100.0, table


def test_library_errors_are_one_line_value_errors(work, tmp_path):
  with pytest.raises(ValueError) as e:
    pj.load_checkpoint(str(tmp_path / "nowhere"))
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError) as e:
    pj.load_dataset("digits", data_dir=str(tmp_path))
  assert "\n" not in str(e.value)
