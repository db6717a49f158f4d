"""proact clean --checkpoint DIR --checkpoint DIR2 [...] [--data-dir D] --out FILE.json

Paired clean test accuracies of checkpoints of one baseline: every variant predicts the whole
test set, every pair is compared with McNemar's exact test and a Wald interval, Holm-adjusted
over the pairs (``report/clean_paired.py``). Writes FILE.json and FILE.md; refuses to overwrite.
"""

from __future__ import annotations

import os

from proact_jax.commands.args import load_variants


def add_arguments(p):
  p.add_argument("--checkpoint", action="append", required=True,
                 help="checkpoint directory; repeat (at least 2, same baseline)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--out", required=True, help="output JSON file; a .md table is written beside")


def run(args) -> int:
  import numpy as np

  from proact_jax.core.evaluate import predict
  from proact_jax.core.files import (check_regular_output, create_json_exclusive,
                                     write_bytes_atomic)
  from proact_jax.report.clean_paired import clean_paired, clean_paired_markdown
  from proact_jax.training.checkpoint_data import checkpoint_data

  if len(args.checkpoint) < 2:
    raise ValueError("--checkpoint: give at least 2 checkpoints to compare")
  out = os.path.abspath(args.out)
  if not out.endswith(".json"):
    raise ValueError(f"--out {args.out}: expected a .json path")
  md = out[:-len(".json")] + ".md"
  for path in (out, md):
    check_regular_output(path)
    if os.path.exists(path):
      raise ValueError(f"{path} already exists (refusing to overwrite)")
  variants, entries = load_variants(args.checkpoint)
  meta0 = next(iter(entries.values()))[2]
  data = checkpoint_data(meta0, profile_images=1, data_dir=args.data_dir)
  correct = {name: np.argmax(predict(model, v, data.x_test), -1) == data.y_test
             for name, (model, v) in variants.items()}
  result = clean_paired(correct)
  result.update(model=meta0["model"], dataset=meta0["dataset"],
                checkpoints={n: os.path.abspath(p) for n, p in zip(variants, args.checkpoint)})
  text = clean_paired_markdown(result)
  create_json_exclusive(out, result)
  write_bytes_atomic(md, text.encode())
  print(text, end="")
  return 0
