"""FitAct (Mousavi et al., DATE 2022): neuron-wise smooth clip at every site, all thresholds
trained together by gradient descent with the weights frozen (cross-entropy + small L2).

With a ``workdir``, progress is saved after every epoch (thresholds and optimiser state), so an
interrupted run resumes at the next epoch with the uninterrupted run's result."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.evaluate import EvalSet
from proact_jax.methods.common import (Hardened, accuracy, baseline_variables,
                                       batches_of, check_granularity, profiled_thresholds,
                                       open_progress, site_order, site_summary,
                                       with_activation)
from proact_jax.methods.threshold_training import ThresholdTraining, train_thresholds


@dataclasses.dataclass(frozen=True)
class FitActConfig:
  granularity: str = "neuron"
  epochs: int = 20
  batch_size: int = 128
  learning_rate: float = 1e-3    # toolbox: Adam 1e-3
  gamma: float = 1e-6            # "tiny weight decay" on the thresholds
  seed: int = 0


def fitact(model, variables, x_profile: np.ndarray, x_train: np.ndarray, y_train: np.ndarray,
           val_set: EvalSet, config: FitActConfig = FitActConfig(),
           eval_set: EvalSet | None = None, workdir: str | None = None,
           progress: bool = True) -> Hardened:
  """Hardens ``model`` with FitAct (neuron-wise everywhere; all sites trained at once)."""
  check_granularity("fitact", config.granularity)
  t0 = time.time()
  eval_set = eval_set or val_set
  input_shape = tuple(x_profile.shape[1:])
  frozen = baseline_variables(variables)
  student = with_activation(model, "smooth", config.granularity)
  tree, _ = profiled_thresholds(model, frozen, student, input_shape, batches_of(x_profile))
  order = site_order(student, frozen, input_shape)
  store = open_progress(workdir, {"method": "fitact", **dataclasses.asdict(config),
                                  "n_train": len(x_train), "n_profile": len(x_profile)},
                        frozen, x_profile, x_train, y_train, val_set)
  saved = store.restore(tree)
  if saved is not None:
    tree = saved
  else:
    cfg = ThresholdTraining(epochs=config.epochs, batch_size=config.batch_size,
                            learning_rate=config.learning_rate, halve_every=0, kd_weight=0.0,
                            ce_weight=1.0, gamma=config.gamma)
    tree, hist = train_thresholds(jax.random.PRNGKey(config.seed), student, frozen, tree, order,
                                  x_train, y_train, None, val_set, cfg, desc="fitact",
                                  progress=progress, resume=store.partial("all"),
                                  on_epoch=lambda s: store.save_partial("all", s))
    store.save("all", tree, {"history": hist})
  hardened = thr_lib.merge(frozen, tree)
  return Hardened("fitact", student, hardened, "smooth", config.granularity,
                  clean_accuracy=accuracy(student, hardened, eval_set),
                  baseline_accuracy=accuracy(model, frozen, eval_set),
                  sites=site_summary(tree, order), wall_time=time.time() - t0)
