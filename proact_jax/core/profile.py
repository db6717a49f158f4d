"""Profiling: the maximum activation seen at every site over a data iterator.

Per neuron means per element of one example's activation (C x H x W for a conv map): the max is
over the batch axis only. (The authors' toolbox reduces over channels too in neuron mode; we do
not.) Per layer is the max of that. Memory is one running maximum per site, whatever the number
of batches.
"""

from __future__ import annotations

from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from proact_jax.core.activations import ACT_STATS


def make_profile_step(model: nn.Module):
  """A jitted ``step(variables, running, x) -> running`` folding one batch into the running max."""

  @jax.jit
  def step(variables, running, x):
    variables = {k: v for k, v in variables.items() if k != ACT_STATS}
    _, state = model.apply(variables, x, train=False, mutable=[ACT_STATS])
    batch_max = state[ACT_STATS]
    if running is None:
      return batch_max
    return jax.tree_util.tree_map(jnp.maximum, running, batch_max)

  return step


def profile_max(model: nn.Module, variables, batches: Iterable) -> dict:
  """Per-neuron maxima ``{site: array(per-example shape)}`` over all batches, in forward order.

  ``batches`` yields image arrays (NHWC) or ``(images, labels)`` pairs.
  """
  step = make_profile_step(model)
  running = None
  for batch in batches:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    running = step(variables, running, jnp.asarray(x))
  if running is None:
    raise ValueError("profiling needs at least one batch")
  flat = traverse_util.flatten_dict(jax.device_get(running))
  return {"/".join(k[:-1]): jnp.asarray(v) for k, v in flat.items()}


def layer_max(neuron_max: dict) -> dict:
  """Per-layer maxima (scalars) from per-neuron maxima."""
  return {site: jnp.max(v) for site, v in neuron_max.items()}


def thresholds_from_profile(thresholds_tree, neuron_max: dict) -> dict:
  """A threshold tree shaped like ``thresholds_tree`` filled from the profile.

  Scalar (layer-wise) sites get the layer max, neuron-wise sites the per-neuron max. Sites never
  activated (max <= 0) keep 0 as threshold.
  """
  from proact_jax.core.thresholds import _site_leaves, set_site  # local: thresholds is a sibling
  tree = thresholds_tree
  for site, lam in _site_leaves(thresholds_tree).items():
    if site not in neuron_max:
      raise ValueError(f"site {site!r} was not profiled")
    m = jnp.maximum(neuron_max[site], 0.0)
    tree = set_site(tree, site, jnp.max(m) if jnp.ndim(lam) == 0 else m)
  return tree
