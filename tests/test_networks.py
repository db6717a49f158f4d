"""The four methods and a paired campaign on models that know nothing of this package (issue 13).

Each model is defined here only: a flax.linen CNN calling ``nn.relu`` inline, a flax.nnx CNN, an
Equinox MLP and a plain-JAX function with ``jnp.maximum(x, 0)``. Labels are the untrained
model's own predictions, so the baseline is exactly right on every image and each method's
clean accuracy can be compared with it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import proact_jax as pj
from proact_jax import methods
from proact_jax.core.evaluate import evaluate, make_eval_set
from proact_jax.faults import campaign
from proact_jax.faults import injection as faults
from proact_jax.faults import activations as activation_faults
from proact_jax.transform.network import FlaxNetwork, as_network, capture

N_IMG, SHAPE = 64, (8, 8, 1)
X = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (N_IMG, *SHAPE)))


class LinenCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1))))
    return nn.Dense(3)(x)


class NnxCNN(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.l1 = nnx.Linear(8 * 8 * 4, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    return self.l2(nnx.relu(self.l1(x.reshape((x.shape[0], -1)))))


def _linen():
  model = LinenCNN()
  params = model.init(jax.random.PRNGKey(0), X[:1])["params"]
  return lambda p, x: model.apply({"params": p}, x), params


def _nnx():
  graphdef, state = nnx.split(NnxCNN(nnx.Rngs(0)))
  return lambda s, x: nnx.merge(graphdef, s)(x), state


def _equinox():
  eqx = pytest.importorskip("equinox")
  mlp = eqx.nn.MLP(64, 3, 16, 2, activation=jax.nn.relu, key=jax.random.PRNGKey(0))
  params, static = eqx.partition(mlp, eqx.is_array)
  return lambda p, x: jax.vmap(eqx.combine(p, static))(x.reshape((x.shape[0], -1))), params


def _plain():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w1": jax.random.normal(k[0], (64, 16)) / 8, "b1": jnp.zeros(16),
            "w2": jax.random.normal(k[1], (16, 8)) / 4, "b2": jnp.zeros(8),
            "w3": jax.random.normal(k[2], (8, 3)) / 3}

  def f(p, x):
    h = jnp.maximum(x.reshape((x.shape[0], -1)) @ p["w1"] + p["b1"], 0)
    h = jnp.maximum(0.0, h @ p["w2"] + p["b2"])
    return h @ p["w3"]
  return f, params


BUILDERS = {"linen": _linen, "nnx": _nnx, "equinox": _equinox, "plain": _plain}


@pytest.fixture(scope="module", params=list(BUILDERS))
def hardened(request):
  fn, params = BUILDERS[request.param]()
  net, v = pj.function_network(fn, params)
  y = np.argmax(np.asarray(fn(params, X)), -1).astype(np.int32)
  data = make_eval_set(X, y, batch_size=32)
  hs = [methods.ranger(net, v, X, data),
        methods.ft_clipact(net, v, X, X, y, data,
                           methods.FTClipActConfig(images=32, trials=2, candidates=3,
                                                   max_rounds=1, min_rounds=1, bers=(1e-5,)),
                           progress=False),
        methods.fitact(net, v, X, X, y, data, methods.FitActConfig(epochs=1, batch_size=32),
                       progress=False),
        methods.proact(net, v, X, X, y, data,
                       # target=None: the toolbox's fixed tolerance (64 validation images
                       # leave the sized guard a 3.6-point margin: it would accept nothing)
                       methods.ProActConfig(last_epochs=1, layer_epochs=1, batch_size=32,
                                            target=None),
                       progress=False)]
  return request.param, fn, params, net, v, data, hs


def test_network_is_the_original_function(hardened):
  _, fn, params, net, v, data, _ = hardened
  assert isinstance(net, pj.Network) and net.kind == "relu"
  np.testing.assert_array_equal(np.asarray(net.apply(v, X)), np.asarray(fn(params, X)))
  assert evaluate(net, v, data)[0] == 1.0
  # every leaf is in the fault space under its path
  assert faults.count_bits(v, "q15.16", faults.FaultSpace(collections=("params",))) == 32 * sum(
      np.size(a) for a in jax.tree_util.tree_leaves(params))


def test_each_method_hardens_the_model(hardened):
  name, _, _, net, v, data, hs = hardened
  sites = net.site_order(v, SHAPE)
  assert sites == [f"relu_{i}" for i in range(len(sites))] and len(sites) >= 2
  assert [h.method for h in hs] == ["ranger", "ft-clipact", "fitact", "proact"]
  for h in hs:
    assert isinstance(h.model, pj.Network) and h.model.kind == h.kind, name
    assert pj.site_names(h.variables[pj.THRESHOLDS]) == sites
    assert [s["site"] for s in h.sites] == sites
    assert h.baseline_accuracy == 1.0 and h.clean_accuracy >= 0.75, (name, h.method)
    assert h.memory_overhead > 0
  ranger, _, fitact, proact = hs
  assert ranger.clean_accuracy == 1.0  # profiled on the evaluated images: nothing is clipped
  shapes = {s: np.shape(pj.get_site(fitact.variables[pj.THRESHOLDS], s)) for s in sites}
  assert all(len(s) >= 1 for s in shapes.values())  # FitAct: neuron-wise everywhere
  last = np.asarray(pj.get_site(proact.variables[pj.THRESHOLDS], sites[-1]))
  assert last.ndim == 1 and all(np.ndim(pj.get_site(proact.variables[pj.THRESHOLDS], s)) == 0
                                for s in sites[:-1])  # hybrid


def test_paired_sweep_on_the_hardened_models(hardened):
  name, _, _, net, v, data, hs = hardened
  # relu and ProAct only: each variant is one more compilation of the faulty forward pass
  variants = {"relu": (net, v), "proact": (hs[3].model, hs[3].variables)}
  space = faults.FaultSpace(collections=("params", "thresholds", "activations"))
  r = campaign.run_campaign(jax.random.PRNGKey(0), variants, data, [1e-3], 3, space=space,
                            progress=False)
  rows = {n: r.trials[n][0] for n in variants}
  for n in variants:
    assert r.clean[n]["accuracy"] >= 0.75, (name, n)
    np.testing.assert_array_equal(rows[n]["n_flips_weights"], rows["relu"]["n_flips_weights"])
    np.testing.assert_array_equal(rows[n]["n_flips_activations"],
                                  rows["relu"]["n_flips_activations"])
  assert rows["relu"]["n_flips_activations"].sum() > 0
  if name != "linen":
    return
  # activation statistics (Table V) on a network
  d = activation_faults.activation_distance(jax.random.PRNGKey(1), hs[3].model, hs[3].variables,
                                            X[:8], 1e-2, trials=2)
  assert list(d) == net.site_order(v, SHAPE)


def test_flax_network_matches_the_linen_module():
  base = pj.create_model("small_cnn", 10)
  v = base.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))
  net = as_network(base)
  assert isinstance(net, FlaxNetwork) and as_network(net) is net
  np.testing.assert_array_equal(np.asarray(net.apply(v, X)),
                                np.asarray(base.apply(v, X, train=False)))
  acts = capture(base, v, X)
  assert list(acts) == net.site_order(v, SHAPE) == pj.site_order(base, SHAPE)
  clipped = net.with_kind("zero", "hybrid")
  assert clipped.module.act.kind == "zero" and clipped.granularity == "hybrid"
  with pytest.raises(ValueError, match="act"):
    as_network(LinenCNN())
  with pytest.raises(ValueError, match="function_network"):
    as_network(object())
