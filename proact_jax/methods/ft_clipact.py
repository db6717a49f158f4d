"""FT-ClipAct (Hoang et al., DATE 2020): layer-wise clip-to-zero thresholds found site by site by
an interval search scored with fault injection (DESIGN.md section 2).

For each site (forward order): evaluate ``candidates`` equally spaced thresholds in [lo, hi]
(initially [0, profiled max]); score each by the area under accuracy (%) vs BER (trapezoid over
the BER index) from a small fault campaign; keep the best; shrink the interval to the best's
neighbours; stop after ``max_rounds`` rounds, or from ``min_rounds`` on once the spread of the
candidates' scores is <= ``delta``. All candidates of a round see the same fault draws (common
random numbers), so their differences are not swamped by fault-sampling noise.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.evaluate import EvalSet, make_eval_set
from proact_jax.faults.campaign import accuracy_under_faults
from proact_jax.methods.common import (Hardened, accuracy, baseline_variables,
                                       batches_of, check_granularity, profiled_thresholds,
                                       open_progress, site_order, site_summary,
                                       with_activation)


@dataclasses.dataclass(frozen=True)
class FTClipActConfig:
  candidates: int = 4
  max_rounds: int = 4
  min_rounds: int = 3
  delta: float = 0.2                     # AUC spread (accuracy-% x BER-index units) to stop
  bers: tuple = (1e-7, 1e-6, 3e-6, 1e-5, 3e-5)
  trials: int = 5
  images: int = 1000                     # training images used for scoring
  fmt: str = "q15.16"
  seed: int = 0


def auc(acc_percent_by_ber: np.ndarray) -> float:
  """Area under accuracy (%) vs BER index (trapezoid, unit spacing)."""
  a = np.asarray(acc_percent_by_ber, np.float64)
  return float(np.sum((a[1:] + a[:-1]) / 2)) if len(a) > 1 else float(a[0])


def ft_clipact(model, variables, x_profile: np.ndarray, x_train: np.ndarray, y_train: np.ndarray,
               val_set: EvalSet, config: FTClipActConfig = FTClipActConfig(),
               eval_set: EvalSet | None = None, workdir: str | None = None,
               progress: bool = True) -> Hardened:
  """Hardens ``model`` with FT-ClipAct (layer-wise clip-to-zero)."""
  check_granularity("ft-clipact", "layer")
  if config.candidates < 2 or config.max_rounds < 1 or config.min_rounds > config.max_rounds:
    raise ValueError("ft-clipact needs >= 2 candidates and 1 <= min_rounds <= max_rounds")
  t0 = time.time()
  eval_set = eval_set or val_set
  input_shape = tuple(x_profile.shape[1:])
  frozen = baseline_variables(variables)
  clipped = with_activation(model, "zero", "layer")
  tree, _ = profiled_thresholds(model, frozen, clipped, input_shape, batches_of(x_profile))
  order = site_order(clipped, frozen, input_shape)
  n = min(config.images, len(x_train))
  idx = np.asarray(jax.random.permutation(jax.random.PRNGKey(config.seed), len(x_train)))[:n]
  fi_set = make_eval_set(x_train[idx], y_train[idx])
  store = open_progress(workdir, {"method": "ft-clipact", **dataclasses.asdict(config),
                                  "n_train": len(x_train), "n_profile": len(x_profile)},
                        frozen, x_profile, x_train, y_train, val_set)
  tree = store.restore(tree) or tree
  key = jax.random.PRNGKey(config.seed + 1)
  for i, site in enumerate(order):
    if store.done(site):
      continue
    hi = float(thr_lib.get_site(tree, site))
    lo, rounds = 0.0, []
    best_lam = hi
    for r in range(config.max_rounds):
      cands = np.linspace(lo, hi, config.candidates)
      round_key = jax.random.fold_in(key, i * 100 + r)  # same draws for every candidate
      scores = []
      for lam in cands:
        v = thr_lib.merge(frozen, thr_lib.set_site(tree, site, lam))
        acc = accuracy_under_faults(round_key, clipped, v, fi_set, config.bers, config.trials,
                                    fmt=config.fmt)
        scores.append(auc(100 * np.asarray(acc).mean(axis=1)))
      b = int(np.argmax(scores))
      best_lam = float(cands[b])
      step = (hi - lo) / (config.candidates - 1)
      rounds.append({"interval": [lo, hi], "candidates": cands.tolist(), "auc": scores,
                     "best": best_lam})
      lo, hi = max(0.0, best_lam - step), best_lam + step
      hi = min(hi, float(cands[-1]))
      spread = max(scores) - min(scores)
      if progress:
        print(f"ft-clipact: site {site} round {r + 1}: best lam {best_lam:.4g} "
              f"(AUC {scores[b]:.2f}, spread {spread:.2f})")
      if r + 1 >= config.min_rounds and spread <= config.delta:
        break
    tree = thr_lib.set_site(tree, site, best_lam)
    store.save(site, tree, {"rounds": rounds, "lam": best_lam})
  hardened = thr_lib.merge(frozen, tree)
  return Hardened("ft-clipact", clipped, hardened, "zero", "layer",
                  clean_accuracy=accuracy(clipped, hardened, eval_set),
                  baseline_accuracy=accuracy(model, frozen, eval_set),
                  sites=site_summary(tree, order), wall_time=time.time() - t0,
                  extra={"search": [s for s in store.stages]})
