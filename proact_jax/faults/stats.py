"""Statistics of fault-injection campaigns: confidence intervals, sample sizes, stopping rules.

numpy/scipy only. Intervals are Student-t intervals on the mean of per-trial accuracies; where
they would leave the possible range (an accuracy outside [0, 1], e.g. a mean near 100 % over
few trials) they are clipped to it (``bounds``), not replaced by Wilson intervals: the samples
are per-trial accuracies, not one binomial proportion.
Sample-size planning follows Leveugle et al., "Statistical fault injection: quantified error and
confidence", DATE 2009, or a pilot run's variance.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps


def _t(confidence: float, dof: float) -> float:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  return float(sps.t.ppf(0.5 + confidence / 2.0, dof))


def summarize(acc_samples: Sequence[float], confidence: float = 0.95,
              bounds: tuple[float, float] | None = None) -> dict:
  """Mean of the samples with its Student-t confidence interval.

  Args:
    bounds: the range the samples' mean cannot leave (``(0, 1)`` for accuracies); the interval
      is clipped to it (``half_width`` stays the t half-width).

  Returns:
    ``dict(n, mean, std, ci_low, ci_high, half_width)``; ``std`` is the sample standard
    deviation (ddof=1). With fewer than 2 samples the interval is infinite (nan for none).
  """
  x = np.asarray(acc_samples, np.float64).ravel()
  n = int(x.size)
  mean = float(x.mean()) if n else math.nan
  std = float(x.std(ddof=1)) if n > 1 else math.nan
  half = _t(confidence, n - 1) * std / math.sqrt(n) if n > 1 else math.inf
  if n == 0:
    half = math.nan
  low, high = mean - half, mean + half
  if bounds is not None and n:
    low, high = (float(np.clip(v, *bounds)) for v in (low, high))
  return dict(n=n, mean=mean, std=std, ci_low=low, ci_high=high, half_width=half)


def leveugle_sample_size(population: int, margin: float, confidence: float = 0.95,
                         p: float = 0.5) -> int:
  """Leveugle et al. (DATE 2009): ``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))``, rounded up.

  Args:
    population: N, the number of possible faults (e.g. ``n_bits`` of the fault space).
    margin: e, the error margin on a proportion (e.g. 0.01).
    confidence: sets t, the two-sided standard normal quantile (1.96 at 95%).
    p: the estimated proportion; 0.5 is the worst case.
  """
  if population < 1 or not 0 < margin < 1 or not 0 < p < 1:
    raise ValueError("need population >= 1, 0 < margin < 1, 0 < p < 1")
  t = float(sps.norm.ppf(0.5 + confidence / 2.0))
  n = population / (1.0 + margin ** 2 * (population - 1) / (t ** 2 * p * (1.0 - p)))
  return int(math.ceil(n - 1e-9))


def pilot_sample_size(pilot: Sequence[float], margin: float, confidence: float = 0.95) -> int:
  """Trials for a half-width of ``margin``: ``n = ceil((t s / e)^2)`` from a pilot's std ``s``
  (t from Student-t with the pilot's degrees of freedom); at least the pilot's size."""
  x = np.asarray(pilot, np.float64).ravel()
  if x.size < 2 or margin <= 0:
    raise ValueError("need at least 2 pilot samples and margin > 0")
  return sample_size_from_std(float(x.std(ddof=1)), margin, confidence, dof=x.size - 1)


def sample_size_from_std(std: float, margin: float, confidence: float = 0.95,
                         dof: float = math.inf) -> int:
  """``ceil((t * std / margin)^2)`` (t normal when ``dof`` is infinite)."""
  t = float(sps.norm.ppf(0.5 + confidence / 2.0)) if math.isinf(dof) else _t(confidence, dof)
  return max(1, int(math.ceil((t * std / margin) ** 2 - 1e-9)))


def should_stop(samples: Sequence[float], target_half_width: float, min_trials: int = 30,
                confidence: float = 0.95, max_trials: int | None = None) -> bool:
  """Sequential mode: stop once ``min_trials`` are done and the t half-width is at most the
  target (or ``max_trials`` is reached)."""
  n = int(np.size(samples))
  if max_trials is not None and n >= max_trials:
    return True
  if n < max(2, min_trials):
    return False
  return summarize(samples, confidence)["half_width"] <= target_half_width


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      bounds: tuple[float, float] | None = None) -> dict:
  """Mean of ``a[i] - b[i]`` (trials sharing a fault draw) with its own t interval.

  Returns the :func:`summarize` dict of the differences.
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
  return summarize(a - b, confidence, bounds)


def unpaired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
  """Welch interval on ``mean(a) - mean(b)`` for independent samples (for comparison)."""
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  mean = float(a.mean() - b.mean())
  half = _t(confidence, dof) * math.sqrt(va + vb)
  return dict(n=int(a.size), mean=mean, std=math.nan, ci_low=mean - half, ci_high=mean + half,
              half_width=half)


def paired_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sided paired t-test p-value of ``mean(a - b) = 0`` (1 when every difference is 0,
  0 when they are all equal and nonzero; nan with fewer than 2 pairs)."""
  d = np.asarray(a, np.float64).ravel() - np.asarray(b, np.float64).ravel()
  if d.size < 2:
    return math.nan
  sd = float(d.std(ddof=1))
  if sd == 0.0:
    return 1.0 if float(d.mean()) == 0.0 else 0.0
  t = float(d.mean()) / (sd / math.sqrt(d.size))
  return float(2.0 * sps.t.sf(abs(t), d.size - 1))


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (Holm 1979), in the input order.

  Sorted ascending, ``p_adj(j) = max_{i <= j} min(1, (m - i + 1) p(i))`` with ``m`` the number
  of finite p-values (nan stays nan and does not count). Monotone in the sorted order; rejecting
  ``p_adj <= alpha`` controls the family-wise error rate at ``alpha`` under any dependence.
  """
  p = np.asarray(pvalues, np.float64).ravel()
  out = np.full(p.shape, math.nan)
  idx = np.flatnonzero(np.isfinite(p))
  m = idx.size
  if m == 0:
    return out
  order = idx[np.argsort(p[idx], kind="stable")]
  running = 0.0
  for j, i in enumerate(order):
    running = max(running, min(1.0, (m - j) * p[i]))
    out[i] = running
  return out


def pairwise_should_stop(samples: Sequence[Sequence[float]], target_half_width: float,
                         min_trials: int = 30, confidence: float = 0.95,
                         max_trials: int | None = None, family_multiplier: int = 1) -> bool:
  """Paired sequential stopping rule over several variants' per-trial accuracies (same trials).

  Stop once ``min_trials`` are done and every pairwise difference either excludes 0 after
  Holm's correction over the pairs given, times ``family_multiplier`` (Bonferroni over e.g. the
  campaign's BERs, which are decided one after another), at level ``1 - confidence``, or has a
  t half-width <= the target; or at ``max_trials``. With fewer than 2 variants it is
  :func:`should_stop` on each. The rule looks at the data after every chunk, and the p-values
  are not corrected for those repeated looks: a difference declared at the stop is a screening
  result; report it with the final fixed-sample Holm p-values.
  """
  arrays = [np.asarray(s, np.float64).ravel() for s in samples]
  if len(arrays) < 2:
    return all(should_stop(a, target_half_width, min_trials, confidence, max_trials)
               for a in arrays)
  n = min(a.size for a in arrays)
  if max_trials is not None and n >= max_trials:
    return True
  if n < max(2, min_trials):
    return False
  pairs = [(i, j) for j in range(len(arrays)) for i in range(j)]
  diffs = [arrays[j][:n] - arrays[i][:n] for i, j in pairs]
  return all(decided([paired_pvalue(d, np.zeros(n)) for d in diffs],
                     [summarize(d, confidence)["half_width"] for d in diffs],
                     target_half_width, confidence, family_multiplier))


def decided(pvalues: Sequence[float], half_widths: Sequence[float], target_half_width: float,
            confidence: float = 0.95, family_multiplier: int = 1) -> list[bool]:
  """The paired stopping rule's verdict per comparison: its p-value, Holm-adjusted over the
  comparisons given and multiplied by ``family_multiplier``, is <= ``1 - confidence``, or its
  half-width is <= the target (:func:`pairwise_should_stop`; the stratified campaign applies it
  to stratified tests)."""
  p_adj = np.minimum(1.0, holm(pvalues) * max(1, int(family_multiplier)))
  return [bool(p <= 1.0 - confidence or h <= target_half_width)
          for p, h in zip(p_adj, half_widths)]


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool],
            confidence: float = 0.95) -> dict:
  """Paired comparison of two classifiers' accuracies on the same images (McNemar 1947).

  ``n10``: images ``a`` gets right and ``b`` wrong, ``n01`` the reverse; the difference
  ``d = (n10 - n01) / n`` gets the Wald interval ``d +- z sqrt(((n10 + n01) / n - d^2) / n)``
  and the exact two-sided McNemar p-value ``min(1, 2 P(X <= min(n10, n01)))``, ``X ~
  Binomial(n10 + n01, 1/2)`` (1 without discordant images).

  Raises:
    ValueError: arrays of different or zero length.
  """
  a = np.asarray(a_correct, bool).ravel()
  b = np.asarray(b_correct, bool).ravel()
  if a.size != b.size or a.size == 0:
    raise ValueError(f"paired correctness arrays must have the same, nonzero length; got "
                     f"{a.size} and {b.size}")
  n = a.size
  n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
  d = (n10 - n01) / n
  z = float(sps.norm.ppf(0.5 + confidence / 2.0))
  half = z * math.sqrt(max(0.0, (n10 + n01) / n - d * d) / n)
  disc = n10 + n01
  p = 1.0 if disc == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(n10, n01), disc, 0.5)))
  return dict(n=n, n10=n10, n01=n01, diff=d, ci_low=d - half, ci_high=d + half, p=p)
