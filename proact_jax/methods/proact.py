"""ProAct (Mousavi et al., arXiv 2406.06313, Algorithm 1): progressive, site-by-site training of
hybrid smooth-clip thresholds by knowledge distillation from the unclipped fault-free model.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.evaluate import EvalSet, predict
from proact_jax.methods.common import (Hardened, Progress, accuracy, baseline_variables,
                                       batches_of, check_granularity, profiled_thresholds,
                                       site_order, site_summary, with_activation)
from proact_jax.methods.threshold_training import ThresholdTraining, train_thresholds


@dataclasses.dataclass(frozen=True)
class ProActConfig:
  granularity: str = "hybrid"
  last_epochs: int = 50          # neuron-wise last site (paper)
  layer_epochs: int = 20         # each layer-wise site (paper)
  batch_size: int = 128
  learning_rate: float = 0.01    # halved every 10 epochs
  halve_every: int = 10
  temperature: float = 1.0
  gammas: tuple = (1e-2, 1e-3, 1e-4)  # tried in turn until a site's guard accepts
  budget: float = 0.002          # clean-accuracy budget (fraction: 0.002 = 0.2 points)
  seed: int = 0


def proact(model, variables, x_profile: np.ndarray, x_train: np.ndarray, y_train: np.ndarray,
           val_set: EvalSet, config: ProActConfig = ProActConfig(), eval_set: EvalSet | None = None,
           workdir: str | None = None, progress: bool = True) -> Hardened:
  """Hardens ``model`` with ProAct.

  Args:
    model, variables: the baseline model (activation field ``act``, or a network from
      :func:`proact_jax.function_network`) and its variables.
    x_profile: normalised profiling images (initial thresholds = their maxima).
    x_train, y_train: normalised un-augmented training images for the distillation.
    val_set: the accuracy guard's validation images.
    eval_set: where the reported clean accuracy is measured (default: val_set).
    workdir: where per-site progress is kept; an interrupted run resumes there.
  """
  check_granularity("proact", config.granularity)
  if config.budget < 0:
    raise ValueError(f"accuracy budget must be >= 0, got {config.budget}")
  t0 = time.time()
  eval_set = eval_set or val_set
  input_shape = tuple(x_profile.shape[1:])
  frozen = baseline_variables(variables)
  student = with_activation(model, "smooth", config.granularity)
  tree, _ = profiled_thresholds(model, frozen, student, input_shape,
                                batches_of(x_profile))
  order = site_order(student, frozen, input_shape)
  store = Progress(workdir, {"method": "proact", **dataclasses.asdict(config),
                             "n_train": len(x_train), "n_profile": len(x_profile)})
  tree = store.restore(tree) or tree
  base_val = accuracy(model, frozen, val_set)
  floor = base_val - config.budget
  teacher = predict(model, frozen, x_train)       # computed once, not every epoch
  key = jax.random.PRNGKey(config.seed)
  stage_acc = {}
  for i, site in reversed(list(enumerate(order))):
    done = store.done(site)
    if done:
      stage_acc[site] = done["val_accuracy"]
      continue
    neuron = np.ndim(thr_lib.get_site(tree, site)) > 0
    epochs = config.last_epochs if neuron else config.layer_epochs
    chosen, gamma_used, hist = None, None, []
    for j, gamma in enumerate(config.gammas):
      cfg = ThresholdTraining(epochs=epochs, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, halve_every=config.halve_every,
                              temperature=config.temperature, gamma=gamma)
      new, h = train_thresholds(jax.random.fold_in(key, i * 100 + j), student, frozen, tree,
                                [site], x_train, y_train, teacher, val_set, cfg, floor=floor,
                                desc=f"proact {site} gamma={gamma:g}", progress=progress)
      hist.append({"gamma": gamma, "epochs": h})
      if new is not None:
        chosen, gamma_used = new, gamma
        break
    if chosen is not None:
      tree = chosen
    acc = accuracy(student, thr_lib.merge(frozen, tree), val_set)
    stage_acc[site] = acc
    store.save(site, tree, {"val_accuracy": acc, "gamma": gamma_used,
                            "kept": chosen is not None, "history": hist})
    if progress:
      lam = np.asarray(thr_lib.get_site(tree, site))
      print(f"proact: site {site} lam {'max' if neuron else '='} {lam.max():.4g} "
            f"val acc {acc:.4f} ({'kept' if chosen is not None else 'reverted'})")
  hardened = thr_lib.merge(frozen, tree)
  return Hardened("proact", student, hardened, "smooth", config.granularity,
                  clean_accuracy=accuracy(student, hardened, eval_set),
                  baseline_accuracy=accuracy(model, frozen, eval_set),
                  sites=site_summary(tree, order, stage_acc), wall_time=time.time() - t0,
                  extra={"val_baseline": base_val, "budget": config.budget})
