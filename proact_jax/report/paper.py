"""The paper's Table IV next to ours (Mousavi et al., "ProAct", Table IV).

The paper reports, per model and dataset, the accuracy drop of FT-ClipAct, FitAct and ProAct at
one BER, relative to the model's own clean baseline (its Table I) and without intervals. Our row
for the same cell is Table IV's drop (the baseline's clean accuracy minus the variant's mean
accuracy under faults, :func:`tables.table4_rows`) with its 95 % interval, under the campaign's
fault rule: ``bernoulli`` (independent flips) or ``toolbox-floor`` (the authors' toolbox: exactly
floor(n x bits x BER) flips per leaf), so a reader sees whether the paper's ordering appears
under its own rule.
"""

from __future__ import annotations

import math
from typing import Sequence

from proact_jax.report.table_format import _ber, _col, _pct

__all__ = ["PAPER_BASELINES", "PAPER_TABLE4", "paper_rows"]

# (model, dataset, BER) -> accuracy drop in percent, as printed in the paper's Table IV
PAPER_TABLE4 = {
    ("alexnet", "cifar10", 1e-6): {"ft-clipact": 7.67, "fitact": 4.34, "proact": 2.52},
    ("vgg16", "cifar10", 3e-6): {"ft-clipact": 3.19, "fitact": 2.61, "proact": 1.88},
    ("resnet50", "cifar10", 1e-6): {"ft-clipact": 9.09, "fitact": 1.53, "proact": 1.42},
    ("alexnet", "cifar100", 3e-7): {"ft-clipact": 7.89, "fitact": 6.31, "proact": 5.28},
    ("vgg16", "cifar100", 1e-7): {"ft-clipact": 6.74, "fitact": 6.34, "proact": 4.40},
    ("resnet50", "cifar100", 3e-7): {"ft-clipact": 12.75, "fitact": 11.24, "proact": 9.37},
}
# the paper's Table I: clean baseline accuracy in percent
PAPER_BASELINES = {("alexnet", "cifar10"): 81.67, ("vgg16", "cifar10"): 89.87,
                   ("resnet50", "cifar10"): 91.11, ("alexnet", "cifar100"): 55.44,
                   ("vgg16", "cifar100"): 65.45, ("resnet50", "cifar100"): 74.37}


def paper_rows(table4: Sequence[dict], rules: dict) -> list[dict]:
  """Our Table IV rows at the paper's cells, beside the paper's drops.

  Args:
    table4: :func:`tables.table4_rows`.
    rules: ``{(model, dataset): fault rule}`` of the campaigns behind those rows.

  Returns:
    One row per (model, dataset, BER, method) the paper reports and the campaign measured:
    ``paper_drop`` (points), ``drop`` with its interval (fractions), the baselines.
  """
  out = []
  for r in table4:
    key = (r["model"], r["dataset"])
    cell = next((v for (m, d, b), v in PAPER_TABLE4.items()
                 if (m, d) == key and math.isclose(b, r["ber"], rel_tol=1e-9)), None)
    if cell is None or r["variant"] not in cell:
      continue
    out.append({"model": r["model"], "dataset": r["dataset"], "ber": r["ber"],
                "method": r["variant"], "fault_rule": rules.get(key, "bernoulli"),
                "paper_drop": cell[r["variant"]], "paper_baseline": PAPER_BASELINES[key],
                "n": r["n"], "baseline_accuracy": r["baseline_accuracy"], "drop": r["drop"],
                "drop_ci_low": r["drop_ci_low"], "drop_ci_high": r["drop_ci_high"]})
  return out


PAPER4 = (_col("model"), _col("dataset"), _col("ber", "BER", _ber), _col("method"),
          _col("fault_rule", "fault rule"),
          ("paper drop (pp; baseline)",
           lambda r: f"{r['paper_drop']:.2f} ({r['paper_baseline']:.2f} %)"),
          ("our drop (pp, 95% CI; baseline)", lambda r: (
              f"{_pct(r['drop'])} [{_pct(r['drop_ci_low'])}, {_pct(r['drop_ci_high'])}] "
              f"({_pct(r['baseline_accuracy'])} %)")),
          _col("n", "trials"))
