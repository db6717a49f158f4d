"""Misuse (issue 11), the resuming half: stale or damaged progress, crashes at any write, a NaN
loss, a file-size limit, torn results files and two writers. Each resumed run must give the
uninterrupted run's result; each refusal is one line (misuse_helpers.py)."""

import fcntl
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proact_jax as pj
from proact_jax import cli, methods

from misuse_helpers import (  # tests/misuse_helpers.py
    HARDEN, SWEEP, _cli, _refused, _refused_unchanged, _subprocess, _module_with)


@pytest.fixture(scope="module")
def work(misuse_work):  # conftest.py: built once per worker, read only
  return misuse_work


def test_harden_refuses_stale_or_damaged_progress(work, tmp_path, capsys):
  out = tmp_path / "h"
  rc, _, err = _cli(capsys, "harden", "--checkpoint", work["base"], *HARDEN, "--out", out)
  assert rc == 0, err
  shutil.rmtree(out)  # as if killed after the last site, before the checkpoint was written
  _refused_unchanged(capsys, tmp_path, ["harden", "--checkpoint", work["other"], *HARDEN,
                                        "--out", out], "another")
  prog = str(out) + ".progress"
  for f in os.listdir(prog):  # a damaged progress file (not something a crash leaves)
    if f.endswith(".npz"):
      with open(os.path.join(prog, f), "r+b") as fh:
        fh.truncate(os.path.getsize(os.path.join(prog, f)) // 2)
  _refused_unchanged(capsys, tmp_path, ["harden", "--checkpoint", work["base"], *HARDEN,
                                        "--out", out], prog)


def _image_folder(root, n_train=24, n_test=6):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("test", n_test)):
    for c in ("a", "b"):
      d = root / split / c
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")


def _train_argv(folder, out):
  return ["train", "--dataset", "folder", "--data-dir", folder, "--epochs", "2", "--batch-size",
          "8", "--quiet", "--out", out]


def test_train_resume_checks_data_and_tolerates_a_crash_in_the_first_checkpoint(
    tmp_path, capsys, monkeypatch):
  """Killed while writing the first checkpoint, then: other data is refused; the run directory
  as proact-jax 0.1 left it (no provenance.json) resumes on a configuration match, logging epoch
  0 once; another configuration is refused."""
  import orbax.checkpoint as ocp
  from PIL import Image
  folder, out = tmp_path / "imgs", tmp_path / "run"
  _image_folder(folder)

  def killed(self, *a, **k):
    raise KeyboardInterrupt

  monkeypatch.setattr(ocp.CheckpointManager, "save", killed)
  assert _cli(capsys, *_train_argv(folder, out))[0] == 130
  monkeypatch.undo()
  extra = folder / "train" / "a" / "new.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(extra)
  _refused_unchanged(capsys, out, _train_argv(folder, out), "other data")
  extra.unlink()
  for name in os.listdir(out):  # what a 0.1 run directory holds
    if name not in ("config.json", "state", "metrics.jsonl", "best"):
      p = out / name
      shutil.rmtree(p) if p.is_dir() else p.unlink()
  rc, _, err = _cli(capsys, *_train_argv(folder, out))
  assert rc == 0, err
  rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [0, 1]
  argv = _train_argv(folder, out)
  argv[argv.index("--epochs") + 1] = "3"
  _refused_unchanged(capsys, out, argv, "configuration")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                    monkeypatch):
  """The loss and weights become NaN from epoch 1 on: one line, exit 2, epoch 0's state, best
  checkpoint and metrics kept."""
  cli.build_parser()  # imports the training module
  train = _module_with("train_step", "train_and_evaluate")
  real = train.train_step
  steps_per_epoch = 10  # digits: 1,294 training images // 128

  def poisoned(state, *a):
    state, loss, acc = real(state, *a)
    bad = state.step > steps_per_epoch
    params = jax.tree_util.tree_map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
    return state.replace(params=params), jnp.where(bad, jnp.nan, loss), acc

  monkeypatch.setattr(train, "train_step", poisoned)
  out = tmp_path / "run"
  rc, _, err = _cli(capsys, "train", "--epochs", "2", "--quiet", "--out", out)
  _refused(rc, err, "not finite")
  monkeypatch.undo()
  metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
  assert [r["epoch"] for r in metrics] == [0]
  # the last good state resumes (here: with the loss no longer poisoned)
  rc, stdout, err = _cli(capsys, "train", "--epochs", "2", "--out", out)
  assert rc == 0 and "resuming from epoch 1" in stdout, err
  metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
  assert [r["epoch"] for r in metrics] == [0, 1]


def test_file_size_limit_is_one_line_and_leaves_no_torn_line(work, tmp_path):
  """EFBIG (a file-size limit; ENOSPC takes the same path) during sweep and train."""
  out = tmp_path / "r.jsonl"
  p = _subprocess(["sweep", "--checkpoint", work["base"], "--bers", "1e-4", "--trials", "12",
                   "--chunk", "1", "--images", "40", "--quiet", "--out", out], fsize=2200)
  _refused(p.returncode, p.stderr, str(out), "File too large")
  data = open(out, "rb").read()  # the header and whole rows (about 1.3 KB + 130 B each)
  assert data.endswith(b"\n") and 1000 < len(data) <= 2200
  p = _subprocess(["train", "--epochs", "1", "--quiet", "--out", tmp_path / "run"],
                  fsize=20000)
  _refused(p.returncode, p.stderr)


def _harden_proact(work, workdir):
  model, variables, meta = work["model"], work["variables"], work["meta"]
  ds = pj.load_dataset("digits")
  x = pj.normalize(ds.x_train[:256], np.asarray(meta["mean"]), np.asarray(meta["std"]))
  val = pj.make_eval_set(x[:100], ds.y_train[:100])
  cfg = methods.ProActConfig(last_epochs=1, layer_epochs=1, budget=1.0, batch_size=64,
                             gammas=(1e-3,))
  return methods.proact(model, variables, x[:100], x, ds.y_train[:256], val, cfg,
                        workdir=workdir, progress=False)


def test_harden_progress_survives_a_crash_between_writes(work, tmp_path, monkeypatch):
  """Killed at the 2nd or 4th file rename of a run (0.1 wrote two files per stage and, killed
  between the second stage's two, resumed with a different threshold): the resumed run gives
  the uninterrupted run's result."""
  ref = _harden_proact(work, str(tmp_path / "ref"))
  real_replace = os.replace
  for crash_at in (2, 4):
    calls = {"n": 0}

    def crashing(*a, **k):
      calls["n"] += 1
      if calls["n"] == crash_at:
        raise KeyboardInterrupt
      return real_replace(*a, **k)

    d = str(tmp_path / f"crash{crash_at}")
    monkeypatch.setattr(os, "replace", crashing)
    try:
      _harden_proact(work, d)
      continue  # fewer renames than that: nothing to resume
    except KeyboardInterrupt:
      pass
    finally:
      monkeypatch.undo()
    got = _harden_proact(work, d)
    for a, b in zip(jax.tree_util.tree_leaves(ref.variables),
                    jax.tree_util.tree_leaves(got.variables)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_results_file_resumes_from_any_prefix(work, tmp_path, capsys):
  """Empty file, torn header, torn trial line: all resume to the uninterrupted rows."""
  argv = ["sweep", "--checkpoint", work["base"], *SWEEP]
  ref = tmp_path / "ref.jsonl"
  assert _cli(capsys, *argv, "--out", ref)[0] == 0
  data = open(ref, "rb").read()
  header_end = data.index(b"\n") + 1
  for name, prefix in (("empty", b""), ("torn_header", data[:header_end // 2]),
                       ("torn_row", data[:-7])):
    out = tmp_path / f"{name}.jsonl"
    out.write_bytes(prefix)
    rc, _, err = _cli(capsys, *argv, "--out", out)
    assert rc == 0, (name, err)
    assert _rows(out) == _rows(ref), name


def _rows(path):
  rows = [json.loads(line) for line in open(path)]
  return sorted((json.dumps(r, sort_keys=True) for r in rows if r["type"] != "header"))


def test_fitact_keeps_progress_every_epoch(work, tmp_path, monkeypatch):
  model, variables, meta = work["model"], work["variables"], work["meta"]
  ds = pj.load_dataset("digits")
  x = pj.normalize(ds.x_train[:256], np.asarray(meta["mean"]), np.asarray(meta["std"]))
  val = pj.make_eval_set(x[:100], ds.y_train[:100])
  cfg = methods.FitActConfig(epochs=3, batch_size=64, learning_rate=0.01)
  run = lambda d: methods.fitact(model, variables, x[:100], x, ds.y_train[:256], val, cfg,
                                 workdir=d, progress=False)
  ref = run(str(tmp_path / "ref"))
  real = pj.evaluate
  targets = [m for n, m in list(sys.modules.items()) if n.startswith("proact_jax.methods")
             and getattr(m, "evaluate", None) is real]
  seen = {"n": 0, "stop": 3}

  def evaluate(*a, **k):
    seen["n"] += 1
    if seen["n"] == seen["stop"]:
      raise KeyboardInterrupt  # during the third epoch's validation: two epochs are done
    return real(*a, **k)

  for m in targets:
    monkeypatch.setattr(m, "evaluate", evaluate)
  d = str(tmp_path / "cut")
  with pytest.raises(KeyboardInterrupt):
    run(d)
  seen.update(n=0, stop=-1)
  got = run(d)
  assert seen["n"] <= 3  # one epoch's validation (+ the two final accuracies), not three
  for a, b in zip(jax.tree_util.tree_leaves(ref.variables),
                  jax.tree_util.tree_leaves(got.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_proact_keeps_progress_every_epoch(work, tmp_path, monkeypatch):
  """Killed right after any epoch's write (the last epoch of a refused regularisation weight
  included), ProAct resumes there: the uninterrupted run's thresholds, no epoch trained twice."""
  from proact_jax.methods.progress import Progress
  model, variables, meta = work["model"], work["variables"], work["meta"]
  ds = pj.load_dataset("digits")
  x = pj.normalize(ds.x_train[:256], np.asarray(meta["mean"]), np.asarray(meta["std"]))
  val = pj.make_eval_set(x[:100], ds.y_train[:100])
  # gamma 10 pulls the thresholds down hard: refused by the 1 % guard at the first site (act2),
  # which then trains 2 epochs with 1e-3 (the others keep gamma 10: this weak model loses little)
  cfg = methods.ProActConfig(last_epochs=2, layer_epochs=2, budget=0.01, batch_size=64,
                             gammas=(10.0, 1e-3), target=None)
  run = lambda d: methods.proact(model, variables, x[:100], x, ds.y_train[:256], val, cfg,
                                 workdir=d, progress=False)
  real = Progress.save_partial
  calls = {"n": 0, "stop": -1}

  def save_partial(self, stage, state):
    real(self, stage, state)
    calls["n"] += 1
    if calls["n"] == calls["stop"]:
      raise KeyboardInterrupt  # killed right after the write

  monkeypatch.setattr(Progress, "save_partial", save_partial)
  ref = run(str(tmp_path / "ref"))
  total = calls["n"]
  with np.load(str(tmp_path / "ref" / "progress.npz")) as z:
    stages = json.loads(z["__state__"].tobytes().decode())["stages"]
  assert [h["gamma"] for h in stages[0]["history"]] == [10.0, 1e-3], stages[0]["history"]
  assert total == sum(len(h["epochs"]) for s in stages for h in s["history"])
  for stop in (2, 3, total - 1):  # after gamma 10's last epoch, in 1e-3's, in the last site
    d = str(tmp_path / f"cut{stop}")
    calls.update(n=0, stop=stop)
    with pytest.raises(KeyboardInterrupt):
      run(d)
    calls.update(n=0, stop=-1)
    got = run(d)
    assert calls["n"] == total - stop, stop  # the epochs not yet done, each once
    for a, b in zip(jax.tree_util.tree_leaves(ref.variables),
                    jax.tree_util.tree_leaves(got.variables)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_out_dev_stdout_does_not_hang(work):
  p = subprocess.Popen([sys.executable, "-m", "proact_jax.cli", "sweep", "--checkpoint",
                        work["base"], *SWEEP, "--out", "/dev/stdout"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    out, err = p.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    p.kill()
    pytest.fail("proact sweep --out /dev/stdout | cat hangs")
  _refused(p.returncode, err, "/dev/stdout")


def _hold(path):
  fd = os.open(path, os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  return fd


def test_second_writer_is_refused(work, tmp_path, capsys):
  out = tmp_path / "r.jsonl"
  argv = ["sweep", "--checkpoint", work["base"], *SWEEP, "--out", out]
  assert _cli(capsys, *argv)[0] == 0
  fd = _hold(out)  # another proact sweep is writing it
  try:
    _refused_unchanged(capsys, tmp_path, argv, "another proact process")
  finally:
    os.close(fd)
  run = tmp_path / "run"
  run.mkdir()
  fd = _hold(run)  # another proact train is running in it
  try:
    _refused_unchanged(capsys, tmp_path, ["train", "--epochs", "1", "--out", run],
                       "another proact process")
  finally:
    os.close(fd)
