"""Paired clean accuracies of several checkpoints on the same test images (no faults).

Which hardened model is more accurate without faults is a paired question: every image is seen
by every variant, so the difference of two accuracies is judged on the images where exactly one
of them is right (McNemar's test, :func:`proact_jax.faults.stats.mcnemar`). :func:`clean_paired`
compares every pair of variants, Holm-adjusts the exact McNemar p-values over that family, and
:func:`clean_paired_markdown` renders the table ``proact clean`` writes next to its JSON.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from proact_jax.faults.stats import holm, mcnemar

__all__ = ["clean_paired", "clean_paired_markdown"]


def clean_paired(correct: Mapping[str, np.ndarray], confidence: float = 0.95) -> dict:
  """``correct``: per variant, a bool per test image (same images, same order).

  Returns ``{"n": images, "accuracy": {variant: acc}, "pairs": [...], "family": text}``; each
  pair ``{a, b, diff = acc_a - acc_b, ci_low, ci_high, n10, n01, p, p_holm}`` for ``a`` before
  ``b`` in the input order.

  Raises:
    ValueError: fewer than 2 variants, or arrays of different lengths.
  """
  names = list(correct)
  if len(names) < 2:
    raise ValueError(f"a paired clean comparison needs at least 2 variants, got {len(names)}")
  sizes = {int(np.size(correct[n])) for n in names}
  if len(sizes) != 1:
    raise ValueError(f"every variant must be scored on the same images, got sizes {sorted(sizes)}")
  pairs = []
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      pairs.append({"a": a, "b": b, **mcnemar(correct[a], correct[b], confidence)})
  for pair, p in zip(pairs, holm([q["p"] for q in pairs])):
    pair["p_holm"] = float(p)
  n = sizes.pop()
  return {"n": n, "confidence": confidence,
          "accuracy": {k: float(np.mean(np.asarray(correct[k], bool))) for k in names},
          "pairs": pairs,
          "family": f"the {len(pairs)} pairs of the {len(names)} variants (Holm over them)"}


def clean_paired_markdown(result: dict) -> str:
  """The comparison as Markdown: accuracies, then one row per pair."""
  pct = 100 * result["confidence"]
  lines = [f"Clean test accuracy on the same {result['n']:,} images (no faults):", "",
           "| variant | accuracy (%) |", "|---|---|"]
  lines += [f"| {k} | {100 * v:.2f} |" for k, v in result["accuracy"].items()]
  lines += ["", f"Paired differences a - b (pp) with {pct:g} % Wald intervals, exact McNemar "
            f"p-values and Holm-adjusted ones; family: {result['family']}. n10: images only a "
            "gets right, n01: only b.", "",
            "| a - b | diff (pp) | CI (pp) | n10 | n01 | p | p_Holm |",
            "|---|---|---|---|---|---|---|"]
  for q in result["pairs"]:
    lines.append(f"| {q['a']} - {q['b']} | {100 * q['diff']:+.2f} | "
                 f"[{100 * q['ci_low']:.2f}, {100 * q['ci_high']:.2f}] | {q['n10']} | "
                 f"{q['n01']} | {q['p']:.3g} | {q['p_holm']:.3g} |")
  return "\n".join(lines) + "\n"
