"""Stratified estimation on the number of flips in a critical set of bits (numpy/scipy only).

Model (DESIGN.md section 3): every stored bit flips independently with probability ``p``. For a
chosen set ``C`` of ``n_C`` bit positions, the number of flips in it ``K_C ~ Binomial(n_C, p)``
is independent of the flips outside ``C``, and given ``K_C = k`` the flipped positions of ``C``
are a uniform ``k``-subset. So with strata ``h = 0, ..., k_max - 1`` (``K_C = h``) and a tail
``h = k_max`` (``K_C >= k_max``),

    E[acc] = sum_h W_h E[acc | stratum h],   W_h = P(K_C = h) (h < k_max),  W_tail = P(K_C >= k_max),

with exactly known weights (:func:`stratum_weights`: scipy's binomial pmf and survival function
in float64). A trial of stratum ``h`` draws ``K_C`` (``h``, or for the tail from the truncated
binomial, :func:`tail_thresholds`), a uniform ``K_C``-subset of ``C``, and the flips outside
``C`` from the ordinary Bernoulli model.

Estimator (:func:`stratified_summary`), per variant, from ``n_h`` trials with outcomes
``y_hi`` in every stratum of positive weight (strata of zero weight are never sampled):

    mean = sum_h W_h ybar_h
    var  = sum_h W_h^2 s_h^2 / n_h                      (s_h^2: sample variance, ddof 1)
    dof  = var^2 / sum_h (W_h^2 s_h^2 / n_h)^2 / (n_h - 1)   (Welch-Satterthwaite)
    CI   = mean +- t_{(1 + confidence) / 2, dof} sqrt(var)

A stratum of positive weight with fewer than 2 trials makes the interval infinite (as
:func:`stats.summarize` with one sample); ``var = 0`` gives a zero-width interval. Paired
differences of two variants (:func:`stratified_difference`) apply the same formulas to the
per-trial differences ``a_hi - b_hi`` (every variant sees the same faults in trial ``i`` of
stratum ``h``).

Allocation (:func:`neyman_allocation`, :func:`target_allocation`): for a total ``N``, Neyman's
``n_h = N W_h sigma_h / sum_g W_g sigma_g`` minimises ``var``; for a half-width target ``e``
the smallest total is ``N = (z sum_h W_h sigma_h / e)^2``. ``sigma_h`` is estimated from the
trials run so far, shrunk towards the pooled variance so that a stratum whose first trials
happen to agree is not starved: ``sigma_h^2 = ((n_h - 1) s_h^2 + s_pool^2) / n_h``. With
several targets (variant means, optionally their differences) each stratum gets the largest of
the targets' allocations (each target then meets its variance bound). Allocation changes only
how many trials each stratum gets, not what a trial computes; choosing sample sizes from the
data observed so far (adaptive allocation, sequential stopping) is the usual practice and adds
a bias of lower order than the standard error.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["allocation_sigmas", "grow_counts", "neyman_allocation", "stratified_difference",
           "stratified_pvalue",
           "stratified_summary", "stratum_weights", "tail_length", "tail_pmf", "tail_thresholds",
           "target_allocation"]

_TWO64 = 1 << 64


def _check(n_bits: int, p: float, k_max: int) -> tuple[int, float, int]:
  n_bits, p, k_max = int(n_bits), float(p), int(k_max)
  if n_bits < 1:
    raise ValueError(f"the critical set must hold at least one bit, got {n_bits}")
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"bit error rate must be in [0, 1], got {p}")
  if k_max < 1:
    raise ValueError(f"k_max (the tail stratum's first count) must be >= 1, got {k_max}")
  return n_bits, p, k_max


def stratum_weights(n_bits: int, p: float, k_max: int) -> np.ndarray:
  """``[P(K = 0), ..., P(K = k_max - 1), P(K >= k_max)]`` for ``K ~ Binomial(n_bits, p)``.

  float64 from scipy's pmf and survival function (the tail is not ``1 - sum``: it stays
  accurate when tiny). Strata above ``n_bits`` get weight 0.
  """
  n_bits, p, k_max = _check(n_bits, p, k_max)
  w = np.zeros(k_max + 1)
  w[:k_max] = sps.binom.pmf(np.arange(k_max), n_bits, p)
  w[k_max] = sps.binom.sf(k_max - 1, n_bits, p)
  if p == 0.0:  # scipy's degenerate cases, spelled out
    w[:] = 0.0
    w[0] = 1.0
  elif p == 1.0:
    w[:] = 0.0
    w[min(n_bits, k_max)] = 1.0
  return w


def _tail_sf(n_bits: int, p: float, k_max: int, j: np.ndarray) -> np.ndarray:
  """``P(K > k_max + j | K >= k_max)`` for integer ``j >= 0``."""
  if p == 1.0:
    return (k_max + j < n_bits).astype(np.float64)
  den = sps.binom.logsf(k_max - 1, n_bits, p)
  return np.exp(sps.binom.logsf(k_max + j, n_bits, p) - den)


def tail_length(n_bits: int, p: float, k_max: int) -> int:
  """Smallest table length ``L`` for which ``k_max + L - 1`` bounds the tail's draws:
  ``P(K > k_max + L - 2 | K >= k_max) < 2^-65`` (rounds to 0 in 64-bit thresholds)."""
  n_bits, p, k_max = _check(n_bits, p, k_max)
  if stratum_weights(n_bits, p, k_max)[k_max] == 0.0:
    return 1
  size = 64
  while True:
    j = np.arange(size)
    small = np.nonzero((_tail_sf(n_bits, p, k_max, j) * 2.0 ** 64 < 0.5)
                       | (k_max + j >= n_bits))[0]
    if small.size:
      return int(small[0]) + 2
    size *= 4


def tail_thresholds(n_bits: int, p: float, k_max: int, length: int) -> np.ndarray:
  """Inversion table of the truncated binomial ``K | K >= k_max``: uint32 ``[2, length - 1]``.

  Column ``j`` is the 64-bit integer ``T_j = 2^64 - round(2^64 P(K > k_max + j | K >= k_max))``
  split into (high, low) words. With ``u`` uniform on ``[0, 2^64)``, ``K = k_max + #{j : u >=
  T_j}`` has the truncated distribution up to the rounding of each probability to a multiple of
  2^-64 (a threshold of 2^64, an impossible event, is stored as 2^64 - 1). ``length`` must be at
  least :func:`tail_length` (larger is fine: the extra columns never fire). A tail of weight 0
  gives an all-ones table (never sampled).
  """
  n_bits, p, k_max = _check(n_bits, p, k_max)
  length = int(length)
  if length < 1:
    raise ValueError(f"table length must be >= 1, got {length}")
  out = np.full((2, max(length - 1, 0)), 0xFFFFFFFF, np.uint32)
  if length == 1 or stratum_weights(n_bits, p, k_max)[k_max] == 0.0:
    return out
  need = tail_length(n_bits, p, k_max)
  if length < need:
    raise ValueError(f"tail table of length {length} is shorter than the {need} needed")
  sf = _tail_sf(n_bits, p, k_max, np.arange(length - 1))
  for j, s in enumerate(sf):
    t = min(_TWO64 - int(round(float(s) * 2.0 ** 64)), _TWO64 - 1)
    out[0, j], out[1, j] = t >> 32, t & 0xFFFFFFFF
  return out


def tail_pmf(n_bits: int, p: float, k_max: int, length: int) -> np.ndarray:
  """``P(K = k_max + j | K >= k_max)`` for ``j < length`` (for tests and reports)."""
  n_bits, p, k_max = _check(n_bits, p, k_max)
  sf = np.concatenate([[1.0], _tail_sf(n_bits, p, k_max, np.arange(length))])
  return sf[:-1] - sf[1:]


# --------------------------------------------------------------------------- estimator


def _strata_arrays(samples: Sequence[Sequence[float]], weights) -> tuple[np.ndarray, list]:
  w = np.asarray(weights, np.float64).ravel()
  if len(samples) != w.size:
    raise ValueError(f"{len(samples)} strata of samples but {w.size} weights")
  if np.any(w < 0) or not math.isclose(float(w.sum()), 1.0, rel_tol=0, abs_tol=1e-9):
    raise ValueError(f"stratum weights must be >= 0 and sum to 1, got {w.tolist()}")
  return w, [np.asarray(s, np.float64).ravel() for s in samples]


def stratified_summary(samples: Sequence[Sequence[float]], weights,
                       confidence: float = 0.95) -> dict:
  """The stratified mean with its Welch-Satterthwaite t interval (module docstring).

  Args:
    samples: per stratum, the outcomes of its trials (strata of weight 0 are ignored).
    weights: the stratum weights (sum 1).
    confidence: the interval's coverage.

  Returns:
    ``dict(n, mean, std, ci_low, ci_high, half_width, dof, var, n_strata)``: ``n`` the trials
    in strata of positive weight, ``std = sqrt(n var)`` (the standard deviation a plain sample
    of ``n`` trials would need for the same interval width), ``n_strata`` the trials per
    stratum. Mean nan if a stratum of positive weight has no trial; infinite interval if one
    has fewer than 2.
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  w, xs = _strata_arrays(samples, weights)
  live = w > 0
  counts = np.array([x.size for x in xs])
  n = int(counts[live].sum())
  out = dict(n=n, mean=math.nan, std=math.nan, ci_low=math.nan, ci_high=math.nan,
             half_width=math.nan, dof=math.nan, var=math.nan, n_strata=counts.tolist())
  if np.any(counts[live] == 0):
    return out
  mean = float(sum(wh * x.mean() for wh, x, ok in zip(w, xs, live) if ok))
  out["mean"] = mean
  if np.any(counts[live] < 2):
    out.update(ci_low=-math.inf, ci_high=math.inf, half_width=math.inf)
    return out
  terms = np.array([wh * wh * x.var(ddof=1) / x.size for wh, x, ok in zip(w, xs, live) if ok])
  var = float(terms.sum())
  den = float(np.sum(terms ** 2 / (counts[live] - 1)))
  dof = var * var / den if den > 0 else math.inf
  t = float(sps.t.ppf(0.5 + confidence / 2.0, dof)) if math.isfinite(dof) else float(
      sps.norm.ppf(0.5 + confidence / 2.0))
  half = t * math.sqrt(var)
  out.update(std=math.sqrt(n * var), ci_low=mean - half, ci_high=mean + half, half_width=half,
             dof=dof, var=var)
  return out


def stratified_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], weights,
                          confidence: float = 0.95) -> dict:
  """:func:`stratified_summary` of the paired differences ``a_hi - b_hi`` (same trials)."""
  if len(a) != len(b):
    raise ValueError(f"{len(a)} and {len(b)} strata")
  diffs = []
  for x, y in zip(a, b):
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
      raise ValueError(f"paired samples need equal lengths per stratum, got {x.size} and "
                       f"{y.size}")
    diffs.append(x - y)
  return stratified_summary(diffs, weights, confidence)


def stratified_pvalue(summary: dict) -> float:
  """Two-sided p-value of ``mean = 0`` from a :func:`stratified_summary` (of paired
  differences): ``2 P(T_dof > |mean| / sqrt(var))`` with the Welch-Satterthwaite degrees of
  freedom (normal when infinite); 1 when the variance is 0 and the mean 0, 0 when the variance is
  0 and the mean not; nan when the summary has no interval."""
  mean, var, dof = summary["mean"], summary["var"], summary["dof"]
  if not (math.isfinite(mean) and math.isfinite(var)):
    return math.nan
  if var == 0.0:
    return 1.0 if mean == 0.0 else 0.0
  z = abs(mean) / math.sqrt(var)
  return float(2.0 * (sps.t.sf(z, dof) if math.isfinite(dof) else sps.norm.sf(z)))


# --------------------------------------------------------------------------- allocation


def allocation_sigmas(samples: Sequence[Sequence[float]], weights) -> np.ndarray:
  """Per-stratum standard deviations for allocation, shrunk towards the pooled variance:
  ``sigma_h^2 = ((n_h - 1) s_h^2 + s_pool^2) / n_h`` (``s_pool^2``: the variance of every
  trial of the strata of positive weight pooled; 0 for strata of weight 0 or without trials)."""
  w, xs = _strata_arrays(samples, weights)
  live = [x for x, wh in zip(xs, w) if wh > 0 and x.size]
  pooled = np.concatenate(live) if live else np.zeros(0)
  s_pool = float(pooled.var(ddof=1)) if pooled.size > 1 else 0.25  # 0.25: a [0, 1] worst case
  out = np.zeros(w.size)
  for h, (x, wh) in enumerate(zip(xs, w)):
    if wh > 0:
      n = x.size
      ss = float(x.var(ddof=1)) * (n - 1) if n > 1 else 0.0
      out[h] = math.sqrt((ss + s_pool) / max(n, 1))
  return out


def neyman_allocation(weights, sigmas, total: int, lower=None) -> np.ndarray:
  """Integer trials per stratum summing to ``total``, proportional to ``W_h sigma_h`` and at
  least ``lower`` (Neyman allocation under lower bounds; strata of weight 0 get 0).

  Strata whose proportional share falls below their bound are fixed at the bound and the rest
  is shared again; shares are rounded by largest remainder. With every ``W_h sigma_h = 0`` the
  shares are proportional to ``W_h``. ``total`` below ``sum(lower)`` returns ``lower``.
  """
  w = np.asarray(weights, np.float64).ravel()
  s = np.asarray(sigmas, np.float64).ravel()
  low = np.zeros(w.size, np.int64) if lower is None else np.asarray(lower, np.int64).ravel()
  low = np.where(w > 0, low, 0)
  total = int(total)
  if total <= int(low.sum()):
    return low.copy()
  score = w * s
  if not np.any(score > 0):
    score = w.copy()
  fixed = np.zeros(w.size, bool) | (w <= 0)
  while True:
    free = ~fixed
    left = total - int(low[fixed].sum())
    share = np.where(free, score, 0.0)
    share = left * share / share.sum() if share.sum() > 0 else np.where(free, left / free.sum(),
                                                                        0.0)
    below = free & (share < low)
    if not below.any():
      break
    fixed |= below
  out = np.where(fixed, low, np.floor(share)).astype(np.int64)
  rest = total - int(out.sum())
  if rest > 0:
    frac = np.where(fixed, -1.0, share - np.floor(share))
    for h in np.argsort(-frac, kind="stable")[:rest]:
      out[h] += 1
  return out


def target_allocation(weights, sigma_rows, half_width: float, confidence: float = 0.95,
                      lower=None) -> np.ndarray:
  """Trials per stratum for which every target's interval reaches ``half_width`` (normal z).

  ``sigma_rows``: ``[targets, strata]`` allocation sigmas (:func:`allocation_sigmas` of each
  variant, or of each pair's differences). Per target, Neyman at the target,
  ``n_h = (z / e)^2 W_h sigma_h sum_g W_g sigma_g``; per stratum the largest over targets,
  rounded up, and at least ``lower``.
  """
  w = np.asarray(weights, np.float64).ravel()
  rows = np.atleast_2d(np.asarray(sigma_rows, np.float64))
  z = float(sps.norm.ppf(0.5 + confidence / 2.0))
  need = np.zeros(w.size)
  for s in rows:
    need = np.maximum(need, (z / half_width) ** 2 * w * s * float(np.sum(w * s)))
  out = np.ceil(need - 1e-9).astype(np.int64)
  if lower is not None:
    out = np.maximum(out, np.where(w > 0, np.asarray(lower, np.int64), 0))
  return np.where(w > 0, out, 0)


def grow_counts(current, desired, max_new: int) -> np.ndarray:
  """``desired`` (elementwise at least ``current``) if it adds at most ``max_new`` trials, else
  ``current`` plus ``max_new`` trials shared in proportion to the shortfalls (largest
  remainder, never above ``desired``)."""
  cur = np.asarray(current, np.int64).ravel()
  want = np.maximum(np.asarray(desired, np.int64).ravel(), cur)
  gap = want - cur
  max_new = max(0, int(max_new))
  if int(gap.sum()) <= max_new:
    return want
  share = max_new * gap / gap.sum()
  out = cur + np.floor(share).astype(np.int64)
  rest = max_new - int(np.floor(share).sum())
  for h in np.argsort(-(share - np.floor(share)), kind="stable")[:rest]:
    out[h] += 1
  return np.minimum(out, want)
