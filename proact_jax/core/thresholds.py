"""The threshold tree: split from / merge into the model variables, sites, per-site optimiser masks.

Model variables are a plain dict ``{"params", "batch_stats"?, "thresholds"?}``. The thresholds
collection maps each activation site (a path of module names) to ``{"lam": array}``; sites are
listed in forward order (the order Flax created them in).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from proact_jax.core.activations import THRESHOLDS, ClippedAct

Variables = Mapping[str, Any]


def split(variables: Variables) -> tuple[dict, dict]:
  """Splits variables into ``(frozen, thresholds)``: everything else, and the threshold tree."""
  variables = dict(variables)
  thresholds = variables.pop(THRESHOLDS, {})
  return variables, dict(thresholds)


def merge(frozen: Variables, thresholds: Mapping) -> dict:
  """Inverse of :func:`split`."""
  out = dict(frozen)
  if thresholds:
    out[THRESHOLDS] = thresholds
  return out


def site_names(tree: Mapping) -> list[str]:
  """Site names ("a/b/act0") of a thresholds tree or an ``act_stats`` tree (tree order, which
  Flax sorts by name: use :func:`site_order` for the forward order)."""
  flat = traverse_util.flatten_dict(_unfreeze(tree))
  return list(dict.fromkeys("/".join(path[:-1]) for path in flat))


def site_order(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
  """All activation sites of ``model`` (relu ones included) in forward order.

  Found by intercepting the calls of :class:`ClippedAct` while tracing one forward pass on an
  abstract input of shape ``input_shape`` (one example, no batch axis); nothing is computed.
  """
  order: list[str] = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, ClippedAct) and context.method_name == "__call__":
      order.append("/".join(context.module.scope.path))
    return next_fun(*args, **kwargs)

  def forward():
    x = jnp.zeros((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
      return model.init_with_output(jax.random.PRNGKey(0), x)

  jax.eval_shape(forward)
  out = list(dict.fromkeys(order))
  if not out:
    raise ValueError(f"model {type(model).__name__} has no activation sites: build it with "
                     "proact_jax.Activation (ClippedAct) at its activations")
  return out


def get_site(tree: Mapping, site: str) -> jax.Array:
  """The ``lam`` array (or the stored leaf) of one site."""
  flat = _site_leaves(tree)
  if site not in flat:
    raise ValueError(f"no activation site named {site!r}; sites are {', '.join(flat)}")
  return flat[site]


def set_site(tree: Mapping, site: str, value) -> dict:
  """A copy of the tree with one site's threshold replaced (shape must match)."""
  flat = traverse_util.flatten_dict(_unfreeze(tree))
  keys = [k for k in flat if "/".join(k[:-1]) == site]
  if not keys:
    raise ValueError(f"no activation site named {site!r}; sites are {', '.join(site_names(tree))}")
  old = flat[keys[0]]
  value = jnp.asarray(value, jnp.float32)
  if value.shape != jnp.shape(old):
    raise ValueError(f"threshold shape {value.shape} does not match site {site!r}: expected "
                     f"{jnp.shape(old)}")
  flat[keys[0]] = value
  return traverse_util.unflatten_dict(flat)


def site_mask(tree: Mapping, site: str) -> dict:
  """A pytree of bools like ``tree``, True only at the leaves of ``site``."""
  names = site_names(tree)
  if site not in names:
    raise ValueError(f"no activation site named {site!r}; sites are {', '.join(names)}")
  flat = traverse_util.flatten_dict(_unfreeze(tree))
  return traverse_util.unflatten_dict({k: "/".join(k[:-1]) == site for k in flat})


def site_optimizer(tx: optax.GradientTransformation, tree: Mapping,
                   site: str) -> optax.GradientTransformation:
  """``tx`` on one site's thresholds; zero updates everywhere else (bit-identical after apply).

  ``optax.masked`` alone would pass the raw gradients of masked-out leaves through, so the
  other leaves are routed to ``optax.set_to_zero`` with ``optax.multi_transform``.
  """
  mask = site_mask(tree, site)
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def count(tree) -> int:
  """Number of scalar values in a pytree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def memory_overhead(variables: Variables) -> float:
  """Eq. 6 of the paper: number of threshold values / number of model parameters."""
  frozen, thresholds = split(variables)
  n_params = count(frozen.get("params", {}))
  if n_params == 0:
    raise ValueError("variables have no 'params' collection")
  return count(thresholds) / n_params


def _site_leaves(tree) -> dict:
  flat = traverse_util.flatten_dict(_unfreeze(tree))
  return {"/".join(k[:-1]): v for k, v in flat.items()}


def _unfreeze(tree):
  from flax.core import unfreeze
  return unfreeze(tree) if hasattr(tree, "unfreeze") else dict(tree)
