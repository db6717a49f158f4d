"""Where a campaign's variance comes from, per vulnerability-map cell, and what stratifying on C can gain.

  python benchmarks/variance_budget.py --map results/cifar10_alexnet/vulnerability.jsonl \
      --checkpoint runs/cifar10_alexnet/faithful/ranger --variant ranger --ber 1e-6 \
      --images-per-trial 256 --accuracy 0.69 \
      [--critical "Dense_2:24:32:raise,Dense_2/bias:16:24:raise"] [--top 12]

First-order (compound Poisson) budget of one trial's accuracy variance under Bernoulli flips at
BER p: the flips of a map cell (leaf, bits LO..HI-1) number about Poisson(lambda) with lambda =
values x bits x p, and a flip there costs D, distributed as the cell's single-flip drops in the
map; if the drops of different flips add, the cell contributes lambda E[D^2] to the variance.
The image sample adds acc (1 - acc) / M (``--accuracy``: the variant's mean accuracy at this
BER). Each map trial is put inside or outside the critical set C (``--critical``, the syntax of
``proact sweep``, directions read from the checkpoint's stored words as ``proact`` does), so the
budget splits into V_C (inside) and V_0 (outside + images). Stratifying on the number of flips in
C can at best remove V_C: the image-evaluation gain of any such design is at most
(V_C + V_0) / V_0 (docs/benchmarks.md). The map's few trials per cell make each E[D^2] a rough
estimate (a rare catastrophic flip may be missed): read the output as orders of magnitude.
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
  p.add_argument("--ber", type=float, required=True)
  p.add_argument("--images-per-trial", type=int, required=True)
  p.add_argument("--accuracy", type=float, required=True,
                 help="the variant's mean accuracy at this BER (for the image-sample term)")
  p.add_argument("--critical", default=None, help="C, as proact sweep --critical")
  p.add_argument("--format", default="q15.16")
  p.add_argument("--top", type=int, default=12, help="cells listed (largest contributions)")
  args = p.parse_args(argv)

  from flax import traverse_util

  from proact_jax.faults import critical
  from proact_jax.faults import injection as faults
  from proact_jax.faults.formats import get_format
  from proact_jax.training.checkpoint import load_checkpoint

  fmt = get_format(args.format)
  _, variables, _ = load_checkpoint(args.checkpoint)
  flat = {"/".join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(dict(variables)).items()}
  inside = {}  # leaf -> per-value mask of C's bits
  if args.critical:
    inside = critical.CriticalSet.resolve(variables, faults.FaultSpace(), fmt,
                                          critical.parse_critical(args.critical)).masks(
                                              variables, fmt)
  cells: dict[tuple, list] = {}
  with open(args.map) as f:
    for line in f:
      r = json.loads(line)
      if r.get("type") != "trial" or r["variant"] != args.variant:
        continue
      mask = inside.get(r["leaf"])
      hit = bool(mask is not None and (int(mask[r["value"]]) >> r["bit"]) & 1)
      cells.setdefault((r["leaf"], r["lo"], r["hi"]), []).append((r["drop"], hit))
  if not cells:
    print(f"no trials of variant {args.variant!r} in {args.map}", file=sys.stderr)
    return 2
  rows = []
  for (leaf, lo, hi), trials in cells.items():
    lam = flat[leaf].size * (hi - lo) * args.ber
    d = np.array([t[0] for t in trials])
    c = np.array([t[1] for t in trials])
    rows.append((leaf, lo, hi, lam, lam * np.mean(d ** 2 * ~c), lam * np.mean(d ** 2 * c),
                 float(np.mean(c))))
  images = args.accuracy * (1 - args.accuracy) / args.images_per_trial
  v_out = sum(r[4] for r in rows) + images
  v_c = sum(r[5] for r in rows)
  pp = lambda v: f"{100 * np.sqrt(v):.2f}"  # noqa: E731
  print(f"{args.variant} at BER {args.ber:g}, {args.images_per_trial} images per trial; C = "
        f"{args.critical or 'empty'}")
  print("| cell | lambda | in C (share of trials) | sd outside C (pp) | sd in C (pp) |")
  print("|---|---|---|---|---|")
  for r in sorted(rows, key=lambda r: -(r[4] + r[5]))[:args.top]:
    print(f"| {r[0]} {r[1]}-{r[2] - 1} | {r[3]:.3g} | {r[6]:.2f} | {pp(r[4])} | {pp(r[5])} |")
  print(f"| image sample ({args.images_per_trial}) | | | {pp(images)} | |")
  print(f"V_0 (outside C + images): sd {pp(v_out)} pp; V_C: sd {pp(v_c)} pp; total sd "
        f"{pp(v_out + v_c)} pp per trial; the most stratifying on C can gain: "
        f"(V_C + V_0) / V_0 = {(v_out + v_c) / v_out:.1f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
