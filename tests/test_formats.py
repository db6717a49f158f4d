"""Tests of proact_jax.faults.formats: round trips, known flips, saturation, float specials."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from proact_jax.faults import formats

U = jnp.uint32


def _flip(fmt, x, bit):
  bits, aux = fmt.encode(jnp.asarray(x, jnp.float32))
  return fmt.decode(bits ^ U(1 << bit), aux)


def test_q15_16_round_trip_exact():
  fmt = formats.get_format("q15.16")
  assert (fmt.bits, fmt.frac_bits) == (32, 16)
  rng = np.random.default_rng(0)
  k = rng.integers(-2 ** 24, 2 ** 24, 5000)  # k / 2^16 is exact in float32 and in Q15.16
  x = np.concatenate([k, [-2 ** 31, 0, 1, -1, 2 ** 30]]).astype(np.float64) / 2 ** 16
  x = x.astype(np.float32)
  bits, aux = fmt.encode(x)
  np.testing.assert_array_equal(np.asarray(fmt.decode(bits, aux)), x)
  want = (np.round(x.astype(np.float64) * 2 ** 16).astype(np.int64) & 0xFFFFFFFF)
  np.testing.assert_array_equal(np.asarray(bits, np.int64), want)


def test_q15_16_known_flips():
  fmt = formats.get_format("q15.16")
  assert float(_flip(fmt, 0.5, 30)) == 16384.5
  assert float(_flip(fmt, 0.5, 31)) == -32767.5
  assert float(_flip(fmt, 0.5, 15)) == 0.0
  assert float(_flip(fmt, 0.0, 0)) == 2.0 ** -16


def test_saturation():
  fmt = formats.get_format("q15.16")
  bits, _ = fmt.encode(jnp.array([1e9, -1e9, 32768.0, -32768.0, np.inf, -np.inf]))
  assert [int(b) for b in bits] == [0x7FFFFFFF, 0x80000000, 0x7FFFFFFF, 0x80000000,
                                    0x7FFFFFFF, 0x80000000]
  assert float(fmt.quantize(jnp.float32(-1e9))) == -32768.0
  q78 = formats.get_format("Q7.8")
  assert (q78.name, q78.bits) == ("q7.8", 16)
  out = q78.quantize(jnp.array([1e3, -1e3, 1.00390625, 2.0 ** -9 * 3, 2.0 ** -9]))
  np.testing.assert_array_equal(np.asarray(out), [127.99609375, -128.0, 1.00390625, 2.0 ** -7, 0.0])  # half to even
  assert float(_flip(q78, 0.5, 15)) == 0.5 - 128.0  # sign bit of the 16-bit word
  assert int(q78.encode(jnp.float32(-1.0))[0]) == 0xFF00  # only the low 16 bits used


def test_other_fixed_point_round_trip():
  for name, (m, n) in {"q0.7": (0, 7), "q3.12": (3, 12), "q20.11": (20, 11)}.items():
    fmt = formats.get_format(name)
    assert fmt.bits == 1 + m + n
    k = np.arange(-2 ** (fmt.bits - 1), 2 ** (fmt.bits - 1), max(1, 2 ** (fmt.bits - 12)))
    x = (k / 2.0 ** n).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(fmt.quantize(x)), x)


def test_float32_flips_make_specials():
  fmt = formats.get_format("float32")
  assert np.isposinf(float(_flip(fmt, 1.0, 30)))  # 0x3f800000 -> 0x7f800000
  assert np.isnan(float(_flip(fmt, 1.5, 30)))  # 0x3fc00000 -> 0x7fc00000
  assert float(_flip(fmt, 1.0, 31)) == -1.0
  x = np.random.default_rng(1).normal(size=1000).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(fmt.quantize(x)), x)
  np.testing.assert_array_equal(np.asarray(fmt.encode(x)[0]), x.view(np.uint32))


@pytest.mark.parametrize("name,dtype", [("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)])
def test_half_round_trip(name, dtype):
  fmt = formats.get_format(name)
  assert fmt.bits == 16
  x = np.random.default_rng(2).normal(size=1000).astype(dtype)
  bits, aux = fmt.encode(x.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(bits), x.view(np.uint16).astype(np.uint32))
  np.testing.assert_array_equal(np.asarray(fmt.decode(bits, aux)), x.astype(np.float32))
  assert float(_flip(fmt, 1.0, 15)) == -1.0


def test_int8_round_trip_and_scale():
  fmt = formats.get_format("int8")
  k = np.arange(-127, 128)
  x = (k / 8.0).astype(np.float32)  # scale = (127/8)/127 = 1/8 exactly
  bits, scale = fmt.encode(x)
  assert float(scale) == 0.125
  np.testing.assert_array_equal(np.asarray(bits), k & 0xFF)
  np.testing.assert_array_equal(np.asarray(fmt.decode(bits, scale)), x)
  zbits, zscale = fmt.encode(jnp.zeros(4))
  assert float(zscale) == 1.0 and not np.asarray(zbits).any()
  assert float(_flip(fmt, 127 / 8.0, 7)) == -1 / 8.0  # 0x7f -> 0xff = -1


def test_unknown_and_invalid_names():
  with pytest.raises(ValueError, match="float32"):
    formats.get_format("fp8")
  with pytest.raises(ValueError, match="32"):
    formats.get_format("q20.20")
  assert formats.get_format(formats.get_format("int8")).name == "int8"
  assert hash(formats.get_format("q15.16")) == hash(formats.get_format("Q15.16"))


def test_quantize_tree_and_jit():
  tree = {"a": jnp.array([0.1, 1e6]), "b": {"c": jnp.arange(3)}}
  out = formats.quantize_tree("q15.16", tree)
  assert out["b"]["c"].dtype == tree["b"]["c"].dtype
  np.testing.assert_array_equal(np.asarray(out["a"]),
                                [np.round(0.1 * 2 ** 16) / 2 ** 16, 32768.0])
  f = jax.jit(formats.quantize_tree, static_argnums=0)
  np.testing.assert_array_equal(np.asarray(f("q15.16", tree)["a"]), np.asarray(out["a"]))
