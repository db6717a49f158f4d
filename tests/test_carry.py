"""Carried trial loop (proact_jax.carry): every trial's tree and numbers equal the copying path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax.faults import campaign, carry
from proact_jax.faults import injection as faults

from test_campaign import KEY, VARIANTS


def _trees(name, ber, cap=None, trials=12):
  """Per trial: the carried tree's leaves and ok, and corrupt()'s leaves."""
  model, v = VARIANTS[name]
  plan = campaign.make_plan(v, "q15.16", None, 1e-3)
  if cap is not None:
    plan = dataclasses.replace(plan, cap_weights=cap)
  clean = faults.quantize_with_aux(v)
  idx = jnp.arange(trials, dtype=jnp.int32)

  def f(clean, idx):
    tree, aux = clean
    flat = faults._flat(tree)
    bkey = jax.random.fold_in(KEY, 1)
    parts = [(i, sub, cap) + carry.space_leaves(flat, aux, sub, plan.fmt)
             for i, (sub, cap) in enumerate(((plan.weights, plan.cap_weights),
                                             (plan.thresholds, plan.cap_thresholds))) if sub]

    def updates(t):
      tkey = jax.random.fold_in(bkey, t)
      out, ok = [], jnp.bool_(True)
      for i, sub, c, _, xs, auxes in parts:
        u, o, _ = carry.plain_updates(jax.random.fold_in(tkey, i), xs, auxes, ber, fmt=plan.fmt,
                                      lo=0, hi=32, cap=c)
        out, ok = out + u, ok & o
      return out, ok

    def leaves(variables, t, ok):
      return jax.tree_util.tree_leaves(variables), ok

    paths = [p for part in parts for p in part[3]]
    xs = [x for part in parts for x in part[4]]
    got = carry.carried_scan(flat, paths, xs, updates, leaves, idx)
    want = jax.lax.map(lambda t: jax.tree_util.tree_leaves(campaign.corrupt(
        jax.random.fold_in(bkey, t), tree, ber, plan, prequantized=True, aux=aux)[0]), idx)
    return got, want

  (got, ok), want = jax.jit(f)(clean, idx)
  return [np.asarray(g) for g in got], np.asarray(ok), [np.asarray(w) for w in want]


@pytest.mark.parametrize("name,cap", [("ranger", None), ("relu", 100)])
def test_carried_trees_equal_fresh_copies(name, cap):
  got, ok, want = _trees(name, 1e-4, cap)
  if cap is None:
    assert ok.all()
  else:  # a cap below the flip count: some trials fall short and must be rerun
    assert 0 < ok.sum() < ok.size
  for g, w in zip(got, want):
    assert g.shape == w.shape
    same = (g.view(np.uint32) == w.view(np.uint32)).reshape(len(ok), -1).all(-1)
    np.testing.assert_array_equal(same | ~ok, True)  # every ok trial bit for bit
  # faults do something: consecutive trials see different trees
  assert any((g[1:] != g[:-1]).any() for g in got)

# The campaign's own trials: test_campaign compares its map mode (carried) with vmap (copies).
