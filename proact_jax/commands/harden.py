"""proact harden --checkpoint DIR --method ranger|ft-clipact|fitact|proact [--granularity G]
[--epochs N] [--kd-direction student-teacher|teacher-student] [--target PP] --out DIR"""

from __future__ import annotations

import os

from proact_jax.commands.args import number
from proact_jax.core.files import lock, unlock


def add_arguments(p):
  p.add_argument("--checkpoint", required=True,
                 help="baseline checkpoint (proact train --out X: X/model)")
  p.add_argument("--method", required=True, choices=["ranger", "ft-clipact", "fitact", "proact"])
  p.add_argument("--granularity", default=None,
                 help="layer|neuron|hybrid (defaults: ranger layer, ft-clipact layer, fitact "
                      "neuron, proact hybrid)")
  p.add_argument("--epochs", type=number("--epochs"), default=None,
                 help="fitact: epochs; proact: epochs per layer-wise site (paper 20)")
  p.add_argument("--last-epochs", type=number("--last-epochs"), default=None,
                 help="proact: epochs of the neuron-wise last site (paper 50)")
  p.add_argument("--lr", type=number("--lr"), default=None,
                 help="fitact/proact: Adam learning rate (defaults: fitact 1e-3, proact 0.01)")
  p.add_argument("--budget", type=number("--budget"), default=0.2,
                 help="proact: clean-accuracy budget in percentage points (default 0.2)")
  p.add_argument("--kd-direction", default="student-teacher",
                 choices=["student-teacher", "teacher-student"],
                 help="proact: KL(student||teacher) as the paper's Eq. 7 (default) or "
                      "KL(teacher||student) as the authors' toolbox")
  p.add_argument("--target", type=number("--target"), default=1.0,
                 help="proact: keep thresholds only if the TEST drop stays under this many "
                      "points with prob. >= Phi(--guard-z) (binomial SE of the validation "
                      "estimate; 0: only --budget)")
  p.add_argument("--guard-z", type=number("--guard-z"), default=1.645,
                 help="proact: one-sided normal quantile of the guard (default 1.645: 95 %%)")
  p.add_argument("--profile-images", type=number("--profile-images"), default=3000)
  p.add_argument("--train-images", type=number("--train-images"), default=0,
                 help="distillation images (0: all)")
  p.add_argument("--val-images", type=number("--val-images"), default=0,
                 help="guard images (0: all held out)")
  p.add_argument("--test-images", type=number("--test-images"), default=0,
                 help="images for the reported accuracy")
  p.add_argument("--fi-images", type=number("--fi-images"), default=1000,
                 help="ft-clipact: campaign images")
  p.add_argument("--fi-trials", type=number("--fi-trials"), default=5,
                 help="ft-clipact: trials per BER")
  p.add_argument("--fi-max-rounds", type=number("--fi-max-rounds"), default=4,
                 help="ft-clipact: search rounds (>= 3)")
  p.add_argument("--data-dir", default=None, help="override the checkpoint's data location")
  p.add_argument("--seed", type=number("--seed"), default=0)
  p.add_argument("--out", required=True, help="output checkpoint directory")
  p.add_argument("--quiet", action="store_true")


DEFAULT_GRANULARITY = {"ranger": "layer", "ft-clipact": "layer", "fitact": "neuron",
                       "proact": "hybrid"}


def run(args) -> int:
  from proact_jax import methods
  from proact_jax.training.checkpoint import load_checkpoint
  from proact_jax.training.checkpoint_data import checkpoint_data

  granularity = args.granularity or DEFAULT_GRANULARITY[args.method]
  methods.check_granularity(args.method, granularity)  # numeric ranges: argparse (args.NUMERIC)
  out = os.path.abspath(args.out)
  work = out + ".progress"
  _check_outputs(out, work)
  model, variables, meta = load_checkpoint(args.checkpoint)
  if meta.get("kind", "relu") != "relu":
    raise ValueError(f"{args.checkpoint} has no plain-ReLU baseline to harden: it was already "
                     f"hardened with {meta.get('method', meta['kind'])}; pass the baseline")
  data = checkpoint_data(meta, profile_images=args.profile_images, train_images=args.train_images,
                         val_images=args.val_images, test_images=args.test_images,
                         seed=args.seed, data_dir=args.data_dir)
  held = None
  if args.method != "ranger":  # the others keep progress in DIR.progress: one process at a time
    os.makedirs(work, exist_ok=True)
    held = lock(work)
  try:
    return _harden(args, granularity, out, work, model, variables, meta, data)
  finally:
    unlock(held)


def _check_outputs(out: str, work: str) -> None:
  """--out must be new or an empty directory, DIR.progress new or a hardening's progress."""
  from proact_jax.core.files import foreign_entries
  if os.path.lexists(out):
    if not os.path.isdir(out):
      raise ValueError(f"--out {out} exists and is not a directory (refusing to replace it)")
    if os.path.exists(os.path.join(out, "meta.json")):
      raise ValueError(f"{out} already holds a hardened checkpoint (refusing to overwrite)")
    if foreign_entries(out):
      raise ValueError(f"--out {out} is not empty (refusing to replace files proact did not "
                       "write); pass a new or empty directory")
  if os.path.lexists(work):
    if not os.path.isdir(work):
      raise ValueError(f"{work} (the progress directory of --out) exists and is not a directory")
    foreign = foreign_entries(work, ("progress.npz", "progress.json", "thresholds.npz"))
    if foreign:
      raise ValueError(f"{work} (the progress directory of --out) holds files proact did not "
                       f"write ({', '.join(foreign[:3])}); move them or use another --out")


def _harden(args, granularity, out, work, model, variables, meta, data) -> int:
  from proact_jax import methods
  from proact_jax.core.evaluate import evaluate
  from proact_jax.training.checkpoint import write_json_atomic

  progress = not args.quiet
  common = dict(eval_set=data.val, workdir=work, progress=progress)
  if args.method == "ranger":
    h = methods.ranger(model, variables, data.x_profile, data.val, granularity)
  elif args.method == "fitact":
    kw = {"epochs": args.epochs} if args.epochs else {}
    if args.lr:
      kw["learning_rate"] = args.lr
    cfg = methods.FitActConfig(granularity=granularity, seed=args.seed, **kw)
    h = methods.fitact(model, variables, data.x_profile, data.x_train, data.y_train, data.val,
                       cfg, **common)
  elif args.method == "proact":
    kw = {}
    if args.epochs:
      kw["layer_epochs"] = args.epochs
    if args.last_epochs:
      kw["last_epochs"] = args.last_epochs
    if args.lr:
      kw["learning_rate"] = args.lr
    if args.target < 0 or args.target >= 100 or not args.guard_z >= 0:
      raise ValueError(f"--target must be in [0, 100) points and --guard-z >= 0, got "
                       f"{args.target} and {args.guard_z}")
    cfg = methods.ProActConfig(granularity=granularity, budget=args.budget / 100,
                               seed=args.seed, kd_direction=args.kd_direction,
                               target=args.target / 100 if args.target else None,
                               guard_z=args.guard_z, guard_test_images=len(data.x_test), **kw)
    h = methods.proact(model, variables, data.x_profile, data.x_train, data.y_train, data.val,
                       cfg, **common)
  else:
    cfg = methods.FTClipActConfig(images=args.fi_images, trials=args.fi_trials, seed=args.seed,
                                  max_rounds=args.fi_max_rounds,
                                  min_rounds=min(3, args.fi_max_rounds))
    h = methods.ft_clipact(model, variables, data.x_profile, data.x_train, data.y_train,
                           data.val, cfg, **common)
  test_acc = evaluate(h.model, h.variables, data.x_test, data.y_test)[0]
  base_acc = evaluate(model, variables, data.x_test, data.y_test)[0]
  methods.save_hardened(out, h, meta, test_acc, overwrite=False, method_seed=args.seed)
  summary = {**h.summary(), "test_accuracy": test_acc, "baseline_test_accuracy": base_acc,
             "method_seed": args.seed, "checkpoint": os.path.abspath(args.checkpoint)}
  write_json_atomic(os.path.join(out, "summary.json"), summary)
  print(f"{args.method} ({granularity}): test accuracy {100 * test_acc:.2f} % "
        f"(baseline {100 * base_acc:.2f} %), memory overhead {100 * h.memory_overhead:.4f} %, "
        f"{summary['n_threshold_values']} threshold values, search {h.wall_time:.1f} s")
  for s in h.sites:
    print(f"  {s['site']:<24} n={s['n_values']:<6} lam in [{s['min']:.4g}, {s['max']:.4g}]"
          + (f"  val acc {100 * s['clean_accuracy']:.2f} %" if "clean_accuracy" in s else ""))
  print(f"hardened checkpoint: {out}")
  return 0
