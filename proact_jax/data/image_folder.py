"""Image folders ``root/{train,test}/<class>/*.{jpg,jpeg,png}`` and tars of them (which may also
hold an official CIFAR layout), decoded to RGB, with an ``.npz`` cache keyed by the file listing
(or the archive's stat).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import multiprocessing
import os
import sys
import tarfile
import zlib
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from proact_jax.data.cifar_archives import _CIFAR_FILES, _detect_cifar, _parse_cifar
from proact_jax.data.dataset import Dataset

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1
CACHE_DIRNAME = ".proact_cache"
# Decode in worker processes from this many images on (below it, process start-up dominates).
PARALLEL_MIN_IMAGES = 4096
DECODE_WORKERS = 2

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


# ----------------------------------------------------------------------------- tars

def _is_tar(path: str) -> bool:
  return os.path.isfile(path) and (path.lower().endswith(_TAR_SUFFIXES) or tarfile.is_tarfile(path))


def _read_tar(path: str, keep: Callable[[str], bool]) -> dict[str, bytes]:
  """Regular members of a tar archive whose name passes ``keep``, read in one sequential pass."""
  out = {}
  try:
    with tarfile.open(path) as tf:
      for m in tf:
        if m.isfile() and keep(m.name):
          f = tf.extractfile(m)
          out[_norm(m.name)] = f.read() if f else b""
  except tarfile.ReadError as e:
    if "could not be opened" in str(e):  # no compression tried recognises it
      raise ValueError(f"{path}: not a tar archive (plain, gzip, bz2 or xz)") from None
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"{path}: truncated or corrupt archive (ReadError: {first})") from None
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {first})") from None
  return out


def _norm(member: str) -> str:
  return member[2:] if member.startswith("./") else member


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTS)


def _load_tar(name: str, path: str) -> Dataset:
  cached = _cache_load(_archive_key(path), _cache_dirs(os.path.dirname(os.path.abspath(path))),
                       name)
  if cached is not None:
    return cached
  members = _read_tar(path, lambda n: n.rsplit("/", 1)[-1] in _CIFAR_FILES or _is_image(n))
  found = _detect_cifar(members)
  if found is not None:
    def read(rel: str) -> bytes:
      if rel not in members:
        raise ValueError(f"missing file {rel}")
      return members[rel]
    return _parse_cifar(name, found, read, path)
  prefix = _tar_image_prefix(members)
  if prefix is None:
    raise ValueError(f"{path} holds neither an official CIFAR layout nor an image folder "
                     "(train/<class>/*.jpg|png)")
  entries = {}
  for n, data in members.items():
    if n.startswith(prefix) and _is_image(n):
      parts = n[len(prefix):].split("/")
      if len(parts) == 3 and parts[0] in ("train", "test"):
        entries.setdefault(parts[0], {}).setdefault(parts[1], []).append((n, data))
  ds = _image_dataset(name, path, entries)
  _cache_save(ds, _archive_key(path), _cache_dirs(os.path.dirname(os.path.abspath(path))))
  return ds


def _tar_image_prefix(members: Iterable[str]) -> str | None:
  """The leading directory ('' or 'x/') above ``train/<class>/<image>`` in an archive."""
  best = None
  for n in members:
    if not _is_image(n):
      continue
    parts = n.split("/")
    if len(parts) >= 4 and parts[-3] == "train" or len(parts) == 3 and parts[0] == "train":
      prefix = "/".join(parts[:-3]) + "/" if len(parts) > 3 else ""
      if best is None or len(prefix) < len(best):
        best = prefix
  return best


# ----------------------------------------------------------------------------- image folders

def _image_root(path: str) -> str | None:
  """``path`` if it has a train/ subfolder, else its single subfolder that has one."""
  if os.path.isdir(os.path.join(path, "train")):
    return path
  with os.scandir(path) as it:
    subs = [e.path for e in it if e.is_dir() and not e.name.startswith(".")
            and os.path.isdir(os.path.join(e.path, "train"))]
  return subs[0] if len(subs) == 1 else None


def load_image_folder(path: str, name: str = "folder") -> Dataset:
  """Loads ``path/{train,test}/<class>/*.{jpg,jpeg,png}`` (or a tar of it), with an npz cache.

  Class names are the sorted subfolder names of ``train/``; ``test/`` must have the same ones.
  All images must have the same size; they are decoded to RGB.
  """
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    if not _is_tar(path):
      raise ValueError(f"{path} is neither a directory nor a tar archive")
    return _load_tar(name, path)
  if not os.path.isdir(path):
    raise ValueError(f"image folder {path} does not exist")
  root = _image_root(path) or path
  entries, listing = {}, []
  for split in ("train", "test"):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise ValueError(f"image folder {root} has no {split}/ split")
    for cls in sorted(os.listdir(split_dir)):
      cdir = os.path.join(split_dir, cls)
      if cls.startswith(".") or not os.path.isdir(cdir):
        continue
      files = entries.setdefault(split, {}).setdefault(cls, [])
      for e in sorted(os.scandir(cdir), key=lambda e: e.name):
        if e.is_file() and _is_image(e.name):
          rel = f"{split}/{cls}/{e.name}"
          st = e.stat()
          files.append((rel, e.path))
          listing.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
  key = _digest("folder", *listing)
  dirs = _cache_dirs(root)
  cached = _cache_load(key, dirs, name)
  if cached is not None:
    return cached
  ds = _image_dataset(name, root, entries)
  _cache_save(ds, key, dirs)
  return ds


Entries = Mapping[str, Mapping[str, Sequence[tuple[str, "bytes | str"]]]]


def _image_dataset(name: str, where: str, entries: Entries) -> Dataset:
  """Decodes ``{split: {class: [(relname, bytes or path)]}}`` into a Dataset."""
  train = {c: v for c, v in entries.get("train", {}).items() if v}
  test = {c: v for c, v in entries.get("test", {}).items() if v}
  if not train:
    raise ValueError(f"image folder {where} has no images under train/")
  if not test:
    raise ValueError(f"image folder {where} has no images under test/")
  if set(train) != set(test):
    only_tr, only_te = sorted(set(train) - set(test)), sorted(set(test) - set(train))
    raise ValueError(f"image folder {where}: train/ and test/ classes differ "
                     f"(only in train: {only_tr or '-'}; only in test: {only_te or '-'})")
  class_names = tuple(sorted(train))
  expected = {"cifar10": 10, "cifar100": 100}.get(name)
  if expected is not None and len(class_names) != expected:
    raise ValueError(f"image folder {where} has {len(class_names)} classes; "
                     f"{name} needs {expected}")
  arrays = []
  for split in (train, test):
    items = [(rel, payload, label) for label, cls in enumerate(class_names)
             for rel, payload in sorted(split[cls])]
    arrays.append(_decode_all([i[1] for i in items], [i[0] for i in items], where))
    arrays.append(np.array([i[2] for i in items], np.int32))
  if arrays[0].shape[1:] != arrays[2].shape[1:]:
    raise ValueError(f"image folder {where}: train images are {arrays[0].shape[1:3]} but test "
                     f"images are {arrays[2].shape[1:3]}; all images must have the same size")
  return Dataset(name, arrays[0], arrays[1], arrays[2], arrays[3], class_names)


def _decode_chunk(payloads: Sequence[bytes | str]):
  """Decodes images to one RGB array; returns (array, None) or (None, (index, problem))."""
  from PIL import Image
  out, size = None, None
  for i, p in enumerate(payloads):
    try:
      with Image.open(io.BytesIO(p) if isinstance(p, bytes) else p) as im:
        if im.size != size:
          if size is not None:
            return None, (i, f"is {im.size[0]}x{im.size[1]}, others are {size[0]}x{size[1]}; "
                             "all images must have the same size")
          size = im.size
          out = np.empty((len(payloads), size[1], size[0], 3), np.uint8)
        out[i] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
      return None, (i, f"cannot be decoded ({type(e).__name__}: {e})")
  return out, None


def _fork_context():
  """A fork context while no JAX backend runs threads, else None (decode serially).

  Fork, not spawn: spawn re-imports the caller's ``__main__``, which breaks scripts without a
  ``if __name__ == "__main__"`` guard. Forking after JAX has started its thread pools is unsafe,
  so then we do not fork at all.
  """
  if "fork" not in multiprocessing.get_all_start_methods():
    return None
  xb = sys.modules.get("jax._src.xla_bridge")
  if xb is not None:
    try:
      if xb.backends_are_initialized():
        return None
    except AttributeError:
      return None
  return multiprocessing.get_context("fork")


def _decode_all(payloads: Sequence[bytes | str], names: Sequence[str], where: str) -> np.ndarray:
  n = len(payloads)
  workers = min(DECODE_WORKERS, os.cpu_count() or 1)
  ctx = _fork_context()
  if n < PARALLEL_MIN_IMAGES or workers < 2 or ctx is None:
    chunks = [(0, payloads)]
  else:
    step = max(256, -(-n // (workers * 8)))
    chunks = [(s, payloads[s:s + step]) for s in range(0, n, step)]
  from tqdm import tqdm
  bar = tqdm(total=n, desc=f"decoding {os.path.basename(where)}", unit="img", file=sys.stderr,
             disable=None if n >= PARALLEL_MIN_IMAGES else True, leave=False)
  results = []
  try:
    if len(chunks) == 1:
      results.append(_decode_chunk(payloads))
      bar.update(n)
    else:
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        for res in ex.map(_decode_chunk, [c for _, c in chunks]):
          results.append(res)
          bar.update(len(chunks[len(results) - 1][1]))
  finally:
    bar.close()
  for (start, _), (_, err) in zip(chunks, results):
    if err is not None:
      raise ValueError(f"image folder {where}: {names[start + err[0]]} {err[1]}")
  shapes = {r[0].shape[1:] for r in results}
  if len(shapes) > 1:
    sizes = sorted(f"{s[1]}x{s[0]}" for s in shapes)
    raise ValueError(f"image folder {where}: images differ in size ({', '.join(sizes)}); "
                     "all images must have the same size")
  return np.concatenate([r[0] for r in results]) if len(results) > 1 else results[0][0]


# ----------------------------------------------------------------------------- npz cache

def _digest(*parts: str) -> str:
  h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
  for p in parts:
    h.update(p.encode("utf-8", "surrogateescape"))
    h.update(b"\n")
  return h.hexdigest()[:24]


def _archive_key(path: str) -> str:
  st = os.stat(path)
  return _digest("archive", os.path.basename(path), str(st.st_size), str(st.st_mtime_ns))


def _writable(path: str) -> bool:
  """Whether ``path`` is writable; a directory without write bits counts as read-only even for
  root (who could otherwise write into a deliberately read-only data folder)."""
  try:
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)
  except OSError:
    return False


def _cache_dirs(root: str) -> list[str]:
  """Cache directories to try in order: ``<root>/.proact_cache`` if writable, then the fallback
  (``$PROACT_CACHE_DIR`` or ``~/.cache/proact_jax``)."""
  fallback = os.environ.get("PROACT_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "proact_jax")
  local = os.path.join(root, CACHE_DIRNAME)
  ok = _writable(local) if os.path.isdir(local) else _writable(root)
  return [local, fallback] if ok else [fallback]


def _cache_load(key: str, dirs: Sequence[str], name: str) -> Dataset | None:
  for d in dirs:
    f = os.path.join(d, f"images-{key}.npz")
    if not os.path.isfile(f):
      continue
    try:
      with np.load(f, allow_pickle=False) as z:
        return Dataset(name, z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                       tuple(str(c) for c in z["class_names"]))
    except Exception:  # a damaged cache file is rebuilt, never fatal
      continue
  return None


def _cache_save(ds: Dataset, key: str, dirs: Sequence[str]) -> str | None:
  """Writes the cache atomically into the first writable directory; returns its path."""
  for d in dirs:
    f = os.path.join(d, f"images-{key}.npz")
    tmp = f"{f}.{os.getpid()}.tmp"
    try:
      os.makedirs(d, exist_ok=True)
      with open(tmp, "wb") as fh:
        np.savez(fh, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                 y_test=ds.y_test, class_names=np.array(ds.class_names, dtype=str))
      os.replace(tmp, f)
      return f
    except OSError:
      try:
        os.remove(tmp)
      except OSError:
        pass
  return None
