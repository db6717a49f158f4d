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

import os

import numpy as np

from proact_jax.data.cifar_archives import (  # noqa: F401  (Reader re-exported)
    _ARCHIVES, Reader, _detect_cifar, _dir_reader, _parse_cifar, _shallow_listing)
from proact_jax.data.dataset import Dataset
from proact_jax.data.image_folder import (  # noqa: F401  (public names re-exported)
    CACHE_DIRNAME, CACHE_VERSION, DECODE_WORKERS, IMAGE_EXTS, PARALLEL_MIN_IMAGES, _TAR_SUFFIXES,
    Entries, _image_root, _is_tar, _load_tar, load_image_folder)

DATASETS = ("digits", "cifar10", "cifar100", "folder")

_HINT = ("pass --data-dir pointing to {py}, {bin}, an extracted batches folder or an image folder "
         "(train/<class>/*.jpg, test/<class>/...) or its .tar.gz, or --download")


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
    if data_dir is not None:
      raise ValueError(f"dataset 'digits' is embedded in scikit-learn and reads no data "
                       f"directory; drop --data-dir {data_dir}")
    return _load_digits(seed)
  if data_dir is not None and not os.path.exists(os.path.expanduser(data_dir)):
    hint = (_HINT.format(py=_ARCHIVES[key][0], bin=_ARCHIVES[key][1]) if key in _ARCHIVES
            else "give an existing directory")
    raise ValueError(f"data directory {data_dir} does not exist (missing: {name} is not "
                     f"prepared there); {hint}")
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
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warns before it raises: one line
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


# ----------------------------------------------------------------------------- local CIFAR

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
