"""CPU-scale reproduction of the paper's first Table IV row: AlexNet on CIFAR-10.

Command (about 2 hours on a 2-core CPU; every stage resumes where it stopped when re-run):

  python experiments/cifar10_alexnet_cpu.py \
      --data-dir ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz --work runs/cifar10_alexnet_cpu \
      --results results/cifar10_alexnet_cpu

(The run in results/ used --work runs/cifar10_alexnet, the directory the faithful pipeline,
experiments/cifar10_alexnet.py, now uses for its 20-epoch baseline: this script's default is
its own directory, so the two never resume each other's checkpoints.)

Budgets are cut from the paper's to fit a CPU (the paper-scale settings are in
experiments/paper_scale.py):
  train       AlexNet 4 epochs (paper: a pretrained model), SGD-Nesterov, cosine, 45k/5k split
  ranger      layer-wise, 3,000 profiling images (as the paper)
  ft-clipact  500 scoring images, 3 trials, at most 3 rounds (paper/toolbox: 1,000, 5, 4)
  fitact      2 epochs on 5,000 distillation images, Adam 0.01 (toolbox: full train set, 1e-3)
  proact      last site 4 epochs, layer sites 2 epochs each, 5,000 distillation images, Adam 0.1
              (about 100x fewer steps than the paper's 0.01 schedule, so a 10x larger step),
              2,000 guard images, budget 0.2 points (paper: 50 / 20 epochs, full train set)
  campaign    6 paper BERs, 30 trials per BER, 1,000 test images per trial, paired over the
              5 variants (paper: 500 trials on 10,000 images, unpaired)
  table V     per-layer faults at BER 1e-4, 5 trials, 256 images
Each stage's command and wall time (summed over its invocations) is written to
RESULTS/stages.json, versions to RESULTS/versions.json, and the report (tables, figures) to
RESULTS/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/pipeline_records.py
from pipeline_records import run_timed, stopped  # noqa: E402

PAPER_BERS = "1e-7,3e-7,1e-6,3e-6,1e-5,3e-5"
METHODS = {
    "ranger": ["--method", "ranger", "--granularity", "layer"],
    "ft-clipact": ["--method", "ft-clipact", "--fi-images", "500", "--fi-trials", "3",
                   "--fi-max-rounds", "3"],
    "fitact": ["--method", "fitact", "--epochs", "2", "--lr", "0.01", "--train-images", "5000",
               "--val-images", "2000"],
    "proact": ["--method", "proact", "--last-epochs", "4", "--epochs", "2", "--lr", "0.1",
               "--train-images", "5000", "--val-images", "2000", "--budget", "0.2"],
}


def _training_time(workdir: str) -> float:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0.0
  rows = [json.loads(l) for l in open(path) if l.strip()]
  if all("epoch_time" in r for r in rows):
    return sum(r["epoch_time"] for r in rows)
  return rows[-1]["wall_time"] if rows else 0.0  # one uninterrupted session


def main() -> int:
  from proact_jax.commands.args import number
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data-dir", required=True)
  ap.add_argument("--work", default="runs/cifar10_alexnet_cpu")
  ap.add_argument("--results", default="results/cifar10_alexnet_cpu")
  ap.add_argument("--trials", type=number("--trials"), default=30)
  ap.add_argument("--images", type=number("--images-per-trial"), default=1000)
  a = ap.parse_args()
  if not os.path.exists(a.data_dir):
    ap.error(f"--data-dir {a.data_dir} does not exist")
  os.makedirs(a.results, exist_ok=True)
  stages_path = os.path.join(a.results, "stages.json")
  stages = json.load(open(stages_path)) if os.path.exists(stages_path) else {}
  proact = [sys.executable, "-m", "proact_jax.cli"]

  def stage(name, argv, done_marker):
    if os.path.exists(done_marker) and name in stages:
      print(f"== {name}: done ({stages[name]['wall_time_s']:.0f} s), skipping")
      return
    print(f"== {name}: {' '.join(argv)}", flush=True)
    try:  # summed over every invocation, as the faithful pipeline times its stages
      wall, _ = run_timed(name, proact + argv, a.work)
    except subprocess.CalledProcessError as e:
      raise SystemExit(stopped("cifar10_alexnet_cpu", f"stage {name}", e.returncode))
    if name == "train":  # training may have run in several resumed sessions: sum its epochs
      wall = max(wall, _training_time(os.path.join(os.path.dirname(done_marker), "..")))
    stages[name] = {"command": "proact " + " ".join(argv), "wall_time_s": round(wall)}
    with open(stages_path, "w") as f:
      json.dump(stages, f, indent=2)

  base = os.path.join(a.work, "base")
  stage("train", ["train", "--model", "alexnet", "--dataset", "cifar10", "--data-dir", a.data_dir,
                  "--epochs", "4", "--lr", "0.02", "--warmup-epochs", "0.5", "--batch-size", "128",
                  "--out", base, "--seed", "0"], os.path.join(base, "model", "meta.json"))
  ckpts = [os.path.join(base, "model")]
  for name, args in METHODS.items():
    out = os.path.join(a.work, name)
    stage(f"harden-{name}", ["harden", "--checkpoint", ckpts[0], *args, "--out", out, "--quiet"],
          os.path.join(out, "meta.json"))
    ckpts.append(out)
  campaign = os.path.join(a.results, "campaign.jsonl")
  stage("campaign", ["sweep", *sum((["--checkpoint", c] for c in ckpts), []), "--bers",
                     PAPER_BERS, "--trials", str(a.trials), "--images", str(a.images),
                     "--out", campaign, "--quiet"], campaign + ".summary.md")
  activations = os.path.join(a.results, "activations.json")
  stage("activations", ["activations", *sum((["--checkpoint", c] for c in ckpts), []),
                        "--ber", "1e-4", "--trials", "5", "--images", "256",
                        "--out", activations], activations)
  stage("report", ["report", campaign, activations, "--out", a.results],
        os.path.join(a.results, "report.md"))
  from proact_jax.training.environment import environment
  with open(os.path.join(a.results, "versions.json"), "w") as f:
    json.dump(environment(), f, indent=2)
  print(f"results in {a.results}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
