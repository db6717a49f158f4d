"""Progress of a hardening run on disk, so an interrupted run resumes where it stopped.

One file, ``directory/progress.npz``, replaced atomically (:func:`files.write_bytes_atomic`) after
each finished stage and, inside a long stage, after each epoch: a crash at any moment leaves the
previous record or the new one, so a resumed run gives the uninterrupted run's result. It holds

* ``__state__``: JSON of the configuration the run was started with, the finished stages with
  their summaries, and the unfinished stage's epoch and history (if any);
* ``thr/<site>``: the threshold tree after the last finished stage;
* ``p_thr/<i>``, ``p_opt/<i>``, ``p_acc/<i>``: the unfinished stage's thresholds, optimiser
  state and accepted thresholds (tree leaves in order).

The configuration includes a digest of the baseline variables (``checkpoint``) and of the
images (``data``): progress started from another checkpoint, other data or other settings is
refused with one line, as are a damaged file and the two-file progress of proact-jax 0.1 (which
recorded neither).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import jax
import numpy as np

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.files import tree_digest, write_bytes_atomic

FILE = "progress.npz"
VERSION = 2


def provenance(frozen: dict, x_profile, x_train, y_train, val_set) -> dict:
  """What a hardening run starts from: digests of the baseline variables and of its images."""
  return {"checkpoint": tree_digest(frozen),
          "data": tree_digest({"x_profile": x_profile, "x_train": x_train, "y_train": y_train,
                               "val_x": val_set.x, "val_y": val_set.y, "val_mask": val_set.mask})}


def open_progress(workdir: str | None, config: dict, frozen: dict, x_profile, x_train, y_train,
                  val_set) -> "Progress":
  """The :class:`Progress` of a run with ``config``, its provenance added (None: in memory)."""
  if workdir is None:
    return Progress(None, config)
  return Progress(workdir, {**config, **provenance(frozen, x_profile, x_train, y_train, val_set)})


class Progress:
  """Per-stage (and per-epoch) progress of a hardening run; ``directory=None`` keeps nothing.

  Raises:
    ValueError: the directory holds progress of another run, of proact-jax 0.1, or a damaged
      file.
  """

  def __init__(self, directory: str | None, config: dict):
    self.dir = directory
    self.config = json.loads(json.dumps(config, default=str))
    self.stages: list = []
    self.flat: dict = {}
    self._partial: dict | None = None
    if directory is None:
      return
    path = os.path.join(directory, FILE)
    if os.path.exists(path):
      self._load(path)
    elif any(os.path.exists(os.path.join(directory, f))
             for f in ("progress.json", "thresholds.npz")):
      raise ValueError(f"{directory} holds progress written by proact-jax 0.1, which does not "
                       "record the checkpoint and data it was started from; remove it to start "
                       "over, or use another --out")
    os.makedirs(directory, exist_ok=True)

  def _load(self, path: str) -> None:
    try:
      with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
      state = json.loads(arrays.pop("__state__").tobytes().decode())
      saved, stages = state["config"], list(state["stages"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f"progress file {path} is damaged ({type(e).__name__}); remove "
                       f"{self.dir} to start over") from None
    if saved != self.config:
      keys = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k))
      what = ("another checkpoint or other data" if {"checkpoint", "data"} & set(keys)
              else "another hardening configuration")
      raise ValueError(f"{self.dir} holds progress started from {what} (differs in: "
                       f"{', '.join(keys[:6])}); use another --out, or remove it to start over")
    self.stages = stages
    self.flat = {k[4:]: v for k, v in arrays.items() if k.startswith("thr/")}
    part = state.get("partial")
    if part is not None:
      get = lambda prefix, n: [arrays[f"{prefix}/{i}"] for i in range(n)]
      self._partial = {**part, "thr": get("p_thr", part["n_thr"]),
                       "opt": get("p_opt", part["n_opt"]),
                       "accepted": get("p_acc", part["n_thr"]) if part["has_accepted"] else None}

  def restore(self, template: dict) -> dict | None:
    """The saved tree shaped like ``template``, or None when no stage is finished."""
    if not self.stages:
      return None
    tree = template
    for site in thr_lib.site_names(template):
      tree = thr_lib.set_site(tree, site, self.flat[site])
    return tree

  def done(self, stage: str) -> dict | None:
    return next((s for s in self.stages if s["stage"] == stage), None)

  def partial(self, stage: str) -> dict | None:
    """The unfinished ``stage``'s last saved epoch (``train_thresholds``' ``resume``)."""
    p = self._partial
    return p if p is not None and p["stage"] == stage else None

  def save_partial(self, stage: str, state: dict) -> None:
    """Records an epoch of the unfinished ``stage`` (``train_thresholds``' ``on_epoch``)."""
    self._partial = {"stage": stage, **state}
    self._write()

  def save(self, stage: str, tree: dict, info: dict) -> None:
    """Records a finished stage and the tree after it."""
    self.stages.append({"stage": stage, **info})
    self.flat = {s: np.asarray(thr_lib.get_site(tree, s)) for s in thr_lib.site_names(tree)}
    self._partial = None
    self._write()

  def _write(self) -> None:
    if self.dir is None:
      return
    arrays = {f"thr/{k}": np.asarray(v) for k, v in self.flat.items()}
    part = None
    if self._partial is not None:
      p = self._partial
      leaves = {"p_thr": p["thr"], "p_opt": p["opt"], "p_acc": p["accepted"] or []}
      for prefix, values in leaves.items():
        arrays.update({f"{prefix}/{i}": np.asarray(a) for i, a in enumerate(values)})
      part = {"stage": p["stage"], "epoch": p["epoch"], "history": p["history"],
              "n_thr": len(p["thr"]), "n_opt": len(p["opt"]),
              "has_accepted": p["accepted"] is not None,
              **({"tried": p["tried"]} if "tried" in p else {})}  # ProAct: refused weights
    state = {"version": VERSION, "config": self.config, "stages": self.stages, "partial": part}
    arrays["__state__"] = np.frombuffer(json.dumps(state, default=_json).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(os.path.join(self.dir, FILE), buf.getvalue())


def _json(o):
  if isinstance(o, (np.integer, np.floating)):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  return str(o)
