"""Data of a trained checkpoint, prepared the same way everywhere after training.

Hardening and campaigns reload the dataset a checkpoint was trained on, normalise it with the
checkpoint's statistics, and take seeded subsets: profiling images from the training split,
distillation images from the training split, the guard's validation images (the training run's
held-out validation split, never test images), and test images for the reported accuracies.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from proact_jax.core.evaluate import EvalSet, make_eval_set
from proact_jax.data import pipeline
from proact_jax.data import sources as data_lib
from proact_jax.training.checkpoint import validate_meta


@dataclasses.dataclass
class CheckpointData:
  x_profile: np.ndarray
  x_train: np.ndarray
  y_train: np.ndarray
  val: EvalSet
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def test(self) -> EvalSet:
    return make_eval_set(self.x_test, self.y_test)


def checkpoint_data(meta: dict, *, profile_images: int = 3000, train_images: int = 0,
                    val_images: int = 0, test_images: int = 0, seed: int = 0,
                    data_dir: str | None = None) -> CheckpointData:
  """Loads and normalises the data of a checkpoint (``meta`` from its meta.json).

  Zero for a count means all available images. ``data_dir`` overrides the stored one.
  """
  validate_meta(meta, "checkpoint", require=("dataset", "input_shape", "num_classes", "mean",
                                             "std", "n_val"))
  cfg = meta.get("config", {})
  for s in (cfg.get("seed", 0), meta.get("seed", 0)):
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
      raise ValueError(f"checkpoint metadata: seed must be an integer >= 0, got {s!r}")
  ds = data_lib.load_dataset(meta["dataset"], data_dir=data_dir or meta.get("data_dir"),
                             seed=cfg.get("seed", meta.get("seed", 0)))
  if tuple(ds.input_shape) != tuple(meta["input_shape"]) or ds.num_classes != meta["num_classes"]:
    raise ValueError(f"dataset {meta['dataset']} ({ds.input_shape}, {ds.num_classes} classes) "
                     f"does not match the checkpoint ({tuple(meta['input_shape'])}, "
                     f"{meta['num_classes']} classes)")
  mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
  x_tr, y_tr, x_val, y_val = pipeline.split_train_val(ds.x_train, ds.y_train, meta["n_val"],
                                                      cfg.get("seed", 0))
  norm = lambda a: pipeline.normalize(a, mean, std)

  def take(x, y, n, s):
    if n and n < len(x):
      return pipeline.subset(x, y, n, s)
    return x, y

  xp, _ = take(x_tr, y_tr, profile_images, seed)
  xt, yt = take(x_tr, y_tr, train_images, seed + 1)
  xv, yv = take(x_val, y_val, val_images, seed + 2)
  xe, ye = take(ds.x_test, ds.y_test, test_images, seed + 3)
  return CheckpointData(norm(xp), norm(xt), yt, make_eval_set(norm(xv), yv), norm(xe), ye)
