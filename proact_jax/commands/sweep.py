"""proact sweep --checkpoint DIR [--checkpoint DIR2 ...] --bers 1e-7,...,3e-5 --trials N
[--format F] [--images N] [--images-per-trial M] [--ci-target PP] [--max-trials N]
[--layer NAME] [--bits LO:HI] [--no-thresholds-faults] [--activation-faults]
[--no-weight-faults] [--seed S] [--trial-batch B] [--mode auto|map|vmap] --out FILE

Several checkpoints are compared paired (same trial keys); they must share the baseline's params.
``--images N`` fixes the evaluation set (N test images); ``--images-per-trial M``
evaluates each trial on a fresh random subset of M of those images (the same for every variant).
``--activation-faults`` adds transient bit flips in the activations (the PyTorchFI "neuron"
model, :mod:`proact_jax.faults.neuron_faults`): every stored bit of every activation site's output
flips with probability BER, independently for each evaluated image; with ``--no-weight-faults
--no-thresholds-faults`` only the activations are hit.
"""

from __future__ import annotations

import os
import sys

from proact_jax.commands.args import parse_bers, parse_bits, variant_name

PAPER_BERS = "1e-7,3e-7,1e-6,3e-6,1e-5,3e-5"


def add_arguments(p):
  p.add_argument("--checkpoint", action="append", required=True,
                 help="checkpoint directory; repeat for a paired comparison")
  p.add_argument("--bers", default=PAPER_BERS, help=f"comma-separated (default {PAPER_BERS})")
  p.add_argument("--trials", type=int, default=500,
                 help="trials per BER (with --ci-target: the minimum)")
  p.add_argument("--format", default="q15.16", help="q15.16 | qM.N | float32 | bf16 | fp16 | int8")
  p.add_argument("--images", type=int, default=0, help="test images in the evaluation set (0: all)")
  p.add_argument("--images-per-trial", type=int, default=None,
                 help="evaluate each trial on a fresh random subset of M test images "
                      "(default: all)")
  p.add_argument("--ci-target", type=float, default=None,
                 help="sequential mode: stop a BER once every 95%% CI half-width is <= PP "
                      "accuracy points")
  p.add_argument("--max-trials", type=int, default=None,
                 help="sequential mode: at most N trials per BER (default 10 x --trials)")
  p.add_argument("--chunk", type=int, default=None, help="trials per saved chunk")
  p.add_argument("--layer", default=None, help="inject only into this layer / threshold site")
  p.add_argument("--bits", default=None, help="only bits LO:HI (LO inclusive, HI exclusive)")
  p.add_argument("--no-thresholds-faults", action="store_true",
                 help="do not inject faults into the thresholds")
  p.add_argument("--activation-faults", action="store_true",
                 help="also flip bits of the activations at every site, per image (PyTorchFI "
                      "neuron faults), paired across checkpoints")
  p.add_argument("--no-weight-faults", action="store_true",
                 help="do not inject faults into the weights (params)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--trial-batch", type=int, default=None)
  p.add_argument("--mode", default="auto", choices=["auto", "map", "vmap"])
  p.add_argument("--data-dir", default=None, help="override the checkpoint's data location")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--out", required=True, help="results file (JSONL); resumed if it exists")


def run(args) -> int:
  import jax

  from proact_jax.core.evaluate import make_eval_set
  from proact_jax.faults import campaign
  from proact_jax.faults import injection as faults
  from proact_jax.faults.formats import get_format
  from proact_jax.faults.results import fingerprint
  from proact_jax.report.activation_stats import campaign_extra
  from proact_jax.training.checkpoint import load_checkpoint
  from proact_jax.training.checkpoint_data import checkpoint_data

  bers = parse_bers(args.bers)
  if args.trials < 1:
    raise ValueError(f"--trials must be >= 1, got {args.trials}")
  if args.images < 0:
    raise ValueError(f"--images must be >= 0, got {args.images}")
  if args.images_per_trial is not None and args.images_per_trial < 1:
    raise ValueError(f"--images-per-trial must be >= 1, got {args.images_per_trial}")
  if args.ci_target is not None and not args.ci_target > 0:
    raise ValueError(f"--ci-target must be > 0 points, got {args.ci_target}")
  if args.max_trials is not None and args.max_trials < 1:
    raise ValueError(f"--max-trials must be >= 1, got {args.max_trials}")
  if args.chunk is not None and args.chunk < 1:
    raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
  if args.trial_batch is not None and args.trial_batch < 1:
    raise ValueError(f"--trial-batch must be >= 1, got {args.trial_batch}")
  fmt = get_format(args.format)
  lo, hi = parse_bits(args.bits)
  cols = tuple(c for c, off in (("params", args.no_weight_faults),
                                 ("thresholds", args.no_thresholds_faults),
                                 ("activations", not args.activation_faults)) if not off)
  if not cols:
    raise ValueError("nothing to inject: --no-weight-faults and --no-thresholds-faults need "
                     "--activation-faults")
  space = faults.FaultSpace(collections=cols, layer=args.layer, bit_lo=lo, bit_hi=hi)
  space.bit_range(fmt)
  out = os.path.abspath(args.out)
  if os.path.isdir(out):
    raise ValueError(f"--out {out} is a directory; expected a results file")
  for d in args.checkpoint:
    if not os.path.isdir(d):
      raise ValueError(f"checkpoint {d} does not exist")

  variants, metas, used, entries = {}, [], set(), {}
  for d in args.checkpoint:
    model, variables, meta = load_checkpoint(d)
    name = variant_name(meta, used)
    used.add(name)
    variants[name] = (model, variables)
    entries[name] = (model, variables, meta)
    metas.append(meta)
  if len(variants) > 1:
    prints = {n: fingerprint(v.get("params", {})) for n, (_, v) in variants.items()}
    if len(set(prints.values())) > 1:
      raise ValueError("paired comparison needs checkpoints of the same baseline, but their "
                       f"params differ ({', '.join(f'{n}: {p}' for n, p in prints.items())})")
    for m in metas[1:]:
      if (m["dataset"], m.get("mean"), m.get("std")) != (
          metas[0]["dataset"], metas[0].get("mean"), metas[0].get("std")):
        raise ValueError("paired checkpoints must use the same dataset and normalisation")
  plans = [campaign.make_plan(v, fmt, space, max(bers), require_match=False)
           for _, v in variants.values()]  # validates --layer and --bits before any write
  if (args.layer is not None and not args.activation_faults  # activation sites: run_campaign
      and all(p.weights is None and p.thresholds is None for p in plans)):
    faults.fault_leaves(next(iter(variants.values()))[1], space)  # raises, listing the layers

  data = checkpoint_data(metas[0], test_images=args.images, data_dir=args.data_dir)
  eval_set = make_eval_set(data.x_test, data.y_test)
  m = args.images_per_trial
  if m is not None and m > eval_set.n:
    raise ValueError(f"--images-per-trial {m} exceeds the {eval_set.n} test images")
  sequential = args.ci_target is not None
  max_trials = (args.max_trials or 10 * args.trials) if sequential else args.trials
  if sequential and max_trials < args.trials:
    raise ValueError(f"--max-trials {max_trials} is below --trials {args.trials}")
  extra = campaign_extra(entries, images=args.images, seed=args.seed)  # what proact report needs
  result = campaign.run_campaign(
      jax.random.PRNGKey(args.seed), variants, eval_set, bers, max_trials, fmt=fmt, space=space,
      results_path=out, ci_target=args.ci_target, min_trials=args.trials,
      max_trials=max_trials, chunk=args.chunk, progress=not args.quiet, config_extra=extra,
      trial_batch=args.trial_batch, mode=args.mode, images_per_trial=m)
  if jax.process_index() != 0:  # multi-process: process 0 writes and reports
    return 0
  prefix = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
  csv_path, md_path = result.write_summary(prefix)
  if m is not None:
    print(f"trials use random subsets of {m} of the {eval_set.n} test images (a fresh subset "
          "per trial; clean accuracy on all of them)")
  print(result.format_table())
  print(f"results: {out}; summary: {csv_path}, {md_path}", file=sys.stderr)
  return 0
