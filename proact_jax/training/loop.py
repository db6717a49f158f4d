"""Baseline training (flax imagenet-example shape): create_train_state, train_step, eval_step,
train_and_evaluate(config, workdir).

Progress survives interruption: the full train state is saved with orbax every epoch under
``workdir/state`` and a run restarted with the same config resumes from the latest epoch, giving
the same final weights as an uninterrupted run (shuffling and augmentation are derived from
``(seed, epoch, step)``). The best epoch by validation accuracy is exported as a model checkpoint
(``workdir/model``: ``variables/`` + ``meta.json``); metrics go to ``workdir/metrics.jsonl``.

A run resumes only from what it was started from: ``config.json`` (the configuration) and
``provenance.json`` (a digest of the dataset's arrays) must match; run directories of
proact-jax 0.1 have no ``provenance.json`` and resume on a configuration match.
``provenance.json`` also records the environment (package versions, CPU, devices:
``training/environment.py``); a run resumed in another one is told so on stderr and the new
environment is appended to ``resumed_in``, since XLA's kernels, and so the weights, may differ
between environments. The directory is locked (``flock``) while a run lasts, and the run only
ever writes its own files (config.json, provenance.json, metrics.jsonl, state/, best/, model/).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from tqdm.auto import tqdm

from proact_jax.core.evaluate import evaluate, make_eval_set
from proact_jax.core.files import foreign_entries, lock, tree_digest, unlock, write_bytes_atomic
from proact_jax.data import pipeline
from proact_jax.data import sources as data_lib
from proact_jax.models import create_model
from proact_jax.training import checkpoint as ckpt
from proact_jax.training.environment import differences as env_differences
from proact_jax.training.environment import environment
from proact_jax.version import __version__


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  model: str = "small_cnn"
  dataset: str = "digits"
  data_dir: str | None = None
  download: bool = False
  epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: float = 0.0
  augment: bool = True      # random crop (pad 4, or 1 for inputs <= 8 px) + horizontal flip
  flip: bool = True         # digits: no horizontal flip
  n_val: int = 0            # validation images held out of train for "best" (0: 10 %, <= 5000)
  train_subset: int = 0     # use only this many training images (0: all)
  seed: int = 0


PROVENANCE = "provenance.json"  # {"data": dataset digest, "environment": ..., "resumed_in": [...]}


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def create_train_state(key, model, input_shape, config: TrainConfig, steps_per_epoch: int):
  """Initialises variables and an SGD-momentum optimiser with a (warm-up +) cosine schedule."""
  variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
  total = max(1, config.epochs * steps_per_epoch)
  warm = int(config.warmup_epochs * steps_per_epoch)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0 if warm else config.learning_rate, config.learning_rate, max(warm, 0), total)
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(schedule, momentum=config.momentum, nesterov=True))
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats"))


def _variables(state):
  v = {"params": state.params}
  if state.batch_stats is not None:
    v["batch_stats"] = state.batch_stats
  return v


def train_step(state: TrainState, x, y, key, pad: int, flip: bool, augment: bool):
  """One SGD step with on-the-fly augmentation; returns (state, loss, accuracy)."""
  if augment:
    x = pipeline.augment(key, x, pad=pad, flip=flip)
  has_bn = state.batch_stats is not None

  def loss_fn(params):
    v = {"params": params, **({"batch_stats": state.batch_stats} if has_bn else {})}
    if has_bn:
      logits, new = state.apply_fn(v, x, train=True, mutable=["batch_stats"])
    else:
      logits, new = state.apply_fn(v, x, train=True), {}
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, new)

  (loss, (logits, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  if has_bn:
    state = state.replace(batch_stats=new["batch_stats"])
  return state, loss, jnp.mean(jnp.argmax(logits, -1) == y)


def eval_step(state: TrainState, x, y):
  logits = state.apply_fn(_variables(state), x, train=False)
  return jnp.sum(jnp.argmax(logits, -1) == y)


def prepare_data(config: TrainConfig):
  """Loads the dataset, normalises it and splits off the validation images (all seeded)."""
  ds = data_lib.load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                             seed=config.seed)
  mean, std = pipeline.channel_stats(ds.x_train)
  x_tr, y_tr = ds.x_train, ds.y_train
  n_val = config.n_val or min(5000, len(x_tr) // 10)
  x_tr, y_tr, x_val, y_val = pipeline.split_train_val(x_tr, y_tr, n_val, config.seed)
  if config.train_subset:
    x_tr, y_tr = pipeline.subset(x_tr, y_tr, config.train_subset, config.seed)
  norm = lambda a: pipeline.normalize(a, mean, std)
  return ds, (mean, std), (norm(x_tr), y_tr), (norm(x_val), y_val), (norm(ds.x_test), ds.y_test)


def _check_config(config: TrainConfig):
  def number(name, v, lo, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
        v <= lo if lo_open else v < lo):
      raise ValueError(f"{name} must be a finite number {'>' if lo_open else '>='} {lo}, "
                       f"got {v!r}")

  for name, lo in (("epochs", 1), ("batch_size", 1), ("train_subset", 0), ("n_val", 0),
                   ("seed", 0)):
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      raise ValueError(f"{name.replace('_', ' ')} must be an integer >= {lo}, got {v!r}")
  number("learning rate", config.learning_rate, 0.0, lo_open=True)
  number("weight decay", config.weight_decay, 0.0)
  number("warm-up epochs", config.warmup_epochs, 0.0)
  number("momentum", config.momentum, 0.0)


def _check_workdir(workdir: str) -> None:
  """A run directory may be new, empty, or a run (config.json) whose ``best/`` and ``model/``
  hold only checkpoints: nothing the program did not write is ever replaced."""
  if not os.path.lexists(workdir):
    return
  if not os.path.isdir(workdir):
    raise ValueError(f"{workdir} exists and is not a directory")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    if os.path.isfile(os.path.join(workdir, ckpt.META)):
      raise ValueError(f"{workdir} is a model checkpoint, not a training run directory; pass a "
                       "new directory (the run writes its checkpoint to DIR/model)")
    foreign = foreign_entries(workdir)
    if foreign:
      raise ValueError(f"{workdir} is not empty and holds no training run ({', '.join(foreign[:3])}"
                       "); pass a new or empty directory")
    return
  for sub in ("best", "model"):
    d = os.path.join(workdir, sub)
    if os.path.lexists(d) and not ckpt.is_checkpoint(d):
      raise ValueError(f"{d} holds files that are not a proact checkpoint; the run would "
                       "replace it: move them away or use another --out")


def _check_resumable(workdir: str, cfg: dict, data_digest: str) -> None:
  """Refuses a run directory started with another configuration or other data."""
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.exists(cfg_path):
    return
  try:
    with open(cfg_path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{cfg_path} is damaged ({e}); use another --out") from None
  if not isinstance(old, dict) or old != json.loads(json.dumps(cfg)):
    diff = sorted(k for k in cfg if not isinstance(old, dict) or old.get(k) != cfg[k])
    raise ValueError(f"{workdir} holds a run with a different configuration ({', '.join(diff)});"
                     " use another --out or the same settings to resume")
  prov_path = os.path.join(workdir, PROVENANCE)
  if os.path.exists(prov_path):  # absent in runs started by proact-jax 0.1: config match only
    try:
      with open(prov_path) as f:
        recorded = json.load(f).get("data")
    except (OSError, ValueError, AttributeError) as e:
      raise ValueError(f"{prov_path} is damaged ({e}); use another --out") from None
    if recorded != data_digest:
      raise ValueError(f"{workdir} holds a run started on other data (the dataset's content "
                       "differs from the one it was started with); use another --out")


def _record_environment(path: str, data_digest: str) -> None:
  """Writes provenance.json for a new run; for a resumed run started in another environment
  (package versions, CPU, devices) warns that the result may differ from an uninterrupted run's
  and appends the new environment to ``resumed_in``."""
  now = environment()
  if not os.path.exists(path):
    ckpt.write_json_atomic(path, {"data": data_digest, "environment": now})
    return
  with open(path) as f:
    prov = json.load(f)
  resumed = prov.get("resumed_in", [])
  if any(not env_differences(e, now) for e in [prov.get("environment", {}), *resumed] if e):
    return
  if "environment" in prov:  # (runs started before environments were recorded: just record)
    changed = "; ".join(env_differences(prov["environment"], now))
    print(f"warning: {os.path.dirname(path)} was started in another environment ({changed}); "
          "the resumed run may not equal an uninterrupted one bit for bit", file=sys.stderr)
  ckpt.write_json_atomic(path, {**prov, "resumed_in": [*resumed, now]})


def train_and_evaluate(config: TrainConfig, workdir: str, progress: bool = True,
                       stop_after: int | None = None) -> dict | None:
  """Trains, checkpoints every epoch, resumes from ``workdir`` if a run was interrupted.

  ``workdir`` must be new, empty, or a run of the same configuration on the same data
  (``provenance.json`` records a digest of the dataset); it is locked while the run lasts. A
  non-finite training loss stops the run with a ValueError before anything of that epoch is
  written, so the last good state is kept.

  Args:
    stop_after: stop (as if interrupted) after this many epochs of this call; None returned.

  Returns:
    The metadata written next to the exported best model (``workdir/model``).
  """
  _check_config(config)
  workdir = os.path.abspath(workdir)
  _check_workdir(workdir)
  ds, (mean, std), (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = prepare_data(config)
  model = create_model(config.model, ds.num_classes)
  data_digest = tree_digest({"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test,
                             "y_test": ds.y_test, "classes": np.asarray(ds.class_names)})
  os.makedirs(workdir, exist_ok=True)
  held = lock(workdir)
  try:
    return _train(config, workdir, progress, stop_after, ds, mean, std, x_tr, y_tr, x_val, y_val,
                  x_te, y_te, model, data_digest)
  finally:
    unlock(held)


def _train(config, workdir, progress, stop_after, ds, mean, std, x_tr, y_tr, x_val, y_val, x_te,
           y_te, model, data_digest):
  cfg = dataclasses.asdict(config)
  _check_workdir(workdir)  # again, under the lock
  _check_resumable(workdir, cfg, data_digest)
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.exists(cfg_path):
    ckpt.write_json_atomic(cfg_path, cfg)
  _record_environment(os.path.join(workdir, PROVENANCE), data_digest)

  steps = pipeline.num_batches(len(x_tr), config.batch_size, drop_remainder=True)
  if steps == 0:
    raise ValueError(f"batch size {config.batch_size} exceeds the {len(x_tr)} training images")
  key = jax.random.PRNGKey(config.seed)
  init_key, aug_key = jax.random.split(key)
  state = create_train_state(init_key, model, ds.input_shape, config, steps)
  pad = 4 if ds.input_shape[0] > 8 else 1
  step_fn = jax.jit(train_step, static_argnums=(4, 5, 6), donate_argnums=0)
  val_set = make_eval_set(x_val, y_val)

  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  start_epoch, best = 0, {"val_accuracy": -1.0, "epoch": -1}
  with ocp.CheckpointManager(os.path.join(workdir, "state"), options=options) as mngr:
    latest = mngr.latest_step()
    if latest is not None:
      restored = mngr.restore(latest, args=ocp.args.StandardRestore(
          {"state": state, "best": {"val_accuracy": 0.0, "epoch": 0}}))
      state, best = restored["state"], jax.tree_util.tree_map(float, restored["best"])
      start_epoch = latest + 1
    _truncate_metrics(metrics_path, start_epoch)  # rows of epochs not checkpointed before a crash
    if latest is not None:
      if progress:
        print(f"resuming from epoch {start_epoch} of {config.epochs} in {workdir}")
    t0 = time.time()
    for epoch in range(start_epoch, config.epochs):
      t_epoch = time.time()
      if stop_after is not None and epoch - start_epoch >= stop_after:
        return None
      bar = tqdm(pipeline.iterate_batches(x_tr, y_tr, config.batch_size, seed=config.seed * 1000
                                          + epoch, shuffle=True, drop_remainder=True),
                 total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                 leave=False)
      losses, accs = [], []
      for i, (xb, yb) in enumerate(bar):
        k = jax.random.fold_in(aug_key, epoch * steps + i)
        state, loss, acc = step_fn(state, jnp.asarray(xb), jnp.asarray(yb), k, pad,
                                   config.flip, config.augment)
        losses.append(loss)
        accs.append(acc)
        if i % 20 == 0:
          bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(acc):.3f}")
      train_loss = float(np.mean(losses))
      if not math.isfinite(train_loss) or not _finite(state.params):
        kept = (f"the last good state (epoch {epoch}) is kept in {workdir}" if epoch else
                "nothing was checkpointed")
        raise ValueError(f"training stopped in epoch {epoch + 1}: the loss ({train_loss}) or the "
                         f"weights are not finite; {kept}; lower --lr or add --warmup-epochs")
      val_acc, val_loss = evaluate(model, _variables(state), val_set)
      row = {"epoch": epoch, "train_loss": train_loss,
             "train_accuracy": float(np.mean(accs)), "val_accuracy": val_acc,
             "val_loss": val_loss, "wall_time": time.time() - t0,
             "epoch_time": time.time() - t_epoch}
      if val_acc >= best["val_accuracy"]:
        best = {"val_accuracy": val_acc, "epoch": float(epoch)}
        ckpt.save_checkpoint(os.path.join(workdir, "best"), _variables(state),
                             {"epoch": epoch, "val_accuracy": val_acc}, overwrite=True)
      with open(metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
      ckpt.check_room(os.path.join(workdir, "state"), (state.params, state.opt_state,
                                                      state.batch_stats))
      with ckpt.orbax_errors(os.path.join(workdir, "state")):
        mngr.save(epoch, args=ocp.args.StandardSave({"state": state, "best": best}))
        mngr.wait_until_finished()
      if progress:
        print(f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f} "
              f"train acc {row['train_accuracy']:.4f} val acc {val_acc:.4f}")

  variables = ckpt.load_variables(os.path.join(workdir, "best"))
  test_acc, test_loss = evaluate(model, variables, x_te, y_te)
  meta = {"model": config.model, "dataset": ds.name, "num_classes": ds.num_classes,
          "class_names": list(ds.class_names), "input_shape": list(ds.input_shape),
          "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(),
          "kind": "relu", "granularity": "layer", "accuracy": test_acc, "test_loss": test_loss,
          "val_accuracy": best["val_accuracy"], "best_epoch": int(best["epoch"]),
          "epochs": config.epochs, "seed": config.seed, "data_dir": config.data_dir,
          "n_val": int(len(x_val)), "version": __version__, "config": cfg}
  ckpt.save_checkpoint(os.path.join(workdir, "model"), variables, meta, overwrite=True)
  return meta


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(tree))


def _truncate_metrics(path: str, n_epochs: int):
  """Drops metric rows of epochs that were logged but not checkpointed before a crash (and a
  torn last line)."""
  if not os.path.exists(path):
    return
  with open(path, "rb") as f:
    data = f.read()
  rows = []
  for line in data[:data.rfind(b"\n") + 1].decode(errors="replace").splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] < n_epochs:
      rows.append(row)
  text = "".join(json.dumps(r) + "\n" for r in rows).encode()
  if text != data:
    write_bytes_atomic(path, text)
