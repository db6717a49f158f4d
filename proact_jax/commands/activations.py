"""proact activations --checkpoint DIR [--checkpoint DIR2 ...] [--ber 1e-4] [--trials 5]
[--images 256] [--hist-ber B] --out FILE.json

The data behind the paper's Table V (mean squared L2 distance between faulty and fault-free
activations under per-layer faults) and Figs. 3/6 (activation histograms, split at 1), for
several checkpoints of one baseline under the same fault draws. `proact report` reads the file.
"""

from __future__ import annotations

import os

from proact_jax.commands.args import number, variant_name


def add_arguments(p):
  p.add_argument("--checkpoint", action="append", required=True,
                 help="checkpoint directory; repeat to compare variants (same baseline)")
  p.add_argument("--ber", type=number("--ber"), default=1e-4,
                 help="per-layer fault BER (paper: 1e-4)")
  p.add_argument("--hist-ber", type=number("--hist-ber"), default=None,
                 help="whole-model BER for the histograms (default: --ber)")
  p.add_argument("--trials", type=number("--trials"), default=5)
  p.add_argument("--images", type=number("--images"), default=256,
                 help="test images (seeded subset)")
  p.add_argument("--format", default="q15.16")
  p.add_argument("--seed", type=number("--seed"), default=0)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--out", required=True, help="output JSON file (refuses to overwrite)")


def run(args) -> int:
  import jax

  from proact_jax.faults.formats import get_format
  from proact_jax.report.activation_stats import activation_report, save_activation_report
  from proact_jax.training.checkpoint import load_checkpoint
  from proact_jax.training.checkpoint_data import checkpoint_data

  if args.images < 1:  # other numeric ranges: argparse (args.NUMERIC)
    raise ValueError("--images must be >= 1 here (a seeded subset of the test images)")
  get_format(args.format)
  out = os.path.abspath(args.out)
  if os.path.exists(out):
    raise ValueError(f"{out} already exists (refusing to overwrite)")
  variants, used, meta0 = {}, set(), None
  for path in args.checkpoint:
    model, variables, meta = load_checkpoint(path)
    name = variant_name(meta, used)
    used.add(name)
    variants[name] = (model, variables)
    meta0 = meta0 or meta
  data = checkpoint_data(meta0, test_images=args.images, seed=args.seed, data_dir=args.data_dir)
  report = activation_report(jax.random.PRNGKey(args.seed), variants, data.x_test, ber=args.ber,
                             hist_ber=args.hist_ber, fmt=args.format, trials=args.trials,
                             meta={"model": meta0["model"], "dataset": meta0["dataset"]})
  save_activation_report(out, report, exclusive=True)
  print(f"activation distances and histograms of {', '.join(variants)} written to {out}")
  return 0
