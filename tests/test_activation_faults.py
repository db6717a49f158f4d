"""Activation (neuron) faults: counts, exact bit semantics per format, pairing, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import proact_jax as pj
from proact_jax.core.evaluate import make_eval_set
from proact_jax.faults import campaign, neuron_faults
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import get_format

SHAPE = (8, 8, 1)
X = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (20, *SHAPE)))
ACT = faults.FaultSpace(collections=("activations",))


def _package_variants():
  base = pj.create_model("small_cnn", 10)
  v = dict(base.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE))))
  clipped = pj.create_model("small_cnn", 10, "zero", "layer")
  thr = {f"act{i}": {"lam": jnp.float32(2.0 + i)} for i in range(3)}
  y = np.argmax(np.asarray(base.apply(v, X)), -1).astype(np.int32)
  return {"relu": (base, v), "ranger": (clipped, {**v, "thresholds": thr})}, y


VARIANTS, Y = _package_variants()
DATA = make_eval_set(X, Y, batch_size=8)  # 3 batches, 4 padded images


def _plain_net():
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  params = {"w1": jax.random.normal(k[0], (64, 12)) / 8, "w2": jax.random.normal(k[1], (12, 3))}
  f = lambda p, x: jax.nn.relu(jnp.maximum(x.reshape((x.shape[0], -1)) @ p["w1"], 0)  # noqa
                               @ p["w2"])
  return pj.function_network(f, params)


def _flips(result, name):
  return np.concatenate([t["n_flips_activations"] for t in result.trials[name]])


@pytest.mark.parametrize("which", ["flax", "function"])
def test_flip_counts_follow_the_binomial(which):
  if which == "flax":
    model, v = VARIANTS["relu"]
    data = DATA
  else:
    model, v = _plain_net()
    data = make_eval_set(X, np.zeros(len(X), np.int32), batch_size=8)
  ber, trials = 2e-4, 300
  plan = neuron_faults.activation_plan(ACT, "q15.16", ber)
  bits = neuron_faults.activation_bits(model, v, SHAPE, plan)
  acts = pj.transform.network.capture(model, v, X[:1])
  assert bits == 32 * sum(a.size for a in acts.values())
  n = bits * data.n  # the valid images only: padding gets flips that are not counted
  r = campaign.run_campaign(jax.random.PRNGKey(11), {"m": (model, v)}, data, [ber], trials,
                            space=ACT, progress=False)
  k = _flips(r, "m")
  assert r.config["activation_faults"]["bits_per_image"] == {"m": bits}
  mean, var = n * ber, n * ber * (1 - ber)
  z = (k.mean() - mean) / np.sqrt(var / trials)
  assert abs(z) < 4, (k.mean(), mean)
  chi2 = np.sum((k - mean) ** 2) / var  # dispersion: chi-square with `trials` d.o.f.
  assert sps.chi2.ppf(1e-4, trials) < chi2 < sps.chi2.ppf(1 - 1e-4, trials)


def test_paired_variants_get_the_same_activation_flips_across_batchings():
  space = faults.FaultSpace(collections=("params", "thresholds", "activations"))
  # map mode without trial_batch: the carried tree (faults/carry.py); the others copy the tree
  r = campaign.run_campaign(jax.random.PRNGKey(3), VARIANTS, DATA, [1e-4, 1e-3], 6, space=space,
                            progress=False, chunk=6)
  relu = {"relu": VARIANTS["relu"]}  # one variant in the other batchings: fewer compilations
  for mode, tb, ch in (("vmap", None, 4),):  # map with trial_batch: test_campaign, weight faults
    other = campaign.run_campaign(jax.random.PRNGKey(3), relu, DATA, [1e-4, 1e-3], 6,
                                  space=space, progress=False, mode=mode, trial_batch=tb, chunk=ch)
    for a, b in zip(r.trials["relu"], other.trials["relu"]):
      for f in ("accuracy", "n_flips_weights", "n_flips_activations"):
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)
      np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)  # as for weight faults
  np.testing.assert_array_equal(_flips(r, "relu"), _flips(r, "ranger"))
  assert _flips(r, "relu").sum() > 0
  # without "activations" the results file is the weights-only campaign, unchanged
  w = campaign.run_campaign(jax.random.PRNGKey(3), relu, DATA, [1e-4, 1e-3], 6, progress=False)
  assert "activation_faults" not in w.config and "n_flips_activations" not in w.trials["relu"][0]
  np.testing.assert_array_equal(w.trials["relu"][1]["n_flips_weights"],
                                r.trials["relu"][1]["n_flips_weights"])


@pytest.mark.parametrize("fmt,bits", [("q15.16", (0, 24)), ("q7.8", (0, 16)), ("int8", (0, 8)),
                                      ("float32", (0, 32)), ("bf16", (0, 14))])
def test_flipped_bits_are_exactly_the_counted_flips(fmt, bits):
  """A network whose output is its only site: the output's stored words differ from the clean
  quantised ones in exactly ``n_flips`` bits, per image. (Q15.16 words with flips above bit 23
  have more than 24 significant bits, which float32 rounds; bf16 exponent-MSB flips give
  Inf/NaN.)"""
  scale = jnp.linspace(-1.0, 2.0, 48)
  net, v = pj.function_network(lambda p, x: jax.nn.relu(x * p), scale)
  x = jnp.tile(jnp.linspace(0.1, 3.0, 48), (6, 1)) * jnp.arange(1, 7)[:, None]
  f = get_format(fmt)
  plan = neuron_faults.activation_plan(
      faults.FaultSpace(collections=("activations",), bit_lo=bits[0], bit_hi=bits[1]), f, 0.05)
  # compiled once (the BER is traced), as a campaign runs it; op by op it compiled ~70-170 ops
  apply = jax.jit(lambda v, x, key, ber: neuron_faults.faulty_apply(net, v, x, key, ber, plan))
  clean, n0 = apply(v, x, jax.random.PRNGKey(0), 0.0)
  assert int(n0.sum()) == 0
  raw = net.apply(v, x)
  enc = jax.vmap(f.encode)(raw)  # per image (int8: per-image scale)
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(jax.vmap(f.decode)(*enc)))
  faulty, n = apply(v, x, jax.random.PRNGKey(1), 0.05)
  words = jax.vmap(lambda a, s: faults._encode_with(f, a, s))(faulty, enc[1])
  diff = np.asarray(words ^ enc[0], np.uint64)
  popcount = np.array([[bin(int(d)).count("1") for d in row] for row in diff])
  np.testing.assert_array_equal(popcount.sum(1), np.asarray(n))
  lo, hi = bits
  assert not np.any(diff & ~np.uint64(((1 << hi) - 1) ^ ((1 << lo) - 1)))
  assert 0 < int(n.sum())


def test_layer_filter_flips_one_site_only():
  model, v = VARIANTS["relu"]
  space = faults.FaultSpace(collections=("activations",), layer="act1")
  plan = neuron_faults.activation_plan(space, "float32", 1e-2)
  sizes = {s: a[0].size for s, a in pj.transform.network.capture(model, v, X[:1]).items()}
  assert neuron_faults.activation_bits(model, v, SHAPE, plan) == 32 * sizes["act1"]
  _, n = jax.jit(lambda v, x, key: neuron_faults.faulty_apply(model, v, x, key, 1e-2, plan))(
      v, X[:4], jax.random.PRNGKey(0))
  assert int(n.sum()) > 0
  r = campaign.run_campaign(jax.random.PRNGKey(0), {"relu": (model, v)}, DATA, [1e-2], 2,
                            space=space, progress=False)
  assert r.config["activation_faults"]["bits_per_image"]["relu"] == 32 * sizes["act1"]
  with pytest.raises(ValueError, match="matches no leaf"):
    campaign.run_campaign(jax.random.PRNGKey(0), {"relu": (model, v)}, DATA, [1e-2], 2,
                          space=faults.FaultSpace(collections=("activations",), layer="nope"),
                          progress=False)


def test_activation_faults_follow_the_bernoulli_rule_only():
  model, v = VARIANTS["relu"]
  with pytest.raises(ValueError, match="Bernoulli rule only"):
    campaign.run_campaign(jax.random.PRNGKey(0), {"relu": (model, v)}, DATA, [1e-3], 2,
                          space=ACT, fault_rule="toolbox-floor", progress=False)
