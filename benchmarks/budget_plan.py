"""Trials and image evaluations needed for a CI target, planned from a campaign's results file.

  python benchmarks/budget_plan.py RESULTS.jsonl [--variant relu] [--target 0.5] \
      [--images 100,250,500,1000,10000] [--test-set 10000]

Per-trial accuracy on ``m`` images drawn without replacement from a test set of ``N`` has
variance ``Var_fault + Var_image (N - m) / ((N - 1) m)``: ``Var_fault`` is the trial-to-trial
variance of the accuracy on the whole test set (it comes from the random faults) and
``Var_image = E[p (1 - p)]`` the per-image Bernoulli variance within a trial (finite-population
corrected; it vanishes at ``m = N``). For each BER of the file this estimates

* ``Var_image`` as the mean over trials of ``p (1 - p)`` (``p`` the trial's accuracy), and
* ``Var_fault`` as the sample variance of the trial accuracies, minus the image term of the
  file's own subset size if its trials used random subsets (``images_per_trial`` in the
  config; ``N`` there is the file's eval set); with a fixed image set the image term does not
  vary from trial to trial, so the sample variance is used as is,

then prints for each ``m`` the trials ``n(m) = ceil(z^2 (Var_fault + Var_image (N - m) /
((N - 1) m)) / h^2)`` for a half-width ``h`` (normal z at 95%), the image evaluations
``n(m) m`` and their ratio to the paper's ``500 x N`` per BER and over all BERs, and whether
the paper's 500 trials on all ``N`` images reach the target. The variances are pilot estimates:
the plan is as good as the file's trial count (30+ trials per BER is a sensible pilot).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from scipy.stats import norm

from proact_jax.faults import stats
from proact_jax.faults.results import load_results

PAPER_TRIALS = 500
Z95 = float(norm.ppf(0.975))


def variance_terms(acc: np.ndarray, eval_n: int, images_per_trial: int | None) -> tuple:
  """(Var_fault, Var_image) from one BER's trial accuracies (see module docstring)."""
  acc = np.asarray(acc, np.float64)
  var_image = float(np.mean(acc * (1 - acc)))
  total = float(np.var(acc, ddof=1)) if acc.size > 1 else math.nan
  if images_per_trial is not None and images_per_trial < eval_n:
    m = images_per_trial
    total -= var_image * (eval_n - m) / ((eval_n - 1) * m)
  return max(0.0, total), var_image


def trials_needed(var_fault: float, var_image: float, m: int, n_test: int,
                  half_width: float, confidence: float = 0.95) -> int:
  """``ceil(z^2 (Var_fault + Var_image (N - m) / ((N - 1) m)) / h^2)``."""
  var = var_fault + var_image * (n_test - m) / ((n_test - 1) * m)
  return stats.sample_size_from_std(math.sqrt(var), half_width, confidence)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("results", help="campaign results file (JSONL)")
  p.add_argument("--variant", default=None, help="variant to plan for (default: the first)")
  p.add_argument("--target", type=float, default=0.5, help="95%% CI half-width in points")
  p.add_argument("--images", default="100,250,500,1000,10000", help="subset sizes m to plan")
  p.add_argument("--test-set", type=int, default=10_000, help="N, the full test set's size")
  args = p.parse_args(argv)
  try:
    res = load_results(args.results)
    if "strata" in res.config:
      raise ValueError(f"{args.results} is a stratified campaign: its trials are not a plain "
                       "sample (see benchmarks/bench_stratified.py)")
    variant = args.variant or res.variants[0]
    if variant not in res.variants:
      raise ValueError(f"no variant {variant!r} in {args.results} ({', '.join(res.variants)})")
    sizes = [int(s) for s in args.images.split(",") if s.strip()]
    n_test = int(args.test_set)
    if args.target <= 0 or n_test < 2 or not sizes or any(not 1 <= m <= n_test for m in sizes):
      raise ValueError("need --target > 0, --test-set >= 2 and 1 <= m <= --test-set in --images")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  h = args.target / 100.0
  cfg = res.config
  m0, eval_n = cfg.get("images_per_trial"), int(cfg["eval_set"]["n"])
  print(f"{args.results}: variant {variant}, eval set {eval_n} images, trials on "
        + (f"random subsets of {m0}" if m0 else "all of them")
        + f"; target half-width {args.target} pp at 95%, test set N = {n_test:,}")
  totals = {m: 0 for m in sizes}
  paper = PAPER_TRIALS * n_test
  for i, ber in enumerate(res.bers):
    acc = res.trials[variant][i]["accuracy"]
    if acc.size < 2:
      print(f"BER {ber:.0e}: fewer than 2 trials, skipped")
      continue
    vf, vi = variance_terms(acc, eval_n, m0)
    paper_hw = Z95 * math.sqrt(vf / PAPER_TRIALS)
    print(f"BER {ber:.0e}: {acc.size} trials, mean {100 * acc.mean():.2f}%, sd_fault "
          f"{100 * math.sqrt(vf):.2f} pp, sd_image {100 * math.sqrt(vi):.1f} pp; paper "
          f"{PAPER_TRIALS} x {n_test:,}: half-width {100 * paper_hw:.2f} pp "
          f"({'reaches' if paper_hw <= h else 'misses'} the target)")
    for m in sizes:
      n = trials_needed(vf, vi, m, n_test, h)
      totals[m] += n * m
      print(f"    m={m:6d}: trials {n:7d}, image evaluations {n * m:12,d} "
            f"({n * m / paper:.4f} x {PAPER_TRIALS} x N)")
  nb = len(res.bers)
  print(f"total over {nb} BERs (paper {PAPER_TRIALS} x {n_test:,} x {nb} = {paper * nb:,}):")
  for m in sizes:
    r = totals[m] / (paper * nb)
    print(f"    m={m:6d}: image evaluations {totals[m]:12,d} (ratio {r:.4f}"
          + (f", 1/{1 / r:.1f})" if 0 < r < 1 else ")"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
