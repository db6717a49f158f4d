"""The digits demo over several seeds, under both fault rules: distributions with CIs, not one draw.

For every seed ``s`` this runs ``proact demo --seed s`` (the seed sets the baseline's training,
its train/test split and the methods' seeds, and the campaign key) into ``WORK/seed<s>``, then a
second paired campaign on the same five checkpoints and test images under the authors' toolbox
fault rule (exactly floor(n x 32 x BER) flips per leaf: kernels, biases, threshold tensors;
``--fault-rule toolbox-floor``). Every stage resumes: a finished seed is read back, not rerun.

It writes into RESULTS:

* ``seeds.json``: per seed, each method's float test accuracy and clean drop, and per fault rule
  and BER the campaign's mean accuracy with its 95 % CI over the trials; the wall time per seed;
* ``table.md``: across seeds, each method's clean drop and accuracy under faults (mean over
  seeds with the 95 % t interval over seeds, min-max), the paired differences ProAct - X across
  seeds, and whether ProAct's clean test drop stayed under 1 point in every seed.

Command (measured wall time: see ``results/digits_seeds/README.md``):

    python experiments/digits_seeds.py --seeds 0,1,2,3,4,7 --work runs/digits_seeds \\
        --results results/digits_seeds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

METHODS = ("relu", "ranger", "ft-clipact", "fitact", "proact")
RULES = ("bernoulli", "toolbox-floor")


def run_seed(work: str, seed: int, trials: int, bers) -> dict:
  import jax

  from proact_jax.commands.demo import demo
  from proact_jax.faults.campaign import run_campaign
  from proact_jax.faults.results import load_results
  from proact_jax.report.activation_stats import campaign_extra
  from proact_jax.training.checkpoint import load_checkpoint
  from proact_jax.training.checkpoint_data import checkpoint_data

  out = os.path.join(work, f"seed{seed}")
  t0 = time.time()
  demo(out, bers, trials, seed, progress=False)
  variants = {"relu": load_checkpoint(os.path.join(out, "base", "model"))}
  for m in METHODS[1:]:
    variants[m] = load_checkpoint(os.path.join(out, "hardened", m))
  meta = variants["relu"][2]
  test = checkpoint_data(meta, profile_images=1000, seed=seed).test
  results = {}
  for rule in RULES:
    if rule == "bernoulli":  # the demo's own campaign
      r = load_results(os.path.join(out, "campaign.jsonl"), reference="relu")
    else:  # same key, checkpoints, images and metadata as the demo's, other fault rule
      r = run_campaign(jax.random.PRNGKey(seed),
                       {n: (m, v) for n, (m, v, _) in variants.items()}, test, bers, trials,
                       results_path=os.path.join(out, f"campaign_{rule}.jsonl"), progress=False,
                       fault_rule=rule, reference="relu",
                       config_extra=campaign_extra(variants, images=test.n, seed=seed))
    results[rule] = {f"{row['variant']}@{row['ber']:g}": {
        k: row[k] for k in ("n", "mean", "ci_low", "ci_high", "mean_flips")}
        for row in r.summary_rows()}
  base_acc = meta["accuracy"]
  return {"seed": seed, "wall_time_s": round(time.time() - t0, 1), "test_images": test.n,
          "val_images": meta["n_val"], "baseline_accuracy": base_acc,
          "accuracy": {m: variants[m][2]["accuracy"] for m in METHODS},
          "clean_drop": {m: base_acc - variants[m][2]["accuracy"] for m in METHODS},
          "campaign": results}


def _t_ci(x) -> tuple[float, float, float]:
  from proact_jax.faults.stats import summarize
  s = summarize(x)
  return s["mean"], s["ci_low"], s["ci_high"]


def _fmt(x) -> str:
  m, lo, hi = _t_ci(100 * np.asarray(x))
  return f"{m:.2f} [{lo:.2f}, {hi:.2f}] ({100 * min(x):.2f}-{100 * max(x):.2f})"


def table(runs: list[dict], bers) -> str:
  seeds = [r["seed"] for r in runs]
  lines = [f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} runs of `proact demo`; each seed "
           "sets the baseline training, the train/test split, the methods' seeds and the "
           f"campaign key). {runs[0]['test_images']} test images, {runs[0]['val_images']} "
           "validation images per seed. Cells: mean over seeds [95 % t interval over seeds] "
           "(min-max), in %.", ""]
  drops = {m: [r["clean_drop"][m] for r in runs] for m in METHODS}
  lines += ["Clean test accuracy drop vs the baseline (pp):", "",
            "| method | " + " | ".join(METHODS[1:]) + " |", "|---|" + "---|" * 4,
            "| drop | " + " | ".join(_fmt(drops[m]) for m in METHODS[1:]) + " |", ""]
  pro = drops["proact"]
  lines.append(f"ProAct's clean test drop < 1 pp in {sum(d < 0.01 for d in pro)} of "
               f"{len(pro)} seeds (largest {100 * max(pro):.2f} pp).")
  lines.append("Baseline test accuracy: " + _fmt([r["baseline_accuracy"] for r in runs]) + ".")
  for rule in RULES:
    lines += ["", f"Accuracy under faults, fault rule **{rule}** (mean over the trials of each "
              "seed, then over seeds):", "",
              "| method | " + " | ".join(f"BER {b:g}" for b in bers) + " |",
              "|---|" + "---|" * len(bers)]
    acc = lambda m, b: [r["campaign"][rule][f"{m}@{b:g}"]["mean"] for r in runs]
    for m in METHODS:
      lines.append(f"| {m} | " + " | ".join(_fmt(acc(m, b)) for b in bers) + " |")
    lines += ["", f"ProAct - X across seeds (paired by seed), fault rule {rule}, pp:", "",
              "| comparison | " + " | ".join(f"BER {b:g}" for b in bers) + " |",
              "|---|" + "---|" * len(bers)]
    from proact_jax.faults.stats import holm, paired_pvalue
    others = ("ranger", "ft-clipact", "fitact")
    pv = [paired_pvalue(acc("proact", b), acc(m, b)) for m in others for b in bers]
    ph = iter(holm(pv))
    for m in others:
      cells = []
      for b in bers:
        d = np.subtract(acc("proact", b), acc(m, b))
        mean, lo, hi = _t_ci(100 * d)
        cells.append(f"{mean:+.2f} [{lo:.2f}, {hi:.2f}], p_Holm {next(ph):.2g}, "
                     f"{int(np.sum(d > 0))}/{len(d)} seeds > 0")
      lines.append(f"| proact - {m} | " + " | ".join(cells) + " |")
    lines += ["", f"(paired t-test across the {len(runs)} seeds; Holm family: the "
              f"{len(pv)} comparisons of this table, 3 pairs x {len(bers)} BERs)"]
    flips = {b: np.mean([r["campaign"][rule][f"relu@{b:g}"]["mean_flips"] for r in runs])
             for b in bers}
    lines += ["", "Mean flips per trial (relu): " + ", ".join(
        f"{b:g}: {flips[b]:.1f}" for b in bers) + "."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  from proact_jax.commands.demo import DEMO_BERS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--trials", type=int, default=60)
  p.add_argument("--work", default="runs/digits_seeds")
  p.add_argument("--results", default="results/digits_seeds")
  args = p.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if len(seeds) < 2:
    raise SystemExit("need at least 2 seeds for an interval across seeds")
  os.makedirs(args.results, exist_ok=True)
  path = os.path.join(args.results, "seeds.json")
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = {r["seed"]: r for r in json.load(f)["runs"]}
  runs = []
  for s in seeds:
    if s not in done:
      print(f"seed {s} ...", file=sys.stderr, flush=True)
      done[s] = run_seed(args.work, s, args.trials, DEMO_BERS)
      print(f"seed {s}: {done[s]['wall_time_s']} s", file=sys.stderr, flush=True)
      with open(path + ".tmp", "w") as f:
        json.dump({"bers": list(DEMO_BERS), "trials": args.trials,
                   "runs": [done[k] for k in sorted(done)]}, f, indent=1)
      os.replace(path + ".tmp", path)
    runs.append(done[s])
  text = table(runs, DEMO_BERS)
  with open(os.path.join(args.results, "table.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"total wall time {sum(r['wall_time_s'] for r in runs):.0f} s "
        f"({math.fsum(r['wall_time_s'] for r in runs) / 60:.1f} min)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
