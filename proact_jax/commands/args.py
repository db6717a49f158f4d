"""Command-line parsing shared by the ``proact`` subcommands: the range of every numeric option
(:data:`NUMERIC`, the one place they are defined; :func:`number` is the argparse ``type``),
BER lists, bit ranges, and the names of the variants a list of checkpoints is compared under."""

from __future__ import annotations

import argparse
import math

_COUNT = 10 ** 8  # images, trials: far above any real run, far below what overflows or hangs
# option: (int or float, lowest, highest, whether the lowest is excluded)
NUMERIC = {
    "--trials": (int, 1, 10 ** 6, False),
    "--max-trials": (int, 1, 10 ** 6, False),
    "--chunk": (int, 1, 10 ** 6, False),
    "--trial-batch": (int, 1, 10 ** 6, False),
    "--images": (int, 0, _COUNT, False),
    "--images-per-trial": (int, 1, _COUNT, False),
    "--profile-images": (int, 0, _COUNT, False),
    "--train-images": (int, 0, _COUNT, False),
    "--val-images": (int, 0, _COUNT, False),
    "--test-images": (int, 0, _COUNT, False),
    "--train-subset": (int, 0, _COUNT, False),
    "--fi-images": (int, 1, _COUNT, False),
    "--fi-trials": (int, 1, 10 ** 6, False),
    "--fi-max-rounds": (int, 1, 100, False),
    "--epochs": (int, 1, 10 ** 5, False),
    "--last-epochs": (int, 1, 10 ** 5, False),
    "--batch-size": (int, 1, 2 ** 20, False),
    "--seed": (int, 0, 2 ** 31 - 1, False),
    "--num-processes": (int, 1, 2 ** 16, False),
    "--process-id": (int, 0, 2 ** 16, False),
    "--lr": (float, 0.0, 100.0, True),
    "--weight-decay": (float, 0.0, 1.0, False),
    "--warmup-epochs": (float, 0.0, 10.0 ** 5, False),
    "--budget": (float, 0.0, 100.0, False),      # percentage points
    "--target": (float, 0.0, 100.0, False),      # percentage points (0: no test-drop target)
    "--guard-z": (float, 0.0, 10.0, False),
    "--ci-target": (float, 0.0, 100.0, True),    # percentage points
    "--top": (int, 1, 10 ** 6, False),
    "--stratify": (int, 1, 64, False),
    "--pilot": (int, 2, 10 ** 6, False),
    "--critical-threshold": (float, 0.0, 100.0, False),  # percentage points
    "--ber": (float, 0.0, 1.0, False),
    "--hist-ber": (float, 0.0, 1.0, False),
}


def number(option: str, spec: tuple | None = None):
  """The argparse ``type`` of a numeric option: parses and checks the range in :data:`NUMERIC`
  (finite; integers written as integers), or raises a one-line ``ArgumentTypeError``. A script's
  own option passes its ``spec`` in the same form, ``(kind, lowest, highest, lowest_excluded)``."""
  kind, lo, hi, lo_open = spec or NUMERIC[option]
  bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if kind is float else f"[{lo}, {hi}]"
  what = f"{'an integer' if kind is int else 'a finite number'} in {bounds}"

  def parse(text: str):
    try:
      v = kind(text)
    except (TypeError, ValueError):
      raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if (kind is float and not math.isfinite(v)) or v > hi or (v <= lo if lo_open else v < lo):
      raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v

  parse.__name__ = f"{option} value"
  return parse


def parse_bers(text: str) -> list[float]:
  try:
    bers = [float(s) for s in str(text).split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--bers {text!r}: expected comma-separated numbers in [0, 1]") from None
  if not bers:
    raise ValueError("--bers is empty")
  for b in bers:
    if not 0.0 <= b <= 1.0:
      raise ValueError(f"--bers: bit error rate {b} is outside [0, 1]")
  return bers


def parse_bits(text: str | None) -> tuple[int, int | None]:
  if text is None:
    return 0, None
  try:
    lo, hi = text.split(":")
    return int(lo or 0), (int(hi) if hi else None)
  except ValueError:
    raise ValueError(f"--bits {text!r}: expected LO:HI, e.g. 0:16") from None


def variant_name(meta: dict, used: set) -> str:
  name = meta.get("method") or ("relu" if meta.get("kind", "relu") == "relu" else meta["kind"])
  base, i = name, 2
  while name in used:
    name, i = f"{base}-{i}", i + 1
  return name


def load_variants(checkpoints: list[str]) -> tuple[dict, dict]:
  """Checkpoints compared paired: ``({name: (model, variables)}, {name: (model, variables,
  meta)})``; several must share the baseline's params, dataset and normalisation."""
  import os

  from proact_jax.faults.results import fingerprint
  from proact_jax.training.checkpoint import load_checkpoint

  for d in checkpoints:
    if not os.path.isdir(d):
      raise ValueError(f"checkpoint {d} does not exist")
  variants, entries, used = {}, {}, set()
  for d in checkpoints:
    model, variables, meta = load_checkpoint(d)
    name = variant_name(meta, used)
    used.add(name)
    variants[name] = (model, variables)
    entries[name] = (model, variables, meta)
  metas = [e[2] for e in entries.values()]
  if len(variants) > 1:
    prints = {n: fingerprint(v.get("params", {})) for n, (_, v) in variants.items()}
    if len(set(prints.values())) > 1:
      raise ValueError("paired comparison needs checkpoints of the same baseline, but their "
                       f"params differ ({', '.join(f'{n}: {p}' for n, p in prints.items())})")
    for m in metas[1:]:
      if (m["dataset"], m.get("mean"), m.get("std")) != (
          metas[0]["dataset"], metas[0].get("mean"), metas[0].get("std")):
        raise ValueError("paired checkpoints must use the same dataset and normalisation")
  return variants, entries


def critical_from_args(args, variables, space, fmt):
  """:func:`critical_set` from ``--critical``, ``--critical-map``, ``--critical-threshold``,
  ``--critical-variants`` and ``--critical-direction`` (sweep and the benchmarks)."""
  names = args.critical_variants.split(",") if args.critical_variants else None
  return critical_set(variables, space, fmt, args.critical, args.critical_map,
                      args.critical_threshold, names, args.critical_direction)


def critical_set(variables, space, fmt, specs: list[str] | None, map_path: str | None,
                 threshold_pp: float, map_variants: list[str] | None = None,
                 map_direction: str | None = None):
  """The critical set ``C`` of ``sweep --stratify``: ``--critical`` specs and/or the cells of a
  vulnerability map (``--critical-map``) whose mean single-flip drop exceeds ``threshold_pp``
  points (in any of its variants, or of ``map_variants`` only: ``--critical-variants``; weight
  leaves only), inside the campaign's fault space; ``map_direction`` (``raise`` / ``lower``,
  ``--critical-direction``) keeps only the map cells' positions whose flip moves the clean
  value that way."""
  import dataclasses

  from proact_jax.faults import critical
  from proact_jax.faults import injection as faults
  from proact_jax.faults.results import fingerprint
  from proact_jax.faults.vulnerability import load_vulnerability

  pairs, directed = [], []
  for text in specs or []:
    got = critical.CriticalSet.resolve(variables, space, fmt, critical.parse_critical(text))
    pairs += list(got.sites)
    directed += list(got.directed)
  if map_path:
    vmap = load_vulnerability(map_path)
    params = fingerprint(variables.get("params", {}))
    if params not in {v.get("params") for v in vmap.config["variants"].values()}:
      raise ValueError(f"--critical-map {map_path} was measured on other params than the "
                       "checkpoints' (proact vulnerability on the same baseline)")
    if vmap.config["format"] != fmt.name:
      raise ValueError(f"--critical-map {map_path} was measured in format "
                       f"{vmap.config['format']}, the campaign uses {fmt.name}")
    unknown = sorted(set(map_variants or ()) - set(vmap.config["variants"]))
    if unknown:
      raise ValueError(f"--critical-variants {','.join(unknown)}: not in {map_path} (it has "
                       f"{', '.join(vmap.config['variants'])})")
    cells = vmap.critical_pairs(threshold_pp / 100.0, map_variants or None)
    weights = dataclasses.replace(space, collections=tuple(
        c for c in space.collections if c != "thresholds"))
    lo, hi = space.bit_range(fmt)
    leaves = set(faults.fault_leaves(variables, weights)) if weights.collections else set()
    cells = [(leaf, [b for b in bits if lo <= b < hi]) for leaf, bits in cells if leaf in leaves]
    if map_direction:
      directed += [(leaf, bits, map_direction) for leaf, bits in cells]
    else:
      pairs += cells
  found = critical.CriticalSet.from_pairs(pairs, directed)
  if not found.sites and not found.directed:
    raise ValueError("the critical set is empty: no map cell above --critical-threshold "
                     f"{threshold_pp} points inside the fault space, and no --critical given")
  return found
