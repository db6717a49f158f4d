"""One trial's stratified weight faults given a critical set ``C`` (traceable).

:func:`stratified_weight_faults` corrupts the weights of one trial of stratum ``h``
(:mod:`proact_jax.faults.strata`; ``C``: :mod:`proact_jax.faults.critical`):

* inside ``C``: ``K_C = h`` flips (the tail stratum ``h = k_max`` draws ``K_C`` from the
  truncated binomial by inverting a 64-bit threshold table, :func:`tail_count`), at a uniform
  ``K_C``-subset of ``C`` (the usual sampler over ``C``'s positions numbered ``0 .. n_C - 1``:
  the (leaf, bit) classes first, arithmetically, then the directed position list);
* outside ``C``: the Bernoulli model restricted to the complement, by thinning: a trial of the
  ordinary sampler over the whole weight space (``K ~ Binomial(n_W, p)``, a uniform
  ``K``-subset) with the positions that fall in ``C`` dropped (a per-leaf bit mask for the
  classes, a per-value mask for the directed leaves). The kept positions are exactly
  independent Bernoulli(p) flips of the complement, independent of the draw inside ``C``; so the
  decomposition of the estimator is exact.

The flips of a value from both parts are combined into one mask and applied once (encode the
clean value, XOR, decode), as :func:`faults.flip_bits` does. Both samplers use the sparse
candidate path; when either lacks enough distinct candidates the trial takes the exact dense
path for both (a uniform subset on both paths, as in :mod:`proact_jax.faults.sampling`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.faults import injection as faults
from proact_jax.faults.critical import CriticalSet
from proact_jax.faults.formats import NumberFormat
from proact_jax.faults.sampling import _dense_masks, _sparse_pick, sample_count

__all__ = ["leaf_updates", "stratified_weight_faults", "tail_count"]


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
