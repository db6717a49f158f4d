"""The ``proact`` command. Each subcommand lives in ``proact_jax/commands/<name>.py`` and provides
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.

Errors a user can fix (``ValueError``) and errors of the system (``OSError``: a full disk, a
file-size limit, permissions) print one line and exit with code 2; argparse errors too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from proact_jax.commands.args import number

COMMANDS = {
    "demo": "train, harden with all four methods and sweep, on the embedded digits data",
    "train": "train a baseline model and checkpoint it",
    "harden": "find activation thresholds with ranger|ft-clipact|fitact|proact",
    "sweep": "run a bit-flip fault campaign on a checkpoint",
    "vulnerability": "single-flip accuracy drop per layer and bit, with heatmaps",
    "activations": "activation distances and histograms under faults (Table V, Figs. 3/6)",
    "clean": "paired clean test accuracies of checkpoints (McNemar, Holm-adjusted)",
    "report": "tables and figures from saved results",
}


class UsageError(ValueError):
  """A problem with the user's input: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
  """argparse with one-line errors (exit code 2) and negative numbers as option values
  (``--bers -1e-5`` is the value -1e-5, refused by the range check, not an unknown option)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._negative_number_matcher = re.compile(
        r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,.*)?$|^-(inf|nan)$", re.IGNORECASE)

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text) -> str:
  return " ".join(str(text).split("\n")).strip()


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(prog="proact", description=__doc__.splitlines()[0])
  g = parser.add_argument_group(
      "multi-process runs", "run one `proact` per host (or process) with the same command and "
      "these options; `jax.distributed.initialize` joins them (CPU hosts talk over gloo)")
  g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                 help="address of process 0's coordinator service")
  g.add_argument("--num-processes", type=number("--num-processes"), default=None, metavar="N")
  g.add_argument("--process-id", type=number("--process-id"), default=None, metavar="I")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, help_text in COMMANDS.items():
    try:
      module = importlib.import_module(f"proact_jax.commands.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"proact_jax.commands.{name}":
        raise
      continue  # not built yet
    p = sub.add_parser(name, help=help_text, description=help_text)
    module.add_arguments(p)
    p.set_defaults(_run=module.run)
  return parser


def main(argv=None) -> int:
  # Errors are reported here in one line; orbax also logs its background threads' failures,
  # with tracebacks, through absl.
  logging.getLogger("absl").setLevel(logging.CRITICAL)
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "_run", None):
    parser.print_help()
    return 2
  try:
    _init_distributed(args)
    return int(args._run(args) or 0)
  except ValueError as e:
    print(f"proact {args.command}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except OSError as e:  # full disk, file-size limit, permissions, missing files ...
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    print(f"proact {args.command}: error: {_one_line(e.strerror or e)}{where}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"proact {args.command}: interrupted; progress written so far is kept and the command "
          "resumes where it stopped when run again", file=sys.stderr)
    return 130


def _init_distributed(args) -> None:
  """Joins a multi-process run when ``--coordinator`` (or any of its companions) is given."""
  given = [args.coordinator, args.num_processes, args.process_id]
  if all(v is None for v in given):
    return
  if any(v is None for v in given):
    raise ValueError("--coordinator, --num-processes and --process-id go together")
  if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
    raise ValueError(f"--process-id {args.process_id} must be in [0, --num-processes "
                     f"{args.num_processes})")
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process collectives
  jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                             process_id=args.process_id)


if __name__ == "__main__":
  sys.exit(main())
