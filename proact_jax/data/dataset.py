"""The in-memory image dataset every loader of :mod:`proact_jax.data.sources` returns."""

from __future__ import annotations

import dataclasses

import numpy as np


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
