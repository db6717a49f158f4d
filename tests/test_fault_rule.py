"""Issue 14: the toolbox fault rule (exactly floor(n x bits x BER) flips per leaf) in campaigns,
and the paired sequential stopping rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proact_jax as pj
from proact_jax.core.evaluate import make_eval_set
from proact_jax.faults import campaign, stats
from proact_jax.faults import injection as faults
from proact_jax.faults.trial import corrupt, make_plan

BERS = [1e-4, 1e-3]


def _setup():
  base = pj.create_model("small_cnn", 10)
  v = base.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (24, 8, 8, 1)))
  y = np.argmax(np.asarray(base.apply(v, x)), -1).astype(np.int32)
  clipped = pj.create_model("small_cnn", 10, "zero", "layer")
  thr = {f"act{i}": {"lam": jnp.float32(2.0 + i)} for i in range(3)}
  return ({"relu": (base, dict(v)), "ranger": (clipped, {**v, "thresholds": thr})},
          make_eval_set(x, y, batch_size=16))


VARIANTS, DATA = _setup()


def test_floor_counts_per_leaf_by_hand():
  v = VARIANTS["ranger"][1]
  leaves = faults.fault_leaves(v)
  sizes = {p: int(np.size(x)) for p, x in zip(leaves, [
      np.asarray(x) for x in [_get(v, p) for p in leaves]])}
  counts = dict(zip(leaves, faults.floor_counts(v, 1e-3)))
  for p in leaves:
    assert counts[p] == math.floor(sizes[p] * 32 * 1e-3), p
  assert all(counts[p] == 0 for p in leaves if p.startswith("thresholds/"))  # scalars: 32e-3
  assert counts["params/Conv_0/bias"] == 0                                # 16 x 32 x 1e-3 < 1
  assert counts["params/Dense_0/kernel"] > 0


def _get(v, path):
  for k in path.split("/"):
    v = v[k]
  return v


def test_campaign_toolbox_floor_flips_exactly_the_floor_and_pairs_the_weights():
  r = campaign.run_campaign(jax.random.PRNGKey(3), VARIANTS, DATA, BERS, 4, progress=False,
                            fault_rule="toolbox-floor")
  assert r.config["fault_rule"] == "toolbox-floor"
  for b, ber in enumerate(BERS):
    want = sum(faults.floor_counts(VARIANTS["relu"][1], ber, space=faults.FaultSpace(
        collections=("params",))))
    for name in VARIANTS:
      t = r.trials[name][b]
      assert np.all(t["n_flips_weights"] == want)            # no variance in the count
      assert np.all(t["n_flips_thresholds"] == 0)            # scalar thresholds never hit
  with pytest.raises(ValueError, match="unknown fault rule"):
    campaign.run_campaign(jax.random.PRNGKey(3), VARIANTS, DATA, BERS, 2, progress=False,
                          fault_rule="poisson")


def test_campaign_corruption_equals_toolbox_floor_flips():
  """The traced per-BER path equals the host function (same leaves, same keys)."""
  _, v = VARIANTS["relu"]
  space = faults.FaultSpace()
  plan = make_plan(v, "q15.16", space, max(BERS), rule="toolbox-floor", bers=tuple(BERS))
  clean, aux = faults.quantize_with_aux(v, "q15.16", space)
  key = jax.random.PRNGKey(5)
  run = jax.jit(lambda c, b: corrupt(key, c, b, plan, prequantized=True, aux=aux))
  # the host function, compiled per BER (its counts are host ints): eagerly, its per-leaf ops
  # took 28 s against 9 s (one process, same run)
  ref_fn = jax.jit(faults.toolbox_floor_flips, static_argnums=2, static_argnames="space")
  for ber in BERS:  # one compilation: the BER is traced
    got, nw, _ = run(clean, jnp.float32(ber))
    ref, n = ref_fn(jax.random.fold_in(key, 0), v, ber, space=plan.weights)
    assert int(nw) == int(n)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pairwise_stopping_rule():
  rng = np.random.default_rng(0)
  a = rng.normal(0.5, 0.1, 40)
  far = a + 0.3 + rng.normal(0, 0.01, 40)       # clearly different: decided
  near = a + rng.normal(0, 0.2, 40)             # undecided and wide: keep sampling
  assert stats.pairwise_should_stop([a, far], 0.001, min_trials=30)
  assert not stats.pairwise_should_stop([a, near], 0.001, min_trials=30)
  assert stats.pairwise_should_stop([a, near], 0.5, min_trials=30)    # narrow enough
  assert not stats.pairwise_should_stop([a, far], 0.001, min_trials=50)
  assert stats.pairwise_should_stop([a, near], 0.001, min_trials=30, max_trials=40)
  r = campaign.run_campaign(jax.random.PRNGKey(3), {**VARIANTS, "ranger2": VARIANTS["ranger"]},
                            DATA, [1e-3], 30, progress=False, ci_target=50.0, min_trials=6,
                            chunk=6, stop_pairwise=True)
  assert len(r.trials["ranger"][0]["trial"]) == 6   # identical variants: half-width 0
  assert "fault_rule" not in r.config  # Bernoulli files keep their configuration
