"""Number formats: encode float32 values to the unsigned bit patterns a memory would store.

Every format maps float32 values to a ``uint32`` container of which only the low ``bits`` bits
are used (DESIGN.md section 3), and back:

* ``"q<m>.<n>"``: two's-complement fixed point Qm.n with a word of ``1 + m + n <= 32`` bits
  (``"q15.16"``, the default, is 32 bits; ``"q7.8"`` is 16 bits).
  ``q = clip(round(w * 2^n), -2^(word-1), 2^(word-1) - 1)`` (round half to even; NaN -> 0),
  stored as two's complement in the low ``word`` bits; decoding sign-extends and returns
  ``float32(q) / 2^n`` (rounded to the nearest float32 when ``q`` has more than 24 significant
  bits, which only faulted words of 25+ bit formats can have).
* ``"float32"``: the IEEE bit pattern (flips may produce NaN and Inf).
* ``"bf16"``, ``"fp16"``: round to that type, then its 16-bit pattern (fp16 overflows to Inf
  beyond 65504, as the hardware would).
* ``"int8"``: symmetric per-tensor ``scale = max|w| * float32(1/127)`` (1 for an all-zero
  tensor), ``q = clip(round(w * (127 / max|w|)), -128, 127)`` in 8 bits, the same bits eagerly
  and under jit (:func:`_int8_scale`). The scale is auxiliary data computed from the clean
  tensor and is not itself a fault site.

``encode`` returns ``(bits, aux)``, where ``aux`` is a float32 scalar (the int8 scale, 1 for the
other formats); ``decode(bits, aux)`` inverts it; ``quantize(x) = decode(*encode(x))``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_FORMAT = "q15.16"
FORMAT_NAMES = ("q<m>.<n>", "float32", "bf16", "fp16", "int8")
_Q_RE = re.compile(r"^q(\d+)\.(\d+)$")
_HALF = {"bf16": jnp.bfloat16, "fp16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class NumberFormat:
  """A stored number format (hashable: usable as a static jit argument).

  Attributes:
    name: canonical name, e.g. ``"q15.16"``, ``"float32"``, ``"int8"``.
    bits: word length; bit ``bits - 1`` is the sign bit in every format.
    kind: ``"fixed"``, ``"float32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
    frac_bits: fraction bits ``n`` of a fixed-point format (0 otherwise).
  """
  name: str
  bits: int
  kind: str
  frac_bits: int = 0

  @property
  def mask(self) -> int:
    """The used bits of the uint32 container."""
    return (1 << self.bits) - 1

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float values -> ``(uint32 bit patterns, aux)``; ``aux`` is the per-tensor int8 scale."""
    x = jnp.asarray(x, jnp.float32)
    one = jnp.float32(1.0)
    if self.kind == "float32":
      return jax.lax.bitcast_convert_type(x, jnp.uint32), one
    if self.kind in _HALF:
      half = jax.lax.bitcast_convert_type(x.astype(_HALF[self.kind]), jnp.uint16)
      return half.astype(jnp.uint32), one
    if self.kind == "int8":
      amax = jnp.max(jnp.abs(x)) if x.size else jnp.float32(0.0)
      scale, inv = _int8_scale(amax)
      return _to_twos(jnp.clip(jnp.round(x * inv), -128, 127), 8), scale
    return _to_twos(jnp.round(x * np.float32(2.0 ** self.frac_bits)), self.bits), one

  def decode(self, bits: jax.Array, aux: jax.Array) -> jax.Array:
    """``uint32`` bit patterns (low ``bits`` used) -> float32 values."""
    bits = jnp.asarray(bits, jnp.uint32) & jnp.uint32(self.mask)
    if self.kind == "float32":
      return jax.lax.bitcast_convert_type(bits, jnp.float32)
    if self.kind in _HALF:
      half = jax.lax.bitcast_convert_type(bits.astype(jnp.uint16), _HALF[self.kind])
      return half.astype(jnp.float32)
    q = _sign_extend(bits, self.bits).astype(jnp.float32)
    if self.kind == "int8":
      return q * jnp.asarray(aux, jnp.float32)
    return q / np.float32(2.0 ** self.frac_bits)

  def quantize(self, x: jax.Array) -> jax.Array:
    """``decode(*encode(x))``: the value the model computes with when stored in this format."""
    return self.decode(*self.encode(x))

  @property
  def range(self) -> tuple[float, float]:
    """(smallest, largest) finite value of a fixed-point format (float formats: their own)."""
    if self.kind == "fixed":
      half = 2.0 ** (self.bits - 1)
      return -half / 2.0 ** self.frac_bits, (half - 1) / 2.0 ** self.frac_bits
    info = jnp.finfo(_HALF.get(self.kind, jnp.float32))
    return float(info.min), float(info.max)


def _int8_scale(amax: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(scale, 1 / scale)`` of an int8 tensor with largest magnitude ``amax`` (1, 1 when 0).

  Only multiplications by constants and one division of two traced scalars: XLA rewrites a
  division by a constant (``amax / 127``) or by a broadcast scalar (``x / scale``) into a
  multiplication by a rounded reciprocal under jit but not eagerly, so the natural formulas
  give different scales and rounding eagerly and inside jit.
  """
  amax = jnp.asarray(amax, jnp.float32)
  pos = amax > 0
  safe = jnp.where(pos, amax, jnp.float32(1.0))
  scale = jnp.where(pos, safe * _INV_127, jnp.float32(1.0))
  inv = jnp.where(pos, jnp.float32(127.0) / safe, jnp.float32(1.0))
  return scale, inv


_INV_127 = np.float32(1.0 / 127.0)


def _to_twos(r: jax.Array, word: int) -> jax.Array:
  """Integer-valued floats -> saturated two's complement in the low ``word`` bits of uint32."""
  half = 2.0 ** (word - 1)
  hi = r >= np.float32(half)  # float32 cannot hold 2^31 - 1: compare, then pick the int
  lo = r <= np.float32(-half)
  safe = jnp.where(hi | lo | jnp.isnan(r), 0.0, r).astype(jnp.int32)
  q = jnp.where(hi, jnp.int32(int(half) - 1), jnp.where(lo, jnp.int32(-int(half)), safe))
  return jax.lax.bitcast_convert_type(q, jnp.uint32) & jnp.uint32((1 << word) - 1)


def _sign_extend(bits: jax.Array, word: int) -> jax.Array:
  """Low ``word`` bits of uint32 -> int32 (two's complement)."""
  shift = jnp.uint32(32 - word)
  signed = jax.lax.bitcast_convert_type(jax.lax.shift_left(bits, shift), jnp.int32)
  return jax.lax.shift_right_arithmetic(signed, jnp.int32(32 - word))


def get_format(name: str | NumberFormat = DEFAULT_FORMAT) -> NumberFormat:
  """The format named ``name`` (case-insensitive); a :class:`NumberFormat` passes through.

  Raises:
    ValueError: unknown name, or a Qm.n word longer than 32 bits.
  """
  if isinstance(name, NumberFormat):
    return name
  key = str(name).strip().lower()
  if key == "float32":
    return NumberFormat("float32", 32, "float32")
  if key in _HALF:
    return NumberFormat(key, 16, key)
  if key == "int8":
    return NumberFormat("int8", 8, "int8")
  match = _Q_RE.match(key)
  if match:
    m, n = int(match.group(1)), int(match.group(2))
    if 1 + m + n > 32:
      raise ValueError(f"format {name!r}: word 1 + {m} + {n} = {1 + m + n} bits exceeds 32")
    return NumberFormat(f"q{m}.{n}", 1 + m + n, "fixed", n)
  raise ValueError(f"unknown number format {name!r}; expected one of {', '.join(FORMAT_NAMES)} "
                   "(e.g. q15.16, q7.8)")


def quantize_tree(fmt: str | NumberFormat, tree: Any) -> Any:
  """Quantises every floating-point leaf of ``tree`` (other leaves are returned unchanged).

  int8 scales are per leaf (per tensor).
  """
  fmt = get_format(fmt)

  def one(x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      return x
    chex.assert_type(x, float)
    return fmt.quantize(x).astype(jnp.result_type(x))

  return jax.tree_util.tree_map(one, tree)
