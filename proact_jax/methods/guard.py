"""ProAct's accuracy guard, sized so that the TEST accuracy drop stays under a target.

The toolbox keeps a site's new thresholds only while the validation accuracy stays within a
tolerance ``tau`` (0.2 points) of the baseline's. On a small validation split that does not hold
the test drop: the validation estimate of the drop has sampling error. The rule here:

Let ``c_b(i), c_s(i)`` in {0, 1} say whether the baseline and the candidate (clipped) model
classify image ``i`` correctly. The drop measured on ``n`` images is the mean of
``c_b(i) - c_s(i)``, which takes the values -1, 0, +1 with probabilities ``q-``, ``1 - q``, ``q+``
(``q = q+ + q-`` the disagreement rate), so it estimates ``D = q+ - q-`` with variance
``(q - D^2) / n <= q / n`` (a paired binomial SE: only disagreeing images count). The guard's
estimate ``d_val`` (``n_val`` validation images) and the reported test drop ``d_test``
(``n_test`` test images, independent of them) are both unbiased for ``D``, hence

    d_test - d_val ~ N(0, s^2),   s^2 <= q (1 / n_val + 1 / n_test).

Accept a candidate only if

    d_val <= tau   and   d_val + z * sqrt(q~ (1 / n_val + 1 / n_test)) <= target,

with ``q~ = (k + 1) / (n_val + 2)`` (``k`` disagreeing validation images; the +1 keeps the SE
from vanishing when the candidate agrees everywhere). Then ``d_test > target`` requires
``d_test - d_val > z s``, so ``P(test drop > target) <= 1 - Phi(z)`` (5 % at z = 1.645, the
default) for one candidate. The search checks many candidates (epochs x regularisation weights
x sites) and keeps the last accepted one, which favours candidates whose validation noise was
lucky, so the bound is approximate; `experiments/digits_seeds.py` checks it empirically.

What it means in practice: with ``target`` = 1 point (the paper's "< 1 %"), ``n_test`` = 10,000
and ``n_val`` = 2,000, a candidate disagreeing with the baseline on 2 % of the images may show a
validation drop of up to 1 - 1.645 sqrt(0.02 (1/2000 + 1/10000)) = 0.42 points; on the digits
demo (143 validation, 360 test images) even a candidate that agrees everywhere carries a
1.35-point margin, so nothing would be accepted: the demo holds out 500 validation images
(margin 0.51 points at k = 0). ``target=None`` gives the toolbox's fixed-tolerance rule.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from proact_jax.core.evaluate import EvalSet, _predict_jit, eval_apply


@dataclasses.dataclass(frozen=True)
class GuardRule:
  """Attributes:
    tolerance: ``tau``, the largest validation drop accepted (fraction: 0.002 = 0.2 points).
    target: the test drop not to exceed with probability ``>= Phi(z)`` (None: only ``tau``).
    z: the one-sided normal quantile (1.645: 95 %).
    test_images: ``n_test`` of the SE (0: as many as validation images).
  """
  tolerance: float = 0.002
  target: float | None = 0.01
  z: float = 1.645
  test_images: int = 0

  def margin(self, disagreements: int, n_val: int) -> float:
    """``z * sqrt(q~ (1 / n_val + 1 / n_test))``, ``q~ = (k + 1) / (n_val + 2)``."""
    n_test = self.test_images or n_val
    q = (disagreements + 1) / (n_val + 2)
    return self.z * math.sqrt(q * (1.0 / n_val + 1.0 / n_test))

  def accepts(self, drop: float, disagreements: int, n_val: int) -> bool:
    if drop > self.tolerance + 1e-12:
      return False
    return self.target is None or drop + self.margin(disagreements, n_val) <= self.target + 1e-12


def correct_per_image(model, variables, data: EvalSet) -> np.ndarray:
  """Bool vector: image ``i`` of ``data`` classified correctly (non-finite logits are wrong)."""
  logits = _predict_jit(eval_apply(model), dict(variables), data.x)
  ok = (jnp.argmax(logits, -1) == data.y) & jnp.all(jnp.isfinite(logits), -1)
  return np.asarray(ok).reshape(-1)[np.asarray(data.mask).reshape(-1)]


class AccuracyGuard:
  """``guard(model, variables) -> (accepted, val_accuracy, info)`` against a fixed baseline."""

  def __init__(self, base_model, base_variables, val_set: EvalSet, rule: GuardRule):
    self.rule, self.val = rule, val_set
    self.base = correct_per_image(base_model, base_variables, val_set)
    self.base_accuracy = float(self.base.mean())

  def __call__(self, model, variables) -> tuple[bool, float, dict]:
    cand = correct_per_image(model, variables, self.val)
    n = int(cand.size)
    drop = float(self.base.mean() - cand.mean())
    k = int(np.sum(cand != self.base))
    info = {"val_drop": drop, "disagreements": k, "margin": self.rule.margin(k, n)}
    return self.rule.accepts(drop, k, n), float(cand.mean()), info
