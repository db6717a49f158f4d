"""Sampling of one trial's fault positions: the count ``K ~ Binomial(n_bits, p)``
(:func:`sample_count`) and ``K`` distinct uniform ``(value, bit)`` positions (:func:`_choose`:
a sparse candidate batch under a static cap, else the exact dense path), as used by the
injectors of :mod:`proact_jax.faults.injection` (whose docstring describes the model).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

_CHUNK = 1 << 16  # binomial draws per chunk: float32 stays accurate inside BTRS
_DENSE_BATCH = 1 << 13  # candidates per round of the exact dense path


def default_cap(n_bits: int, ber: float) -> int:
  """Static flip cap ``ceil(mean + 12 sd + 32)`` of Binomial(n_bits, ber), at most n_bits.

  Exceeding it is exact but slower (the dense path); its probability is below 1e-30.
  """
  mean = n_bits * ber
  return int(min(n_bits, math.ceil(mean + 12.0 * math.sqrt(mean * (1.0 - ber)) + 32)))


def _check_prob(p: Any, what: str) -> None:
  """Validates a concrete probability eagerly; traced ones are clipped to [0, 1] later."""
  if isinstance(p, jax.core.Tracer):
    return
  value = float(np.asarray(p))
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{what} must be in [0, 1], got {value}")


def _resolve_cap(n_bits: int, p: Any, max_flips: int | None) -> int:
  if max_flips is not None:
    if int(max_flips) < 0:
      raise ValueError(f"max_flips must be >= 0, got {max_flips}")
    return min(int(max_flips), n_bits)
  if isinstance(p, jax.core.Tracer):
    raise ValueError("pass max_flips (e.g. default_cap(count_bits(...), largest_ber)) when the "
                     "rate is traced: the cap is static")
  return default_cap(n_bits, float(np.asarray(p)))


def sample_count(key: chex.PRNGKey, n_bits: int, p: Any) -> jax.Array:
  """``K ~ Binomial(n_bits, p)`` as int32 (``n_bits`` static, ``p`` may be traced)."""
  p = jnp.clip(jnp.asarray(p, jnp.float32), 0.0, 1.0)
  safe = jnp.where((p > 0) & (p < 1), p, 0.5)  # p = 0 or 1 would loop forever in inversion
  full, rest = divmod(int(n_bits), _CHUNK)
  k_full, k_rest = jax.random.split(key)
  total = jnp.int32(0)
  if full:
    draws = jax.random.binomial(k_full, jnp.float32(_CHUNK), safe, shape=(full,))
    total += jnp.sum(draws.astype(jnp.int32))
  if rest:
    total += jax.random.binomial(k_rest, jnp.float32(rest), safe).astype(jnp.int32)
  return jnp.where(p == 0, 0, jnp.where(p == 1, jnp.int32(n_bits), total)).astype(jnp.int32)


def _rejection_rate(n_bits: int) -> float:
  """Share of 32-bit words :func:`_candidates` rejects: ``(2^32 mod n_bits) / 2^32``."""
  return (2 ** 32 % int(n_bits)) / 2 ** 32


def _candidates(key, n_values: int, nb: int, m: int):
  """``m`` (value, bit) draws, each exactly uniform over the ``n_values * nb`` positions or
  rejected; ``first`` marks the first occurrence (draw order) of each accepted position.

  One uniform 32-bit word ``r`` per draw; ``r`` is accepted when below the largest multiple of
  ``n_bits`` that fits in 2^32, and then ``r mod n_bits`` is uniform (no modulo bias, unlike
  ``jax.random.randint``, whose bias of about ``n_bits / 2^32`` favours part of the range).
  Rejected draws get the value index ``n_values`` (past the end) and are never ``first``.
  """
  n_bits = n_values * nb
  r = jax.random.bits(key, (m,), jnp.uint32)
  limit = (2 ** 32 // n_bits) * n_bits
  ok = jnp.ones((m,), bool) if limit == 2 ** 32 else r < jnp.uint32(limit)
  pos = r % jnp.uint32(n_bits)
  v = jnp.where(ok, (pos // jnp.uint32(nb)).astype(jnp.int32), jnp.int32(n_values))
  b = jnp.where(ok, (pos % jnp.uint32(nb)).astype(jnp.int32), jnp.int32(0))
  sv, sb, sd = jax.lax.sort((v, b, jnp.arange(m, dtype=jnp.int32)), num_keys=3)
  first_sorted = jnp.concatenate(
      [jnp.ones((1,), bool), (sv[1:] != sv[:-1]) | (sb[1:] != sb[:-1])]) & (sv < n_values)
  first = jnp.zeros((m,), bool).at[sd].set(first_sorted)
  return v, b, first, (sv, sb, sd)


def _dense_masks(key, k, n_values: int, nb: int, lo: int, batch: int) -> jax.Array:
  """Exact: a uniform ``k``-subset of the positions as per-value uint32 masks."""
  n_bits = n_values * nb
  comp = k > n_bits // 2
  target = jnp.where(comp, n_bits - k, k)

  def body(state):
    key, chosen, left = state
    key, sub = jax.random.split(key)
    v, b, first, _ = _candidates(sub, n_values, nb, batch)
    bit = jnp.left_shift(jnp.uint32(1), (b + lo).astype(jnp.uint32))
    ok = first & ((chosen[jnp.minimum(v, n_values - 1)] & bit) == 0)  # rejected: not first
    take = ok & (jnp.cumsum(ok) <= left)
    chosen = chosen.at[v].add(jnp.where(take, bit, jnp.uint32(0)),  # distinct bits: add == or
                              mode="drop")
    return key, chosen, left - jnp.sum(take, dtype=jnp.int32)

  init = (key, jnp.zeros((n_values,), jnp.uint32), target.astype(jnp.int32))
  _, chosen, _ = jax.lax.while_loop(lambda s: s[2] > 0, body, init)
  full = jnp.uint32(((1 << (lo + nb)) - 1) ^ ((1 << lo) - 1))
  return jnp.where(comp, chosen ^ full, chosen)


def _sparse_pick(key, k, n_values: int, nb: int, cap: int):
  """The sparse path's draw of ``k`` distinct positions among ``n_values x nb``: a static batch
  of candidates sized for ``cap``. Returns ``(sv, sb, take, ok, k_dense, batch)``: candidate
  values and bits sorted by (value, bit), which of them are taken (the first ``k`` distinct in
  draw order), whether there were ``k`` distinct ones, and the dense path's key and batch."""
  n_bits = n_values * nb
  if n_bits >= 2 ** 31:
    raise ValueError(f"fault space of {n_bits} bits exceeds 2^31 - 1")
  m = max(1, cap + math.ceil(4 * cap * cap / n_bits) + 16)
  q = _rejection_rate(n_bits)
  if q:  # room for the rejected draws (mean + 6 sd), so the sparse path stays the usual one
    m = math.ceil((m + 6 * math.sqrt(m * q)) / (1 - q))
  batch = max(m, min(_DENSE_BATCH, n_bits))
  k_sparse, k_dense = jax.random.split(key)
  _, _, first, (sv, sb, sd) = _candidates(k_sparse, n_values, nb, m)
  ok = jnp.sum(first, dtype=jnp.int32) >= k
  take = (first & (jnp.cumsum(first) <= k))[sd]  # first k distinct in draw order, sorted
  return sv, sb, take, ok, k_dense, batch


def _sparse_masks(sv, sb, take, lo: int) -> jax.Array:
  """One combined flip mask per value, on each of its (sorted) entries; 0 on unused ones."""
  bit = jnp.where(take, jnp.left_shift(jnp.uint32(1), (sb + lo).astype(jnp.uint32)),
                  jnp.uint32(0))
  group = jnp.cumsum(jnp.concatenate([jnp.ones((1,), bool), sv[1:] != sv[:-1]])) - 1
  return jnp.zeros(sv.shape, jnp.uint32).at[group].add(bit)[group]


def _choose(key, k, n_values: int, lo: int, hi: int, cap: int,
            sparse_fn: Callable, dense_fn: Callable):
  """Chooses ``k`` distinct positions; calls ``sparse_fn(value_idx, masks)`` (sorted by value;
  mask 0 = unused slot) or, when the candidates are too few, ``dense_fn(masks_per_value)``."""
  nb = hi - lo
  sv, sb, take, ok, k_dense, batch = _sparse_pick(key, k, n_values, nb, cap)

  def sparse():
    return sparse_fn(sv, _sparse_masks(sv, sb, take, lo))

  def dense():
    return dense_fn(_dense_masks(k_dense, jnp.where(ok, 0, k), n_values, nb, lo, batch))

  return jax.lax.cond(ok, sparse, dense)


def sample_flip_masks(key: chex.PRNGKey, n_values: int, k: Any, *, bit_lo: int = 0,
                      bit_hi: int = 32, cap: int) -> jax.Array:
  """The per-value uint32 flip masks of ``k`` distinct uniform positions (dense; for tests).

  Uses the very draws :func:`flip_bits` uses for the same position key, so a reference can
  replay an injection: for ``flip_bits(key, ...)`` pass ``jax.random.split(key)[1]`` and
  ``k = sample_count(jax.random.split(key)[0], n_bits, ber)``.
  """
  def sparse_fn(sv, combined):
    idx = jnp.where(combined != 0, sv, n_values)
    return jnp.zeros((n_values,), jnp.uint32).at[idx].set(combined, mode="drop")

  return _choose(key, jnp.asarray(k, jnp.int32), n_values, bit_lo, bit_hi, cap,
                 sparse_fn, lambda masks: masks)
