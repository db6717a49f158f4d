"""What the issue-14 pipeline (experiments/cifar10_alexnet.py) writes into RESULTS besides the
`proact` commands' own outputs: the baseline's learning record and curve, one JSON record per
hardened checkpoint (with the search history of its progress file), and the epochs a hardening
run actually spent (FitAct's budget is ProAct's), and each stage's wall time summed over its
invocations (``run_timed``). Used by that script; imported from the experiments folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time


def save_json(path: str, obj, indent: int = 2) -> None:
  """Writes a record atomically (``core.files.write_bytes_atomic``), keys in insertion order."""
  from proact_jax.core.files import write_bytes_atomic
  write_bytes_atomic(path, json.dumps(obj, indent=indent).encode())


def training_time(run_dir: str) -> float | None:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  rows = [json.loads(l) for l in open(path) if l.strip()]
  return round(sum(r.get("epoch_time", 0.0) for r in rows))


def record_baseline(run_dir: str, results_dir: str, model: str = "alexnet",
                    dataset: str = "cifar10") -> None:
  """Copies the baseline's learning record into RESULTS/baseline and draws its curve.

  Writes ``metrics.jsonl`` (one line per epoch), ``config.json`` (the training configuration),
  ``provenance.json`` (the data digest and the environment: versions, CPU), ``meta.json`` (the
  exported model's metadata: test and best validation accuracy) and ``learning_curve.png``. The
  weights of a model under SMALL_BASELINE bytes (ResNet-20: 1.1 MB) also go to ``model.npz``
  (``proact_jax.export_checkpoint``), from which
  :func:`restore_baseline` rebuilds the checkpoint when WORK is lost; larger ones (AlexNet:
  93 MB) stay in WORK and are retrained (bit for bit). A run restored that way has no learning
  record of its own: the committed one stands.
  """
  from proact_jax.report.plots import plot_learning_curve
  out = os.path.join(results_dir, "baseline")
  if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
    return  # restored from RESULTS/baseline/model.npz
  os.makedirs(out, exist_ok=True)
  ckpt = os.path.join(run_dir, "model")
  if os.path.isdir(os.path.join(ckpt, "variables")) and _nbytes(ckpt) <= SMALL_BASELINE:
    from proact_jax.training.portable import export_checkpoint
    export_checkpoint(ckpt, os.path.join(out, "model.npz"))
  for src in ("metrics.jsonl", "config.json", "provenance.json",
              os.path.join("model", "meta.json")):
    if os.path.exists(os.path.join(run_dir, src)):  # provenance.json: not in proact-jax 0.1 runs
      shutil.copyfile(os.path.join(run_dir, src), os.path.join(out, os.path.basename(src)))
  rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
  meta = json.load(open(os.path.join(out, "meta.json")))
  name = {"alexnet": "AlexNet", "resnet20": "ResNet-20", "vgg16": "VGG-16"}.get(model, model)
  plot_learning_curve(rows, os.path.join(out, "learning_curve.png"),
                      f"{name} / {dataset.upper().replace('CIFAR', 'CIFAR-')}, "
                      f"{len(rows)} epochs: "
                      f"test {100 * meta['accuracy']:.2f} %")


SMALL_BASELINE = 8 << 20  # bytes of variables: committed with the results below this


def _nbytes(checkpoint: str) -> int:
  """Bytes of a checkpoint's variables on disk (orbax files, about the arrays' size)."""
  root = os.path.join(checkpoint, "variables")
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(root) for f in fs)


def restore_baseline(run_dir: str, results_dir: str) -> bool:
  """Rebuilds RUN_DIR/model from RESULTS/baseline/model.npz (its content hash checked); False
  when there is no such file or the checkpoint exists."""
  from proact_jax.training.portable import import_checkpoint
  npz = os.path.join(results_dir, "baseline", "model.npz")
  ckpt = os.path.join(run_dir, "model")
  if not os.path.exists(npz) or os.path.exists(os.path.join(ckpt, "meta.json")):
    return False
  import_checkpoint(npz, ckpt)
  return True


def record_hardened(name: str, out_dir: str, results_dir: str) -> None:
  """Copies a hardened checkpoint's metadata into RESULTS/hardened/NAME.json (test and
  validation accuracy, baseline, thresholds per site, wall time; the weights stay in WORK) with,
  for FitAct and ProAct, the search history from its progress file: per site the
  regularisation weights tried, the epochs each ran (``per_epoch``: each epoch's loss and
  validation accuracy, and for ProAct the guard's drop, disagreements and margin) and which
  was kept. The thresholds
  themselves (and the full meta.json) go to RESULTS/hardened/NAME.thresholds.npz
  (``proact_jax.export_thresholds``; 2 KB to 0.3 MB), from which :func:`restore_hardened` rebuilds
  the checkpoint on its baseline. A checkpoint so restored has no progress file: its existing
  record, of the same content hash, is kept as it is."""
  with open(os.path.join(out_dir, "meta.json")) as f:
    meta = json.load(f)
  record = {k: meta[k] for k in ("method", "model", "dataset", "accuracy", "baseline_accuracy",
                                 "val_accuracy", "seed", "method_seed", "content_sha256")
            if k in meta}  # seed: the baseline's training seed; method_seed: the method's
  record["hardening"] = meta.get("hardening", {})
  hardened = os.path.join(results_dir, "hardened")
  path = os.path.join(hardened, f"{name}.json")
  npz = os.path.join(hardened, f"{name}.thresholds.npz")
  if os.path.isdir(os.path.join(out_dir, "variables")) and not _exported(npz, meta):
    from proact_jax.training.portable import export_thresholds  # loads the whole checkpoint:
    export_thresholds(out_dir, npz)                               # once, not every invocation
  stages = progress_stages(out_dir + ".progress")
  if stages is None and _same_record(path, meta):
    return  # restored from its thresholds file: the record (with its search) stands
  if stages is not None:
    record["search"] = [{"site": st.get("stage"), "kept_gamma": st.get("gamma"),
                         "kept": st.get("kept"),
                         "tried": _tried(st.get("history", []))} for st in stages]
    record["spent_epochs"] = _epochs(stages)
  os.makedirs(hardened, exist_ok=True)
  save_json(path, record, indent=1)


def _tried(history: list) -> list:
  """A stage's tries. ProAct's history holds one dict per regularisation weight tried, its
  epochs under ``epochs``; FitAct's holds its epochs themselves: one try, no weight."""
  rows = [h for h in history if isinstance(h, dict)]
  if rows and not any("epochs" in h for h in rows):
    return [{"gamma": None, "epochs": len(rows), "per_epoch": rows}]
  return [{"gamma": h.get("gamma"), "epochs": len(h.get("epochs", [])),
           "per_epoch": h.get("epochs", [])} for h in rows]


def _exported(npz: str, meta: dict) -> bool:
  """Whether NPZ already holds the checkpoint with this ``meta`` (the same content hash)."""
  from proact_jax.training.portable import read_thresholds
  try:
    return os.path.exists(npz) and read_thresholds(npz)[1].get("content_sha256") == meta.get(
        "content_sha256")
  except ValueError:
    return False


def _same_record(path: str, meta: dict) -> bool:
  """Whether RESULTS/hardened/NAME.json already records the checkpoint with this ``meta``."""
  if "content_sha256" not in meta or not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get("content_sha256") == meta["content_sha256"]


def restore_hardened(name: str, baseline_model: str, out_dir: str, results_dir: str) -> bool:
  """Rebuilds the hardened checkpoint OUT_DIR from RESULTS/hardened/NAME.thresholds.npz and
  the baseline (``proact_jax.import_thresholds``: the same meta.json and variables, its
  content hash checked); False when there is no such file. A WORK directory lost between sessions then costs the
  baseline's retraining only, not every method's hardening again.

  Raises:
    ValueError: the file does not fit this baseline.
  """
  from proact_jax.training.portable import import_thresholds
  npz = os.path.join(results_dir, "hardened", f"{name}.thresholds.npz")
  if not os.path.exists(npz) or os.path.exists(os.path.join(out_dir, "meta.json")):
    return False
  import_thresholds(npz, baseline_model, out_dir)
  return True


def progress_stages(progress_dir: str) -> list | None:
  """The finished stages of a hardening progress file (``progress.npz``, its ``__state__``
  JSON; methods/progress.py), or None without one."""
  import numpy as np
  path = os.path.join(progress_dir, "progress.npz")
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    return json.loads(z["__state__"].tobytes().decode())["stages"]


def spent_epochs(progress_dir: str) -> int | None:
  """Threshold-training epochs actually run (finished stages), from a hardening progress file."""
  stages = progress_stages(progress_dir)
  return None if stages is None else _epochs(stages)


def _epochs(stages: list) -> int:
  return sum(len(h["epochs"]) if isinstance(h, dict) and "epochs" in h else 1
             for s in stages for h in s.get("history", []))


def finished_spent(work: str, method: str, results: str | None = None) -> int | None:
  """Epochs a FINISHED hardening run in WORK/faithful/METHOD spent (None if not finished).

  Without its progress file (a checkpoint restored from its thresholds file), the
  ``spent_epochs`` of RESULTS/hardened/METHOD.json, when that record is of this checkpoint."""
  out = os.path.join(work, "faithful", method)
  meta_path = os.path.join(out, "meta.json")
  if not os.path.exists(meta_path):
    return None
  spent = spent_epochs(out + ".progress")
  if spent is None and results is not None:
    record = os.path.join(results, "hardened", f"{method}.json")
    with open(meta_path) as f:
      meta = json.load(f)
    if _same_record(record, meta):
      with open(record) as f:
        spent = json.load(f).get("spent_epochs")
  return spent


def stopped(script: str, what: str, code: int) -> int:
  """A failed stage's one line (its own error is printed above it, by the command it ran) and
  the exit code to stop with (a signal's negative code becomes 1)."""
  print(f"{script}: {what} stopped with exit code {code} (its error is above); the same "
        "command resumes it", file=sys.stderr)
  return code if code > 0 else 1


def run_timed(name: str, argv: list[str], work: str, poll: float = 30.0) -> tuple[float, int]:
  """Runs a stage's command; returns its wall time summed over every invocation (an
  interrupted stage resumes in a later one) and the number of invocations. The running total
  is kept in WORK/stage_clock.json, rewritten every ``poll`` seconds, so a killed invocation
  loses at most that much of its time. The command gets JAX's persistent compilation cache in
  WORK/xla_cache (unless JAX_COMPILATION_CACHE_DIR is set): the same executables, not
  recompiled when a stage resumes.

  Raises:
    subprocess.CalledProcessError: the command failed (its time so far stays on the clock).
  """
  from proact_jax.core.files import write_json_atomic
  path = os.path.join(work, "stage_clock.json")
  clock = json.load(open(path)) if os.path.exists(path) else {}
  before, calls = clock.get(name, [0.0, 0])
  calls += 1
  t = time.time()

  def save() -> float:
    clock[name] = [before + time.time() - t, calls]
    write_json_atomic(path, clock)
    return clock[name][0]

  env = dict(os.environ)
  if not env.get("JAX_COMPILATION_CACHE_DIR"):  # a resumed stage or a seed repeat recompiles
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(work, "xla_cache")  # nothing (same programs)
  proc = subprocess.Popen(argv, env=env)
  try:
    while True:
      try:
        code = proc.wait(timeout=poll)
        break
      except subprocess.TimeoutExpired:
        save()
  finally:
    if proc.poll() is None:  # interrupted here: stop the stage, keep its time
      proc.terminate()
      proc.wait()
    total = save()
  if code != 0:
    raise subprocess.CalledProcessError(code, argv)
  return total, calls
