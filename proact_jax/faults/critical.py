"""Critical sets ``C`` of the stratified campaigns (which weight positions are "critical").

A :class:`CriticalSet` is a set of (leaf, bit) classes of the weight fault space: every
value of the leaf at each listed bit position (``--critical "Dense_2:24:32,Conv_0/kernel:31"``,
or the cells of a vulnerability map above a threshold); and, value-dependent, the *directed*
classes: the positions of the listed bits whose flip raises (``Dense_2:24:32:raise``) or lowers
the value it hits, read from the clean weights (an explicit position list, built on the host by
:meth:`CriticalSet.positions` and passed to the traced sampler). Any fixed ``C`` gives an
unbiased stratified estimator; a directed ``C`` holds the flips that are decisive (a classifier
weight made huge and positive) without the harmless half of the same bits, which count strata
cannot tell apart. One trial's faults given ``C``: :mod:`proact_jax.faults.critical_faults`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.faults import injection as faults
from proact_jax.faults.formats import NumberFormat

__all__ = ["CriticalSet", "DIRECTIONS", "parse_critical"]

DIRECTIONS = ("raise", "lower")
_SPEC = re.compile(r"^\s*([^:]+?)\s*(?::\s*(\d*)\s*(?::\s*(\d*)\s*)?)?$")
_DIRECTED = re.compile(r"^(.*?):\s*(raise|lower)\s*$")
MAX_DIRECTED = 1 << 26  # explicit positions (4 bytes value + 4 bytes bit each on the device)


def parse_critical(text: str) -> list[tuple[str, int, int | None, str | None]]:
  """``"LAYER[:LO[:HI]][:raise|:lower],..."`` -> ``[(layer, lo, hi, direction)]``: bits
  ``LO <= bit < HI`` of the layer's (or leaf's) values; ``LAYER:B`` is bit ``B`` alone,
  ``LAYER`` every bit of the fault space. A ``raise`` / ``lower`` suffix keeps only the
  positions whose flip raises / lowers the clean value (value-dependent; None: every position).
  ``LAYER`` is matched as ``FaultSpace.layer`` is (``Dense_2``, ``Dense_2/kernel``,
  ``params/Dense_2``)."""
  out = []
  for part in str(text).split(","):
    if not part.strip():
      continue
    d = _DIRECTED.match(part)
    direction = d.group(2) if d else None
    m = _SPEC.match(d.group(1) if d else part)
    if not m:
      raise ValueError(f"--critical {part!r}: expected LAYER[:LO[:HI]][:raise|:lower], e.g. "
                       "Dense_2:24:32 or Dense_2:24:32:raise")
    layer, lo, hi = m.group(1), m.group(2), m.group(3)
    if m.group(3) is None and lo:  # LAYER:B
      lo, hi = int(lo), int(lo) + 1
    else:
      lo, hi = int(lo) if lo else 0, int(hi) if hi else None
    if hi is not None and hi <= lo:
      raise ValueError(f"--critical {part!r}: empty bit range [{lo}, {hi})")
    out.append((layer, lo, hi, direction))
  if not out:
    raise ValueError(f"--critical {text!r}: no site given")
  return out


@dataclasses.dataclass(frozen=True)
class CriticalSet:
  """``C``: per leaf path (``"params/Dense_2/kernel"``) the critical bit positions (hashable).

  Attributes:
    sites: ``((leaf path, (bit, ...)), ...)``: every value of the leaf at these bits; sorted by
      path, bits sorted and distinct.
    directed: ``((leaf path, (bit, ...), "raise" | "lower"), ...)``: only the positions of these
      bits whose flip raises (lowers) the clean value (value-dependent); no (leaf, bit) of
      ``sites`` (merged there when both directions are listed).
  """
  sites: tuple[tuple[str, tuple[int, ...]], ...]
  directed: tuple[tuple[str, tuple[int, ...], str], ...] = ()

  @classmethod
  def from_pairs(cls, pairs, directed=()) -> "CriticalSet":
    """From ``(leaf path, bits)`` pairs and ``(leaf path, bits, direction)`` triples (merged per
    leaf; a bit listed in both directions, or undirected, is undirected)."""
    merged: dict[str, set] = {}
    for path, bits in pairs:
      merged.setdefault(str(path), set()).update(int(b) for b in bits)
    way: dict[tuple[str, str], set] = {}
    for path, bits, direction in directed:
      if direction not in DIRECTIONS:
        raise ValueError(f"critical direction {direction!r}: expected one of {DIRECTIONS}")
      way.setdefault((str(path), direction), set()).update(int(b) for b in bits)
    for (path, _), bits in list(way.items()):
      both = bits & way.get((path, "lower"), set()) & way.get((path, "raise"), set())
      if both:
        merged.setdefault(path, set()).update(both)
    sites = tuple((p, tuple(sorted(b))) for p, b in sorted(merged.items()) if b)
    taken = dict(sites)
    directed = tuple((p, tuple(sorted(b - set(taken.get(p, ())))), d)
                     for (p, d), b in sorted(way.items()) if b - set(taken.get(p, ())))
    return cls(sites, directed)

  @classmethod
  def resolve(cls, variables, space: faults.FaultSpace, fmt: NumberFormat,
              specs: Sequence[tuple]) -> "CriticalSet":
    """The leaves of the weight fault space (``space`` without ``thresholds``) matched by each
    ``(layer, lo, hi[, direction])`` spec, at the spec's bits inside the space's bit range.

    Raises:
      ValueError: a spec matches no weight leaf, or none of its bits is in the fault space.
    """
    sub = dataclasses.replace(space, collections=tuple(
        c for c in space.collections if c != "thresholds"))
    slo, shi = space.bit_range(fmt)
    flat = faults._flat(variables)
    paths = faults._select(flat, dataclasses.replace(sub, layer=None)) if sub.collections else []
    pairs, directed = [], []
    for layer, lo, hi, *rest in specs:
      direction = rest[0] if rest else None
      hit = [p for p in paths if faults._matches(p, layer)
             and (space.layer is None or faults._matches(p, space.layer))]
      if not hit:
        names = ", ".join("/".join(p) for p in paths[:12])
        raise ValueError(f"critical site {layer!r} matches no leaf of the weight fault space "
                         f"(leaves: {names})")
      bits = range(max(lo, slo), min(fmt.bits if hi is None else hi, shi))
      if not bits:
        raise ValueError(f"critical site {layer}:{lo}:{hi} has no bit inside the fault space's "
                         f"[{slo}, {shi})")
      if direction is None:
        pairs += [("/".join(p), bits) for p in hit]
      else:
        directed += [("/".join(p), bits, direction) for p in hit]
    return cls.from_pairs(pairs, directed)

  def n_bits(self, variables, fmt: NumberFormat | None = None) -> int:
    """``n_C``: the values of each critical leaf times its critical bits, plus the directed
    positions (which need ``fmt``: they depend on the clean values)."""
    flat = faults._flat(variables)
    n = sum(int(np.size(flat[tuple(p.split("/"))])) * len(b) for p, b in self.sites)
    if self.directed:
      if fmt is None:
        raise ValueError("a directed critical set needs the number format to count its bits")
      n += int(sum(_popcount(m) for m in self.value_masks(variables, fmt).values()))
    return n

  def masks(self, variables, fmt: NumberFormat) -> dict[str, np.ndarray]:
    """Per leaf of ``C``, the uint32 mask of its critical bits per value: the classes' bits on
    every value, or'ed with the directed positions (:meth:`value_masks`)."""
    flat = faults._flat(variables)
    out = self.value_masks(variables, fmt)
    for path, bits in self.sites:
      size = int(np.size(flat[tuple(path.split("/"))]))
      out[path] = out.get(path, np.zeros(size, np.uint32)) | np.uint32(sum(1 << b for b in bits))
    return out

  def value_masks(self, variables, fmt: NumberFormat) -> dict[str, np.ndarray]:
    """Per directed leaf, the uint32 mask of its critical bits per value: bit ``b`` of value
    ``v`` is set when flipping it in the clean word (quantised in ``fmt``) raises (lowers) the
    decoded value."""
    flat = faults._flat(variables)
    out: dict[str, np.ndarray] = {}
    for path, bits, direction in self.directed:
      x = jnp.asarray(flat[tuple(path.split("/"))], jnp.float32).reshape(-1)
      words, aux = fmt.encode(x)
      old = np.asarray(fmt.decode(words, aux))
      mask = out.get(path, np.zeros(x.shape, np.uint32))
      for b in bits:
        new = np.asarray(fmt.decode(words ^ jnp.asarray(1 << b, words.dtype), aux))
        hit = new > old if direction == "raise" else new < old
        mask = mask | (hit.astype(np.uint32) << np.uint32(b))
      out[path] = mask
    return out

  @staticmethod
  def positions(masks: dict[str, np.ndarray], paths: Sequence[str], sizes: Sequence[int]):
    """The directed positions (``masks``: :meth:`value_masks`) as arrays for
    :func:`stratified_weight_faults`: ``(value index into the concatenated leaves ``paths``,
    bit, per-value masks of the directed leaves concatenated in ``paths`` order)``, ordered by
    leaf, value, bit.

    Raises:
      ValueError: a directed leaf is not in ``paths`` or has another size there, or more than
        ``MAX_DIRECTED`` positions (narrow the bits or the layers).
    """
    size_of = dict(zip(paths, sizes))
    bad = [p for p, m in masks.items() if size_of.get(p) != m.size]
    if bad:
      raise ValueError(f"directed critical leaves {bad} are missing from a variant's weights or "
                       "have another size there")
    offsets = np.cumsum([0] + list(sizes))
    values, bits, concat = [], [], []
    for i, p in enumerate(paths):
      if p not in masks:
        continue
      m = masks[p]
      concat.append(m)
      for b in range(32):
        v = np.nonzero((m >> np.uint32(b)) & np.uint32(1))[0]
        values.append(v + offsets[i])
        bits.append(np.full(v.shape, b, np.int32))
    if not concat:
      return (np.zeros((0,), np.int32),) * 2 + (np.zeros((0,), np.uint32),)
    v, b = np.concatenate(values), np.concatenate(bits)
    if v.size > MAX_DIRECTED:
      raise ValueError(f"the directed critical set has {v.size} positions (at most "
                       f"{MAX_DIRECTED}): narrow its bits or layers")
    order = np.lexsort((b, v))
    return v[order].astype(np.int32), b[order], np.concatenate(concat)

  def to_json(self) -> list:
    return [[p, list(b)] for p, b in self.sites] + [[p, list(b), d] for p, b, d in self.directed]

  def describe(self) -> str:
    return ", ".join([f"{p}:{_ranges(b)}" for p, b in self.sites]
                     + [f"{p}:{_ranges(b)}:{d}" for p, b, d in self.directed])


def _popcount(m: np.ndarray) -> int:
  """Set bits over a uint32 array."""
  return int(np.asarray(jax.lax.population_count(jnp.asarray(m, jnp.uint32))).sum())


def _ranges(bits: Sequence[int]) -> str:
  out, start = [], None
  for i, b in enumerate(bits):
    if start is None:
      start = b
    if i + 1 == len(bits) or bits[i + 1] != b + 1:
      out.append(str(start) if b == start else f"{start}-{b}")
      start = None
  return "+".join(out)
