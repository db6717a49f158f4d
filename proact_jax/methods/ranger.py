"""Ranger (Chen et al., DSN 2021): thresholds = profiled maximum activations, clip-to-zero."""

from __future__ import annotations

import time

import numpy as np

from proact_jax.core.evaluate import EvalSet
from proact_jax.core.thresholds import merge
from proact_jax.methods.common import (Hardened, accuracy, baseline_variables, batches_of,
                                       check_granularity, profiled_thresholds, site_order,
                                       site_summary, with_activation)


def ranger(model, variables, x_profile: np.ndarray, eval_set: EvalSet,
           granularity: str = "layer", batch_size: int = 256) -> Hardened:
  """Hardens ``model`` with Ranger.

  Args:
    model: the baseline Flax model (activation field ``act``) or a network
      (:func:`proact_jax.function_network`).
    variables: its variables (params, batch_stats).
    x_profile: normalised profiling images (e.g. 3,000 training images).
    eval_set: images on which clean accuracy is reported.
    granularity: "layer" or "neuron".
  """
  check_granularity("ranger", granularity)
  t0 = time.time()
  input_shape = tuple(x_profile.shape[1:])
  clipped = with_activation(model, "zero", granularity)
  tree, _ = profiled_thresholds(model, variables, clipped, input_shape,
                                batches_of(x_profile, batch_size))
  frozen = baseline_variables(variables)
  hardened = merge(frozen, tree)
  order = site_order(clipped, frozen, input_shape)
  return Hardened("ranger", clipped, hardened, "zero", granularity,
                  clean_accuracy=accuracy(clipped, hardened, eval_set),
                  baseline_accuracy=accuracy(model, frozen, eval_set),
                  sites=site_summary(tree, order), wall_time=time.time() - t0)
