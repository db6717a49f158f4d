"""clip_activations / interpret_sites on models that know nothing of this package.

Every model takes an ``act(x, i)`` argument (default: its plain ReLU at site i), so the same
weights give both the original function (what gets transformed) and a hand-written clipped
reference.
"""

import functools
from typing import Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from proact_jax.core.activations import KINDS, activation_fn, smooth_clip
from proact_jax.transform.interpreter import find_sites, interpret_sites
from proact_jax.transform.clip import clip_activations, stack_thresholds

B = 3


def _relu(x, i):
  del i
  return nn.relu(x)


# -- flax.linen: inline nn.relu, a jitted submodule, a remat'd submodule -------------------------
class LinenBlock(nn.Module):
  act: Callable
  i: int

  @nn.compact
  def __call__(self, x):
    return self.act(nn.Conv(4, (3, 3))(x), self.i)


class LinenCNN(nn.Module):
  act: Callable = _relu

  @nn.compact
  def __call__(self, x):
    x = self.act(nn.Conv(4, (3, 3))(x), 0)
    x = nn.jit(LinenBlock)(self.act, 1)(x)
    x = nn.remat(LinenBlock)(self.act, 2)(x)
    x = self.act(nn.Dense(8)(x.reshape((x.shape[0], -1))), 3)
    return nn.Dense(3)(x)


# -- flax.nnx -------------------------------------------------------------------------------------
def _nnx_relu(x, i):
  del i
  return nnx.relu(x)


class NnxCNN(nnx.Module):

  def __init__(self, rngs):
    self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.c2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
    self.l1 = nnx.Linear(6 * 6 * 4, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x, act=_nnx_relu):
    x = act(self.c2(act(self.c1(x), 0)), 1)
    return self.l2(act(self.l1(x.reshape((x.shape[0], -1))), 2))


# -- plain JAX: bare max(x, 0), a scan and a cond holding ReLUs -----------------------------------
def _plain_relu(x, i):
  if i == 0:
    return jnp.maximum(x, 0)
  if i == 3:
    return jnp.maximum(0.0, x)
  return jax.nn.relu(x)


def plain(p, x, act=_plain_relu):
  h = act(x @ p["w0"], 0)
  h, _ = lax.scan(lambda h, _: (act(h @ p["wr"] + p["br"], 1), None), h, None, length=2)
  # cond's branch 0 is the false branch: its site comes first in walk order.
  h = lax.cond(h.sum() > 0, lambda h: act(h, 3) * 1.5, lambda h: act(h - 0.1, 2), h)
  return act(h @ p["w1"], 4) @ p["w2"]


class Case(NamedTuple):
  f: Callable  # f(params, x)
  ref: Callable  # ref(params, x, act)
  params: object
  x: jax.Array
  shapes: tuple  # per-site activation shapes at x, walk order


@functools.lru_cache(maxsize=None)
def make_case(name: str) -> Case:
  key = jax.random.PRNGKey(0)
  if name == "linen":
    x = jax.random.normal(key, (B, 6, 6, 1))
    params = LinenCNN().init(jax.random.PRNGKey(1), x)
    return Case(LinenCNN().apply, lambda p, x, act: LinenCNN(act).apply(p, x), params, x,
                ((B, 6, 6, 4),) * 3 + ((B, 8),))
  if name == "nnx":
    x = jax.random.normal(key, (B, 6, 6, 1))
    graphdef, state = nnx.split(NnxCNN(nnx.Rngs(1)))
    return Case(lambda s, x: nnx.merge(graphdef, s)(x),
                lambda s, x, act: nnx.merge(graphdef, s)(x, act), state, x,
                ((B, 6, 6, 4),) * 2 + ((B, 8),))
  if name == "equinox":
    eqx = pytest.importorskip("equinox")

    class EqxMLP(eqx.Module):
      layers: list

      def __init__(self, key):
        k = jax.random.split(key, 3)
        self.layers = [eqx.nn.Linear(5, 8, key=k[0]), eqx.nn.Linear(8, 8, key=k[1]),
                       eqx.nn.Linear(8, 3, key=k[2])]

      def __call__(self, x, act=_relu):
        for i, layer in enumerate(self.layers[:-1]):
          x = act(layer(x), i)
        return self.layers[-1](x)

    params, static = eqx.partition(EqxMLP(jax.random.PRNGKey(1)), eqx.is_array)
    return Case(lambda p, x: jax.vmap(eqx.combine(p, static))(x),
                lambda p, x, act: jax.vmap(lambda xi: eqx.combine(p, static)(xi, act))(x),
                params, jax.random.normal(key, (B, 5)), ((B, 8),) * 2)
  assert name == "plain"
  ks = jax.random.split(jax.random.PRNGKey(1), 5)
  params = {"w0": jax.random.normal(ks[0], (5, 6)), "wr": jax.random.normal(ks[1], (6, 6)) / 3,
            "br": jax.random.normal(ks[2], (6,)), "w1": jax.random.normal(ks[3], (6, 6)),
            "w2": jax.random.normal(ks[4], (6, 3))}
  return Case(plain, lambda p, x, act: plain(p, x, act), params,
              jax.random.normal(key, (B, 5)), ((B, 6),) * 5)


CASES = ["linen", "nnx", "equinox", "plain"]


def hand_clipped(kind, thresholds, k=20.0):
  """The reference: act(x, i) clipping at thresholds['relu_i'] (per-example shapes broadcast)."""
  fn = activation_fn(kind)

  def act(x, i):
    lam = jnp.asarray(thresholds[f"relu_{i}"]).astype(x.dtype)
    return smooth_clip(x, lam, k) if kind == "smooth" else fn(x, lam)
  return act


def profiled(case, g, scale=0.5):
  """Thresholds at ``scale`` times the maxima at ``case.x``, so that clipping is active (not a
  profile over [x, 2x]: a bias-free ReLU net is homogeneous, which would put activations of x
  exactly at the kinks of the threshold kind)."""
  prof = g.profile(case.params, [case.x])
  return jax.tree_util.tree_map(lambda t: scale * t, g.init_thresholds(case.params, case.x,
                                                                       profile=prof))


def bits(a):
  return np.asarray(a).view(np.uint32 if np.asarray(a).dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("name", CASES)
def test_inf_thresholds_identical(name):
  case = make_case(name)
  expected, expected_jit = case.f(case.params, case.x), jax.jit(case.f)(case.params, case.x)
  t = clip_activations(case.f).init_thresholds(case.params, case.x, value=jnp.inf)
  g = clip_activations(case.f, kind="relu", granularity="hybrid")
  # kind="relu" evaluates the original primitives: bit for bit, eagerly and compiled.
  np.testing.assert_array_equal(bits(g(case.params, t, case.x)), bits(expected))
  np.testing.assert_array_equal(bits(jax.jit(g)(case.params, t, case.x)), bits(expected_jit))
  for kind in KINDS[1:]:  # clip_to_zero(-0.) is -0. where relu gives +0.: compare values
    g = clip_activations(case.f, kind=kind, granularity="hybrid")
    np.testing.assert_array_equal(jax.jit(g)(case.params, t, case.x), expected_jit)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("granularity", ["hybrid", "neuron"])
def test_matches_hand_clipped(name, granularity):
  case = make_case(name)
  t = profiled(case, clip_activations(case.f, "relu", granularity))
  for kind in KINDS:
    g = clip_activations(case.f, kind, granularity)
    out = g(case.params, t, case.x)
    chex.assert_trees_all_close(out, case.ref(case.params, case.x, hand_clipped(kind, t)),
                                rtol=1e-6, atol=1e-6)
  assert not np.allclose(out, case.f(case.params, case.x))  # the clip does something


@pytest.mark.parametrize("name", CASES)
def test_gradients(name):
  case = make_case(name)
  t32 = profiled(case, clip_activations(case.f, "relu", "hybrid"))
  with jax.enable_x64(True):
    to64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
    params, x, t = to64(case.params), to64(case.x), to64(t32)
    w = jax.random.normal(jax.random.PRNGKey(2), jax.eval_shape(case.f, params, x).shape,
                          jnp.float64)
    for kind in ("smooth", "threshold"):
      g = clip_activations(case.f, kind, "hybrid")
      loss = jax.jit(lambda t, p: jnp.sum(g(p, t, x) * w))  # noqa: E731
      grad_t, grad_p = jax.jit(jax.grad(loss, argnums=(0, 1)))(t, params)
      leaves, tree = jax.tree_util.tree_flatten(t)
      keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
      v = tree.unflatten([jax.random.normal(k, l.shape, jnp.float64) for k, l in zip(keys, leaves)])
      # Central differences along a random direction: truncation O(h^2), rounding ~1e-16 |L| / h.
      h = 1e-6
      shift = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * h * b, t, v)  # noqa: E731
      fd = (loss(shift(1), params) - loss(shift(-1), params)) / (2 * h)
      analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(grad_t),
                                                     jax.tree_util.tree_leaves(v)))
      assert abs(fd - analytic) <= 1e-6 + 1e-5 * abs(analytic), (kind, fd, analytic)
      assert abs(analytic) > 1e-3  # the thresholds matter
      if kind == "smooth":  # gradients w.r.t. params: those of the hand-clipped model
        ref = jax.jit(jax.grad(lambda p: jnp.sum(case.ref(p, x, hand_clipped(kind, t)) * w)))
        chex.assert_trees_all_close(grad_p, ref(params), rtol=1e-9, atol=1e-9)
    # kind="relu" keeps jax.nn.relu's custom derivative: same param gradients as the original.
    g = clip_activations(case.f, "relu", "hybrid")
    chex.assert_trees_all_equal(jax.jit(jax.grad(lambda p: jnp.sum(g(p, t, x) * w)))(params),
                                jax.jit(jax.grad(lambda p: jnp.sum(case.f(p, x) * w)))(params))


@pytest.mark.parametrize("name", CASES)
def test_vmap_and_lax_map_over_threshold_copies(name):
  case = make_case(name)
  g = clip_activations(case.f, "smooth", "hybrid")
  t = profiled(case, g)
  copies = [jax.tree_util.tree_map(lambda a, s=s: s * a, t) for s in (0.5, 1.0, 2.0)]
  stacked = stack_thresholds(copies)
  expected = jnp.stack([g(case.params, c, case.x) for c in copies])
  chex.assert_trees_all_close(jax.vmap(g, in_axes=(None, 0, None))(case.params, stacked, case.x),
                              expected, rtol=1e-5, atol=1e-6)
  mapped = jax.jit(lambda s: lax.map(lambda c: g(case.params, c, case.x), s))(stacked)
  chex.assert_trees_all_close(mapped, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_sites_and_shapes(name):
  case = make_case(name)
  n = len(case.shapes)
  names = [f"relu_{i}" for i in range(n)]
  per_example = [s[1:] for s in case.shapes]
  expected = {"layer": [()] * n, "neuron": per_example,
              "hybrid": [()] * (n - 1) + [per_example[-1]]}
  for granularity, shapes in expected.items():
    g = clip_activations(case.f, "smooth", granularity)
    t = g.init_thresholds(case.params, case.x)
    assert list(t) == g.sites == names
    assert [s.shape for s in g.analyse(case.params, case.x)] == list(case.shapes)
    assert list(g.site_shapes.values()) == shapes == [a.shape for a in t.values()]
    assert set(g.batch_axes.values()) == {0}


def test_site_order_and_context():
  case = make_case("plain")
  sites = find_sites(case.f, case.params, case.x)
  assert [(s.source, s.context) for s in sites] == [
      ("max(x, 0)", ()), ("jax.nn.relu", ("scan",)), ("jax.nn.relu", ("cond",)),
      ("max(x, 0)", ("cond",)), ("jax.nn.relu", ())]
  assert sites[1].in_loop and not sites[2].in_loop


def test_not_sites():
  """softplus / relu6 (max inside a custom_jvp body), integer max, max(x, 1) are not ReLUs;
  max(x, zeros) and max(x, broadcast 0) are."""
  def f(x):
    i = jnp.maximum(jnp.arange(3) - 1, 0)
    y = jax.nn.softplus(x) + jax.nn.relu6(x) + jnp.maximum(x, 1.0) + i
    return jnp.maximum(y, jnp.zeros(3)) + jnp.maximum(jnp.zeros_like(y), y)
  assert [s.source for s in find_sites(f, jnp.ones(3))] == ["max(x, 0)"] * 2


def test_interpret_sites_hook_and_capture():
  case = make_case("plain")
  add_one = lambda name, x: jax.nn.relu(x) + 1.0 if name == "relu_4" else None  # noqa: E731
  out = interpret_sites(case.f, add_one)(case.params, case.x)
  expected = plain(case.params, case.x,
                   lambda x, i: _plain_relu(x, i) + (1.0 if i == 4 else 0.0))
  chex.assert_trees_all_close(out, expected, rtol=1e-6)
  out, acts = interpret_sites(case.f, capture=lambda name, y: y)(case.params, case.x)
  assert list(acts) == [f"relu_{i}" for i in range(5)]
  taken, untaken = ("relu_3", "relu_2") if acts["relu_3"].max() > -jnp.inf else ("relu_2",
                                                                                 "relu_3")
  assert jnp.all(acts[untaken] == -jnp.inf) and jnp.all(acts[taken] >= 0)
  np.testing.assert_array_equal(out, case.f(case.params, case.x))


def test_profile_matches_capture():
  case = make_case("linen")
  g = clip_activations(case.f, "smooth", "hybrid")
  prof = g.profile(case.params, [(case.x, None), (2 * case.x, None)])
  _, acts = interpret_sites(case.f, capture=lambda n, y: y)(case.params, 2 * case.x)
  _, acts1 = interpret_sites(case.f, capture=lambda n, y: y)(case.params, case.x)
  for site in g.sites:
    m = jnp.maximum(acts[site].max(0), acts1[site].max(0))
    np.testing.assert_array_equal(prof["neuron"][site], m)
    np.testing.assert_array_equal(prof["layer"][site], m.max())


def test_errors():
  case = make_case("plain")
  p, x = case.params, case.x
  no_relu = clip_activations(lambda p, x: jnp.tanh(x @ p["w0"]))
  with pytest.raises(ValueError, match="no ReLU"):
    no_relu.init_thresholds(p, x)
  with pytest.raises(ValueError, match="no ReLU"):
    no_relu(p, {}, x)
  g = clip_activations(case.f, "smooth", "hybrid")
  t = g.init_thresholds(p, x)
  with pytest.raises(ValueError, match="missing \\['relu_4'\\]"):
    g(p, {k: v for k, v in t.items() if k != "relu_4"}, x)
  with pytest.raises(ValueError, match="unexpected \\['relu_9'\\]"):
    g(p, {**t, "relu_9": jnp.float32(1)}, x)
  with pytest.raises(ValueError, match="relu_4.*neuron-wise"):
    g(p, {**t, "relu_4": jnp.float32(1)}, x)
  with pytest.raises(ValueError, match="relu_0.*layer-wise"):
    g(p, {**t, "relu_0": jnp.ones(6)}, x)
  with pytest.raises(ValueError, match="dict"):
    g(p, list(t.values()), x)
  with pytest.raises(ValueError, match="unknown activation kind"):
    clip_activations(case.f, "clamp")
  with pytest.raises(ValueError, match="fn must be a function"):
    clip_activations(3)
  for k in (0.0, -20.0, float("nan")):
    with pytest.raises(ValueError, match="steepness"):
      clip_activations(case.f, "smooth", k=k)
  # A site whose size does not depend on the batch, whose batch is merged with another axis, or
  # with several batch-sized axes:
  # fine layer-wise, ValueError neuron-wise.
  on_params = lambda p, x: x @ p["w0"] + jax.nn.relu(p["w0"].sum(0))  # noqa: E731
  merged = lambda p, x: jax.nn.relu((x @ p["w0"]).reshape(-1, 3)).reshape(x.shape[0], 6)  # noqa
  square = lambda p, x: jax.nn.relu(x @ x.T) @ x  # noqa: E731  (B, B): ambiguous
  for f, why in ((on_params, "does not depend on the batch"), (merged, "batch merged"),
                 (square, "several axes")):
    assert clip_activations(f, "smooth", "layer").init_thresholds(p, x)["relu_0"].shape == ()
    with pytest.raises(ValueError, match=why):
      clip_activations(f, "smooth", "neuron").init_thresholds(p, x)


def test_while_remat_custom_vjp():
  """Sites in a while body (one threshold for all iterations), under jax.checkpoint and inside a
  custom_vjp function (inlined: the derivative is the clipped body's)."""

  @jax.custom_vjp
  def twice_relu(x):
    return 2.0 * jax.nn.relu(x)
  twice_relu.defvjp(lambda x: (twice_relu(x), x), lambda x, ct: (2.0 * ct * (x > 0),))

  def f(p, x, act=None):  # act=None: the original function
    relu = (lambda x, i: jax.nn.relu(x)) if act is None else act
    h = lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, relu(c[1] @ p, 0)), (0, x))[1]
    h = jax.checkpoint(lambda h: relu(h - 0.2, 1))(h)
    return twice_relu(h) if act is None else 2.0 * act(h, 2)

  p = jax.random.normal(jax.random.PRNGKey(0), (4, 4)) / 2 + jnp.eye(4)
  x = jax.random.normal(jax.random.PRNGKey(1), (B, 4))
  assert [s.context for s in find_sites(f, p, x)] == [("while",), ("remat2",),
                                                      ("custom_vjp_call",)]
  g = clip_activations(f, "threshold", "neuron")
  t = g.init_thresholds(p, x, profile=g.profile(p, [x]))
  t = jax.tree_util.tree_map(lambda a: 0.5 * a, t)
  chex.assert_trees_all_close(g(p, t, x), f(p, x, hand_clipped("threshold", t)), rtol=1e-6)
  # Reverse mode cannot cross a while loop (as for the original); forward mode can.
  ones = jax.tree_util.tree_map(jnp.ones_like, t)
  _, tangent = jax.jvp(lambda t: g(p, t, x), (t,), (ones,))
  _, expected = jax.jvp(lambda t: f(p, x, hand_clipped("threshold", t)), (t,), (ones,))
  chex.assert_trees_all_close(tangent, expected, rtol=1e-6)
  assert jnp.any(tangent != 0)


def test_batch_axis_not_leading():
  """x batched on axis 1; activations (features, batch): neuron-wise lam is (features,)."""
  w = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  f = lambda w, x: w.T @ jax.nn.relu(w @ x)  # noqa: E731
  x = jax.random.normal(jax.random.PRNGKey(1), (5, B))
  g = clip_activations(f, "threshold", "neuron", batch_axis=1)
  t = {"relu_0": jnp.linspace(0.1, 1.0, 6)}
  assert g.init_thresholds(w, x)["relu_0"].shape == (6,) and g.batch_axes == {"relu_0": 1}
  np.testing.assert_allclose(g(w, t, x), w.T @ jnp.clip(w @ x, 0, t["relu_0"][:, None]),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="out of range"):
    clip_activations(f, batch_axis=2).analyse(w, x)
