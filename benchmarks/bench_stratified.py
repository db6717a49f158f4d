"""Image evaluations and wall time to reach a CI half-width: stratified vs random-subset campaigns.

  python benchmarks/bench_stratified.py --checkpoint DIR [--checkpoint DIR2 ...] \
      [--bers 1e-7,3e-7,1e-6,3e-6,1e-5,3e-5] [--target 0.5] [--images-per-trial 512] \
      (--critical LAYER:LO:HI[:raise],... | --critical-map MAP.jsonl [--critical-threshold 0.5]
       [--critical-direction raise]) [--stratify 3] [--pilot 8] [--ci-pairs] \
      [--max-trials 20000] [--plain-max-trials N | --plain-from EARLIER.json] [--chunk 32] \
      [--json OUT]

For each BER, side by side in one run and on the same checkpoints (paired variants):

* plain: the sequential random-subset campaign (``run_campaign(ci_target=..., min_trials=30,
  images_per_trial=M)``), which stops once every variant's 95 % half-width is within the target;
* stratified: ``run_stratified_campaign`` on the critical set ``C`` (``--critical`` or the cells of
  a vulnerability map above ``--critical-threshold`` points), sequential on the same target
  (``--ci-pairs``: the pairwise differences too).

Each BER is run as its own campaign (its own flip caps) after a warm-up that compiles both trial
functions, so the wall times exclude compilation. Printed per BER: trials, image evaluations
(trials x M), wall time, each variant's mean and half-width in both modes, and the ratios
plain / stratified. The CIFAR-10 question of issue 12: >= 10x fewer image evaluations at 1e-6
and 3e-6 with a 0.5 pp half-width on every variant mean. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax

from proact_jax.commands.args import critical_from_args, load_variants, parse_bers
from proact_jax.core.evaluate import make_eval_set
from proact_jax.faults import campaign
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import get_format
from proact_jax.faults.stratified import run_stratified_campaign
from proact_jax.training.checkpoint_data import checkpoint_data


def _plain(key, variants, data, ber, args, trials):
  return campaign.run_campaign(key, variants, data, [ber], trials, ci_target=args.target,
                               min_trials=min(30, trials), max_trials=trials, chunk=args.chunk,
                               progress=False, images_per_trial=args.images_per_trial)


def projected_trials(rows, target: float) -> int:
  """Trials the plain campaign needs for a ``target`` half-width on every variant mean, from its
  measured half-widths: n (hw / target)^2 (the half-width falls as 1/sqrt(n) at a fixed
  per-trial variance); the measured n where it already reached the target."""
  return max(r["n"] if r["half_width"] <= target else
             int(math.ceil(r["n"] * (r["half_width"] / target) ** 2)) for r in rows)


def _strat(key, variants, data, ber, args, cs, trials):
  return run_stratified_campaign(key, variants, data, [ber], trials, critical_set=cs,
                                 k_max=args.stratify, pilot=args.pilot, ci_target=args.target,
                                 ci_pairs=args.ci_pairs, max_trials=trials, chunk=args.chunk,
                                 progress=False, images_per_trial=args.images_per_trial)


def _earlier_plain(args, parser) -> dict:
  """The plain rows of ``--plain-from`` by BER, after checking that they answer this run."""
  with open(args.plain_from) as f:
    old = json.load(f)
  same = ("checkpoint", "target", "images_per_trial", "images", "format", "seed")
  diff = [k for k in same if old["args"].get(k) != getattr(args, k)]
  if diff:
    parser.error(f"--plain-from {args.plain_from}: other {', '.join(diff)} than this run")
  return {r["ber"]: r for r in old["rows"]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", action="append", required=True)
  p.add_argument("--bers", default="1e-7,3e-7,1e-6,3e-6,1e-5,3e-5")
  p.add_argument("--target", type=float, default=0.5, help="95%% half-width in points")
  p.add_argument("--images-per-trial", type=int, default=512)
  p.add_argument("--images", type=int, default=0, help="test images (0: all)")
  p.add_argument("--critical", action="append", default=None)
  p.add_argument("--critical-map", default=None)
  p.add_argument("--critical-threshold", type=float, default=0.5)
  p.add_argument("--critical-variants", default=None,
                 help="map variants whose cells define C (default: all)")
  p.add_argument("--critical-direction", default=None, choices=["raise", "lower"],
                 help="only the map cells' positions whose flip raises / lowers the value")
  p.add_argument("--plain-from", default=None, metavar="JSON",
                 help="reuse the plain rows of an earlier --json output of this benchmark (same "
                      "checkpoints, BERs, target, images and seed; checked) instead of running "
                      "them: the image ratio stands, the wall ratio is not reported (another "
                      "run, another load)")
  p.add_argument("--stratify", type=int, default=3, help="K_MAX")
  p.add_argument("--pilot", type=int, default=8)
  p.add_argument("--ci-pairs", action="store_true")
  p.add_argument("--max-trials", type=int, default=20_000, help="per BER and mode")
  p.add_argument("--plain-max-trials", type=int, default=0,
                  help="cap of the plain campaign (0: --max-trials); a plain campaign stopped "
                       "by it is reported with its projected trial count, n (hw / target)^2")
  p.add_argument("--chunk", type=int, default=32)
  p.add_argument("--format", default="q15.16")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, help="also write the rows as JSON")
  args = p.parse_args(argv)
  variants, entries = load_variants(args.checkpoint)
  meta = next(iter(entries.values()))[2]
  fmt = get_format(args.format)
  space = faults.FaultSpace()
  cs = critical_from_args(args, next(iter(variants.values()))[1], space, fmt)
  earlier = _earlier_plain(args, p) if args.plain_from else {}
  d = checkpoint_data(meta, test_images=args.images)
  data = make_eval_set(d.x_test, d.y_test)
  m = args.images_per_trial
  key = jax.random.PRNGKey(args.seed)
  print(f"jax {jax.__version__}, {jax.default_backend()}, {jax.device_count()} device(s); "
        f"{meta['model']} / {meta['dataset']}, variants {', '.join(variants)}, {data.n} test "
        f"images, {m} per trial, target {args.target} pp; "
        f"C = {cs.n_bits(next(iter(variants.values()))[1], fmt)} "
        f"bits ({cs.describe()[:200]}), K_MAX {args.stratify}")
  rows = []
  for ber in parse_bers(args.bers):
    t0 = time.perf_counter()
    if ber not in earlier:
      _plain(key, variants, data, ber, args, args.chunk)  # compile
    _strat(key, variants, data, ber, args, cs, args.pilot * (args.stratify + 1))
    warm = time.perf_counter() - t0
    if ber in earlier:
      old = earlier[ber]
      np_, proj, tp = old["plain_trials"], old["plain_trials_projected"], None
      plain_rows = [{"variant": v, "mean": r["plain_mean"], "half_width": r["plain_hw"]}
                    for v, r in old["variants"].items()]
    else:
      t0 = time.perf_counter()
      plain = _plain(key, variants, data, ber, args, args.plain_max_trials or args.max_trials)
      tp = time.perf_counter() - t0
      plain_rows = plain.summary_rows()
      np_ = plain_rows[0]["n"]
      proj = projected_trials(plain_rows, args.target / 100.0)
    t0 = time.perf_counter()
    strat = _strat(key, variants, data, ber, args, cs, args.max_trials)
    ts = time.perf_counter() - t0
    ns = strat.summary_rows()[0]["n"]
    tp_proj = None if tp is None else tp * proj / np_
    row = {"ber": ber, "plain_trials": np_, "plain_images": np_ * m, "plain_s": tp,
           "plain_trials_projected": proj, "plain_projected": proj > np_,
           "plain_s_projected": tp_proj, "plain_from": args.plain_from if tp is None else None,
           "strat_trials": ns, "strat_images": ns * m, "strat_s": ts, "warmup_s": warm,
           "ratio_images": proj / ns, "ratio_wall": None if tp is None else tp_proj / ts,
           "weights": strat.weights[0].tolist(),
           "strata": strat.summary_rows()[0]["n_strata"],
           "variants": {r["variant"]: {"plain_mean": p["mean"], "plain_hw": p["half_width"],
                                       "strat_mean": r["mean"], "strat_hw": r["half_width"]}
                        for p, r in zip(plain_rows, strat.summary_rows())}}
    rows.append(row)
    took = "from " + args.plain_from if tp is None else f"{tp:.0f} s"
    capped = (f", capped: {proj} projected ({proj * m:,} images"
              + ("" if tp is None else f", {tp_proj:.0f} s") + ")" if proj > np_ else "")
    wall = "" if tp is None else f", {row['ratio_wall']:.1f}x wall"
    print(f"BER {ber:.0e}: plain {np_} trials ({np_ * m:,} images, {took}{capped}), stratified "
          f"{ns} trials ({ns * m:,} images, {ts:.0f} s; strata {row['strata']}); ratio "
          f"{row['ratio_images']:.1f}x images{wall} (warm-up {warm:.0f} s)")
    for v, r in row["variants"].items():
      print(f"    {v}: plain {100 * r['plain_mean']:.2f} +- {100 * r['plain_hw']:.2f}, "
            f"stratified {100 * r['strat_mean']:.2f} +- {100 * r['strat_hw']:.2f}")
  if all(r["plain_s"] is not None for r in rows):
    tot = {k: sum(r[k] for r in rows) for k in ("plain_images", "strat_images", "plain_s",
                                                "strat_s")}
    print(f"all BERs: plain {tot['plain_images']:,} images in {tot['plain_s']:.0f} s, "
          f"stratified {tot['strat_images']:,} in {tot['strat_s']:.0f} s (ratios "
          f"{tot['plain_images'] / tot['strat_images']:.1f}x, "
          f"{tot['plain_s'] / tot['strat_s']:.1f}x)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
