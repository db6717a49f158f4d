"""Official CIFAR-10/100 archives: the python (pickle) and binary versions, read from any
``Reader`` (an extracted folder here, or tar members in :mod:`proact_jax.data.image_folder`).

Pickles are read with a restricted unpickler that only rebuilds numpy arrays and plain
containers, so a crafted archive cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Callable, Iterable

import numpy as np

from proact_jax.data.dataset import Dataset

_ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz"),
}
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FILES = frozenset(
    _CIFAR10_TRAIN + ("test_batch", "batches.meta", "train", "test", "meta")
    + tuple(f + ".bin" for f in _CIFAR10_TRAIN)
    + ("test_batch.bin", "batches.meta.txt", "train.bin", "test.bin", "fine_label_names.txt",
       "coarse_label_names.txt"))


# ----------------------------------------------------------------------------- restricted pickle

def _numpy_global(module: str, attr: str):
  import importlib
  new = module.replace("numpy.core", "numpy._core", 1)
  for mod in (new, module):
    try:
      return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError):
      continue
  raise pickle.UnpicklingError(f"cannot resolve {module}.{attr}")


_NUMPY_ALLOWED = frozenset([
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
])
_BUILTINS_ALLOWED = frozenset(["list", "dict", "tuple", "set", "frozenset", "bytearray", "int",
                               "float", "complex", "bytes", "str", "bool"])


class _RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds numpy arrays and plain containers only; any other global is refused."""

  def find_class(self, module: str, name: str):
    if (module, name) in _NUMPY_ALLOWED:
      return _numpy_global(module, name)
    if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:
      import builtins
      return getattr(builtins, name)
    if (module, name) == ("_codecs", "encode"):  # py3 protocol-2 pickles store bytes this way
      import codecs
      return codecs.encode
    raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _unpickle(data: bytes, what: str):
  try:
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
  except pickle.UnpicklingError as e:
    raise ValueError(f"{what}: refused or invalid pickle ({e})") from None
  except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
    raise ValueError(f"{what}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- CIFAR formats

Reader = Callable[[str], bytes]


def _chw_to_nhwc(flat: np.ndarray, what: str) -> np.ndarray:
  if flat.ndim != 2 or flat.shape[1] != 3072:
    raise ValueError(f"{what}: expected images of 3072 bytes (3x32x32), got shape {flat.shape}")
  return np.ascontiguousarray(flat.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
                              .transpose(0, 2, 3, 1))


def _pickle_batch(read: Reader, fname: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  d = _unpickle(read(fname), fname)
  if not isinstance(d, dict) or b"data" not in d or label_key not in d:
    raise ValueError(f"{fname}: not a CIFAR batch (needs keys b'data' and {label_key!r})")
  x = _chw_to_nhwc(np.asarray(d[b"data"]), fname)
  y = np.asarray(d[label_key], dtype=np.int32)
  if y.shape != (len(x),):
    raise ValueError(f"{fname}: {len(x)} images but {y.size} labels")
  return x, y


def _names(values: Iterable, what: str) -> tuple[str, ...]:
  out = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
  if not out:
    raise ValueError(f"{what}: no class names")
  return out


def _cifar10_python(read: Reader) -> Dataset:
  parts = [_pickle_batch(read, f, b"labels") for f in _CIFAR10_TRAIN]
  x_te, y_te = _pickle_batch(read, "test_batch", b"labels")
  meta = _unpickle(read("batches.meta"), "batches.meta")
  if not isinstance(meta, dict) or b"label_names" not in meta:
    raise ValueError("batches.meta: missing b'label_names'")
  return _checked("cifar10", np.concatenate([p[0] for p in parts]),
                  np.concatenate([p[1] for p in parts]), x_te, y_te,
                  _names(meta[b"label_names"], "batches.meta"))


def _cifar100_python(read: Reader) -> Dataset:
  x_tr, y_tr = _pickle_batch(read, "train", b"fine_labels")
  x_te, y_te = _pickle_batch(read, "test", b"fine_labels")
  meta = _unpickle(read("meta"), "meta")
  if not isinstance(meta, dict) or b"fine_label_names" not in meta:
    raise ValueError("meta: missing b'fine_label_names'")
  return _checked("cifar100", x_tr, y_tr, x_te, y_te, _names(meta[b"fine_label_names"], "meta"))


def _binary_batch(data: bytes, fname: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  rec = label_bytes + 3072
  if not data or len(data) % rec:
    raise ValueError(f"{fname}: {len(data)} bytes is not a whole number of {rec}-byte records "
                     "(truncated?)")
  arr = np.frombuffer(data, np.uint8).reshape(-1, rec)
  return _chw_to_nhwc(arr[:, label_bytes:], fname), arr[:, label_bytes - 1].astype(np.int32)


def _text_names(data: bytes, fname: str) -> tuple[str, ...]:
  return _names([s.strip() for s in data.decode().splitlines() if s.strip()], fname)


def _cifar10_binary(read: Reader) -> Dataset:
  parts = [_binary_batch(read(f + ".bin"), f + ".bin", 1) for f in _CIFAR10_TRAIN]
  x_te, y_te = _binary_batch(read("test_batch.bin"), "test_batch.bin", 1)
  return _checked("cifar10", np.concatenate([p[0] for p in parts]),
                  np.concatenate([p[1] for p in parts]), x_te, y_te,
                  _text_names(read("batches.meta.txt"), "batches.meta.txt"))


def _cifar100_binary(read: Reader) -> Dataset:
  x_tr, y_tr = _binary_batch(read("train.bin"), "train.bin", 2)
  x_te, y_te = _binary_batch(read("test.bin"), "test.bin", 2)
  return _checked("cifar100", x_tr, y_tr, x_te, y_te,
                  _text_names(read("fine_label_names.txt"), "fine_label_names.txt"))


def _checked(name, x_tr, y_tr, x_te, y_te, class_names) -> Dataset:
  for y in (y_tr, y_te):
    if y.size and (y.min() < 0 or y.max() >= len(class_names)):
      raise ValueError(f"{name}: labels outside [0, {len(class_names)}) for "
                       f"{len(class_names)} class names")
  return Dataset(name, x_tr, y_tr, x_te, y_te, class_names)


# (format, dataset, key file whose directory is the base, other required file, parser)
_FORMATS = (
    ("python", "cifar10", "data_batch_1", "test_batch", _cifar10_python),
    ("python", "cifar100", "meta", "train", _cifar100_python),
    ("binary", "cifar10", "data_batch_1.bin", "test_batch.bin", _cifar10_binary),
    ("binary", "cifar100", "fine_label_names.txt", "train.bin", _cifar100_binary),
)


def _detect_cifar(names: Iterable[str]):
  """Finds an official CIFAR layout among relative posix paths: (dataset, prefix, parser)."""
  names = set(names)
  for _, dataset, key, other, parser in _FORMATS:
    for n in sorted(names, key=len):
      base = n.rsplit("/", 1)[-1]
      if base == key and n[:len(n) - len(key)] + other in names:
        return dataset, n[:len(n) - len(key)], parser
  return None


def _parse_cifar(name: str, found, read_full: Reader, where: str) -> Dataset:
  dataset, prefix, parser = found
  if dataset != name:
    raise ValueError(f"{where} holds {dataset}, not {name}")

  def read(fname: str) -> bytes:
    return read_full(prefix + fname)

  try:
    return parser(read)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------- extracted folders

def _shallow_listing(path: str) -> list[str]:
  """Regular files in ``path`` and in its immediate subdirectories, as relative posix paths."""
  out = []
  with os.scandir(path) as it:
    for e in it:
      if e.is_file():
        out.append(e.name)
      elif e.is_dir() and not e.name.startswith("."):
        try:
          with os.scandir(e.path) as sub:
            out.extend(f"{e.name}/{s.name}" for s in sub if s.is_file())
        except OSError:
          pass
  return out


def _dir_reader(root: str) -> Reader:
  def read(rel: str) -> bytes:
    full = os.path.join(root, rel)
    try:
      with open(full, "rb") as f:
        return f.read()
    except FileNotFoundError:
      raise ValueError(f"missing file {rel}") from None
    except OSError as e:
      raise ValueError(f"cannot read {rel} ({e})") from None
  return read
