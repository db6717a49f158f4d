"""Critical bit sets and the stratified weight faults of one trial (traceable).

A :class:`CriticalSet` ``C`` is a set of (leaf, bit) classes of the weight fault space: every
value of the leaf at each listed bit position (``--critical "Dense_2:24:32,Conv_0/kernel:31"``,
or the cells of a vulnerability map above a threshold); and, value-dependent, the *directed*
classes: the positions of the listed bits whose flip raises (``Dense_2:24:32:raise``) or lowers
the value it hits, read from the clean weights (an explicit position list, built on the host by
:meth:`CriticalSet.positions` and passed to the traced sampler). Any fixed ``C`` gives an
unbiased stratified estimator; a directed ``C`` holds the flips that are decisive (a classifier
weight made huge and positive) without the harmless half of the same bits, which count strata
cannot tell apart. :func:`stratified_weight_faults` corrupts the weights of one trial of
stratum ``h`` (:mod:`proact_jax.strata`):

* inside ``C``: ``K_C = h`` flips (the tail stratum ``h = k_max`` draws ``K_C`` from the
  truncated binomial by inverting a 64-bit threshold table, :func:`tail_count`), at a uniform
  ``K_C``-subset of ``C`` (the usual sampler over ``C``'s positions numbered ``0 .. n_C - 1``);
* outside ``C``: the Bernoulli model restricted to the complement, by thinning: a trial of the
  ordinary sampler over the whole weight space (``K ~ Binomial(n_W, p)``, a uniform
  ``K``-subset) with the positions that fall in ``C`` dropped. The kept positions are exactly
  independent Bernoulli(p) flips of the complement, independent of the draw inside ``C``; so the
  decomposition of the estimator is exact.

The flips of a value from both parts are combined into one mask and applied once (encode the
clean value, XOR, decode), as :func:`faults.flip_bits` does. Both samplers use the sparse
candidate path; when either lacks enough distinct candidates the trial takes the exact dense
path for both (a uniform subset on both paths, as in :mod:`fault_sampling`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.faults import injection as faults
from proact_jax.faults.sampling import _dense_masks, _sparse_pick, sample_count
from proact_jax.faults.formats import NumberFormat

__all__ = ["CriticalSet", "DIRECTIONS", "parse_critical", "stratified_weight_faults",
           "tail_count"]

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
      n += int(sum(np.sum(_popcount(m)) for m in self.value_masks(variables, fmt).values()))
    return n

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


def _popcount(m: np.ndarray) -> np.ndarray:
  return np.unpackbits(np.ascontiguousarray(m, np.uint32).view(np.uint8)).reshape(
      m.size, 32).sum(1)


def _ranges(bits: Sequence[int]) -> str:
  out, start = [], None
  for i, b in enumerate(bits):
    if start is None:
      start = b
    if i + 1 == len(bits) or bits[i + 1] != b + 1:
      out.append(str(start) if b == start else f"{start}-{b}")
      start = None
  return "+".join(out)


# --------------------------------------------------------------------------- traced parts


def tail_count(key, table: jax.Array, k_max: int) -> jax.Array:
  """``K | K >= k_max`` by inversion: ``k_max + #{j : u >= T_j}`` with ``u`` 64 uniform bits
  and ``table`` the uint32 ``[2, L - 1]`` of :func:`strata.tail_thresholds`."""
  u = jax.random.bits(key, (2,), jnp.uint32)
  hi, lo = table[0], table[1]
  ge = (u[0] > hi) | ((u[0] == hi) & (u[1] >= lo))
  return jnp.int32(k_max) + jnp.sum(ge, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Static layout of the weight leaves and of ``C`` inside them (numpy, built at trace time).

  ``C``'s positions are numbered ``0 .. n_u - 1`` for the (leaf, bit) classes (arithmetic)
  and ``n_u .. n_c - 1`` for the directed positions (the arrays of
  :meth:`CriticalSet.positions`, passed to the sampler as ``directed``)."""
  offsets: np.ndarray    # [n_leaves + 1] value offsets of the weight leaves
  crit_mask: np.ndarray  # [n_leaves] uint32, the critical (class) bits of each leaf
  c_leaf: np.ndarray     # [n_crit] index of each critical leaf among the weight leaves
  c_voff: np.ndarray     # [n_crit + 1] offsets of the critical leaves in C's numbering
  c_bits: np.ndarray     # [n_crit, max bits] the critical bits (padded)
  d_off: np.ndarray      # [n_leaves] offset of each directed leaf's masks, -1 if not directed
  n_u: int
  n_c: int


def _geometry(paths: list[str], sizes: list[int], critical: CriticalSet,
              n_directed: int = 0) -> _Geometry:
  index = {p: i for i, p in enumerate(paths)}
  missing = [p for p in [s[0] for s in critical.sites + critical.directed] if p not in index]
  if missing:
    raise ValueError(f"critical leaves {missing} are not in the weight fault space")
  crit = np.zeros(len(paths), np.uint32)
  c_leaf, voff, bits = [], [0], []
  for p, b in critical.sites:
    i = index[p]
    crit[i] = np.uint32(sum(1 << x for x in b))
    c_leaf.append(i)
    voff.append(voff[-1] + sizes[i] * len(b))
    bits.append(list(b))
  width = max([len(b) for b in bits], default=1)
  table = np.array([b + [0] * (width - len(b)) for b in bits], np.int32).reshape(-1, width)
  d_off, off = np.full(len(paths), -1, np.int64), 0
  for i, p in enumerate(paths):  # the concatenation order of CriticalSet.positions
    if any(p == q for q, _, _ in critical.directed):
      d_off[i], off = off, off + sizes[i]
  return _Geometry(np.cumsum([0] + sizes).astype(np.int64), crit, np.asarray(c_leaf, np.int32),
                   np.asarray(voff, np.int64), table, d_off, int(voff[-1]),
                   int(voff[-1]) + int(n_directed))


def _critical_positions(svc, take_c, geo: _Geometry, sizes, directed):
  """C's numbering -> (weight value index, bit mask): leaf ``i`` of the classes holds bit
  ``bits[j]`` of value ``v`` at ``voff_i + j * size_i + v``; directed position ``n_u + j`` is
  ``(directed[0][j], directed[1][j])``."""
  value = jnp.zeros(svc.shape, jnp.int32)
  bit = jnp.zeros(svc.shape, jnp.int32)
  if geo.n_u:
    ci = jnp.searchsorted(jnp.asarray(geo.c_voff[1:]), svc, side="right").astype(jnp.int32)
    ci = jnp.minimum(ci, len(geo.c_leaf) - 1)
    local = svc - jnp.asarray(geo.c_voff[:-1], jnp.int32)[ci]
    size = jnp.asarray([sizes[i] for i in geo.c_leaf], jnp.int32)[ci]
    leaf = jnp.asarray(geo.c_leaf)[ci]
    value = jnp.asarray(geo.offsets[:-1], jnp.int32)[leaf] + local % size
    bit = jnp.asarray(geo.c_bits)[ci, jnp.minimum(local // size, geo.c_bits.shape[1] - 1)]
  if geo.n_c > geo.n_u:
    j = jnp.clip(svc - geo.n_u, 0, geo.n_c - geo.n_u - 1)
    inside = svc >= geo.n_u
    value = jnp.where(inside, directed[0][j], value)
    bit = jnp.where(inside, directed[1][j], bit)
  mask = jnp.where(take_c, jnp.left_shift(jnp.uint32(1), bit.astype(jnp.uint32)), jnp.uint32(0))
  return value.astype(jnp.int32), mask


def _directed_mask(sv, leaf, geo: _Geometry, directed):
  """Per candidate value index ``sv`` (in weight leaf ``leaf``), its directed critical bits."""
  if geo.n_c == geo.n_u:
    return jnp.uint32(0)
  d_off = jnp.asarray(geo.d_off)[leaf]
  local = sv - jnp.asarray(geo.offsets[:-1], jnp.int32)[leaf]
  vmask = directed[2]
  at = jnp.clip(d_off + local, 0, vmask.shape[0] - 1).astype(jnp.int32)
  return jnp.where(d_off >= 0, vmask[at], jnp.uint32(0))


def leaf_updates(values_idx, combined, leaves: list, auxes: list, fmt: NumberFormat):
  """Per leaf ``(local indices, new values)`` from value indices into the concatenated leaves
  and one flip mask per entry (entries of one value carry the same mask; mask 0 = unused):
  gather the clean values, encode, XOR, decode, as ``faults._inject``'s sparse path."""
  out, off = [], 0
  for x, aux in zip(leaves, auxes):
    size = int(x.size)
    hit = (values_idx >= off) & (values_idx < off + size) & (combined != 0)
    local = jnp.where(hit, values_idx - off, size)
    base = x.reshape(-1)[jnp.minimum(local, size - 1)]
    bits = faults._encode_with(fmt, base, aux)
    out.append((local, fmt.decode(bits ^ combined, aux).astype(x.dtype)))
    off += size
  return out


def _combine(idx, masks):
  """Sorts entries by value index and gives each the OR of its value's masks (distinct bits,
  so a sum)."""
  idx, masks = jax.lax.sort((idx, masks), num_keys=1)
  group = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32),
                                      (idx[1:] != idx[:-1]).astype(jnp.int32)]))
  return idx, jnp.zeros(idx.shape, jnp.uint32).at[group].add(masks)[group]


def stratified_weight_faults(key, ckey, leaves: list, auxes: list, ber: Any, k_c: Any, *,
                             fmt: NumberFormat, lo: int, hi: int, cap: int, cap_c: int,
                             geo: _Geometry, sparse_only: bool = False, directed=None):
  """One trial's weight faults with exactly ``k_c`` flips in ``C`` (see module docstring).

  Args:
    key: the outside draw (as ``flip_bits``: ``split`` into count and positions).
    ckey: the draw of the ``k_c`` positions in ``C``.
    leaves, auxes: the clean (prequantised) weight leaves in injection order and their aux.
    ber: the bit error rate (may be traced); ``k_c``: flips in ``C`` (traced, ``<= cap_c``).
    cap, cap_c: static candidate caps of the two samplers.
    geo: :func:`_geometry` of ``leaves`` and ``C``.
    directed: ``CriticalSet.positions`` of ``C`` for these leaves (as arrays; needed when
      ``C`` has directed positions).
    sparse_only: return the sparse updates (``leaf_updates``) and an ``ok`` flag instead of
      leaves; when ``ok`` is False the updates are incomplete and the trial must be redone
      with ``sparse_only=False``.

  Returns:
    ``(new leaves, n_outside, k_c)``, or with ``sparse_only`` ``(updates, ok, n_outside, k_c)``.
  """
  sizes = [int(x.size) for x in leaves]
  n_values, nb = int(geo.offsets[-1]), hi - lo
  k_count, k_pos = jax.random.split(key)
  k_out = sample_count(k_count, n_values * nb, ber)
  k_c = jnp.asarray(k_c, jnp.int32)
  sv, sb, take, ok_o, kd_o, batch_o = _sparse_pick(k_pos, k_out, n_values, nb, cap)
  svc, _, take_c, ok_c, kd_c, batch_c = _sparse_pick(ckey, k_c, geo.n_c, 1, cap_c)
  ok = ok_o & ok_c
  leaf = jnp.searchsorted(jnp.asarray(geo.offsets[1:]), sv, side="right").astype(jnp.int32)
  leaf = jnp.minimum(leaf, len(leaves) - 1)
  crit = jnp.asarray(geo.crit_mask)[leaf] | _directed_mask(sv, leaf, geo, directed)
  mask_o = jnp.where(take, jnp.left_shift(jnp.uint32(1), (sb + lo).astype(jnp.uint32)),
                     jnp.uint32(0)) & ~crit
  n_out = jnp.sum(mask_o != 0, dtype=jnp.int32)

  def sparse():
    value_c, mask_c = _critical_positions(svc, take_c, geo, sizes, directed)
    idx, comb = _combine(jnp.concatenate([sv, value_c]), jnp.concatenate([mask_o, mask_c]))
    return leaf_updates(idx, comb, leaves, auxes, fmt)

  if sparse_only:
    return sparse(), ok, n_out, k_c

  def apply_sparse():
    new = [x.reshape(-1).at[local].set(v, mode="drop").reshape(x.shape)
           for x, (local, v) in zip(leaves, sparse())]
    return new, n_out

  def apply_dense():
    masks = _dense_masks(kd_o, jnp.where(ok, 0, k_out), n_values, nb, lo, batch_o)
    cvec = _dense_masks(kd_c, jnp.where(ok, 0, k_c), geo.n_c, 1, 0, batch_c)
    new, n = [], jnp.int32(0)
    extra = {}
    for j, i in enumerate(geo.c_leaf.tolist()):
      seg = cvec[int(geo.c_voff[j]):int(geo.c_voff[j + 1])].reshape(-1, sizes[i])
      shifts = jnp.asarray(geo.c_bits[j, :seg.shape[0]], jnp.uint32)[:, None]
      extra[i] = jnp.sum(jnp.left_shift(seg & jnp.uint32(1), shifts), axis=0, dtype=jnp.uint32)
    dmask = None
    if geo.n_c > geo.n_u:  # the directed positions drawn, as per-value masks of all weights
      dmask = jnp.zeros((n_values,), jnp.uint32).at[directed[0]].add(jnp.left_shift(
          cvec[geo.n_u:] & jnp.uint32(1), directed[1].astype(jnp.uint32)))
    for i, (x, aux) in enumerate(zip(leaves, auxes)):
      m = masks[int(geo.offsets[i]):int(geo.offsets[i + 1])] & ~jnp.uint32(geo.crit_mask[i])
      if geo.d_off[i] >= 0:
        m = m & ~directed[2][int(geo.d_off[i]):int(geo.d_off[i]) + sizes[i]]
      n += jnp.sum(jax.lax.population_count(m), dtype=jnp.int32)
      if dmask is not None:
        m = m | dmask[int(geo.offsets[i]):int(geo.offsets[i + 1])]
      if i in extra:
        m = m | extra[i]
      bits = faults._encode_with(fmt, x.reshape(-1), aux)
      new.append(fmt.decode(bits ^ m, aux).astype(x.dtype).reshape(x.shape))
    return new, n

  new, n = jax.lax.cond(ok, apply_sparse, apply_dense)
  return new, n, k_c
