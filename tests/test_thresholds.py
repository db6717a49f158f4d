import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proact_jax as pj


def _variables(kind="smooth", granularity="hybrid"):
  model = pj.create_model("small_cnn", 10, kind, granularity)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  return model, v


def test_split_merge_roundtrip():
  _, v = _variables()
  frozen, thr = pj.split(v)
  assert pj.THRESHOLDS not in frozen and set(thr) == {"act0", "act1", "act2"}
  merged = pj.merge(frozen, thr)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(dict(v))


def test_masked_step_changes_only_chosen_site():
  model, v = _variables()
  frozen, thr = pj.split(v)
  thr = jax.tree_util.tree_map(lambda a: a * 0 + 0.5, thr)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1))

  def loss(t):
    return jnp.sum(model.apply(pj.merge(frozen, t), x) ** 2)

  for site in ["act0", "act1", "act2"]:
    tx = pj.site_optimizer(optax.adam(0.1), thr, site)
    state = tx.init(thr)
    g = jax.grad(loss)(thr)
    assert all(float(jnp.abs(gl).sum()) > 0 for gl in jax.tree_util.tree_leaves(g))
    updates, _ = tx.update(g, state, thr)
    new = optax.apply_updates(thr, updates)
    for s in ["act0", "act1", "act2"]:
      same = np.array_equal(np.asarray(pj.get_site(new, s)), np.asarray(pj.get_site(thr, s)))
      assert same == (s != site), (site, s)


def test_set_site_and_errors():
  _, v = _variables()
  thr = v[pj.THRESHOLDS]
  new = pj.set_site(thr, "act0", 2.0)
  assert float(pj.get_site(new, "act0")) == 2.0
  with pytest.raises(ValueError, match="does not match site 'act2'"):
    pj.set_site(thr, "act2", jnp.ones((3,)))
  with pytest.raises(ValueError, match="no activation site named 'act9'"):
    pj.site_mask(thr, "act9")
  with pytest.raises(ValueError, match="no activation site"):
    pj.get_site(thr, "nope")


def test_site_order_needs_sites():
  import flax.linen as nn

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(nn.relu(nn.Dense(4)(x)))

  with pytest.raises(ValueError, match="no activation sites"):
    pj.site_order(Plain(), (5,))
