"""Model checkpoints: all variable collections with orbax, plus a small ``meta.json``.

A checkpoint directory holds ``variables/`` (orbax; ``params``, ``batch_stats``, ``thresholds``)
and ``meta.json`` (model name, number of classes, input shape, normalisation, activation kind
and granularity, accuracy, seed, package version, ...). Writes go to a temporary sibling first
and are renamed into place, so a crash never leaves a half-written checkpoint, and an existing
checkpoint is only replaced when ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "meta.json"
VARIABLES = "variables"


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to ``path`` through a temporary file and a rename."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
    f.write("\n")
  os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
  os.replace(tmp, path)


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(directory: str, variables, meta: dict, overwrite: bool = False) -> str:
  """Saves ``variables`` and ``meta`` to ``directory`` atomically; returns the absolute path."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise ValueError(f"checkpoint directory {directory} already exists (refusing to overwrite)")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(directory)}-")
  try:
    tree = jax.tree_util.tree_map(np.asarray, dict(variables))
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES), tree)
      ckptr.wait_until_finished()
    write_json_atomic(os.path.join(tmp, META), meta)
    if os.path.exists(directory):
      old = directory + ".old"
      shutil.rmtree(old, ignore_errors=True)
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def load_meta(directory: str) -> dict:
  path = os.path.join(directory, META)
  if not os.path.isfile(path):
    raise ValueError(f"{directory} is not a proact checkpoint (no {META})")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None


def load_variables(directory: str) -> dict:
  path = os.path.join(os.path.abspath(directory), VARIABLES)
  if not os.path.isdir(path):
    raise ValueError(f"{directory} is not a proact checkpoint (no {VARIABLES}/)")
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  return jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a), dict(tree))


def load_checkpoint(directory: str):
  """Returns ``(model, variables, meta)``; the model is rebuilt from the registry by name."""
  from proact_jax.models import create_model
  meta = load_meta(directory)
  for key in ("model", "num_classes"):
    if key not in meta:
      raise ValueError(f"{directory}/{META} lacks {key!r}")
  model = create_model(meta["model"], meta["num_classes"], kind=meta.get("kind", "relu"),
                       granularity=meta.get("granularity", "layer"), k=meta.get("k", 20.0))
  variables = load_variables(directory)
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
