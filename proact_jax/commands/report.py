"""proact report RESULTS... --out DIR [--bers 1e-6,3e-6] [--reference relu]

RESULTS are campaign results files (JSONL, from ``proact sweep``) and/or activations files (JSON,
from :func:`proact_jax.report.activation_stats.save_activation_report`); the kind is read from
each file's header. Writes Tables II-V (markdown and CSV), the accuracy-vs-BER figure, the
activation histograms and ``report.md`` into DIR (see :mod:`proact_jax.report.tables` for the
definitions).
"""

from __future__ import annotations

import sys

from proact_jax.commands.args import parse_bers


def add_arguments(p):
  p.add_argument("results", nargs="*", metavar="RESULTS",
                 help="campaign results (.jsonl) and/or activations (.json) files")
  p.add_argument("--out", default=None, help="output directory (created)")
  p.add_argument("--bers", default=None,
                 help="comma-separated BERs for Table IV (default: every BER in the results)")
  p.add_argument("--reference", default=None,
                 help="variant the paired differences are taken against (default: relu, else "
                      "the first variant)")


def run(args) -> int:
  from proact_jax.report.tables import write_report

  if not args.results:
    raise ValueError("no RESULTS given: pass campaign results (.jsonl) and/or activations files")
  if not args.out:
    raise ValueError("--out DIR is required")
  bers = parse_bers(args.bers) if args.bers is not None else None
  written = write_report(args.results, args.out, bers=bers, reference=args.reference)
  for name in sorted(written):
    print(written[name])
  print(f"report: {written['report.md']}", file=sys.stderr)
  return 0
