"""The rounds of a stratified campaign (:mod:`proact_jax.faults.stratified`): what each round
aims at (the targets: variant means, pairwise differences, or the pairs still open under
``stop_pairwise``) and how many trials each stratum gets next (:mod:`proact_jax.faults.strata`'s
Neyman and target allocations). Pure numpy on the trials' outcomes, so the schedule depends
only on them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from proact_jax.faults import stats, strata


def _differences(samples: dict, pairs: Sequence[tuple[str, str]]) -> list[list[np.ndarray]]:
  """Per pair (a, b), the per-stratum paired differences a - b."""
  return [[x - y for x, y in zip(samples[a], samples[b])] for a, b in pairs]


def _targets(samples: dict, pairs: Sequence[tuple[str, str]]) -> list[list[np.ndarray]]:
  """Per target (each variant, then each pair's difference), its per-stratum samples."""
  return list(samples.values()) + _differences(samples, pairs)


def _undecided(samples: dict, w: np.ndarray, half_width: float, confidence: float,
               family: int) -> list[list[np.ndarray]]:
  """``stop_pairwise``: the targets still open at this BER. Every pair of the protected
  variants (all but ``relu``) is decided by :func:`stats.decided` on its stratified paired
  difference (Holm over the pairs, times ``family``: the BERs, decided one after another);
  returns the per-stratum differences of the open pairs (with fewer than 2 protected variants:
  their open means)."""
  names = [v for v in samples if v != "relu"]
  if len(names) < 2:
    return [samples[v] for v in names
            if not strata.stratified_summary(samples[v], w, confidence)["half_width"]
            <= half_width]
  diffs = _differences(samples, [(a, b) for j, a in enumerate(names) for b in names[:j]])
  sums = [strata.stratified_summary(d, w, confidence) for d in diffs]
  done = stats.decided([strata.stratified_pvalue(x) for x in sums],
                       [x["half_width"] for x in sums], half_width, confidence, family)
  return [d for d, ok in zip(diffs, done) if not ok]


def _next_counts(w: np.ndarray, counts: np.ndarray, targets: list, *, total: int | None,
                 half_width: float | None, max_total: int, grow_min: int,
                 confidence: float) -> np.ndarray:
  """The next round's trials per stratum (the schedule in :mod:`stratified`'s docstring);
  ``counts`` when done."""
  done = int(counts.sum())
  sig = np.array([strata.allocation_sigmas(t, w) for t in targets])
  if half_width is None:
    goal = min(int(total), max(2 * done, done + 1))
    return strata.neyman_allocation(w, np.sqrt(np.mean(sig ** 2, 0)), goal, lower=counts)
  room = max(0, max_total - done)
  want = strata.target_allocation(w, sig, half_width, confidence, lower=counts)
  nxt = strata.grow_counts(counts, want, min(max(grow_min, done), room))
  if int(nxt.sum()) == done and room:  # the plan says enough but the intervals disagree
    nxt = strata.neyman_allocation(w, np.sqrt(np.mean(sig ** 2, 0)), done + min(grow_min, room),
                                   lower=counts)
  return nxt
