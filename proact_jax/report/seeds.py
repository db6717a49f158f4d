"""Headlines over several seeds: distributions with intervals across seeds, not one draw.

Each run is one seed's record::

    {"seed": s, "baseline_accuracy": a, "clean_drop": {method: drop},
     "campaign": {rule: {"METHOD@BER": {"mean": ..., "mean_flips": ... (optional)}}}}

(accuracies as fractions). :func:`seeds_table` renders, in Markdown: each method's clean test
drop (mean over seeds with the 95 % Student-t interval over seeds, min-max), how many seeds kept
ProAct's drop under 1 point, and per fault rule the accuracy under faults and the paired
differences ProAct - X across seeds (paired t-test over seeds, Holm-adjusted over the table's
comparisons). Used by ``experiments/digits_seeds.py`` and ``experiments/cifar10_seeds.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from proact_jax.faults.stats import holm, paired_pvalue, summarize

__all__ = ["seeds_table"]


def _t_ci(x) -> tuple[float, float, float]:
  s = summarize(x)
  return s["mean"], s["ci_low"], s["ci_high"]


def _fmt(x) -> str:
  m, lo, hi = _t_ci(100 * np.asarray(x))
  return f"{m:.2f} [{lo:.2f}, {hi:.2f}] ({100 * min(x):.2f}-{100 * max(x):.2f})"


def seeds_table(runs: list[dict], bers: Sequence[float], methods: Sequence[str],
                rules: Sequence[str], intro: str, reference: str = "proact") -> str:
  """The Markdown table of ``runs`` (module docstring); ``methods[0]`` is the baseline.

  Raises:
    ValueError: fewer than 2 runs (no interval across seeds).
  """
  if len(runs) < 2:
    raise ValueError(f"need at least 2 seeds for an interval across seeds, got {len(runs)}")
  hardened = list(methods[1:])
  lines = [intro + " Cells: mean over seeds [95 % t interval over seeds] (min-max), in %.", ""]
  drops = {m: [r["clean_drop"][m] for r in runs] for m in methods}
  lines += ["Clean test accuracy drop vs the baseline (pp):", "",
            "| method | " + " | ".join(hardened) + " |", "|---|" + "---|" * len(hardened),
            "| drop | " + " | ".join(_fmt(drops[m]) for m in hardened) + " |", ""]
  pro = drops[reference]
  lines.append(f"ProAct's clean test drop < 1 pp in {sum(d < 0.01 for d in pro)} of "
               f"{len(pro)} seeds (largest {100 * max(pro):.2f} pp).")
  lines.append("Baseline test accuracy: " + _fmt([r["baseline_accuracy"] for r in runs]) + ".")
  others = [m for m in hardened if m != reference]
  for rule in rules:
    lines += ["", f"Accuracy under faults, fault rule **{rule}** (mean over the trials of each "
              "seed, then over seeds):", "",
              "| method | " + " | ".join(f"BER {b:g}" for b in bers) + " |",
              "|---|" + "---|" * len(bers)]
    acc = lambda m, b: [r["campaign"][rule][f"{m}@{b:g}"]["mean"] for r in runs]  # noqa: E731
    for m in methods:
      lines.append(f"| {m} | " + " | ".join(_fmt(acc(m, b)) for b in bers) + " |")
    lines += ["", f"ProAct - X across seeds (paired by seed), fault rule {rule}, pp:", "",
              "| comparison | " + " | ".join(f"BER {b:g}" for b in bers) + " |",
              "|---|" + "---|" * len(bers)]
    pv = [paired_pvalue(acc(reference, b), acc(m, b)) for m in others for b in bers]
    ph = iter(holm(pv))
    for m in others:
      cells = []
      for b in bers:
        d = np.subtract(acc(reference, b), acc(m, b))
        mean, lo, hi = _t_ci(100 * d)
        cells.append(f"{mean:+.2f} [{lo:.2f}, {hi:.2f}], p_Holm {next(ph):.2g}, "
                     f"{int(np.sum(d > 0))}/{len(d)} seeds > 0")
      lines.append(f"| {reference} - {m} | " + " | ".join(cells) + " |")
    lines += ["", f"(paired t-test across the {len(runs)} seeds; Holm family: the "
              f"{len(pv)} comparisons of this table, {len(others)} pairs x {len(bers)} BERs)"]
    key = lambda b: f"{methods[0]}@{b:g}"  # noqa: E731
    if all("mean_flips" in r["campaign"][rule][key(b)] for r in runs for b in bers):
      flips = {b: np.mean([r["campaign"][rule][key(b)]["mean_flips"] for r in runs])
               for b in bers}
      lines += ["", f"Mean flips per trial ({methods[0]}): " + ", ".join(
          f"{b:g}: {flips[b]:.1f}" for b in bers) + "."]
  return "\n".join(lines) + "\n"
