"""Data sources: every loader returns the same ``Dataset`` of uint8 NHWC numpy arrays.

Sources:
- ``digits``: scikit-learn's bundled 8x8 digits (no download), seeded stratified 1437/360 split.
- ``cifar10`` / ``cifar100`` from a local copy in an official format (python pickle version or
  binary version, as ``.tar.gz`` or extracted), from an image folder (or its tar), or else from
  tensorflow-datasets (needs TensorFlow; offline unless ``download=True``).
- ``folder``: ``root/{train,test}/<class>/*.{jpg,jpeg,png}``, or a ``.tar``/``.tar.gz`` of that
  tree. Decoded arrays are cached as ``.npz`` keyed by the file listing (or the archive's stat).

Pickles are read with a restricted unpickler that only rebuilds numpy arrays and plain
containers, so a crafted archive cannot run code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import multiprocessing
import os
import pickle
import sys
import tarfile
import zlib
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

DATASETS = ("digits", "cifar10", "cifar100", "folder")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1
CACHE_DIRNAME = ".proact_cache"
# Decode in worker processes from this many images on (below it, process start-up dominates).
PARALLEL_MIN_IMAGES = 4096
DECODE_WORKERS = 2

_HINT = ("pass --data-dir pointing to {py}, {bin}, an extracted batches folder or an image folder "
         "(train/<class>/*.jpg, test/<class>/...) or its .tar.gz, or --download")
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
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """A labelled image dataset held in memory: uint8 NHWC images, int32 labels."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, "x_" + split), getattr(self, "y_" + split)
      if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{self.name}: x_{split} must be uint8 NHWC, got {x.dtype} {x.shape}")
      if y.dtype != np.int32 or y.shape != (len(x),):
        raise ValueError(f"{self.name}: y_{split} must be int32 of shape ({len(x)},), "
                         f"got {y.dtype} {y.shape}")
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(f"{self.name}: train images {self.x_train.shape[1:]} and test images "
                       f"{self.x_test.shape[1:]} differ in shape")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    return tuple(self.x_train.shape[1:])

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes})")


def load_dataset(name: str, data_dir: str | None = None, download: bool = False,
                 seed: int = 0) -> Dataset:
  """Loads one of ``DATASETS``.

  Args:
    name: ``digits``, ``cifar10``, ``cifar100`` or ``folder``.
    data_dir: for CIFAR, a local archive / extracted folder / image folder (or a directory holding
      one), else the tensorflow-datasets data dir; required for ``folder``.
    download: let tensorflow-datasets download (CIFAR only). Off by default: offline, tfds would
      otherwise retry for minutes.
    seed: the train/test split seed (``digits`` only; the others ship with a fixed split).

  Returns:
    A ``Dataset``.

  Raises:
    ValueError: unknown name, missing or malformed data, with a one-line message.
  """
  key = name.lower()
  if key not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
  if key == "digits":
    return _load_digits(seed)
  if key == "folder":
    if data_dir is None:
      raise ValueError("dataset 'folder' needs data_dir (an image folder root or its .tar.gz)")
    return load_image_folder(data_dir, name="folder")
  if data_dir is not None:
    local = _load_local_cifar(key, os.path.expanduser(data_dir))
    if local is not None:
      return local
  return _load_tfds(key, data_dir, download)


# ----------------------------------------------------------------------------- digits

def _load_digits(seed: int) -> Dataset:
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  y = digits.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=seed)
  return Dataset("digits", x_tr, y_tr, x_te, y_te, tuple(str(i) for i in range(10)))


# ----------------------------------------------------------------------------- tfds

def _load_tfds(name: str, data_dir: str | None, download: bool) -> Dataset:
  hint = _HINT.format(py=_ARCHIVES[name][0], bin=_ARCHIVES[name][1])
  where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ValueError(f"{name}: no local copy found and tensorflow-datasets is not installed; "
                     f"{hint}") from None
  try:
    splits, info = tfds.load(name, split=["train", "test"], data_dir=data_dir, download=download,
                             batch_size=-1, with_info=True)
    train, test = (tfds.as_numpy(s) for s in splits)
    class_names = tuple(info.features["label"].names)
  except ImportError as e:
    raise ValueError(f"{name}: tensorflow-datasets needs TensorFlow to read data ({e}); "
                     f"install tensorflow or {hint}") from None
  except Exception as e:  # tfds raises AssertionError, DatasetNotFoundError, network errors...
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not download:
      raise ValueError(f"{name} is not prepared in the tfds data dir {where} ({first}); "
                       f"{hint}") from None
    raise ValueError(f"{name}: tfds download/prepare into {where} failed ({first}); "
                     f"{hint}") from None
  return Dataset(name, np.asarray(train["image"], np.uint8), np.asarray(train["label"], np.int32),
                 np.asarray(test["image"], np.uint8), np.asarray(test["label"], np.int32),
                 class_names)


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


# ----------------------------------------------------------------------------- local CIFAR

def _is_tar(path: str) -> bool:
  return os.path.isfile(path) and (path.lower().endswith(_TAR_SUFFIXES) or tarfile.is_tarfile(path))


def _load_local_cifar(name: str, path: str) -> Dataset | None:
  """A CIFAR dataset from a local archive / folder at ``path``; None if none is recognised."""
  if os.path.isfile(path):
    if not _is_tar(path):
      hint = _HINT.format(py=_ARCHIVES[name][0], bin=_ARCHIVES[name][1])
      raise ValueError(f"{path} is not a tar archive; {hint}")
    return _load_tar(name, path)
  if not os.path.isdir(path):
    return None
  names = _shallow_listing(path)
  found = _detect_cifar(names)
  if found is not None:
    return _parse_cifar(name, found, _dir_reader(path), path)
  root = _image_root(path)
  if root is not None:
    return load_image_folder(root, name=name)
  for archive in _ARCHIVES[name]:
    if os.path.isfile(os.path.join(path, archive)):
      return _load_tar(name, os.path.join(path, archive))
  tars = [n for n in names if "/" not in n and n.lower().endswith(_TAR_SUFFIXES)]
  if len(tars) == 1:
    return _load_tar(name, os.path.join(path, tars[0]))
  return None


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


def _read_tar(path: str, keep: Callable[[str], bool]) -> dict[str, bytes]:
  """Regular members of a tar archive whose name passes ``keep``, read in one sequential pass."""
  out = {}
  try:
    with tarfile.open(path) as tf:
      for m in tf:
        if m.isfile() and keep(m.name):
          f = tf.extractfile(m)
          out[_norm(m.name)] = f.read() if f else b""
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise ValueError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})") from None
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
