"""The CIFAR-10 run's headlines over method seeds (issue 14 item 8): clean drops and accuracy
under faults as distributions across seeds, with intervals, not one draw.

Seed 0 is the main pipeline run (``experiments/cifar10_alexnet.py``, RESULTS = results/cifar10_M).
Every other seed ``s`` re-runs the four methods' hardening with ``--method-seed s`` on the same
seed-0 baseline (one 8 h baseline per seed is out of this CPU's budget; the baseline's own
training seed is varied on digits, ``experiments/digits_seeds.py``), then the paired stratified
Bernoulli campaign of the five Table IV variants with campaign key ``s`` (its own faults and
image subsets, so the intervals across seeds cover them as well as the hardening), into
runs/cifar10_M_sS and RESULTS/seeds/sS.
Each seed's stages resume and are skipped once done. ``--max-trials`` caps each seed's campaign
per BER (default 300, against 1000 for seed 0: a seed's mean needs less precision than the main
run's pairwise decisions, since the table's intervals are across seeds).

It writes RESULTS/seeds/seeds.json (per finished seed: each method's test accuracy and clean
drop, the campaign's mean per variant and BER) and RESULTS/seeds/table.md
(:func:`proact_jax.report.seeds.seeds_table`), from every seed whose hardening and campaign are
finished (seed 0 and every RESULTS/seeds/sS, whichever seeds this invocation runs; at least 2),
after every seed that finishes.

Commands (from the repository root; about 2.5 h of hardening per seed on this CPU, idle, plus
the campaign: see results/README.md):

    python experiments/cifar10_seeds.py --data-dir ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz \\
        --seeds 1,2,3,4
    python experiments/cifar10_seeds.py --aggregate-only     # the table from the finished seeds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/pipeline_records.py
from cifar10_alexnet import RECIPES, refuse_too_few_trials  # noqa: E402
from pipeline_records import stopped  # noqa: E402
from proact_jax.commands.args import number  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("relu", "ranger", "ft-clipact", "fitact", "proact")
STAGES = "harden-ranger,harden-ft-clipact,harden-proact,harden-fitact,campaign-bernoulli"


def seed_dirs(results: str, seed: int) -> str:
  return results if seed == 0 else os.path.join(results, "seeds", f"s{seed}")


def seed_record(results_dir: str, seed: int) -> dict | None:
  """One seed's record for :func:`seeds_table`, or None while its hardening or its Bernoulli
  campaign is unfinished (no RESULTS/stages.json entry)."""
  from proact_jax.faults.results import load_results
  stages_path = os.path.join(results_dir, "stages.json")
  if not os.path.exists(stages_path):
    return None
  with open(stages_path) as f:
    done = json.load(f)
  if not all(s in done for s in STAGES.split(",")):
    return None
  acc, base = {}, None
  for m in METHODS[1:]:
    with open(os.path.join(results_dir, "hardened", f"{m}.json")) as f:
      rec = json.load(f)
    acc[m], base = rec["accuracy"], rec["baseline_accuracy"]
  acc["relu"] = base
  res = load_results(os.path.join(results_dir, "campaign_bernoulli.jsonl"))
  missing = sorted(set(METHODS) - set(res.trials))
  if missing:
    raise ValueError(f"{results_dir}: the campaign has no variant(s) {', '.join(missing)}")
  campaign = {f"{r['variant']}@{r['ber']:g}": {k: r[k] for k in ("n", "mean", "ci_low",
                                                                  "ci_high")}
              for r in res.summary_rows() if r["variant"] in METHODS}
  return {"seed": seed, "baseline_accuracy": base, "accuracy": acc,
          "clean_drop": {m: base - acc[m] for m in METHODS},
          "bers": [float(b) for b in res.bers], "campaign": {"bernoulli": campaign}}


def seeds_on_disk(results: str) -> list[int]:
  """The method seeds with a RESULTS/seeds/sS folder, finished or not."""
  folder = os.path.join(results, "seeds")
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n[1:]) for n in names if re.fullmatch(r"s[1-9][0-9]*", n))


def aggregate(results: str, seeds: list[int]) -> str | None:
  """Writes RESULTS/seeds/{seeds.json, table.md} from every finished seed: seed 0, ``seeds``,
  and any other seed already in RESULTS/seeds (a run of ``--seeds 4`` must not drop seeds 1-3
  from the table); returns the table (None with fewer than 2 finished seeds)."""
  from proact_jax.core.files import write_bytes_atomic, write_json_atomic
  from proact_jax.report.seeds import seeds_table
  seeds = sorted({0, *seeds, *seeds_on_disk(results)})
  runs = [r for r in (seed_record(seed_dirs(results, s), s) for s in seeds) if r is not None]
  if len(runs) < 2:
    return None
  bers = runs[0]["bers"]
  if any(r["bers"] != bers for r in runs):
    raise ValueError("the seeds' campaigns have different BERs")
  intro = (f"Method seeds {', '.join(str(r['seed']) for r in runs)} ({len(runs)} hardenings "
           "of the four methods on the same seed-0 baseline; each seed sets the methods' "
           "training and search and the campaign key). 10,000 test images; "
           "every campaign trial on 100 random test images, stratified Bernoulli flips.")
  text = seeds_table(runs, bers, METHODS, ("bernoulli",), intro)
  out = os.path.join(results, "seeds")
  write_json_atomic(os.path.join(out, "seeds.json"), {"runs": runs})
  write_bytes_atomic(os.path.join(out, "table.md"), text.encode())
  return text


def _aggregate_or_exit(results: str, seeds: list[int]) -> tuple[int, str | None]:
  """:func:`aggregate`, its one-line error turned into exit code 2."""
  try:
    return 0, aggregate(results, seeds)
  except ValueError as e:
    print(f"cifar10_seeds: {e}", file=sys.stderr)
    return 2, None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", default=None)
  p.add_argument("--model", default="alexnet", choices=sorted(RECIPES))
  p.add_argument("--seeds", default="1,2,3,4", help="method seeds to run (0 is the main run)")
  p.add_argument("--max-trials", type=number("--max-trials"), default=300,
                 help="campaign cap per BER and seed")
  p.add_argument("--results", default=None, help="default results/cifar10_MODEL")
  p.add_argument("--aggregate-only", action="store_true", help="run nothing, write the table")
  a = p.parse_args(argv)
  try:
    seeds = sorted({int(s) for s in a.seeds.split(",") if s.strip()})
  except ValueError:
    p.error(f"--seeds {a.seeds!r}: expected comma-separated integers")
  if any(s <= 0 for s in seeds):
    p.error("--seeds: method seeds are >= 1 (seed 0 is the main pipeline run)")
  if not a.aggregate_only and not a.data_dir:
    p.error("--data-dir is required (or --aggregate-only)")
  refuse_too_few_trials(p, a.max_trials)  # here, not by every seed's pipeline in turn
  results = a.results or f"results/cifar10_{a.model}"
  text = None
  for s in ([] if a.aggregate_only else seeds):
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "cifar10_alexnet.py"),
           "--data-dir", a.data_dir, "--model", a.model, "--method-seed", str(s),
           "--baseline", f"runs/cifar10_{a.model}/base", "--work", f"runs/cifar10_{a.model}_s{s}",
           "--results", seed_dirs(results, s), "--max-trials", str(a.max_trials),
           "--only", STAGES]
    print(f"== seed {s}: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd)
    if code:
      return stopped("cifar10_seeds", f"seed {s}", code)
    # the table after every finished seed, so an interrupted series keeps one
    code, text = _aggregate_or_exit(results, [0, *seeds])
    if code:
      return code
  if a.aggregate_only:
    code, text = _aggregate_or_exit(results, [0, *seeds])
    if code:
      return code
  if text is None:
    print("cifar10_seeds: fewer than 2 seeds finished; no table yet", file=sys.stderr)
    return 0
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
