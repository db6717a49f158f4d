"""Convolution and max pooling with the same outputs as ``lax``/``flax`` but without the slow
XLA:CPU code paths (measured in docs/benchmarks.md, "Training step").

On XLA:CPU (jaxlib 0.10) three operations of a CIFAR network are pathologically slow:

* the weight gradient of a 3x3 convolution on a small feature map (AlexNet's second
  convolution, 8x8 input with padding 2: 300 ms per batch of 128, 40x its forward pass);
* the forward pass of a 3x3 convolution whose output is 2x2 or smaller (VGG-16's last block:
  ~520 ms instead of ~11 ms as patches + matmul);
* the gradient of ``nn.max_pool`` (``select_and_scatter``: 20x its forward pass).

``conv_general_dilated`` keeps XLA's forward convolution (bit for bit the same outputs) except
for outputs of at most ``SMALL_OUTPUT`` pixels, where it multiplies the image patches by the
reshaped kernel (equal to 1e-6 relative). Its weight gradient is always the patches-times-output
matmul, which is the same sum in another order. ``max_pool_2x2`` reshapes instead of using
``reduce_window``: the same forward values; on ties the gradient is split equally among the tied
inputs instead of going to the first one (ties that matter are rare: after a ReLU a tie is almost
always at 0, where the ReLU's own gradient is 0 anyway).

Both are drop-in: ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

SMALL_OUTPUT = 4  # output pixels (H x W) at or below which the forward pass uses patches
_NHWC = ("NHWC", "HWIO", "NHWC")


def _patches(x, kernel_hw, strides, padding):
  """Image patches, channel-major per pixel: (B, H', W', C * kh * kw)."""
  return lax.conv_general_dilated_patches(x, kernel_hw, strides, padding,
                                          dimension_numbers=_NHWC)


def _kernel_matrix(w):
  """HWIO kernel as a (C_in * kh * kw, C_out) matrix matching ``_patches``' channel-major order."""
  kh, kw, ci, co = w.shape
  return jnp.transpose(w, (2, 0, 1, 3)).reshape(ci * kh * kw, co)


def _conv_lax(x, w, strides, padding, precision):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_patches(x, w, strides, padding, precision):
  p = _patches(x, w.shape[:2], strides, padding)
  return jnp.dot(p, _kernel_matrix(w), precision=precision)


def _forward(x, w, strides, padding, precision):
  out_hw = _output_hw(x.shape[1:3], w.shape[:2], strides, padding)
  if out_hw[0] * out_hw[1] <= SMALL_OUTPUT:
    return _conv_patches(x, w, strides, padding, precision)
  return _conv_lax(x, w, strides, padding, precision)


def _output_hw(in_hw, k_hw, strides, padding):
  return tuple((n + lo + hi - k) // s + 1
               for n, k, s, (lo, hi) in zip(in_hw, k_hw, strides, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
  return _forward(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
  return _forward(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, res, g):
  x, w = res
  # Input gradient: XLA's own transpose of the forward actually used.
  _, vjp_x = jax.vjp(lambda x_: _forward(x_, w, strides, padding, precision), x)
  (dx,) = vjp_x(g)
  # Weight gradient: patches^T @ output-gradient, one matmul (XLA's backprop-filter convolution
  # is the pathological case).
  kh, kw, ci, co = w.shape
  p = _patches(x, (kh, kw), strides, padding).reshape(-1, ci * kh * kw)
  dw = jnp.dot(p.T, g.reshape(-1, co), precision=precision)
  dw = dw.reshape(ci, kh, kw, co).transpose(1, 2, 0, 3)
  return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` with fast CPU paths for plain 2-D NHWC convolutions.

  Anything else (dilation, groups, other layouts, string padding) falls through to ``lax``.
  """
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and _is_nhwc(dimension_numbers)
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None and not isinstance(padding, str)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.max_pool(x, (2, 2), strides=(2, 2))`` (VALID) on NHWC, as a reshape and a max.

  Same forward values; a cheap gradient (see the module docstring for ties).
  """
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2, :].reshape(b, h2, 2, w2, 2, c)
  return jnp.max(x, axis=(2, 4))


# ``nn.Conv`` with the fast paths: same parameters, names ("Conv_0", ...) and forward outputs.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
