"""ProAct (Mousavi et al., arXiv 2406.06313, Algorithm 1): progressive, site-by-site training of
hybrid smooth-clip thresholds by knowledge distillation from the unclipped fault-free model.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.distill import check_kd_direction
from proact_jax.core.evaluate import EvalSet, predict
from proact_jax.methods.common import (Hardened, accuracy, baseline_variables,
                                       batches_of, check_granularity, profiled_thresholds,
                                       open_progress, site_order, site_summary,
                                       with_activation)
from proact_jax.methods.guard import AccuracyGuard, GuardRule
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
  budget: float = 0.002          # guard tolerance tau on the validation drop (0.2 points)
  seed: int = 0
  kd_direction: str = "student-teacher"  # KL(student || teacher), Eq. 7; or "teacher-student"
  target: float | None = 0.01    # test drop to stay under with prob. >= Phi(guard_z) (None: off)
  guard_z: float = 1.645
  guard_test_images: int = 0     # n_test in the guard's SE (0: as many as validation images)


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
    workdir: where progress is kept after every epoch; an interrupted run resumes at the last
      finished epoch (of the regularisation weight it was training) with the uninterrupted
      run's result.

  The accuracy guard (:mod:`proact_jax.methods.guard`): a site's new thresholds are kept only
  while the validation drop ``d`` of the whole model is <= ``budget`` and
  ``d + guard_z * sqrt(q~ (1/n_val + 1/n_test)) <= target`` (``q~`` the smoothed rate of
  validation images on which it disagrees with the baseline), so that the TEST drop exceeds
  ``target`` with probability at most about ``1 - Phi(guard_z)`` (5 %); ``target=None`` keeps
  only the fixed tolerance ``budget``. Size ``n_val`` so that the margin leaves room: the margin
  at ``k`` disagreements is ``1.645 sqrt((k+1)/(n_val+2) (1/n_val + 1/n_test))``.
  """
  check_granularity("proact", config.granularity)
  check_kd_direction(config.kd_direction)
  if not 0.0 <= config.budget <= 1.0:  # nan fails too
    raise ValueError(f"accuracy budget must be in [0, 1] (a fraction), got {config.budget}")
  if config.target is not None and not 0 < config.target < 1:
    raise ValueError(f"the guard's target test drop must be in (0, 1), got {config.target}")
  t0 = time.time()
  eval_set = eval_set or val_set
  input_shape = tuple(x_profile.shape[1:])
  frozen = baseline_variables(variables)
  student = with_activation(model, "smooth", config.granularity)
  tree, _ = profiled_thresholds(model, frozen, student, input_shape,
                                batches_of(x_profile))
  order = site_order(student, frozen, input_shape)
  store = open_progress(workdir, {"method": "proact", **dataclasses.asdict(config),
                                  "n_train": len(x_train), "n_profile": len(x_profile)},
                        frozen, x_profile, x_train, y_train, val_set)
  tree = store.restore(tree) or tree
  guard = AccuracyGuard(model, frozen, val_set, GuardRule(
      config.budget, config.target, config.guard_z, config.guard_test_images))
  base_val = guard.base_accuracy
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
    # an interrupted site resumes at its last finished epoch, after the weights it had refused
    part = store.partial(site)
    chosen, gamma_used, hist = None, None, list(part["tried"]) if part else []
    for j, gamma in enumerate(config.gammas):
      if j < len(hist):
        continue
      cfg = ThresholdTraining(epochs=epochs, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, halve_every=config.halve_every,
                              temperature=config.temperature, gamma=gamma,
                              kd_direction=config.kd_direction)
      tried = list(hist)
      new, h = train_thresholds(
          jax.random.fold_in(key, i * 100 + j), student, frozen, tree, [site], x_train,
          y_train, teacher, val_set, cfg, guard=guard, desc=f"proact {site} gamma={gamma:g}",
          progress=progress, resume=part,
          on_epoch=lambda state, tried=tried: store.save_partial(site, {**state,
                                                                        "tried": tried}))
      part = None     # only the first weight tried after a resume continues from it
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
                  extra={"val_baseline": base_val, "budget": config.budget,
                         "kd_direction": config.kd_direction, "target": config.target,
                         "guard_z": config.guard_z, "n_val": int(val_set.n),
                         "guard_test_images": config.guard_test_images or int(val_set.n)})
