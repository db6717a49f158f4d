"""The faithful CIFAR-10 AlexNet run of issue 14: matched budgets, both fault rules, Table V by
Eq. 9, corrected statistics. Every stage resumes (a finished stage is skipped when re-run), and
each stage's exact command and wall time goes to RESULTS/stages.json (the time summed over the
invocations of a stage that was interrupted and resumed; WORK/stage_clock.json keeps the running
total). Wall time includes any time the job was paused (SIGSTOP) to give the cores to a timing
benchmark or a CI check; results/README.md says where that happened. A hardening stage
writes its thresholds to RESULTS/hardened/NAME.thresholds.npz (committed), and a baseline
under 8 MB (ResNet-20, not AlexNet) its weights to RESULTS/baseline/model.npz; when WORK is
lost (a new machine, a new checkout) such a stage is restored from its file, the content hash
checked, instead of run again (AlexNet's baseline is retrained, bit for bit, in about an hour).

``--model resnet20`` (or vgg16) runs the same stages on the second architecture of Table IV
(issue 14 item 7) into runs/cifar10_MODEL and results/cifar10_MODEL. VGG-16 is not the default
second model: measured on this CPU (docs/benchmarks.md) its training step runs at 53 img/s, so
20 epochs of 45k images alone take ~4.7 h, and its 13 activation sites make ProAct's and
FitAct's threshold training ~2x AlexNet's: well over the ~8 h budget. ResNet-20 (0.27 M
weights) is the second model; its recipe (RECIPES below): SGD-Nesterov 0.1, 1 warm-up epoch,
cosine, 30 epochs, weight decay 5e-4, batch 128, crop+flip (the usual CIFAR ResNet recipe
shortened from 160-200 epochs to a CPU budget; its curve is recorded to show where it stands).
Its budget, from throughput measured on the idle CPU (2026-12-05, docs/benchmarks.md): training
step 213 img/s, so the baseline ~1.8 h; 19 sites, so ProAct runs 5 + 2 x 18 = 41 threshold
epochs at F = 0.1, at 119-272 ms per batch of 128 (last site to first site;
benchmarks/bench_proact_step.py --model resnet20), ~50 min, FitAct the same epochs at ~314 ms per
batch, ~75 min, the KD-direction repeat ~50 min; about 5.5 h in all with FT-ClipAct and the
campaigns.

Commands (run from the repository root):

  # the whole pipeline (the baseline stage reuses a finished or interrupted `proact train` run
  # in WORK/base)
  python experiments/cifar10_alexnet.py \\
      --data-dir ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz \\
      --work runs/cifar10_alexnet --results results/cifar10_alexnet

  # one stage (or a few) only, the others skipped unless already done:
  python experiments/cifar10_alexnet.py --data-dir ... --only baseline,harden-ranger

  # the second model without the KD-direction repeat (item 3 is answered on AlexNet; a
  # skipped method is left out of the later stages, as with --only)
  python experiments/cifar10_alexnet.py --data-dir ... --model resnet20 --skip harden-proact-ts

  # a method-seed repeat on the same baseline (issue 14 item 8: >= 5 hardening seeds; the
  # methods left out by --only are left out of its campaign too). experiments/cifar10_seeds.py
  # runs these for several seeds and tabulates them across seeds
  python experiments/cifar10_alexnet.py --data-dir ... --method-seed 1 \\
      --baseline runs/cifar10_alexnet/base --work runs/cifar10_alexnet_s1 \\
      --results results/cifar10_alexnet/seeds/s1 \\
      --only harden-ranger,harden-ft-clipact,harden-proact,harden-fitact,campaign-bernoulli

  # the same stages at a tiny budget on the embedded digits data (checks the plumbing);
  # measured 1,480 s end to end with the machine at load 12-14 on 2 cores (559 s of it the
  # activations stage), every stage skipped on a second run
  python experiments/cifar10_alexnet.py --smoke --work /tmp/smoke --results /tmp/smoke/results

Stages and budgets (``--scale F`` multiplies every threshold-training epoch count; default 0.1):

  baseline     proact train: AlexNet (toolbox architecture), 20 epochs, SGD-Nesterov 0.02, 1
               warm-up epoch, cosine, batch 128, crop+flip augmentation, 45k/5k split. A
               12-epoch run of the same recipe (before models/fast_ops.py) reached 78.81 % with
               its curve still rising, at 410-516 s per epoch on the loaded CPU.
  ranger       layer-wise profiled maxima on 3,000 training images (as the paper). ~1-2 min.
  ft-clipact   interval search, toolbox scoring BERs (5), --fi-trials trials x --fi-images
               images per candidate, 4 candidates, at most --fi-max-rounds rounds per site: at
               most 7 sites x rounds x 4 x 5 x trials fault trials (written to budget.json;
               defaults 3 rounds x 3 trials x 500 images: 1,260 trials, ~20 min as measured for
               the same budget on the 4-epoch model).
  proact       hybrid, Adam 0.01 halved every 10 epochs (paper), last site round(50 F) = 5
               epochs, each layer site round(20 F) = 2 epochs, KL(student || teacher) (Eq. 7),
               guard sized for a < 1 pp TEST drop (--target 1, z = 1.645, 5,000 validation and
               10,000 test images; methods/guard.py). A site whose guard refuses is retried with
               the next regularisation weight (at most 3): the epochs actually spent are read
               back from its progress file into budget.json.
  fitact       neuron-wise, all sites at once, Adam 1e-3 (toolbox), on the same N training
               images as ProAct, for EXACTLY the epochs ProAct spent (its retries included;
               planned: last + layer x 6 = 17 at F = 0.1; the paper: FitAct 150 epochs vs
               ProAct 50 + 20 x 6 = 170), so both get the same threshold-gradient steps on the
               same images. Runs after ProAct for that reason.
  proact-ts    the same with KL(teacher || student) (the toolbox's direction), for the KD
               direction comparison (variant "proact-2" in the campaigns).
               Estimated (417 img/s per threshold step on this CPU, idle): 45,000 images x 17
               epochs = 31 min each for fitact, proact, proact-ts at F = 0.1; x 2 when loaded.
  clean-paired the variants' clean test accuracies compared pairwise on the same 10,000 images
               (McNemar's exact test, Wald intervals, Holm over the 15 pairs). ~1 min.
  campaign-<rule>   for rule in bernoulli, toolbox-floor: the 6 variants paired, 6 paper BERs,
               every trial on a fresh random 100 of the 10,000 test images (intervals cover
               the image sample and the faults), paired sequential mode: a BER stops once every
               pairwise difference excludes 0 after Holm (x 6 BERs) or has a half-width <=
               0.5 pp, at least 30 and at most --max-trials trials (the cap is reported).
               Bernoulli: stratified (K_MAX 3, pilot 8 per stratum) on the classifier's
               raising flips (CLS:24:32:raise, CLS/bias:16:24:raise), the stratified paired
               differences decided the same way; the toolbox rule (not Bernoulli): plain.
               Estimated: up to 6 x 1,000 x 6 variants x ~0.25 s = 2.5 h per rule at the cap;
               measured on AlexNet: 19 min (Bernoulli, stratified) and 13 min (toolbox rule),
               every pair decided after 70-428 trials per BER.
  classifier-<rule> the same with faults in Dense_2 only (the unprotectable classifier),
               at most 300 trials per BER.
  vulnerability  (last) single-flip accuracy drop per (leaf, bit column) for the
               five variants of the paper's Table IV (baseline, Ranger, FT-ClipAct, ProAct,
               FitAct), 8 trials x 256 random test images per cell, heatmaps (issue 12): 16
               weight leaves (ResNet-20: 65) x 6 columns (+ threshold sites) per variant.
  activations  Table V data: per-layer faults at BER 1e-4, 5 trials x 256 images. ~4 min.
  report-<rule> proact report into RESULTS/<rule>/ (files of different fault rules are not
               merged): Tables II-V with Holm p-values, figures.

``budget.json`` records the scale factor, the epochs, images and threshold-gradient steps of
FitAct and ProAct (planned and spent) and FT-ClipAct's fault-trial budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/pipeline_records.py
from pipeline_records import (finished_spent, record_baseline, record_hardened,  # noqa: E402
                              restore_baseline, restore_hardened, run_timed, save_json,
                              stopped,
                              spent_epochs,  # noqa: F401 (tests)
                              training_time)

from proact_jax.commands.args import number  # noqa: E402  (the CLI's ranges for shared options)

PAPER_BERS = "1e-7,3e-7,1e-6,3e-6,1e-5,3e-5"
RULES = ("bernoulli", "toolbox-floor")
BATCH = 128
START_TRIALS = 30  # every BER of a campaign starts with this many trials (then sequential)
# Q15.16 bit columns of the vulnerability map: the fraction, low / middle / high integer bits,
# the top integer bit and the sign.
VULN_GROUPS = "0:16,16:24,24:28,28:30,30:31,31:32"


def n_sites(model: str, dataset: str) -> int:
  import proact_jax as pj
  shape = {"digits": (8, 8, 1)}.get(dataset, (32, 32, 3))
  return len(pj.site_order(pj.create_model(model, 10, "smooth", "hybrid"), shape))


# The baseline recipe per model (``proact train`` flags after --model/--dataset); see RECIPES'
# notes in the module docstring.
RECIPES = {
    "alexnet": ["--epochs", "20", "--lr", "0.02", "--warmup-epochs", "1", "--batch-size", "128"],
    "resnet20": ["--epochs", "30", "--lr", "0.1", "--warmup-epochs", "1", "--batch-size", "128"],
    "vgg16": ["--epochs", "20", "--lr", "0.05", "--warmup-epochs", "1", "--batch-size", "128"],
}


def classifier_layer(model: str, dataset: str) -> str:
  """The name of the model's last Dense layer (the classifier no activation protects)."""
  import jax
  import jax.numpy as jnp

  import proact_jax as pj
  shape = {"digits": (8, 8, 1)}.get(dataset, (32, 32, 3))
  params = jax.eval_shape(lambda: pj.create_model(model, 10).init(
      jax.random.PRNGKey(0), jnp.zeros((1, *shape))))["params"]
  dense = [k for k in params if k.startswith("Dense_")]
  return max(dense, key=lambda k: int(k.split("_")[1]))


def selected(a, stage: str) -> bool:
  """Whether ``stage`` is to run (if not already done): in ``--only`` (when given) and not in
  ``--skip``."""
  return (a.only is None or stage in a.only) and stage not in a.skip


def plan(a) -> tuple[list[tuple[str, list[str], str]], dict]:
  """The stages ``(name, proact argv, done marker)`` and the budget record."""
  smoke = a.smoke
  model, dataset = ("small_cnn", "digits") if smoke else (a.model, "cifar10")
  data = [] if smoke else ["--data-dir", a.data_dir]
  W, R = a.work, a.results
  base = a.baseline or os.path.join(W, "base")
  train = ["--epochs", "3"] if smoke else RECIPES[model]
  stages = [("baseline", ["train", "--model", model, "--dataset", dataset, *data, *train,
                          "--out", base, "--seed", "0"],
             os.path.join(base, "model", "meta.json"))]
  S = n_sites(model, dataset)
  last, layer = max(1, round(50 * a.scale)), max(1, round(20 * a.scale))
  fit_epochs = last + layer * (S - 1)
  n_train = a.train_images
  fi = (["--fi-images", "100", "--fi-trials", "2", "--fi-max-rounds", "1"] if smoke else
        ["--fi-images", str(a.fi_images), "--fi-trials", str(a.fi_trials),
         "--fi-max-rounds", str(a.fi_max_rounds)])
  common = ["--train-images", str(n_train), "--seed", str(a.method_seed)]
  # ProAct before FitAct: a ProAct site whose guard refuses is retrained with the next
  # regularisation weight, so ProAct may spend more epochs than planned; FitAct then gets the
  # epochs ProAct actually spent (read from its progress file once it finished)
  spent = finished_spent(W, "proact", R)
  fit_epochs = max(fit_epochs, spent or 0)
  methods = {
      # the seed picks Ranger's 3,000 profiling images (every repeat draws its own)
      "ranger": ["--method", "ranger", "--granularity", "layer", "--seed", str(a.method_seed)],
      "ft-clipact": ["--method", "ft-clipact", *fi, "--seed", str(a.method_seed)],
      "proact": ["--method", "proact", "--last-epochs", str(last), "--epochs", str(layer),
                 "--lr", "0.01", "--target", "1.0", "--kd-direction", "student-teacher",
                 *common],
      "fitact": ["--method", "fitact", "--epochs", str(fit_epochs), "--lr", "1e-3", *common],
      "proact-ts": ["--method", "proact", "--last-epochs", str(last), "--epochs", str(layer),
                    "--lr", "0.01", "--target", "1.0", "--kd-direction", "teacher-student",
                    *common],
  }
  ckpts = [os.path.join(base, "model")]
  vmap = os.path.join(R, "vulnerability.jsonl")
  for name, args in methods.items():
    out = os.path.join(W, "faithful", name)
    marker = os.path.join(out, "meta.json")
    stages.append((f"harden-{name}", ["harden", "--checkpoint", ckpts[0], *args, *data,
                                      "--out", out, "--quiet"], marker))
    # a method left out by --only or --skip (and not finished) is left out of the later stages
    if selected(a, f"harden-{name}") or os.path.exists(marker):
      ckpts.append(out)
    if name == "fitact":  # the five variants of the paper's Table IV: their maps (issue 12)
      vuln = ("vulnerability", [
          "vulnerability", *sum((["--checkpoint", c] for c in ckpts), []), *data,
          "--bit-groups", VULN_GROUPS, "--trials", "2" if smoke else "8",
          "--images-per-trial", "32" if smoke else "256", "--out", vmap, "--quiet"],
          vmap[:-len(".jsonl")] + ".summary.csv")
  variants = sum((["--checkpoint", c] for c in ckpts), [])
  clean = os.path.join(R, "clean_paired.json")
  stages.append(("clean-paired", ["clean", *variants, *data, "--out", clean], clean))
  bers = "1e-4,1e-3" if smoke else PAPER_BERS
  seq = lambda cap: (["--trials", "4", "--max-trials", "8", "--chunk", "4",
                       "--images-per-trial", "50", "--ci-target", "50"] if smoke else
                      ["--trials", str(START_TRIALS), "--max-trials", str(cap),
                       "--images-per-trial", "100", "--ci-target", "0.5"])
  cls = classifier_layer(model, dataset)
  # Bernoulli flips: stratified on the classifier's raising flips (the decisive ones: a weight
  # made huge and positive makes its class win everywhere; docs/benchmarks.md), 3.8x fewer
  # trials than plain sampling measured at 1e-6; the toolbox rule is not Bernoulli: plain
  strat = {"bernoulli": ["--stratify", "3", "--pilot", "2" if smoke else "8", "--critical",
                         f"{cls}:24:32:raise,{cls}/bias:16:24:raise"], "toolbox-floor": []}
  # the campaign key is the method seed: a seed repeat gets its own faults and images, so the
  # intervals across seeds cover them too (seed 0, the main run, keeps the default key 0)
  key = ["--seed", str(a.method_seed)] if a.method_seed else []
  for rule in RULES:
    out = os.path.join(R, f"campaign_{rule}.jsonl")
    stages.append((f"campaign-{rule}", ["sweep", *variants, *data, "--bers", bers,
                                        *seq(a.max_trials), *strat[rule], *key,
                                        "--stop-pairwise", "--fault-rule", rule, "--out", out,
                                        "--quiet"], out[:-len(".jsonl")] + ".summary.md"))
    out = os.path.join(R, f"classifier_{rule}.jsonl")
    stages.append((f"classifier-{rule}", ["sweep", *variants, *data, "--bers", bers,
                                          *seq(min(300, a.max_trials)), *key,
                                          "--stop-pairwise", "--fault-rule", rule, "--layer",
                                          cls, "--out", out,
                                          "--quiet"], out[:-len(".jsonl")] + ".summary.md"))
  acts = os.path.join(R, "activations.json")
  stages.append(("activations", ["activations", *variants, *data, "--ber", "1e-4" if not smoke
                                 else "1e-3", "--trials", "1" if smoke else "5", "--images",
                                 "16" if smoke else "256", "--out", acts], acts))
  for rule in RULES:
    inputs = [os.path.join(R, f"campaign_{rule}.jsonl")] + ([acts] if rule == "bernoulli"
                                                           else [])
    stages.append((f"report-{rule}", ["report", *inputs, "--out", os.path.join(R, rule)],
                   os.path.join(R, rule, "report.md")))
  stages.append(vuln)  # last: Table IV's evidence first (ResNet-20 has 65 weight leaves)
  fi_trials = (S * 1 * 4 * 5 * 2 if smoke else
               S * a.fi_max_rounds * 4 * 5 * a.fi_trials)
  budget = {"scale": a.scale, "sites": S, "batch_size": BATCH, "train_images": n_train or "all",
            "paper": {"proact_last_epochs": 50, "proact_layer_epochs": 20,
                      "proact_total_epochs": 50 + 20 * (S - 1), "fitact_epochs": 150},
            "proact": {"last_epochs": last, "layer_epochs": layer,
                       "total_epochs": last + layer * (S - 1)},
            "fitact": {"epochs": fit_epochs,
                       "matched_to": "proact spent" if spent else "proact planned"},
            "ft_clipact": {"max_fault_trials": fi_trials, "args": fi,
                           "rule": "sites x max rounds x 4 candidates x 5 BERs x trials"}}
  return stages, budget


def refuse_too_few_trials(ap: argparse.ArgumentParser, max_trials: int) -> None:
  """``--max-trials`` below the START_TRIALS every BER begins with: one line, exit code 2."""
  if max_trials < START_TRIALS:
    ap.error(f"--max-trials {max_trials}: the campaigns start with {START_TRIALS} trials per BER")


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--model", default="alexnet", choices=sorted(RECIPES),
                  help="the architecture (issue 14 item 7: the second model of Table IV)")
  ap.add_argument("--work", default=None, help="default runs/cifar10_MODEL")
  ap.add_argument("--results", default=None, help="default results/cifar10_MODEL")
  ap.add_argument("--scale", type=number("--scale", (float, 0.0, 10.0, True)), default=0.1,
                  help="factor on the paper's threshold-training epochs (FitAct = ProAct total)")
  ap.add_argument("--train-images", type=number("--train-images"), default=0,
                  help="threshold-training images (0: all)")
  ap.add_argument("--fi-images", type=number("--fi-images"), default=500)
  ap.add_argument("--fi-trials", type=number("--fi-trials"), default=3)
  ap.add_argument("--fi-max-rounds", type=number("--fi-max-rounds"), default=3)
  ap.add_argument("--max-trials", type=number("--max-trials"), default=1000,
                  help="campaign cap per BER (at least the 30 trials every BER starts with)")
  ap.add_argument("--method-seed", type=number("--seed"), default=0)
  ap.add_argument("--baseline", default=None,
                  help="a finished `proact train` run directory to harden instead of WORK/base "
                       "(the method-seed repeats share the seed-0 baseline: --method-seed S "
                       "--baseline runs/cifar10_alexnet/base --work runs/cifar10_alexnet_sS "
                       "--results results/cifar10_alexnet/seeds/sS)")
  ap.add_argument("--smoke", action="store_true", help="tiny budgets on digits")
  ap.add_argument("--dry-run", action="store_true", help="print the stages, run nothing")
  ap.add_argument("--only", default=None,
                  help="comma-separated stage names: run only these (the others are skipped)")
  ap.add_argument("--skip", default=None,
                  help="comma-separated stage names not to run (unless already done)")
  a = ap.parse_args(argv)
  a.only = None if a.only is None else set(a.only.split(",")) - {""}  # stage names
  a.skip = set((a.skip or "").split(",")) - {""}
  a.work = a.work or f"runs/cifar10_{a.model}"
  a.results = a.results or f"results/cifar10_{a.model}"
  if not a.smoke and not a.data_dir:
    ap.error("--data-dir is required (or --smoke)")
  if not a.smoke:
    refuse_too_few_trials(ap, a.max_trials)
  if a.smoke:
    a.scale, a.train_images = min(a.scale, 0.02), 0
  return a


def main(argv=None) -> int:
  a = parse_args(argv)
  stages, budget = plan(a)
  unknown = sorted(((a.only or set()) | a.skip) - {n for n, _, _ in stages})
  if unknown:
    print(f"cifar10_{a.model}: unknown stage(s) {', '.join(unknown)}", file=sys.stderr)
    return 2
  if a.dry_run:
    for name, args, _ in stages:
      print(f"{name}: proact {' '.join(args)}")
    return 0
  if a.data_dir and not os.path.exists(a.data_dir):
    print(f"cifar10_{a.model}: --data-dir {a.data_dir} does not exist", file=sys.stderr)
    return 2
  os.makedirs(a.results, exist_ok=True)
  path = os.path.join(a.results, "stages.json")
  done = json.load(open(path)) if os.path.exists(path) else {}
  for name, args, marker in stages:
    if not selected(a, name) and not os.path.exists(marker):
      print(f"== {name}: not selected (--only / --skip), skipping", flush=True)
      continue
    try:  # done in an earlier session whose WORK was lost: rebuilt from the committed files
      if name == "baseline" and not a.baseline and restore_baseline(
          os.path.dirname(os.path.dirname(marker)), a.results):
        print(f"== {name}: restored from {a.results}/baseline/model.npz", flush=True)
      elif name.startswith("harden-") and restore_hardened(
          name[len("harden-"):], args[args.index("--checkpoint") + 1], os.path.dirname(marker),
          a.results):
        print(f"== {name}: restored from {a.results}/hardened (thresholds file)", flush=True)
    except ValueError as e:
      print(f"cifar10_{a.model}: {name}: {e} (remove the file to run the stage again)",
            file=sys.stderr)
      return 2
    if os.path.exists(marker):
      print(f"== {name}: done, skipping", flush=True)
      if name == "baseline" and a.baseline:  # not trained by this run
        done[name] = {"command": "proact " + " ".join(args), "wall_time_s": None,
                      "note": f"shared baseline {a.baseline}, trained and timed by its own run"}
      elif name == "baseline" and training_time(os.path.dirname(os.path.dirname(marker))) is None:
        done.setdefault(name, {"command": "proact " + " ".join(args), "wall_time_s": None,
                               "note": "restored from baseline/model.npz, not timed"})
      elif name == "baseline":  # resumed sessions: the sum of THIS run's epoch times
        done[name] = {"command": "proact " + " ".join(args),
                      "wall_time_s": training_time(os.path.dirname(os.path.dirname(marker))),
                      "note": "sum of epoch times in metrics.jsonl"}
      elif name not in done:
        done[name] = {"command": "proact " + " ".join(args), "wall_time_s": None,
                      "note": "found finished, not timed by this script"}
    else:
      # planned again now: a stage may depend on what earlier stages of this invocation left
      # (FitAct's epochs are the epochs ProAct actually spent, known once ProAct finished)
      fresh, budget = plan(a)
      args = next(x for n, x, _ in fresh if n == name)
      print(f"== {name}: proact {' '.join(args)}", flush=True)
      try:
        spent, calls = run_timed(name, [sys.executable, "-m", "proact_jax.cli", *args], a.work)
      except subprocess.CalledProcessError as e:
        return stopped(f"cifar10_{a.model}", f"stage {name}", e.returncode)
      done[name] = {"command": "proact " + " ".join(args), "wall_time_s": round(spent),
                    **({"invocations": calls} if calls > 1 else {})}
      save_json(path, done)
    if name == "baseline" and not a.baseline:  # a shared baseline is recorded by its own run
      record_baseline(os.path.dirname(os.path.dirname(marker)), a.results,
                      *(("small_cnn", "digits") if a.smoke else (a.model, "cifar10")))
    elif name.startswith("harden-") and os.path.exists(marker):
      record_hardened(name[len("harden-"):], os.path.dirname(marker), a.results)
  _, budget = plan(a)  # as the checkpoints now stand (restored ones included)
  budget["spent_epochs"] = {m: finished_spent(a.work, m, a.results)  # null: not finished
                            for m in ("fitact", "proact", "proact-ts")}
  save_json(os.path.join(a.results, "budget.json"), budget)
  save_json(path, done)
  print(f"results in {a.results}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
