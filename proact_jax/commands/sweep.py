"""proact sweep --checkpoint DIR [--checkpoint DIR2 ...] --bers 1e-7,...,3e-5 --trials N
[--format F] [--images N] [--images-per-trial M] [--ci-target PP] [--max-trials N]
[--layer NAME] [--bits LO:HI] [--no-thresholds-faults] [--activation-faults]
[--no-weight-faults] [--fault-rule bernoulli|toolbox-floor] [--stop-pairwise] [--seed S]
[--trial-batch B] [--mode auto|map|vmap] [--stratify K_MAX (--critical LAYER:LO:HI[:raise] |
--critical-map FILE [--critical-threshold PP] [--critical-direction raise|lower]) [--pilot N]
[--ci-pairs]] --out FILE

Several checkpoints are compared paired (same trial keys); they must share the baseline's params.
``--images N`` fixes the evaluation set (N test images); ``--images-per-trial M``
evaluates each trial on a fresh random subset of M of those images (the same for every variant).
``--activation-faults`` adds transient bit flips in the activations (the PyTorchFI "neuron"
model, :mod:`proact_jax.faults.neuron_faults`): every stored bit of every activation site's output
flips with probability BER, independently for each evaluated image; with ``--no-weight-faults
--no-thresholds-faults`` only the activations are hit. They are Bernoulli flips in a plain
campaign: ``--fault-rule toolbox-floor`` and ``--stratify`` refuse them.
``--stratify K_MAX`` stratifies the trials on the number of flips in a critical set of (layer,
bit) sites (``proact_jax.faults.strata``: exact weights, Neyman allocation, stratified CIs),
or of their positions whose flip raises (lowers) the clean value (``:raise`` / ``:lower``).
"""

from __future__ import annotations

import os
import sys

from proact_jax.commands.args import load_variants, number, parse_bers, parse_bits

PAPER_BERS = "1e-7,3e-7,1e-6,3e-6,1e-5,3e-5"


def add_arguments(p):
  p.add_argument("--checkpoint", action="append", required=True,
                 help="checkpoint directory; repeat for a paired comparison")
  p.add_argument("--bers", default=PAPER_BERS, help=f"comma-separated (default {PAPER_BERS})")
  p.add_argument("--trials", type=number("--trials"), default=500,
                 help="trials per BER (with --ci-target: the minimum)")
  p.add_argument("--format", default="q15.16", help="q15.16 | qM.N | float32 | bf16 | fp16 | int8")
  p.add_argument("--images", type=number("--images"), default=0,
                 help="test images in the evaluation set (0: all)")
  p.add_argument("--images-per-trial", type=number("--images-per-trial"), default=None,
                 help="evaluate each trial on a fresh random subset of M test images "
                      "(default: all)")
  p.add_argument("--ci-target", type=number("--ci-target"), default=None,
                 help="sequential mode: stop a BER once every 95%% CI half-width is <= PP "
                      "accuracy points")
  p.add_argument("--max-trials", type=number("--max-trials"), default=None,
                 help="sequential mode: at most N trials per BER (default 10 x --trials)")
  p.add_argument("--chunk", type=number("--chunk"), default=None, help="trials per saved chunk")
  p.add_argument("--layer", default=None, help="inject only into this layer / threshold site")
  p.add_argument("--bits", default=None, help="only bits LO:HI (LO inclusive, HI exclusive)")
  p.add_argument("--no-thresholds-faults", action="store_true",
                 help="do not inject faults into the thresholds")
  p.add_argument("--activation-faults", action="store_true",
                 help="also flip bits of the activations at every site, per image (PyTorchFI "
                      "neuron faults), paired across checkpoints; Bernoulli rule, no --stratify")
  p.add_argument("--no-weight-faults", action="store_true",
                 help="do not inject faults into the weights (params)")
  p.add_argument("--fault-rule", default="bernoulli", choices=["bernoulli", "toolbox-floor"],
                 help="bernoulli: every stored bit flips independently with prob. BER "
                      "(default); toolbox-floor: the authors' toolbox, exactly "
                      "floor(n x bits x BER) flips in every leaf (kernels, biases and each "
                      "threshold tensor separately, so biases, scalar thresholds and small "
                      "layers are never hit at low BER)")
  p.add_argument("--stop-pairwise", action="store_true",
                 help="with --ci-target: stop a BER once every pairwise difference between "
                      "the protected variants excludes 0 after Holm (x number of BERs) or has "
                      "a half-width <= the target (capped by --max-trials)")
  p.add_argument("--seed", type=number("--seed"), default=0)
  p.add_argument("--trial-batch", type=number("--trial-batch"), default=None)
  p.add_argument("--mode", default="auto", choices=["auto", "map", "vmap"])
  p.add_argument("--data-dir", default=None, help="override the checkpoint's data location")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--out", required=True, help="results file (JSONL); resumed if it exists")
  g = p.add_argument_group(
      "stratified sampling", "stratify trials on the number of flips K in a critical set C of "
      "(layer, bit) sites: strata K = 0 .. K_MAX-1 and K >= K_MAX, exact binomial weights, "
      "Neyman allocation; --trials is then the total per BER (or, with --ci-target, --max-trials "
      "the cap)")
  g.add_argument("--stratify", type=number("--stratify"), default=None, metavar="K_MAX",
                 help="enable stratified sampling with strata 0 .. K_MAX-1 and a tail")
  g.add_argument("--critical", action="append", default=None,
                 metavar="LAYER[:LO[:HI]][:raise|:lower],...",
                 help="critical sites, e.g. Dense_2:24:32 (bits 24-31 of Dense_2's leaves); a "
                      ":raise / :lower suffix keeps only the positions whose flip raises / "
                      "lowers the clean value (Dense_2:24:32:raise); repeatable")
  g.add_argument("--critical-map", default=None, metavar="FILE",
                 help="take C from a `proact vulnerability` map: the weight cells whose mean "
                      "single-flip drop exceeds --critical-threshold")
  g.add_argument("--critical-threshold", type=number("--critical-threshold"), default=0.5,
                 metavar="PP",
                 help="map cells above this mean drop in points (default 0.5)")
  g.add_argument("--critical-variants", default=None, metavar="NAME,...",
                 help="take the map cells from these of its variants only (default: a cell "
                      "above the threshold in any variant), e.g. the hardened ones when the "
                      "unprotected baseline is destroyed at every BER of interest anyway")
  g.add_argument("--critical-direction", default=None, choices=["raise", "lower"],
                 help="keep only the map cells' positions whose flip raises / lowers the clean "
                      "value (value-dependent C: e.g. the classifier flips that make a weight "
                      "huge and positive)")
  g.add_argument("--pilot", type=number("--pilot"), default=8,
                 help="first trials in every stratum (>= 2)")
  g.add_argument("--ci-pairs", action="store_true",
                 help="with --ci-target: every pair of variants' difference must reach it too")


def run(args) -> int:
  import jax

  from proact_jax.core.evaluate import make_eval_set
  from proact_jax.core.files import check_regular_output
  from proact_jax.faults import campaign
  from proact_jax.faults import injection as faults
  from proact_jax.faults.formats import get_format
  from proact_jax.report.activation_stats import campaign_extra
  from proact_jax.training.checkpoint_data import checkpoint_data

  bers = parse_bers(args.bers)  # numeric options: ranges checked by argparse (args.NUMERIC)
  _check_stratify(args)
  fmt = get_format(args.format)
  lo, hi = parse_bits(args.bits)
  cols = tuple(c for c, off in (("params", args.no_weight_faults),
                                 ("thresholds", args.no_thresholds_faults),
                                 ("activations", not args.activation_faults)) if not off)
  if not cols:
    raise ValueError("nothing to inject: --no-weight-faults and --no-thresholds-faults need "
                     "--activation-faults")
  if args.activation_faults and (args.stratify is not None or args.fault_rule != "bernoulli"):
    raise ValueError("--activation-faults injects Bernoulli flips in a plain campaign: it does "
                     "not combine with --stratify or --fault-rule toolbox-floor")
  space = faults.FaultSpace(collections=cols, layer=args.layer, bit_lo=lo, bit_hi=hi)
  space.bit_range(fmt)
  out = os.path.abspath(args.out)
  check_regular_output(out)
  prefix = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
  if not os.path.exists(out) or os.path.getsize(out) == 0:  # a new campaign: no summary yet
    for f in (prefix + ".summary.csv", prefix + ".summary.md"):
      if os.path.lexists(f):
        raise ValueError(f"{f} exists but its results file {out} does not (proact did not "
                         "write it); move it away or use another --out")
  variants, entries = load_variants(args.checkpoint)  # same baseline, dataset, normalisation
  metas = [e[2] for e in entries.values()]
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
  if args.stop_pairwise and not sequential:
    raise ValueError("--stop-pairwise needs --ci-target (the half-width target)")
  max_trials = (args.max_trials or 10 * args.trials) if sequential else args.trials
  if sequential and max_trials < args.trials:
    raise ValueError(f"--max-trials {max_trials} is below --trials {args.trials}")
  extra = campaign_extra(entries, images=args.images, seed=args.seed)  # what proact report needs
  if args.stratify is not None:
    if args.fault_rule != "bernoulli":
      raise ValueError("--stratify samples Bernoulli flips: it does not combine with "
                       "--fault-rule toolbox-floor")
    if args.stop_pairwise and args.ci_pairs:
      raise ValueError("--stop-pairwise and --ci-pairs are two pairwise targets: choose one")
    result = _stratified(args, variants, eval_set, bers, fmt, space, extra, max_trials, out)
  else:
    result = campaign.run_campaign(
        jax.random.PRNGKey(args.seed), variants, eval_set, bers, max_trials, fmt=fmt,
        space=space, results_path=out, ci_target=args.ci_target, min_trials=args.trials,
        max_trials=max_trials, chunk=args.chunk, progress=not args.quiet, config_extra=extra,
        trial_batch=args.trial_batch, mode=args.mode, images_per_trial=m,
        fault_rule=args.fault_rule, stop_pairwise=args.stop_pairwise)
  if jax.process_index() != 0:  # multi-process: process 0 writes and reports
    return 0
  csv_path, md_path = result.write_summary(prefix)
  if m is not None:
    print(f"trials use random subsets of {m} of the {eval_set.n} test images (a fresh subset "
          "per trial; clean accuracy on all of them)")
  if args.stratify is not None:
    st = result.config["strata"]
    print(f"stratified on {st['n_bits']} critical bits (K_MAX {st['k_max']}); trials per "
          "stratum and the exact weights are in the summary")
  print(result.format_table())
  if sequential and args.stratify is None:
    n_used = [min(len(result.trials[v][i]["trial"]) for v in result.variants)
              for i in range(len(bers))]
    capped = [f"{b:g}" for b, n in zip(bers, n_used) if n >= max_trials]
    if capped:
      print(f"the cap --max-trials {max_trials} was hit at BER {', '.join(capped)}: the "
            "stopping target was not reached there")
  print(f"results: {out}; summary: {csv_path}, {md_path}", file=sys.stderr)
  return 0


def _check_stratify(args):
  if args.stratify is None:
    if (args.critical or args.critical_map or args.critical_variants or args.ci_pairs
        or args.critical_direction):
      raise ValueError("--critical, --critical-map, --critical-variants, --critical-direction "
                       "and --ci-pairs need --stratify K_MAX")
    return
  if args.stratify < 1 or args.pilot < 2:
    raise ValueError(f"--stratify must be >= 1 and --pilot >= 2, got {args.stratify}, "
                     f"{args.pilot}")
  if (args.critical_variants or args.critical_direction) and not args.critical_map:
    raise ValueError("--critical-variants and --critical-direction need --critical-map (a "
                     "--critical site takes its direction as a :raise / :lower suffix)")
  if not args.critical and not args.critical_map:
    raise ValueError("--stratify needs the critical set: --critical LAYER:LO:HI and/or "
                     "--critical-map FILE (from proact vulnerability)")
  if args.ci_pairs and args.ci_target is None:
    raise ValueError("--ci-pairs needs --ci-target")
  if not args.critical_threshold >= 0:
    raise ValueError(f"--critical-threshold must be >= 0 points, got {args.critical_threshold}")


def _stratified(args, variants, eval_set, bers, fmt, space, extra, max_trials, out):
  """``sweep --stratify``: C from --critical / --critical-map, then the stratified campaign."""
  import jax

  from proact_jax.commands.args import critical_from_args
  from proact_jax.faults.stratified import run_stratified_campaign

  cs = critical_from_args(args, next(iter(variants.values()))[1], space, fmt)
  return run_stratified_campaign(
      jax.random.PRNGKey(args.seed), variants, eval_set, bers, max_trials, critical_set=cs,
      k_max=args.stratify, pilot=args.pilot, fmt=fmt, space=space, results_path=out,
      ci_target=args.ci_target, ci_pairs=args.ci_pairs, max_trials=max_trials,
      chunk=args.chunk, progress=not args.quiet, config_extra=extra,
      trial_batch=args.trial_batch, mode=args.mode, images_per_trial=args.images_per_trial,
      stop_pairwise=args.stop_pairwise)
