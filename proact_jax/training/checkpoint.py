"""Model checkpoints: all variable collections with orbax, plus a small ``meta.json``.

A checkpoint directory holds ``variables/`` (orbax; ``params``, ``batch_stats``, ``thresholds``)
and ``meta.json`` (model name, number of classes, input shape, normalisation, activation kind
and granularity, accuracy, seed, package version, ...). Writes go to a temporary sibling first
and are renamed into place, so a crash never leaves a half-written checkpoint; an existing
checkpoint is only replaced when ``overwrite=True``, and nothing else ever is (a directory
holding other files, or a file, is refused).

Integrity: ``meta.json`` carries ``content_sha256``, the SHA-256 of the variables' digest
(:func:`files.tree_digest`: leaf paths, dtypes, shapes, bytes) and of the rest of the metadata
as canonical JSON. Loading recomputes it and refuses a mismatch (a damaged or edited
checkpoint) with one line. Checkpoints written before the hash existed (proact-jax 0.1) have no
``content_sha256`` and are loaded unchecked. The metadata is validated against a schema
(:func:`validate_meta`) when saved and loaded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import resource
import shutil
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from proact_jax.core.activations import GRANULARITIES, KINDS
from proact_jax.core.files import (TMP_PREFIX, foreign_entries, json_default, json_digest,
                                   tree_digest, write_json_atomic)

META = "meta.json"
VARIABLES = "variables"
HASH = "content_sha256"
__all__ = ["HASH", "META", "VARIABLES", "content_hash", "is_checkpoint", "load_checkpoint",
           "load_meta", "load_variables", "check_room", "orbax_errors", "save_checkpoint", "validate_meta",
           "write_json_atomic"]


def content_hash(variables, meta: dict) -> str:
  """SHA-256 of the variables and the metadata (without its own ``content_sha256``)."""
  rest = json.loads(json.dumps({k: v for k, v in meta.items() if k != HASH},
                               default=json_default))
  return json_digest({"variables": tree_digest(variables), "meta": rest})


def is_checkpoint(directory: str) -> bool:
  """Whether ``directory`` holds a checkpoint and nothing else."""
  return (os.path.isdir(directory) and os.path.isfile(os.path.join(directory, META))
          and not foreign_entries(directory, (META, VARIABLES)))


def save_checkpoint(directory: str, variables, meta: dict, overwrite: bool = False) -> str:
  """Saves ``variables`` and ``meta`` (with its content hash added) to ``directory``
  atomically; returns the absolute path.

  ``directory`` may be absent or an empty directory; with ``overwrite=True`` it may also be a
  checkpoint (replaced). Anything else is refused.
  """
  directory = os.path.abspath(directory)
  validate_meta(meta, directory)
  replace = os.path.isdir(directory) and bool(os.listdir(directory))
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise ValueError(f"{directory} exists and is not a directory (refusing to replace it)")
  if replace and not overwrite:
    raise ValueError(f"checkpoint directory {directory} already exists (refusing to overwrite)")
  if replace and not is_checkpoint(directory):
    raise ValueError(f"{directory} holds files that are not a proact checkpoint "
                     f"({', '.join(foreign_entries(directory, (META, VARIABLES))[:3])}); "
                     "refusing to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f"{TMP_PREFIX}{os.path.basename(directory)}-")
  try:
    tree = jax.tree_util.tree_map(np.asarray, dict(variables))
    meta = {**meta, HASH: content_hash(tree, meta)}
    check_room(directory, tree)
    with orbax_errors(directory), ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES), tree)
      ckptr.wait_until_finished()
    write_json_atomic(os.path.join(tmp, META), meta)
    if os.path.exists(directory):
      old = tempfile.mkdtemp(dir=parent, prefix=f"{TMP_PREFIX}{os.path.basename(directory)}-")
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def check_room(where: str, tree) -> None:
  """Raises the ``OSError`` a write of ``tree`` under ``where`` would meet (no space left, a
  file-size limit) before orbax starts: its background threads fail noisily mid-write."""
  need = sum(int(np.asarray(a).nbytes) for a in jax.tree_util.tree_leaves(tree)) + (1 << 16)
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
  if limit != resource.RLIM_INFINITY and limit < need:
    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), where)
  d = where
  while not os.path.exists(d):
    d = os.path.dirname(d)
  st = os.statvfs(d)
  if st.f_bavail * st.f_frsize < need:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)


@contextlib.contextmanager
def orbax_errors(where: str):
  """Re-raises orbax/tensorstore write failures that carry an OS error (a full disk, a
  file-size limit) as that ``OSError`` on ``where``, so the CLI prints it in one line."""
  try:
    yield
  except OSError:
    raise
  except Exception as e:  # tensorstore reports e.g. "... [os_error_code='28']" in a ValueError
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code is None:
      raise
    n = int(code.group(1))
    raise OSError(n, os.strerror(n), where) from None


def load_meta(directory: str) -> dict:
  path = os.path.join(directory, META)
  if not os.path.isfile(path):
    raise ValueError(f"{directory} is not a proact checkpoint (no {META})")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(meta, dict):
    raise ValueError(f"{path} is not a JSON object")
  validate_meta(meta, directory)
  return meta


def load_variables(directory: str, meta: dict | None = None) -> dict:
  """The variables of a checkpoint, verified against its content hash (when it has one)."""
  path = os.path.join(os.path.abspath(directory), VARIABLES)
  if not os.path.isdir(path):
    raise ValueError(f"{directory} is not a proact checkpoint (no {VARIABLES}/)")
  if meta is None and os.path.isfile(os.path.join(directory, META)):
    meta = load_meta(directory)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.restore(path)
  except Exception as e:  # orbax/tensorstore raise many types on damaged files
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise ValueError(f"checkpoint {directory} is damaged: its variables cannot be read "
                     f"({type(e).__name__}: {first})") from None
  tree = dict(tree)
  if meta is not None and HASH in meta and content_hash(tree, meta) != meta[HASH]:
    raise ValueError(f"checkpoint {directory} is damaged or was edited: its content hash does "
                     "not match its variables and meta.json")
  return jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a), tree)


# ----------------------------------------------------------------------------- metadata schema

def _int(lo):
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
          f"an integer >= {lo}")


def _num(positive=False):
  def ok(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v > 0 if positive else True))
  return ok, "a finite number" + (" > 0" if positive else "")


def _numbers(positive=False):
  one, what = _num(positive)
  return (lambda v: isinstance(v, list) and len(v) > 0 and all(one(x) for x in v),
          f"a non-empty list of {what.replace('a finite number', 'finite numbers')}")


_SCHEMA = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "num_classes": _int(1),
    "input_shape": (lambda v: isinstance(v, list) and len(v) == 3
                    and all(_int(1)[0](x) for x in v), "[height, width, channels]"),
    "dataset": (lambda v: isinstance(v, str) and bool(v), "a dataset name"),
    "mean": _numbers(),
    "std": _numbers(positive=True),
    "n_val": _int(0),
    "kind": (lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
    "granularity": (lambda v: v in GRANULARITIES, f"one of {', '.join(GRANULARITIES)}"),
    "k": _num(positive=True),
    "data_dir": (lambda v: v is None or isinstance(v, str), "a path or null"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    HASH: (lambda v: isinstance(v, str), "a hex string"),
}


def validate_meta(meta: dict, where: str = "checkpoint", require=()) -> dict:
  """Checks the types and ranges of the known metadata keys present (and that ``require``d
  ones are); raises a one-line ValueError naming the key."""
  if not isinstance(meta, dict):
    raise ValueError(f"{where}: the metadata is not a JSON object")
  for key in require:
    if key not in meta:
      raise ValueError(f"{where}/{META} lacks {key!r}")
  for key, (ok, what) in _SCHEMA.items():
    if key in meta and not ok(meta[key]):
      raise ValueError(f"{where}/{META}: {key!r} must be {what}, got {str(meta[key])[:60]!r}")
  shape = meta.get("input_shape")
  for key in ("mean", "std"):
    if key in meta and shape is not None and len(meta[key]) not in (1, shape[-1]):
      raise ValueError(f"{where}/{META}: {key!r} has {len(meta[key])} values for "
                       f"{shape[-1]} channels")
  return meta


def load_checkpoint(directory: str):
  """Returns ``(model, variables, meta)``; the model is rebuilt from the registry by name."""
  from proact_jax.models import create_model
  meta = validate_meta(load_meta(directory), directory, require=("model", "num_classes"))
  model = create_model(meta["model"], meta["num_classes"], kind=meta.get("kind", "relu"),
                       granularity=meta.get("granularity", "layer"), k=meta.get("k", 20.0))
  variables = load_variables(directory, meta)
  _check_compatible(model, variables, meta, directory)
  return model, variables, meta


def _check_compatible(model, variables, meta, directory):
  """Raises a one-line ValueError when the stored weights do not fit the named model."""
  shape = tuple(meta.get("input_shape", (32, 32, 3)))
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jax.numpy.zeros((1, *shape))))
  for col in ("params", "batch_stats", "thresholds"):
    want = jax.tree_util.tree_map(lambda a: tuple(a.shape), expected.get(col, {}))
    got = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), variables.get(col, {}))
    if want != got:
      raise ValueError(f"checkpoint {directory} does not match model {meta['model']!r} "
                       f"({meta.get('kind', 'relu')}/{meta.get('granularity', 'layer')}): "
                       f"its {col!r} collection has different shapes")
