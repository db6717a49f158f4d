"""One fault-injection trial on stored model variables (DESIGN.md section 3).

Every function here is pure, takes the PRNG key first and corrupts one copy of the variables;
callers batch trials with ``jax.lax.map`` over keys. ``fmt``, ``space`` and caps are static.

Bit-flip model (:func:`flip_bits`): every stored bit of the fault space flips independently with
probability ``ber``. Sampled without touching every bit: the count
``K ~ Binomial(n_bits, ber)`` (``jax.random.binomial`` on chunks of 2^16 bits, summed as
integers, so float32 never has to hold ``n_bits``), then ``K`` distinct positions uniform among
``n_bits`` (conditioned on ``K``, which is exactly the Bernoulli model). Positions are
``(value index, bit)`` pairs, drawn with replacement in a static batch of candidates (each an
exactly uniform 32-bit word reduced mod ``n_bits``, the words of the incomplete last period
rejected: no modulo bias) and de-duplicated keeping first occurrences in draw order; the first
``K`` distinct ones are used.
When fewer than ``K`` distinct candidates exist (``K`` above the static cap, or too many
collisions), ``lax.cond`` switches to an exact dense path: a loop that draws further candidate
batches and accepts those not yet chosen until ``K`` are chosen (choosing the ``n_bits - K``
unflipped positions instead when ``K > n_bits / 2``). Every step is invariant under relabelling
the positions, so the chosen set is a uniform ``K``-subset on both paths; nothing is truncated.
Flips are applied by gathering the hit values' bit patterns, XOR-ing the combined mask of each
value and scattering back; every other value in the fault space's collections is the quantised
clean value ``fmt.quantize(w)``, bit for bit. With ``prequantized=True`` the injectors take that
clean tree (:func:`quantize_with_aux`) as it is and encode only the hit values: O(cap) work plus
the scatter's copy per leaf instead of re-encoding every value in every trial.

The count and position sampling lives in :mod:`proact_jax.faults.sampling`.

Under ``vmap`` (not ``lax.map``) the ``cond`` becomes a select and the dense path's O(n_values)
set-up runs for every trial (its loop still runs only for trials that need it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from proact_jax.faults.formats import DEFAULT_FORMAT, NumberFormat, _to_twos, get_format
from proact_jax.faults.sampling import (  # noqa: F401  (public names re-exported)
    _check_prob, _choose, _resolve_cap, default_cap, sample_count, sample_flip_masks)

_OPS = {"flip": lambda b, m: b ^ m, "set1": lambda b, m: b | m, "set0": lambda b, m: b & ~m}


@dataclasses.dataclass(frozen=True)
class FaultSpace:
  """Which stored bits are fault sites (hashable: a static argument).

  Attributes:
    collections: variable collections injected. Default params and thresholds (thresholds are
      fault sites too, scalar ones included). ``batch_stats`` is off by default: on an
      accelerator batch-norm statistics are folded into the weights; add it to inject them.
    kernels: inject the non-bias leaves of ``params`` (kernels, BatchNorm scales).
    biases: inject the ``params`` leaves named ``bias``.
    layer: optional path prefix (``"Conv_0"``, ``"stage1_block0"``, a threshold site such as
      ``"act6"``, or with the collection, ``"params/Dense_0"``) matched on whole path
      components: inject into that layer only.
    bit_lo, bit_hi: only bits ``bit_lo <= bit < bit_hi`` of each word (``bit_hi=None``: the
      format's word length), for per-bit campaigns.

  The stored model is the whole model in the format: every floating leaf of every collection is
  quantised, whether or not it is a fault site, so the clean reference is the same for every
  fault space (collections, layer or bit filter).
  """
  collections: tuple[str, ...] = ("params", "thresholds")
  kernels: bool = True
  biases: bool = True
  layer: str | None = None
  bit_lo: int = 0
  bit_hi: int | None = None

  def bit_range(self, fmt: NumberFormat) -> tuple[int, int]:
    """``(lo, hi)`` validated against the format's word length."""
    hi = fmt.bits if self.bit_hi is None else int(self.bit_hi)
    if not 0 <= self.bit_lo < hi <= fmt.bits:
      raise ValueError(f"bit range [{self.bit_lo}, {hi}) is not inside [0, {fmt.bits}) of "
                       f"format {fmt.name}")
    return int(self.bit_lo), hi


def _flat(variables: Any) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(unfreeze(variables))


def _is_float(x: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _matches(path: tuple[str, ...], layer: str) -> bool:
  want = layer.strip("/")
  return any(p == want or p.startswith(want + "/")
             for p in ("/".join(path[1:]), "/".join(path)))


def layer_names(variables: Any, collections: Sequence[str] | None = None) -> list[str]:
  """Layer paths (leaf paths without collection and leaf name) usable as ``FaultSpace.layer``."""
  flat = _flat(variables)
  return list(dict.fromkeys("/".join(p[1:-1]) for p in flat
                            if collections is None or p[0] in collections))


def fault_leaves(variables: Any, space: FaultSpace = FaultSpace()) -> list[str]:
  """Paths (``"params/Conv_0/kernel"``) of the leaves in the fault space, in injection order
  (sorted by path).

  Raises:
    ValueError: ``space.layer`` matches no leaf (some valid layer names are listed).
  """
  return ["/".join(p) for p in _select(_flat(variables), space)]


def _select(flat: dict, space: FaultSpace) -> list[tuple[str, ...]]:
  out = []  # sorted: the order jax.jit gives dicts, so positions agree inside and outside jit
  for path, leaf in sorted(flat.items(), key=lambda item: item[0]):
    if path[0] not in space.collections or not _is_float(leaf) or np.size(leaf) == 0:
      continue
    if path[0] == "params" and not (space.biases if path[-1] == "bias" else space.kernels):
      continue
    if space.layer is not None and not _matches(path, space.layer):
      continue
    out.append(path)
  if space.layer is not None and not out:
    names = [n for n in dict.fromkeys("/".join(p[1:-1]) for p in flat
                                      if p[0] in space.collections) if n]
    raise ValueError(f"layer filter {space.layer!r} matches no leaf of collections "
                     f"{space.collections}; layers are e.g. {', '.join(names[:20])}")
  return out


def _check_collections(variables: Any, space: FaultSpace) -> None:
  """Refuses variables with none of the space's collections (a bare params tree: no fault)."""
  keys = set(variables.keys()) if hasattr(variables, "keys") else set()
  if space.collections and keys and not keys & set(space.collections):
    raise ValueError(f"variables have none of the fault space's collections {space.collections}"
                     f" (keys: {', '.join(sorted(map(str, keys))[:8])}): pass the variables "
                     "dict, e.g. {'params': params}, or set FaultSpace(collections=...)")


def count_bits(variables: Any, fmt: str | NumberFormat = DEFAULT_FORMAT,
               space: FaultSpace = FaultSpace()) -> int:
  """``n_bits``: values in the fault space times selected bits per value."""
  lo, hi = space.bit_range(get_format(fmt))
  flat = _flat(variables)
  return sum(int(np.size(flat[p])) for p in _select(flat, space)) * (hi - lo)


def _encode_with(fmt: NumberFormat, x: jax.Array, aux: jax.Array) -> jax.Array:
  """``fmt.encode(x)[0]`` with a given aux (the int8 scale of the clean tensor)."""
  if fmt.kind != "int8":
    return fmt.encode(x)[0]
  x = jnp.asarray(x, jnp.float32)  # clean values q * scale: x / scale is q within 1e-5
  inv = jnp.float32(1.0) / jnp.asarray(aux, jnp.float32)
  return _to_twos(jnp.clip(jnp.round(x * inv), -128, 127), 8)


def _inject(key, leaves: list, k, cap: int, fmt: NumberFormat, lo: int, hi: int, op: str,
            auxes: list | None = None):
  """Quantised copies of ``leaves`` with ``op`` applied at ``k`` distinct positions.

  ``auxes`` (one per leaf): the leaves are already quantised with that aux; untouched values are
  kept as they are and only the gathered hit values are encoded, changed and decoded.
  """
  sizes = [int(x.size) for x in leaves]
  offsets = np.cumsum([0] + sizes).tolist()
  n_values = offsets[-1]
  if n_values * (hi - lo) >= 2 ** 31:
    raise ValueError(f"fault space of {n_values * (hi - lo)} bits exceeds 2^31 - 1")
  pre = auxes is not None
  encoded = None if pre else [fmt.encode(x) for x in leaves]
  apply = _OPS[op]

  def sparse_fn(sv, combined):
    new = []
    for i, (x, off, size) in enumerate(zip(leaves, offsets, sizes)):
      hit = (sv >= off) & (sv < off + size) & (combined != 0)
      local = jnp.where(hit, sv - off, size)
      safe = jnp.minimum(local, size - 1)
      if pre:
        aux, base = auxes[i], x.reshape(-1)
        gathered = _encode_with(fmt, base[safe], aux)
      else:
        bits, aux = encoded[i]
        gathered = bits.reshape(-1)[safe]
        base = fmt.decode(bits, aux).astype(x.dtype).reshape(-1)
      values = fmt.decode(apply(gathered, combined), aux).astype(x.dtype)
      new.append(base.at[local].set(values, mode="drop").reshape(x.shape))
    return new

  def dense_fn(masks):
    out = []
    for i, (x, off, size) in enumerate(zip(leaves, offsets, sizes)):
      bits, aux = (_encode_with(fmt, x, auxes[i]), auxes[i]) if pre else encoded[i]
      out.append(fmt.decode(apply(bits, masks[off:off + size].reshape(x.shape)),
                            aux).astype(x.dtype))
    return out

  return _choose(key, k, n_values, lo, hi, cap, sparse_fn, dense_fn)


def _quantized(flat: dict, fmt: NumberFormat, aux: dict | None = None) -> dict:
  out = dict(flat)
  for p, x in flat.items():
    if _is_float(x):  # every collection: the fault space only chooses what can flip
      bits, a = fmt.encode(x)
      out[p] = fmt.decode(bits, a).astype(x.dtype)
      if aux is not None:
        aux["/".join(p)] = a
  return out


def quantize_variables(variables: Any, fmt: str | NumberFormat = DEFAULT_FORMAT,
                       space: FaultSpace = FaultSpace()) -> Any:
  """The clean reference: the whole model in ``fmt`` (every floating leaf of every collection
  quantised; ``space`` does not change it). Untouched values of every injector equal these bit
  for bit."""
  return quantize_with_aux(variables, fmt, space)[0]


def quantize_with_aux(variables: Any, fmt: str | NumberFormat = DEFAULT_FORMAT,
                      space: FaultSpace = FaultSpace()) -> tuple[Any, dict[str, jax.Array]]:
  """``(quantize_variables(...), aux)`` for the injectors' ``prequantized`` path.

  ``aux`` maps each quantised leaf's path (``"params/Conv_0/kernel"``) to its float32 aux: the
  int8 per-tensor scale of the clean tensor (re-quantising an int8 tensor can change its scale
  by an ulp, so it is carried, not recomputed), 1 for the other formats.
  """
  # compiled as one program (``space`` does not change it: not a compilation key): run op by
  # op, each leaf shape compiled a dozen element-wise ops of its own (140 of a small campaign's
  # 144 compilations)
  return _quantize_with_aux(variables, get_format(fmt))


@functools.partial(jax.jit, static_argnums=1)
def _quantize_with_aux(variables: Any, fmt: NumberFormat):
  aux = {}
  out = _quantized(_flat(variables), fmt, aux)
  return traverse_util.unflatten_dict(out), aux


def _corrupt(key, variables, k, cap: int, fmt: NumberFormat, space: FaultSpace, op: str,
             prequantized: bool = False, aux: dict | None = None):
  """Quantises the space's collections (unless ``prequantized``) and applies ``op`` at ``k``
  distinct positions."""
  lo, hi = space.bit_range(fmt)
  flat = _flat(variables)
  selected = _select(flat, space)
  out = dict(flat) if prequantized else _quantized(flat, fmt)
  if selected:
    auxes = [_leaf_aux(fmt, aux, p) for p in selected] if prequantized else None
    new = _inject(key, [jnp.asarray(flat[p]) for p in selected], k, cap, fmt, lo, hi, op, auxes)
    out.update(zip(selected, new))
  return traverse_util.unflatten_dict(out)


def _leaf_aux(fmt: NumberFormat, aux: dict | None, path: tuple[str, ...]) -> jax.Array:
  if fmt.kind != "int8":
    return jnp.float32(1.0)
  name = "/".join(path)
  if aux is None or name not in aux:
    raise ValueError(f"prequantized int8 variables need the clean scales: pass aux from "
                     f"quantize_with_aux (missing {name!r})")
  return jnp.asarray(aux[name], jnp.float32)


def flip_bits(key: chex.PRNGKey, variables: Any, ber: Any, fmt: str | NumberFormat = DEFAULT_FORMAT,
              space: FaultSpace = FaultSpace(), max_flips: int | None = None, *,
              prequantized: bool = False, aux: dict | None = None):
  """One trial of independent bit flips at bit error rate ``ber``.

  Args:
    key: PRNG key.
    variables: the model variables (plain dict of collections).
    ber: flip probability per stored bit; a Python float is checked eagerly, a traced scalar is
      clipped to [0, 1] (one compiled function then serves every BER).
    fmt: number format name or :class:`NumberFormat` (static).
    space: the fault space (static).
    max_flips: static cap of the fast path; default :func:`default_cap` of the concrete ``ber``
      (required when ``ber`` is traced). Counts above it take the exact dense path.
    prequantized: ``variables`` is already the clean reference ``quantize_with_aux(v, fmt)[0]``
      (the same for every space): values are taken as they are and only the hit ones are
      encoded, changed and decoded. The result equals
      ``flip_bits`` on ``v`` bit for bit, except for fixed-point words of more than 24
      significant bits (|w| >= 256 in Q15.16), whose word is re-derived from the float32 value.
    aux: with ``prequantized``, the ``aux`` of :func:`quantize_with_aux` (required for int8).

  Returns:
    ``(corrupted variables, n_flips)``; ``n_flips ~ Binomial(count_bits(...), ber)``, int32.

  Raises:
    ValueError: ``ber`` outside [0, 1], unknown layer filter, bad bit range, ``variables``
      without any of the space's collections (a bare params tree).
  """
  return _bernoulli(key, variables, ber, "ber", "flip", fmt, space, max_flips, prequantized, aux)


def _bernoulli(key, variables, rate, rate_name: str, op: str, fmt, space: FaultSpace,
               max_flips, prequantized: bool, aux):
  """Hits every stored bit of ``space`` independently with probability ``rate`` (``op``: "flip"
  or "set0"/"set1"); returns ``(variables, number of hits)``."""
  _check_prob(rate, rate_name)
  _check_collections(variables, space)
  fmt = get_format(fmt)
  n_bits = count_bits(variables, fmt, space)
  cap = _resolve_cap(n_bits, rate, max_flips)
  k_count, k_pos = jax.random.split(key)
  k = sample_count(k_count, n_bits, rate)
  return _corrupt(k_pos, variables, k, cap, fmt, space, op, prequantized, aux), k


def stuck_at(key: chex.PRNGKey, variables: Any, rate: Any, value: int,
             fmt: str | NumberFormat = DEFAULT_FORMAT, space: FaultSpace = FaultSpace(),
             max_flips: int | None = None, *, prequantized: bool = False,
             aux: dict | None = None):
  """Each stored bit is independently stuck at ``value`` (0 or 1) with probability ``rate``.

  Sampled like :func:`flip_bits` (same ``prequantized``, ``aux``). Returns ``(variables,
  n_stuck_sites)``; sites whose bit already equals ``value`` are counted but change nothing.
  """
  if value not in (0, 1):
    raise ValueError(f"stuck-at value must be 0 or 1, got {value}")
  return _bernoulli(key, variables, rate, "rate", f"set{value}", fmt, space, max_flips,
                    prequantized, aux)


def flip_n(key: chex.PRNGKey, variables: Any, n: Any, fmt: str | NumberFormat = DEFAULT_FORMAT,
           space: FaultSpace = FaultSpace(), max_flips: int | None = None, *,
           prequantized: bool = False, aux: dict | None = None):
  """Exactly ``n`` distinct bit flips, uniform over the fault space.

  ``n`` may be traced if ``max_flips`` (static) is given; a concrete ``n`` is its own cap.
  ``prequantized``, ``aux``: as in :func:`flip_bits`. Returns ``(variables, n)``.
  """
  _check_collections(variables, space)
  fmt = get_format(fmt)
  n_bits = count_bits(variables, fmt, space)
  if not isinstance(n, jax.core.Tracer) and not 0 <= int(n) <= n_bits:
    raise ValueError(f"n must be in [0, {n_bits}], got {n}")
  if max_flips is None:
    if isinstance(n, jax.core.Tracer):
      raise ValueError("pass max_flips when n is traced")
    max_flips = int(n)
  k = jnp.clip(jnp.asarray(n, jnp.int32), 0, n_bits)
  return _corrupt(key, variables, k, min(int(max_flips), n_bits), fmt, space, "flip",
                  prequantized, aux), k


def toolbox_floor_flips(key: chex.PRNGKey, variables: Any, ber: float,
                        fmt: str | NumberFormat = DEFAULT_FORMAT,
                        space: FaultSpace = FaultSpace()):
  """The authors' toolbox rule, for comparisons: exactly ``floor(n_leaf_values * bits * ber)``
  distinct flips in each leaf (``bits`` = selected bits per value, 32 for a full Q15.16 word).

  Biased against the Bernoulli model: a leaf with ``n_leaf_values * bits * ber < 1`` (biases,
  scalar thresholds, small layers at low BER) is never hit, and the count has no variance.
  ``ber`` must be a Python float. Returns ``(variables, total_flips)``.
  """
  _check_prob(ber, "ber")
  _check_collections(variables, space)
  counts = floor_counts(variables, ber, fmt, space)
  return floor_flips(key, variables, jnp.asarray(counts, jnp.int32), counts, fmt, space)


def floor_counts(variables: Any, ber: float, fmt: str | NumberFormat = DEFAULT_FORMAT,
                 space: FaultSpace = FaultSpace()) -> tuple[int, ...]:
  """The toolbox rule's flips per leaf of ``space`` (in :func:`fault_leaves` order):
  ``floor(n_leaf_values * bits * ber)``, computed in float64 on the host."""
  lo, hi = space.bit_range(get_format(fmt))
  flat = _flat(variables)
  return tuple(int(math.floor(int(np.size(flat[p])) * (hi - lo) * float(ber)))
               for p in _select(flat, space))


def floor_flips(key: chex.PRNGKey, variables: Any, counts: jax.Array, caps: Sequence[int],
                fmt: str | NumberFormat = DEFAULT_FORMAT, space: FaultSpace = FaultSpace(), *,
                prequantized: bool = False, aux: dict | None = None):
  """``counts[i]`` distinct flips (traced ints, ``<= caps[i]``, static) in leaf ``i`` of
  ``space`` (:func:`fault_leaves` order), leaf ``i`` with ``fold_in(key, i)``. The toolbox
  rule's injector (:func:`toolbox_floor_flips`; the campaign's ``fault_rule="toolbox-floor"``).
  ``prequantized``, ``aux``: as in :func:`flip_bits`. Returns ``(variables, total flips)``."""
  fmt = get_format(fmt)
  lo, hi = space.bit_range(fmt)
  flat = _flat(variables)
  out = dict(flat) if prequantized else _quantized(flat, fmt)
  total = jnp.int32(0)
  for i, path in enumerate(_select(flat, space)):
    if caps[i]:
      auxes = [_leaf_aux(fmt, aux, path)] if prequantized else None
      (out[path],) = _inject(jax.random.fold_in(key, i), [jnp.asarray(flat[path])],
                             counts[i], int(caps[i]), fmt, lo, hi, "flip", auxes)
      total = total + counts[i]
  return traverse_util.unflatten_dict(out), total
