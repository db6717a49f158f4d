"""Critical bit sets and the stratified weight faults of one trial (traceable).

A :class:`CriticalSet` ``C`` is a set of (leaf, bit) classes of the weight fault space: every
value of the leaf at each listed bit position (``--critical "Dense_2:24:32,Conv_0/kernel:31"``,
or the cells of a vulnerability map above a threshold). :func:`stratified_weight_faults`
corrupts the weights of one trial of stratum ``h`` (:mod:`proact_jax.strata`):

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

__all__ = ["CriticalSet", "parse_critical", "stratified_weight_faults", "tail_count"]

_SPEC = re.compile(r"^\s*([^:]+?)\s*(?::\s*(\d*)\s*(?::\s*(\d*)\s*)?)?$")


def parse_critical(text: str) -> list[tuple[str, int, int | None]]:
  """``"LAYER[:LO[:HI]],..."`` -> ``[(layer, lo, hi)]``: bits ``LO <= bit < HI`` of the layer's
  (or leaf's) values; ``LAYER:B`` is bit ``B`` alone, ``LAYER`` every bit of the fault space.
  ``LAYER`` is matched as ``FaultSpace.layer`` is (``Dense_2``, ``Dense_2/kernel``,
  ``params/Dense_2``)."""
  out = []
  for part in str(text).split(","):
    if not part.strip():
      continue
    m = _SPEC.match(part)
    if not m:
      raise ValueError(f"--critical {part!r}: expected LAYER[:LO[:HI]], e.g. Dense_2:24:32")
    layer, lo, hi = m.group(1), m.group(2), m.group(3)
    if m.group(3) is None and lo:  # LAYER:B
      lo, hi = int(lo), int(lo) + 1
    else:
      lo, hi = int(lo) if lo else 0, int(hi) if hi else None
    if hi is not None and hi <= lo:
      raise ValueError(f"--critical {part!r}: empty bit range [{lo}, {hi})")
    out.append((layer, lo, hi))
  if not out:
    raise ValueError(f"--critical {text!r}: no site given")
  return out


@dataclasses.dataclass(frozen=True)
class CriticalSet:
  """``C``: per leaf path (``"params/Dense_2/kernel"``) the critical bit positions (hashable).

  Attributes:
    sites: ``((leaf path, (bit, ...)), ...)`` sorted by path, bits sorted and distinct.
  """
  sites: tuple[tuple[str, tuple[int, ...]], ...]

  @classmethod
  def from_pairs(cls, pairs) -> "CriticalSet":
    """From ``(leaf path, bits)`` pairs (merged per leaf)."""
    merged: dict[str, set] = {}
    for path, bits in pairs:
      merged.setdefault(str(path), set()).update(int(b) for b in bits)
    return cls(tuple((p, tuple(sorted(b))) for p, b in sorted(merged.items()) if b))

  @classmethod
  def resolve(cls, variables, space: faults.FaultSpace, fmt: NumberFormat,
              specs: Sequence[tuple[str, int, int | None]]) -> "CriticalSet":
    """The leaves of the weight fault space (``space`` without ``thresholds``) matched by each
    ``(layer, lo, hi)`` spec, at the spec's bits inside the space's bit range.

    Raises:
      ValueError: a spec matches no weight leaf, or none of its bits is in the fault space.
    """
    sub = dataclasses.replace(space, collections=tuple(
        c for c in space.collections if c != "thresholds"))
    slo, shi = space.bit_range(fmt)
    flat = faults._flat(variables)
    paths = faults._select(flat, dataclasses.replace(sub, layer=None)) if sub.collections else []
    pairs = []
    for layer, lo, hi in specs:
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
      pairs += [("/".join(p), bits) for p in hit]
    return cls.from_pairs(pairs)

  def n_bits(self, variables) -> int:
    """``n_C``: the values of each critical leaf times its critical bits."""
    flat = faults._flat(variables)
    return sum(int(np.size(flat[tuple(p.split("/"))])) * len(b) for p, b in self.sites)

  def to_json(self) -> list:
    return [[p, list(b)] for p, b in self.sites]

  def describe(self) -> str:
    return ", ".join(f"{p}:{_ranges(b)}" for p, b in self.sites)


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
  """Static layout of the weight leaves and of ``C`` inside them (numpy, built at trace time)."""
  offsets: np.ndarray    # [n_leaves + 1] value offsets of the weight leaves
  crit_mask: np.ndarray  # [n_leaves] uint32, the critical bits of each leaf
  c_leaf: np.ndarray     # [n_crit] index of each critical leaf among the weight leaves
  c_voff: np.ndarray     # [n_crit + 1] offsets of the critical leaves in C's numbering
  c_bits: np.ndarray     # [n_crit, max bits] the critical bits (padded)
  n_c: int


def _geometry(paths: list[str], sizes: list[int], critical: CriticalSet) -> _Geometry:
  index = {p: i for i, p in enumerate(paths)}
  missing = [p for p, _ in critical.sites if p not in index]
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
  width = max(len(b) for b in bits)
  table = np.array([b + [0] * (width - len(b)) for b in bits], np.int32)
  return _Geometry(np.cumsum([0] + sizes).astype(np.int64), crit, np.asarray(c_leaf, np.int32),
                   np.asarray(voff, np.int64), table, int(voff[-1]))


def _critical_positions(svc, take_c, geo: _Geometry, sizes):
  """C's numbering -> (weight value index, bit mask): leaf ``i`` of C holds bit ``bits[j]`` of
  value ``v`` at ``voff_i + j * size_i + v``."""
  ci = jnp.searchsorted(jnp.asarray(geo.c_voff[1:]), svc, side="right").astype(jnp.int32)
  ci = jnp.minimum(ci, len(geo.c_leaf) - 1)
  local = svc - jnp.asarray(geo.c_voff[:-1], jnp.int32)[ci]
  size = jnp.asarray([sizes[i] for i in geo.c_leaf], jnp.int32)[ci]
  leaf = jnp.asarray(geo.c_leaf)[ci]
  value = jnp.asarray(geo.offsets[:-1], jnp.int32)[leaf] + local % size
  bit = jnp.asarray(geo.c_bits)[ci, local // size]
  mask = jnp.where(take_c, jnp.left_shift(jnp.uint32(1), bit.astype(jnp.uint32)), jnp.uint32(0))
  return value.astype(jnp.int32), mask


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
                             geo: _Geometry, sparse_only: bool = False):
  """One trial's weight faults with exactly ``k_c`` flips in ``C`` (see module docstring).

  Args:
    key: the outside draw (as ``flip_bits``: ``split`` into count and positions).
    ckey: the draw of the ``k_c`` positions in ``C``.
    leaves, auxes: the clean (prequantised) weight leaves in injection order and their aux.
    ber: the bit error rate (may be traced); ``k_c``: flips in ``C`` (traced, ``<= cap_c``).
    cap, cap_c: static candidate caps of the two samplers.
    geo: :func:`_geometry` of ``leaves`` and ``C``.
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
  crit = jnp.asarray(geo.crit_mask)[jnp.minimum(leaf, len(leaves) - 1)]
  mask_o = jnp.where(take, jnp.left_shift(jnp.uint32(1), (sb + lo).astype(jnp.uint32)),
                     jnp.uint32(0)) & ~crit
  n_out = jnp.sum(mask_o != 0, dtype=jnp.int32)

  def sparse():
    value_c, mask_c = _critical_positions(svc, take_c, geo, sizes)
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
    for i, (x, aux) in enumerate(zip(leaves, auxes)):
      m = masks[int(geo.offsets[i]):int(geo.offsets[i + 1])] & ~jnp.uint32(geo.crit_mask[i])
      n += jnp.sum(jax.lax.population_count(m), dtype=jnp.int32)
      if i in extra:
        m = m | extra[i]
      bits = faults._encode_with(fmt, x.reshape(-1), aux)
      new.append(fmt.decode(bits ^ m, aux).astype(x.dtype).reshape(x.shape))
    return new, n

  new, n = jax.lax.cond(ok, apply_sparse, apply_dense)
  return new, n, k_c
