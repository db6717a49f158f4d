"""Files the program writes, and what it may write over.

* :func:`write_bytes_atomic`, :func:`write_json_atomic`: a temporary sibling (``.tmp-*``),
  flushed and fsynced, then renamed over the target: a crash leaves the old content or the
  new, never a prefix.
* :func:`lock`: an exclusive ``fcntl.flock`` on the output itself (a results file, a run
  directory, a progress directory), taken before the first write and held until released or
  the process ends (the kernel drops it on exit, kill -9 included); a second process is refused
  with one line.
* :func:`tree_digest`, :func:`json_digest`: SHA-256 of a pytree's sorted leaf paths, dtypes,
  shapes and bytes, and of canonical JSON (content hashes and provenance records).
* :func:`foreign_entries`: what a directory holds besides the program's own files, for the
  ``--out`` rule "never delete or replace what the program did not create".
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from typing import Any, Iterable

import jax
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

TMP_PREFIX = ".tmp-"


def json_default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_bytes_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
  """Writes ``data`` to ``path`` through a fsynced temporary sibling and a rename."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=os.path.basename(path)[-16:])
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, mode)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON (indented, sorted keys) to ``path`` atomically."""
  text = json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n"
  write_bytes_atomic(path, text.encode())


def create_json_exclusive(path: str, obj: Any) -> None:
  """Writes JSON to a new file ``path`` atomically; refuses if ``path`` exists, even when
  another process creates it meanwhile (hard link, not rename)."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=json_default)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    try:
      os.link(tmp, path)
    except FileExistsError:
      raise ValueError(f"{path} already exists (refusing to overwrite)") from None
  finally:
    try:
      os.remove(tmp)
    except OSError:
      pass


def lock(path: str) -> int:
  """Takes an exclusive lock on ``path`` (a directory, or a file, created empty if absent);
  returns the descriptor that holds it (``os.close`` releases it).

  Raises:
    ValueError: another process (or another open of it in this process) holds the lock.
  """
  is_dir = os.path.isdir(path)
  fd = os.open(path, os.O_RDONLY if is_dir else os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise ValueError(f"{path} is in use by another proact process (it holds the lock on it); "
                       "wait for it to finish or use another --out") from None
    raise
  return fd


def unlock(fd: int | None) -> None:
  if fd is not None:
    try:
      os.close(fd)
    except OSError:
      pass


def tree_digest(tree: Any) -> str:
  """SHA-256 (hex) over the sorted leaf paths, dtypes, shapes and bytes of a pytree."""
  h = hashlib.sha256()
  flat = traverse_util.flatten_dict(unfreeze(dict(tree))) if isinstance(tree, dict) else {
      (str(i),): leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(tree))}
  for path in sorted(flat):
    a = np.ascontiguousarray(np.asarray(flat[path]))
    h.update("/".join(map(str, path)).encode())
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def json_digest(obj: Any) -> str:
  """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys, no whitespace)."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)
  return hashlib.sha256(text.encode()).hexdigest()


def foreign_entries(path: str, ours: Iterable[str] = ()) -> list[str]:
  """Names in directory ``path`` that are neither in ``ours`` nor the program's temporaries."""
  ours = set(ours)
  return sorted(n for n in os.listdir(path) if n not in ours and not n.startswith(TMP_PREFIX))


def check_regular_output(path: str, what: str = "--out") -> None:
  """Refuses an output path that exists and is not a regular file (a directory, a device such
  as /dev/stdout, a pipe): outputs are read back to resume and replaced by rename."""
  if os.path.exists(path) and not os.path.isfile(path):
    kind = "a directory" if os.path.isdir(path) else "not a regular file"
    raise ValueError(f"{what} {path} is {kind}; expected a file path (outputs are read back to "
                     "resume, so pipes and devices such as /dev/stdout cannot be used)")


def normalise_json(obj: Any) -> Any:
  """JSON round trip, so that tuples/lists and numpy scalars compare equal to what was read."""
  return json.loads(json.dumps(obj, default=json_default))


def json_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
  """The dotted paths at which two JSON-like configurations differ (sorted)."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      name = f"{prefix}.{k}" if prefix else str(k)
      if k not in a or k not in b:
        out.append(name)
      else:
        out += json_differences(a[k], b[k], name)
    return out
  return [] if a == b else [prefix or "config"]
