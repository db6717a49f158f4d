"""The fast CPU convolution and pooling paths equal lax / flax's (forward bit for bit where
promised, gradients to float32 rounding)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax.models import fast_ops

_DN = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


@pytest.mark.parametrize("hw,cin,cout,strides,pad", [
    (8, 5, 7, (1, 1), 2),    # AlexNet's second convolution (pathological weight gradient)
    (9, 3, 4, (2, 2), 1),    # strided, odd size
    (2, 6, 5, (1, 1), 1),    # 2x2 output: the patches forward path
    (1, 4, 3, (1, 1), 1),    # 1x1 output
])
def test_conv_forward_and_gradients_match_lax(hw, cin, cout, strides, pad):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, hw, hw, cin))
  w = jax.random.normal(kw, (3, 3, cin, cout))
  padding = ((pad, pad), (pad, pad))
  ref = _lax_conv(x, w, strides, padding)
  out = fast_ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)
  small = ref.shape[1] * ref.shape[2] <= fast_ops.SMALL_OUTPUT
  if small:
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  else:
    np.testing.assert_array_equal(out, ref)   # XLA's own convolution: identical
  g = jax.random.normal(kg, ref.shape)
  _, vjp_ref = jax.vjp(lambda a, b: _lax_conv(a, b, strides, padding), x, w)
  _, vjp_new = jax.vjp(
      lambda a, b: fast_ops.conv_general_dilated(a, b, strides, padding, dimension_numbers=_DN),
      x, w)
  for a, b in zip(vjp_new(g), vjp_ref(g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_falls_back_to_lax_for_unsupported_arguments():
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))
  out = fast_ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN,
                                      feature_group_count=2)
  ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN,
                                     feature_group_count=2)
  np.testing.assert_array_equal(out, ref)


def test_conv_module_keeps_flax_names_and_outputs():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  ref_m, new_m = nn.Conv(4, (3, 3), padding=2), fast_ops.Conv(4, (3, 3), padding=2)
  v = ref_m.init(jax.random.PRNGKey(2), x)
  assert jax.tree_util.tree_structure(new_m.init(jax.random.PRNGKey(2), x)) == \
      jax.tree_util.tree_structure(v)
  np.testing.assert_array_equal(new_m.apply(v, x), ref_m.apply(v, x))


@pytest.mark.parametrize("hw", [4, 5, 8])
def test_max_pool_matches_flax_values_and_gradient_without_ties(hw):
  x = jax.random.normal(jax.random.PRNGKey(3), (2, hw, hw, 3))   # continuous: no ties
  ref = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(fast_ops.max_pool_2x2(x), ref(x))
  g_new = jax.grad(lambda a: jnp.sum(jnp.sin(fast_ops.max_pool_2x2(a))))(x)
  g_ref = jax.grad(lambda a: jnp.sum(jnp.sin(ref(a))))(x)
  np.testing.assert_allclose(g_new, g_ref, rtol=1e-6, atol=1e-7)


def test_max_pool_splits_the_gradient_among_ties():
  x = jnp.zeros((1, 2, 2, 1))
  g = jax.grad(lambda a: fast_ops.max_pool_2x2(a).sum())(x)
  np.testing.assert_allclose(g, jnp.full_like(x, 0.25))
