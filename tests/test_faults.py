"""Tests of faults.injection: exactness against a numpy reference, flip statistics, filters.

Statistical tests use fixed seeds and significance 0.001: chi-square goodness of fit, with
expected counts from the exact distribution (tails pooled so every expected count >= 5).
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import stats as sps

from proact_jax.faults import formats
from proact_jax.faults import injection as faults

ALPHA = 1e-3
FORMATS = ["q15.16", "q7.8", "float32", "bf16", "fp16", "int8"]


def _tree(n_kernel=(30, 10)):
  rng = np.random.default_rng(0)
  return {
      "params": {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=n_kernel), jnp.float32),
                             "bias": jnp.asarray(rng.normal(size=n_kernel[-1:]), jnp.float32)},
                 "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(10, 4)), jnp.float32),
                             "bias": jnp.zeros((4,), jnp.float32)}},
      "batch_stats": {"BatchNorm_0": {"mean": jnp.ones((4,), jnp.float32)}},
      "thresholds": {"act0": {"lam": jnp.float32(3.25)}, "act1": {"lam": jnp.full((10,), 1.5)}},
  }


# --- an independent numpy reference of the formats -------------------------------------------

def _ref_encode(name, x):
  x = np.asarray(x, np.float32)
  if name == "float32":
    return x.view(np.uint32).astype(np.uint64), 1.0
  if name in ("bf16", "fp16"):
    dt = ml_dtypes.bfloat16 if name == "bf16" else np.float16
    return x.astype(dt).view(np.uint16).astype(np.uint64), 1.0
  if name == "int8":
    amax = float(np.abs(x).max())
    scale = np.float32(amax) / np.float32(127) if amax > 0 else np.float32(1)
    q = np.clip(np.round(x / scale), -128, 127).astype(np.int64)
    return (q & 0xFF).astype(np.uint64), scale
  fmt = formats.get_format(name)
  word, n = fmt.bits, fmt.frac_bits
  q = np.clip(np.round(x.astype(np.float64) * 2.0 ** n), -2 ** (word - 1), 2 ** (word - 1) - 1)
  return (q.astype(np.int64) & ((1 << word) - 1)).astype(np.uint64), 1.0


def _ref_decode(name, bits, aux):
  if name == "float32":
    return bits.astype(np.uint32).view(np.float32)
  if name in ("bf16", "fp16"):
    dt = ml_dtypes.bfloat16 if name == "bf16" else np.float16
    return bits.astype(np.uint16).view(dt).astype(np.float32)
  word = formats.get_format(name).bits
  q = bits.astype(np.int64)
  q = np.where(q >= 2 ** (word - 1), q - 2 ** word, q)
  if name == "int8":
    return (q.astype(np.float32) * np.float32(aux)).astype(np.float32)
  return (q.astype(np.float32) / np.float32(2.0 ** formats.get_format(name).frac_bits))


def _bits_equal(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
  return bool(same.all())


@functools.partial(jax.jit, static_argnames=("fmt", "space", "max_flips"))
def _flip(key, v, ber, fmt, space, max_flips):
  return faults.flip_bits(key, v, ber, fmt, space, max_flips)


@pytest.mark.parametrize("fmt,ber,cap", [(f, 0.02, 400) for f in FORMATS] + [
    ("q15.16", 0.02, 3), ("int8", 0.02, 3), ("float32", 0.8, 3)])  # sparse; dense; complement
def test_matches_numpy_reference(fmt, ber, cap):
  v = _tree()
  space = faults.FaultSpace()
  fm = formats.get_format(fmt)
  n_bits = faults.count_bits(v, fmt, space)
  key = jax.random.key(7)
  out, k = _flip(key, v, ber, fmt, space, cap)
  k_count, k_pos = jax.random.split(key)
  assert int(k) == int(faults.sample_count(k_count, n_bits, ber))
  masks = jax.jit(faults.sample_flip_masks, static_argnums=1,
                  static_argnames=("bit_hi", "cap"))(k_pos, n_bits // fm.bits, k,
                                                     bit_hi=fm.bits, cap=cap)
  masks = np.asarray(masks).astype(np.uint64)
  assert sum(bin(int(m)).count("1") for m in masks) == int(k)  # exactly k distinct flips
  off = 0
  encode = jax.jit(fm.encode)  # one program per leaf shape, not each op on its own
  for path in faults.fault_leaves(v, space):
    x = np.asarray(functools.reduce(lambda d, p: d[p], path.split("/"), v))
    bits, aux = _ref_encode(fmt, x.ravel())
    enc, jax_aux = encode(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(enc).ravel(), bits)  # integer domain agrees before the flips
    if fmt == "int8":  # XLA may divide by 127 as a multiply: the scale can differ by an ulp
      assert abs(float(jax_aux) - float(aux)) <= 2e-7 * float(aux)
      aux = np.float32(jax_aux)
    want = _ref_decode(fmt, bits ^ masks[off:off + x.size], aux).reshape(x.shape)
    got = functools.reduce(lambda d, p: d[p], path.split("/"), out)
    if fmt == "int8":  # XLA may reassociate q * (amax / 127): allow one ulp
      np.testing.assert_allclose(np.asarray(got), want, rtol=2.5e-7, atol=0)
    else:
      assert _bits_equal(got, want), path
    off += x.size
  # outside the fault space: batch_stats untouched (not quantised, not faulted)
  assert _bits_equal(out["batch_stats"]["BatchNorm_0"]["mean"],
                     v["batch_stats"]["BatchNorm_0"]["mean"])


def _pooled_chisquare(observed_values, pmf_support, pmf):
  """Chi-square GOF of integer samples against a pmf on ``pmf_support`` (tails pooled)."""
  n = len(observed_values)
  exp = n * pmf
  obs = np.array([(observed_values == s).sum() for s in pmf_support], float)
  # pool bins from both ends until every expected count >= 5
  e_acc, o_acc, bins_e, bins_o = 0.0, 0.0, [], []
  for e, o in zip(exp, obs):
    e_acc += e
    o_acc += o
    if e_acc >= 5:
      bins_e.append(e_acc), bins_o.append(o_acc)
      e_acc = o_acc = 0.0
  bins_e[-1] += e_acc
  bins_o[-1] += o_acc
  bins_o[-1] += n - sum(bins_o)  # anything outside the support goes to the last bin
  bins_e[-1] += n - sum(bins_e)
  return sps.chisquare(bins_o, bins_e).pvalue


@pytest.mark.parametrize("ber,cap", [(2e-4, None), (2e-4, 2), (2e-4, 32)])
def test_flip_count_is_binomial(ber, cap):
  # 5000 + 5 values x 32 bits = 160,160 bits: several 2^16 binomial chunks; mean 32.
  v = {"params": {"k": jnp.linspace(-2, 2, 5000), "bias": jnp.zeros(5)}}
  n_bits = faults.count_bits(v)
  cap = cap if cap is not None else faults.default_cap(n_bits, ber)
  f = jax.jit(lambda key: _flip(key, v, ber, "q15.16", faults.FaultSpace(), cap)[1])
  ks = np.asarray(jax.lax.map(f, jax.random.split(jax.random.key(1), 2000)))
  support = np.arange(0, 200)
  p = _pooled_chisquare(ks, support, sps.binom.pmf(support, n_bits, ber))
  assert p > ALPHA, p


@pytest.mark.parametrize("ber,cap", [(0.01, None), (0.01, 3), (0.01, 160), (0.9, 3)])
def test_positions_uniform(ber, cap):
  n_values, nb = 500, 32
  n_bits = n_values * nb
  cap = cap if cap is not None else faults.default_cap(n_bits, ber)

  def trial(key):
    kc, kp = jax.random.split(key)
    k = faults.sample_count(kc, n_bits, ber)
    m = faults.sample_flip_masks(kp, n_values, k, bit_hi=nb, cap=cap)
    per_bit = jnp.stack([(m >> b) & 1 for b in range(nb)], 1)
    return per_bit.sum(0), per_bit.sum(1), per_bit.sum(), k

  by_bit, by_value, total, ks = jax.lax.map(jax.jit(trial),
                                            jax.random.split(jax.random.key(2), 400))
  np.testing.assert_array_equal(np.asarray(total), np.asarray(ks))
  by_bit, by_value = np.asarray(by_bit).sum(0), np.asarray(by_value).sum(0)
  assert sps.chisquare(by_bit).pvalue > ALPHA
  assert sps.chisquare(by_value).pvalue > ALPHA
  support = np.arange(n_bits + 1)
  assert _pooled_chisquare(np.asarray(ks), support, sps.binom.pmf(support, n_bits, ber)) > ALPHA


def test_layer_filter_and_bit_range():
  v = _tree()
  q = faults.quantize_variables(v, "float32")
  space = faults.FaultSpace(layer="Dense_1", bit_lo=4, bit_hi=12)
  out, k = _flip(jax.random.key(3), v, 0.2, "float32", space, 200)
  assert int(k) > 0
  flat_o, flat_q = faults._flat(out), faults._flat(q)
  changed = 0
  for path in flat_o:
    diff = np.asarray(flat_o[path]).view(np.uint32) ^ np.asarray(flat_q[path]).view(np.uint32)
    if path[:2] != ("params", "Dense_1"):
      assert not diff.any(), path
    assert not (diff & ~np.uint32(0xFF0)).any()
    changed += sum(bin(int(d)).count("1") for d in diff.ravel())
  assert changed == int(k)
  assert faults.fault_leaves(v, faults.FaultSpace(layer="act1")) == ["thresholds/act1/lam"]
  assert faults.fault_leaves(v, faults.FaultSpace(biases=False, collections=("params",))) == [
      "params/Dense_0/kernel", "params/Dense_1/kernel"]
  assert "batch_stats/BatchNorm_0/mean" in faults.fault_leaves(
      v, faults.FaultSpace(collections=("params", "batch_stats")))
  assert faults.layer_names(v, ["params"]) == ["Dense_0", "Dense_1"]


def test_errors():
  v = _tree()
  for ber in (-0.1, 1.5):
    with pytest.raises(ValueError, match="ber"):
      faults.flip_bits(jax.random.key(0), v, ber)
  with pytest.raises(ValueError, match="Dense_0"):
    faults.flip_bits(jax.random.key(0), v, 1e-3, space=faults.FaultSpace(layer="Conv_9"))
  with pytest.raises(ValueError, match="bit range"):
    faults.flip_bits(jax.random.key(0), v, 1e-3, "int8", faults.FaultSpace(bit_hi=9))
  with pytest.raises(ValueError):
    faults.stuck_at(jax.random.key(0), v, 1e-3, 2)
  with pytest.raises(ValueError, match="max_flips"):
    jax.jit(lambda b: faults.flip_bits(jax.random.key(0), v, b))(0.1)
  # a bare params tree for the variables would get no fault at all: refused by every injector
  bare = v["params"]
  for inject in (lambda: faults.flip_bits(jax.random.key(0), bare, 0.5),
                 lambda: faults.stuck_at(jax.random.key(0), bare, 0.5, 1),
                 lambda: faults.flip_n(jax.random.key(0), bare, 3),
                 lambda: faults.toolbox_floor_flips(jax.random.key(0), bare, 0.5)):
    with pytest.raises(ValueError, match="none of the fault space's collections"):
      inject()


def test_float32_many_flips_and_traced_ber():
  v = _tree()
  f = jax.jit(lambda key, ber: faults.flip_bits(key, v, ber, "float32", max_flips=64))
  out, k = f(jax.random.key(4), 0.3)  # far above the cap: dense path, NaN/Inf likely
  assert int(k) > 64
  assert out["params"]["Dense_0"]["kernel"].shape == (30, 10)
  _, k0 = f(jax.random.key(4), 0.0)
  _, k1 = f(jax.random.key(4), 1.0)
  assert int(k0) == 0 and int(k1) == faults.count_bits(v, "float32")
  assert f._cache_size() == 1  # one compiled function serves every BER


def test_stuck_at_flip_n_toolbox():
  v = _tree()
  q = faults.quantize_variables(v, "float32")
  # compiled, as a campaign runs them (eagerly, their many small ops each compile on their own)
  stuck_at = jax.jit(faults.stuck_at, static_argnums=(2, 3, 4))
  flip_n = jax.jit(faults.flip_n, static_argnums=(2, 3))
  floor_flips = jax.jit(faults.toolbox_floor_flips, static_argnums=(2, 3))
  for value in (0, 1):
    out, _ = stuck_at(jax.random.key(5), v, 0.1, value, "float32")
    for a, b in zip(jax.tree_util.tree_leaves(out["params"]),
                    jax.tree_util.tree_leaves(q["params"])):
      a, b = np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)
      assert ((a | b) == a).all() if value else ((a & b) == a).all()
  out, n = flip_n(jax.random.key(6), v, 37, "float32")
  diff = sum(bin(int(d)).count("1") for x, y in zip(jax.tree_util.tree_leaves(out),
                                                     jax.tree_util.tree_leaves(q))
             for d in (np.asarray(x).view(np.uint32) ^ np.asarray(y).view(np.uint32)).ravel())
  assert int(n) == diff == 37
  out, n = floor_flips(jax.random.key(7), v, 1e-3, "float32")
  assert int(n) == (300 * 32) // 1000 + (40 * 32) // 1000  # biases and thresholds: 0 flips
  np.testing.assert_array_equal(np.asarray(out["params"]["Dense_0"]["bias"]),
                                np.asarray(q["params"]["Dense_0"]["bias"]))


@functools.partial(jax.jit, static_argnames=("kind", "fmt", "space", "cap", "pre"))
def _inject_any(key, v, aux, rate, kind, fmt, space, cap, pre):
  kw = {"prequantized": True, "aux": aux} if pre else {}
  if kind == "flip":
    return faults.flip_bits(key, v, rate, fmt, space, cap, **kw)
  if kind == "set1":
    return faults.stuck_at(key, v, rate, 1, fmt, space, cap, **kw)
  return faults.flip_n(key, v, jnp.asarray(rate, jnp.int32), fmt, space, cap, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_prequantized_path_is_bit_identical(fmt):
  v = _tree()
  v["params"]["Dense_0"]["kernel"] = v["params"]["Dense_0"]["kernel"] * 37.3  # q7.8 saturates
  # under jit this tensor's int8 scale moves by an ulp when it is re-quantised: aux carries it
  v["params"]["Dense_1"]["kernel"] = jnp.asarray(np.random.default_rng(88).normal(size=(10, 4)),
                                                 jnp.float32)
  clean, aux = jax.jit(faults.quantize_with_aux, static_argnums=(1, 2))(v, fmt,
                                                                        faults.FaultSpace())
  layer = faults.FaultSpace(layer="Dense_1", bit_lo=2, bit_hi=7)
  cases = [("flip", faults.FaultSpace(), 0.02, 400), ("flip", faults.FaultSpace(), 0.02, 3),
           ("flip", faults.FaultSpace(), 0.8, 3), ("flip", layer, 0.1, 60),
           ("set1", faults.FaultSpace(), 0.05, 400), ("flip_n", faults.FaultSpace(), 37, 37)]
  # The cap/dense/stuck-at/flip_n logic is format-independent and covered by the default format;
  # int8 (whose scales travel in aux) runs the flip cases, sparse, dense and on a bit range of
  # one layer (set1 and flip_n meet the scales exactly as flip does); the other fixed-point
  # format checks the encode/decode path on the whole tree and on a bit range of one layer, the
  # float formats on the whole tree (each case costs two compilations).
  if fmt == "int8":
    cases = cases[:4]
  elif fmt != "q15.16":
    cases = [cases[0], cases[3]] if fmt.startswith("q") else [cases[0]]
  for i, (kind, space, rate, cap) in enumerate(cases):
    key = jax.random.key(20 + i)
    want, k_want = _inject_any(key, v, None, rate, kind, fmt, space, cap, False)
    got, k_got = _inject_any(key, clean, aux, rate, kind, fmt, space, cap, True)
    assert int(k_got) == int(k_want) > 0
    flat_w, flat_g = faults._flat(want), faults._flat(got)
    assert flat_w.keys() == flat_g.keys()
    for path in flat_w:
      assert _bits_equal(flat_g[path], flat_w[path]), (kind, space, cap, path)
  if fmt == "int8":
    with pytest.raises(ValueError, match="quantize_with_aux"):
      faults.flip_bits(jax.random.key(0), clean, 1e-3, fmt, prequantized=True)
