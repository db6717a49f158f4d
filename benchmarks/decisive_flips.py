"""Which single flips are decisive: the direction of the flip, from a vulnerability map.

  python benchmarks/decisive_flips.py --map results/cifar10_alexnet/vulnerability.jsonl \
      --checkpoint runs/cifar10_alexnet/faithful/ranger --variant ranger \
      [--leaf params/Dense_2/kernel --leaf params/Dense_2/bias] [--min-bit 24] [--format q15.16]

Each trial row of a ``proact vulnerability`` map names the flipped value and bit. This reads the
value's stored word from the checkpoint and splits the trials by what the flip does to it,
with the rule of a directed critical set (``CriticalSet.value_masks``): **raises** (the decoded
value grows; in two's complement a 0 -> 1 flip below the sign bit, or the sign bit of a negative
value) or **lowers** (the other flips). It prints the
drop's distribution per class and E[D^2] / Var(D) for all trials together and per class: the
factor that bounds what count strata can gain (docs/benchmarks.md), so it says whether a critical
set split by direction would pay.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--map", required=True)
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--variant", required=True)
  p.add_argument("--leaf", action="append", default=None,
                 help="leaves to read (default: every weight leaf in the map)")
  p.add_argument("--min-bit", type=int, default=0, help="only trials flipping this bit or above")
  p.add_argument("--format", default="q15.16")
  args = p.parse_args(argv)

  from proact_jax.faults.critical import CriticalSet
  from proact_jax.faults.formats import get_format
  from proact_jax.training.checkpoint import load_checkpoint

  fmt = get_format(args.format)
  _, variables, _ = load_checkpoint(args.checkpoint)
  trials = []
  with open(args.map) as f:
    for line in f:
      r = json.loads(line)
      if r.get("type") != "trial" or r["variant"] != args.variant or r["bit"] < args.min_bit:
        continue
      if not args.leaf or r["leaf"] in args.leaf:
        trials.append(r)
  leaves = sorted({r["leaf"] for r in trials})
  # the positions whose flip raises the stored value (CriticalSet's rule, any format)
  raises = CriticalSet.from_pairs([], [(leaf, range(fmt.bits), "raise") for leaf in leaves]
                                  ).value_masks(variables, fmt)
  rows = [("raises" if (int(raises[r["leaf"]][r["value"]]) >> r["bit"]) & 1 else "lowers",
           100.0 * r["drop"], r["leaf"], r["bit"]) for r in trials]
  if not rows:
    print("no trial rows matched", file=sys.stderr)
    return 2
  print(f"{args.map}, variant {args.variant}, bits >= {args.min_bit}, {len(rows)} trials")
  print("| flips | trials | mean drop (pp) | min | median | max | E[D^2] / Var(D) |")
  print("|---|---|---|---|---|---|---|")
  for name in ("raises", "lowers", "all"):
    d = np.array([x[1] for x in rows if name == "all" or x[0] == name])
    if len(d) < 2:
      continue
    ratio = float(np.mean(d ** 2) / np.var(d, ddof=1)) if np.var(d) > 0 else float("inf")
    print(f"| {name} | {len(d)} | {d.mean():.1f} | {d.min():.1f} | {np.median(d):.1f} | "
          f"{d.max():.1f} | {ratio:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
