"""Checkpoints as single portable ``.npz`` files: a hardened model's thresholds alone, or a
whole small checkpoint.

Every method of the paper leaves the baseline's weights untouched and adds a ``thresholds``
collection (a few values per site for Ranger, FT-ClipAct and ProAct, one per neuron for FitAct:
0.0003 % to 0.3 % of AlexNet's weights). :func:`export_thresholds` writes that collection and
the checkpoint's ``meta.json`` to one ``.npz`` (exact float32 bytes, no pickle), small enough to
commit next to the results it produced or to share beside a public baseline (the same
checkpoint always gives the same bytes: no timestamps);
:func:`import_thresholds` puts it back on the baseline's weights and writes the hardened
checkpoint again. :func:`export_checkpoint` / :func:`import_checkpoint` do the same with every
collection (for a model small enough to commit, e.g. ResNet-20's 1.1 MB). Either way the
rebuilt checkpoint must reproduce the original's ``content_sha256`` (weights, thresholds and
metadata), so a file applied to another baseline, or edited, is refused with one line instead
of yielding a silently different model.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
from flax import traverse_util

from proact_jax.core.activations import THRESHOLDS
from proact_jax.core.files import check_regular_output, write_bytes_atomic
from proact_jax.training.checkpoint import (HASH, content_hash, load_meta, load_variables,
                                            save_checkpoint)

__all__ = ["export_checkpoint", "export_thresholds", "import_checkpoint", "import_thresholds",
           "read_thresholds"]
_META = "__meta__"
_SEP = "/"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # every zip entry's timestamp: exports are byte-reproducible


def _load_checked(checkpoint: str) -> tuple[dict, dict]:
  meta = load_meta(checkpoint)
  if HASH not in meta:
    raise ValueError(f"checkpoint {checkpoint} has no {HASH} (written before proact-jax 0.2): "
                     "an exported file could not be checked when imported")
  return dict(load_variables(checkpoint, meta)), meta


def _write(path: str, tree: dict, meta: dict, what: str) -> str:
  flat = {_SEP.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}
  if any(k.startswith("__") for k in flat):
    raise ValueError(f"a variable is named like {_META}; it cannot be exported")
  check_regular_output(path, what)
  flat[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  buf = io.BytesIO()  # np.savez_compressed's layout, without its clock: the same bytes each time
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    for name in sorted(flat):
      info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
      info.compress_type = zipfile.ZIP_DEFLATED
      with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(flat[name]), allow_pickle=False)
  write_bytes_atomic(path, buf.getvalue())
  return path


def _read(path: str, what: str) -> tuple[dict, dict]:
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not an npz, pickled
    raise ValueError(f"{path} is not a {what} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
  if _META not in arrays:
    raise ValueError(f"{path} is not a {what} (no {_META} entry)")
  try:
    meta = json.loads(arrays.pop(_META).tobytes().decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: its metadata is not valid JSON ({e})") from None
  if not isinstance(meta, dict) or HASH not in meta or not arrays:
    raise ValueError(f"{path} is not a {what} (no {HASH} or no arrays)")
  return traverse_util.unflatten_dict({tuple(k.split(_SEP)): v for k, v in arrays.items()}), meta


def _save_checked(path: str, variables: dict, meta: dict, out: str, overwrite: bool,
                  against: str) -> str:
  if content_hash(variables, meta) != meta[HASH]:
    raise ValueError(f"{path} does not fit {against}: the rebuilt checkpoint's content hash "
                     "differs (another baseline, or an edited file)")
  return save_checkpoint(out, variables, {k: v for k, v in meta.items() if k != HASH},
                         overwrite=overwrite)


def export_thresholds(checkpoint: str, path: str) -> str:
  """Writes the thresholds and metadata of the hardened checkpoint ``checkpoint`` to ``path``
  (``.npz``, atomically; an existing file is replaced). Returns ``path``.

  Raises:
    ValueError: ``checkpoint`` is not a checkpoint, is damaged, or has no thresholds (a
      baseline).
  """
  variables, meta = _load_checked(checkpoint)
  if not variables.get(THRESHOLDS):
    raise ValueError(f"checkpoint {checkpoint} has no thresholds (a baseline, not a hardened "
                     "model)")
  return _write(path, dict(variables[THRESHOLDS]), meta, "thresholds file")


def read_thresholds(path: str) -> tuple[dict, dict]:
  """The ``(thresholds collection, meta)`` stored in a thresholds file.

  Raises:
    ValueError: the file is missing or is not a thresholds file.
  """
  return _read(path, "thresholds file")


def import_thresholds(path: str, baseline: str, out: str, overwrite: bool = False) -> str:
  """Rebuilds a hardened checkpoint in ``out`` from a thresholds file and the baseline
  checkpoint ``baseline`` it was made on; returns the absolute path of ``out``.

  The result is the checkpoint :func:`export_thresholds` read: the same ``meta.json`` and the
  same variables (its content hash is checked before anything is written; orbax's own files
  differ only in the temporary paths they record).

  Raises:
    ValueError: a bad file or baseline, a baseline other than the one the thresholds were
      trained on (the content hash differs), or ``out`` exists (unless ``overwrite``).
  """
  thr, meta = read_thresholds(path)
  variables = dict(load_variables(baseline))
  if THRESHOLDS in variables:
    raise ValueError(f"{baseline} already has thresholds: give the baseline the thresholds "
                     "were trained on, not a hardened checkpoint")
  variables[THRESHOLDS] = thr
  return _save_checked(path, variables, meta, out, overwrite, f"baseline {baseline}")


def export_checkpoint(checkpoint: str, path: str) -> str:
  """Writes every collection and the metadata of ``checkpoint`` to one ``.npz`` (atomically;
  an existing file is replaced). Returns ``path``."""
  variables, meta = _load_checked(checkpoint)
  return _write(path, variables, meta, "checkpoint file")


def import_checkpoint(path: str, out: str, overwrite: bool = False) -> str:
  """Writes the checkpoint stored by :func:`export_checkpoint` to ``out`` (its content hash
  checked first); returns the absolute path of ``out``.

  Raises:
    ValueError: a bad or edited file, or ``out`` exists (unless ``overwrite``).
  """
  variables, meta = _read(path, "checkpoint file")
  return _save_checked(path, variables, meta, out, overwrite, "its own metadata")
