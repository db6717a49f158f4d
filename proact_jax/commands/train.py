"""proact train --model M --dataset D [--data-dir PATH] --epochs N --out DIR [--seed S]"""

from __future__ import annotations

from proact_jax.commands.args import number

import os


def add_arguments(p):
  p.add_argument("--model", default="small_cnn", help="model name (see proact_jax.MODELS)")
  p.add_argument("--dataset", default="digits", help="digits | cifar10 | cifar100 | folder")
  p.add_argument("--data-dir", default=None,
                 help="local CIFAR archive / extracted folder / image folder (or its .tar.gz), "
                      "or the tfds data dir")
  p.add_argument("--download", action="store_true", help="let tensorflow-datasets download")
  p.add_argument("--epochs", type=number("--epochs"), default=30)
  p.add_argument("--batch-size", type=number("--batch-size"), default=128)
  p.add_argument("--lr", type=number("--lr"), default=0.05)
  p.add_argument("--weight-decay", type=number("--weight-decay"), default=5e-4)
  p.add_argument("--warmup-epochs", type=number("--warmup-epochs"), default=0.0,
                 help="linear learning-rate warm-up")
  p.add_argument("--no-augment", action="store_true")
  p.add_argument("--train-subset", type=number("--train-subset"), default=0,
                 help="use only N training images")
  p.add_argument("--out", required=True, help="run directory (resumes if it holds a run)")
  p.add_argument("--seed", type=number("--seed"), default=0)
  p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def run(args) -> int:
  from proact_jax.models import create_model
  from proact_jax.training.loop import TrainConfig, train_and_evaluate

  create_model(args.model)  # validates the name before any data is loaded
  out = os.path.abspath(args.out)  # what --out may hold: training.loop._check_workdir
  config = TrainConfig(model=args.model, dataset=args.dataset,
                       data_dir=os.path.abspath(args.data_dir) if args.data_dir else None,
                       download=args.download, epochs=args.epochs, batch_size=args.batch_size,
                       learning_rate=args.lr, weight_decay=args.weight_decay,
                       warmup_epochs=args.warmup_epochs,
                       augment=not args.no_augment, flip=args.dataset != "digits",
                       train_subset=args.train_subset, seed=args.seed)
  meta = train_and_evaluate(config, out, progress=not args.quiet)
  print(f"test accuracy {100 * meta['accuracy']:.2f} % ({meta['model']} on {meta['dataset']}, "
        f"best epoch {meta['best_epoch'] + 1}); checkpoint: {os.path.join(out, 'model')}")
  return 0
