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


def table(runs: list[dict], bers) -> str:
  from proact_jax.report.seeds import seeds_table
  seeds = [r["seed"] for r in runs]
  intro = (f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} runs of `proact demo`; each seed "
           "sets the baseline training, the train/test split, the methods' seeds and the "
           f"campaign key). {runs[0]['test_images']} test images, {runs[0]['val_images']} "
           "validation images per seed.")
  return seeds_table(runs, bers, METHODS, RULES, intro)


def main(argv=None) -> int:
  from proact_jax.commands.args import number
  from proact_jax.commands.demo import DEMO_BERS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--trials", type=number("--trials"), default=60)
  p.add_argument("--work", default="runs/digits_seeds")
  p.add_argument("--results", default="results/digits_seeds")
  args = p.parse_args(argv)
  try:
    seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
  except ValueError:
    p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
  if any(s < 0 for s in seeds):
    p.error(f"--seeds {args.seeds!r}: seeds are >= 0")
  if len(seeds) < 2:
    p.error("--seeds: need at least 2 different seeds for an interval across seeds")
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
