"""Data sources: digits, official CIFAR archives, image folders with cache, tfds (offline)."""

from __future__ import annotations

import os
import pickle
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from proact_jax.data import image_folder
from proact_jax.data.sources import DATASETS, Dataset, load_dataset

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("PROACT_CACHE_DIR", str(tmp_path / "fallback_cache"))


# ----------------------------------------------------------------------------- helpers

def _images(n: int) -> np.ndarray:
  return RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _flat_chw(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def _tar_dir(src, dst, arcname: str | None = None) -> str:
  with tarfile.open(dst, "w:gz") as tf:
    tf.add(src, arcname=arcname if arcname is not None else os.path.basename(src))
  return str(dst)


def _write_pickle(path, obj, protocol: int = 2) -> None:
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=protocol)


def _cifar10_python(root, n_per_batch: int = 3):
  """An official cifar-10-batches-py folder; returns (dir, x_train, y_train, x_test, y_test)."""
  d = root / "cifar-10-batches-py"
  d.mkdir(parents=True)
  xs, ys = [], []
  for i in range(1, 6):
    x, y = _images(n_per_batch), RNG.integers(0, 10, n_per_batch).tolist()
    _write_pickle(d / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": y,
                                          b"data": _flat_chw(x), b"filenames": [b"a.png"] * len(y)})
    xs.append(x)
    ys += y
  x_te, y_te = _images(2), [3, 9]
  _write_pickle(d / "test_batch", {b"labels": y_te, b"data": _flat_chw(x_te)})
  names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
           b"ship", b"truck"]
  _write_pickle(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
  return d, np.concatenate(xs), np.array(ys), x_te, np.array(y_te)


def _check(ds: Dataset, name, x_tr, y_tr, x_te, y_te, n_classes):
  assert ds.name == name and ds.num_classes == n_classes and ds.input_shape == (32, 32, 3)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.x_train, x_tr)
  np.testing.assert_array_equal(ds.y_train, y_tr)
  np.testing.assert_array_equal(ds.x_test, x_te)
  np.testing.assert_array_equal(ds.y_test, y_te)


# ----------------------------------------------------------------------------- digits & names

def test_digits_shapes_and_seeded_split():
  ds = load_dataset("digits")
  assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 10 and ds.input_shape == (8, 8, 1) and ds.x_train.max() == 255
  assert set(np.unique(ds.y_test)) == set(range(10))
  again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  np.testing.assert_array_equal(ds.y_test, again.y_test)
  assert not np.array_equal(ds.y_test, other.y_test)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="valid names: " + ", ".join(DATASETS)):
    load_dataset("mnist")


def test_folder_needs_data_dir():
  with pytest.raises(ValueError, match="needs data_dir"):
    load_dataset("folder")


# ----------------------------------------------------------------------------- CIFAR archives

def test_cifar10_python_extracted_and_targz(tmp_path):
  d, x_tr, y_tr, x_te, y_te = _cifar10_python(tmp_path / "src")
  for where in (d, tmp_path / "src"):  # the batches folder itself, or a folder holding it
    _check(load_dataset("cifar10", data_dir=str(where)), "cifar10", x_tr, y_tr, x_te, y_te, 10)
  archive = _tar_dir(d, tmp_path / "cifar-10-python.tar.gz")
  ds = load_dataset("cifar10", data_dir=archive)
  _check(ds, "cifar10", x_tr, y_tr, x_te, y_te, 10)
  assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"
  other = tmp_path / "holder"
  other.mkdir()
  os.replace(archive, other / "cifar-10-python.tar.gz")  # a folder holding the archive
  _check(load_dataset("cifar10", data_dir=str(other)), "cifar10", x_tr, y_tr, x_te, y_te, 10)


def test_cifar10_python_protocol5_pickles(tmp_path):
  d = tmp_path / "b"
  d.mkdir()
  x = _images(2)
  for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    _write_pickle(d / f, {b"labels": [1, 2], b"data": _flat_chw(x)}, protocol=5)
  _write_pickle(d / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]}, 5)
  ds = load_dataset("cifar10", data_dir=str(d))
  np.testing.assert_array_equal(ds.x_test, x)


def test_cifar100_python(tmp_path):
  d = tmp_path / "cifar-100-python"
  d.mkdir()
  x_tr, x_te = _images(4), _images(2)
  fine_tr, fine_te = [0, 99, 5, 42], [7, 98]
  _write_pickle(d / "train", {b"fine_labels": fine_tr, b"coarse_labels": [0, 19, 1, 2],
                              b"data": _flat_chw(x_tr)})
  _write_pickle(d / "test", {b"fine_labels": fine_te, b"coarse_labels": [3, 4],
                             b"data": _flat_chw(x_te)})
  names = [b"f%02d" % i for i in range(100)]
  _write_pickle(d / "meta", {b"fine_label_names": names,
                             b"coarse_label_names": [b"c"] * 20})
  archive = _tar_dir(d, tmp_path / "cifar-100-python.tar.gz")
  for where in (str(d), archive):
    ds = load_dataset("cifar100", data_dir=where)
    _check(ds, "cifar100", x_tr, fine_tr, x_te, fine_te, 100)
  with pytest.raises(ValueError, match="holds cifar100, not cifar10"):
    load_dataset("cifar10", data_dir=archive)


def test_cifar_binary_versions(tmp_path):
  d10 = tmp_path / "cifar-10-batches-bin"
  d10.mkdir()
  xs, ys = [], []
  for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    x, y = _images(2), RNG.integers(0, 10, 2).astype(np.uint8)
    (d10 / f).write_bytes(np.concatenate([y[:, None], _flat_chw(x)], 1).tobytes())
    xs.append(x)
    ys.append(y)
  (d10 / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
  archive = _tar_dir(d10, tmp_path / "cifar-10-binary.tar.gz")
  for where in (str(d10), archive):
    _check(load_dataset("cifar10", data_dir=where), "cifar10", np.concatenate(xs[:5]),
           np.concatenate(ys[:5]), xs[5], ys[5], 10)

  d100 = tmp_path / "cifar-100-binary"
  d100.mkdir()
  splits = {}
  for f in ("train.bin", "test.bin"):
    x, coarse, fine = _images(3), np.array([1, 2, 3], np.uint8), np.array([97, 0, 50], np.uint8)
    (d100 / f).write_bytes(np.concatenate([coarse[:, None], fine[:, None], _flat_chw(x)],
                                          1).tobytes())
    splits[f] = (x, fine)
  (d100 / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
  (d100 / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
  _check(load_dataset("cifar100", data_dir=str(d100)), "cifar100", *splits["train.bin"],
         *splits["test.bin"], 100)

  # A truncated record is reported with the file's name.
  with open(d10 / "test_batch.bin", "ab") as f:
    f.write(b"\x01\x02")
  with pytest.raises(ValueError, match="test_batch.bin.*truncated"):
    load_dataset("cifar10", data_dir=str(d10))


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  d, *_ = _cifar10_python(tmp_path / "src")
  _write_pickle(d / "data_batch_2", {b"labels": [0], b"data": _Evil()})
  with pytest.raises(ValueError, match="data_batch_2.*not allowed"):
    load_dataset("cifar10", data_dir=str(d))
  assert not (tmp_path / "pwned").exists()


def test_missing_file_and_truncated_archive(tmp_path):
  d, *_ = _cifar10_python(tmp_path / "src")
  archive = _tar_dir(d, tmp_path / "cifar-10-python.tar.gz")
  os.remove(d / "data_batch_4")
  with pytest.raises(ValueError, match="missing file data_batch_4"):
    load_dataset("cifar10", data_dir=str(d))
  raw = open(archive, "rb").read()
  cut = tmp_path / "cut.tar.gz"
  cut.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match="cut.tar.gz: truncated or corrupt archive"):
    load_dataset("cifar10", data_dir=str(cut))


# ----------------------------------------------------------------------------- image folders

def _png(path, pixels: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def _image_tree(root, classes=("cat", "ant", "bee"), n=(3, 2), size=(6, 5)):
  """root/{train,test}/<class>/NN.png; returns the expected arrays in (class, file) order."""
  out = {}
  for split, count in zip(("train", "test"), n):
    xs, ys = [], []
    for label, cls in enumerate(sorted(classes)):
      for i in range(count):
        px = RNG.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
        _png(root / split / cls / f"{i:02d}.png", px)
        xs.append(px)
        ys.append(label)
    out[split] = (np.stack(xs), np.array(ys))
  return out


def test_image_folder_loads_and_caches(tmp_path, monkeypatch):
  root = tmp_path / "imgs"
  exp = _image_tree(root)
  ds = load_dataset("folder", data_dir=str(root))
  _check_images(ds, exp)
  assert ds.class_names == ("ant", "bee", "cat") and ds.input_shape == (6, 5, 3)
  assert len(list((root / ".proact_cache").glob("*.npz"))) == 1

  def boom(*a, **k):
    raise AssertionError("decoded again instead of using the cache")

  monkeypatch.setattr(image_folder, "_decode_all", boom)
  _check_images(load_dataset("folder", data_dir=str(root)), exp)
  # A changed listing (new file) invalidates the cache.
  _png(root / "train" / "ant" / "99.png", np.zeros((6, 5, 3), np.uint8))
  with pytest.raises(AssertionError, match="decoded again"):
    load_dataset("folder", data_dir=str(root))


def test_image_folder_targz_with_and_without_leading_dir(tmp_path, monkeypatch):
  root = tmp_path / "tree"
  exp = _image_tree(root)
  (tmp_path / "a").mkdir()
  nested = _tar_dir(root, tmp_path / "a" / "nested.tar.gz")  # leading directory "tree/"
  flat = tmp_path / "b" / "flat.tar"
  flat.parent.mkdir()
  with tarfile.open(flat, "w") as tf:
    for split in ("train", "test"):
      tf.add(root / split, arcname=split)
  for archive in (nested, str(flat)):
    _check_images(load_dataset("folder", data_dir=archive), exp)
  assert list((tmp_path / "a" / ".proact_cache").glob("*.npz"))
  monkeypatch.setattr(image_folder, "_read_tar", None)  # a cache hit must not even open the archive
  _check_images(load_dataset("folder", data_dir=nested), exp)  # from the cache


def test_read_only_root_uses_fallback_cache(tmp_path):
  root = tmp_path / "ro"
  exp = _image_tree(root)
  os.chmod(root, 0o555)
  try:
    _check_images(load_dataset("folder", data_dir=str(root)), exp)
    assert not (root / ".proact_cache").exists()
    assert list((tmp_path / "fallback_cache").glob("images-*.npz"))
  finally:
    os.chmod(root, 0o755)


def test_cifar10_from_image_folder_needs_ten_classes(tmp_path):
  root = tmp_path / "tree"
  _image_tree(root)
  with pytest.raises(ValueError, match="3 classes; cifar10 needs 10"):
    load_dataset("cifar10", data_dir=str(root))


def _check_images(ds, exp):
  np.testing.assert_array_equal(ds.x_train, exp["train"][0])
  np.testing.assert_array_equal(ds.y_train, exp["train"][1])
  np.testing.assert_array_equal(ds.x_test, exp["test"][0])
  np.testing.assert_array_equal(ds.y_test, exp["test"][1])


def test_image_folder_errors(tmp_path):
  empty = tmp_path / "empty"
  (empty / "train" / "a").mkdir(parents=True)
  (empty / "test" / "a").mkdir(parents=True)
  with pytest.raises(ValueError, match="has no images under train/"):
    load_dataset("folder", data_dir=str(empty))

  mism = tmp_path / "mism"
  _image_tree(mism, classes=("a", "b"))
  _png(mism / "test" / "c" / "0.png", np.zeros((6, 5, 3), np.uint8))
  with pytest.raises(ValueError, match=r"only in test: \['c'\]"):
    load_dataset("folder", data_dir=str(mism))

  no_test = tmp_path / "no_test"
  _png(no_test / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="has no test/ split"):
    load_dataset("folder", data_dir=str(no_test))

  sizes = tmp_path / "sizes"
  _image_tree(sizes, classes=("a",))
  _png(sizes / "train" / "a" / "zz.png", np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="zz.png is 4x4.*same size"):
    load_dataset("folder", data_dir=str(sizes))


# ----------------------------------------------------------------------------- tfds

def test_tfds_missing_data_fails_fast_with_one_line(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  t = time.time()
  with pytest.raises(ValueError) as err:
    load_dataset("cifar10", data_dir=str(tmp_path / "nothing_here"))
  assert time.time() - t < 10
  msg = str(err.value)
  assert "\n" not in msg and "not prepared" in msg
  assert "cifar-10-python.tar.gz" in msg and "--download" in msg


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  try:
    import tensorflow  # noqa: F401  (tfds needs TensorFlow to build even mock datasets)
  except ImportError:
    # Without TensorFlow, the tfds path must fail with the clear one-line ValueError.
    with tfds.testing.mock_data(num_examples=4):
      with pytest.raises(ValueError, match="needs TensorFlow") as err:
        load_dataset("cifar10")
    assert "\n" not in str(err.value)
    pytest.skip("TensorFlow not installed: tfds mock_data cannot build datasets")
  with tfds.testing.mock_data(num_examples=4):
    ds = load_dataset("cifar10")
  assert ds.x_train.shape == (4, 32, 32, 3) and ds.x_train.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and ds.num_classes == 10
