"""``Network``: the one interface the methods, campaigns and activation statistics need of a model.

Two implementations:

* :class:`FlaxNetwork` wraps a flax.linen module built with this package's
  :class:`~proact_jax.core.activations.Activation` field ``act`` (every built-in model). Its
  ``apply`` is exactly ``module.apply(variables, x, train=False)``, so numbers do not change.
* :class:`FunctionNetwork` wraps any JAX function ``fn(params, x) -> logits`` (a linen model
  calling ``nn.relu`` inline, an NNX or Equinox model, plain JAX) through
  :func:`proact_jax.transform.clip.clip_activations`. :func:`function_network` builds it with
  its variables ``{"params": ...}``: the leaves of ``params`` as a nested dict keyed by their
  pytree path (``"layers"/"0"/"weight"`` for Equinox, ``"conv"/"kernel"`` for NNX, whose
  trailing ``.value`` is dropped), so fault spaces, layer filters and fingerprints work on it as on
  a Flax model. Its sites are ``relu_0, relu_1, ...`` (walk order) and its thresholds the
  collection ``{"relu_i": {"lam": array}}``, the same layout as a Flax model's, so
  :func:`proact_jax.core.thresholds.split` / ``merge`` / ``site_mask`` / ``site_optimizer`` work
  unchanged.

Variables are always ``{collection: ...}`` with the trainable thresholds (if any) in
``"thresholds"``. A network is hashable (a static argument of jitted functions).

``apply(variables, x, hook)`` takes an optional ``hook(site, y) -> y'`` applied to every site's
output, batch on axis 0, in forward order: activation faults
(:mod:`proact_jax.faults.neuron_faults`) and :func:`capture` use it. Flax models intercept the
calls of their ``ClippedAct`` modules; functions go through the site interpreter.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.activations import DEFAULT_LAM, THRESHOLDS, Activation, ClippedAct
from proact_jax.core.profile import profile_max
from proact_jax.transform.clip import ClippedFunction, Hook

__all__ = ["FlaxNetwork", "FunctionNetwork", "Hook", "Network", "as_network", "capture",
           "function_network"]


@runtime_checkable
class Network(Protocol):
  """What a model provides to the methods and fault campaigns.

  Attributes:
    kind, granularity: its activation kind (``relu`` for a baseline) and threshold granularity.
  """
  kind: str
  granularity: str

  def apply(self, variables, x: jax.Array, hook: Hook | None = None) -> jax.Array:
    """Eval-mode logits; ``hook(site, y)`` rewrites each site's output (batch on axis 0)."""

  def with_kind(self, kind: str, granularity: str) -> "Network":
    """The same network with its ReLUs as ``kind`` activations at ``granularity``."""

  def site_order(self, variables, input_shape: Sequence[int]) -> list[str]:
    """Site names in forward order (``input_shape``: one example, no batch axis)."""

  def init_thresholds(self, variables, input_shape: Sequence[int]) -> dict:
    """A thresholds collection ``{site...: {"lam": array}}`` of the right shapes."""

  def profile(self, variables, batches: Iterable) -> dict:
    """``{site: per-neuron maximum of the site's output over the batches}``."""


def _abstract(tree):
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                                tree)


# -- Flax modules with an `act` field -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FlaxNetwork:
  """A linen module whose activation sites are :class:`ClippedAct` (built by ``module.act``)."""
  module: nn.Module

  def __post_init__(self):
    if not isinstance(getattr(self.module, "act", None), Activation):
      raise ValueError(f"model {type(self.module).__name__} has no thresholds support: build its "
                       "activations with a proact_jax.Activation field named 'act', or wrap a "
                       "function with proact_jax.function_network")

  @property
  def kind(self) -> str:
    return self.module.act.kind

  @property
  def granularity(self) -> str:
    return self.module.act.granularity

  def apply(self, variables, x, hook: Hook | None = None):
    if hook is None:
      return self.module.apply(variables, x, train=False)

    def intercept(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if isinstance(context.module, ClippedAct) and context.method_name == "__call__":
        return hook("/".join(context.module.scope.path), y)
      return y

    with nn.intercept_methods(intercept):
      return self.module.apply(variables, x, train=False)

  def with_kind(self, kind: str, granularity: str) -> "FlaxNetwork":
    act = self.module.act
    return FlaxNetwork(self.module.clone(act=Activation(kind=kind, granularity=granularity,
                                                        k=act.k)))

  def site_order(self, variables, input_shape) -> list[str]:
    del variables
    return thr_lib.site_order(self.module, tuple(input_shape))

  def init_thresholds(self, variables, input_shape) -> dict:
    del variables
    template = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0),
                                                       jnp.zeros((1, *input_shape))))
    if THRESHOLDS not in template:
      raise ValueError("the clipped model has no thresholds")
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), template[THRESHOLDS])

  def profile(self, variables, batches) -> dict:
    return profile_max(self.module, variables, batches)


# -- any JAX function ---------------------------------------------------------------------------

def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _paths(params) -> tuple[tuple[str, ...], ...]:
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  out = []
  for path, _ in flat:
    names = [_key_name(k) for k in path]
    if len(names) > 1 and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
      names = names[:-1]  # flax.nnx Variable: `.value`
    out.append(tuple(names) or ("value",))
  if len(set(out)) != len(out):
    raise ValueError("two leaves of the parameters have the same path name; use string keys")
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class FunctionNetwork:
  """``fn(params, x) -> logits`` with its ReLUs as clipped activations (see module docstring).

  Build it with :func:`function_network`. Attributes: ``fn``; ``treedef`` and ``paths`` of the
  original ``params`` pytree; ``kind``, ``granularity``, ``k`` as in ``clip_activations``;
  ``batch_axis`` of ``x``.
  """
  fn: Callable
  treedef: Any
  paths: tuple
  kind: str = "relu"
  granularity: str = "layer"
  k: float = 20.0
  batch_axis: int = 0

  @functools.cached_property
  def _clipped(self) -> ClippedFunction:
    return ClippedFunction(self.fn, self.kind, self.granularity, self.k, self.batch_axis)

  def params(self, variables):
    """The original ``params`` pytree from ``variables["params"]``."""
    tree = variables["params"]
    leaves = []
    for path in self.paths:
      node = tree
      for name in path:
        node = node[name]
      leaves.append(node)
    return jax.tree_util.tree_unflatten(self.treedef, leaves)

  def _ready(self, params, x) -> ClippedFunction:
    cf = self._clipped
    if cf._sites is None:  # site batch axes do not depend on the batch size: analyse once
      cf.analyse(_abstract(params), _abstract(x))
    return cf

  def _example(self, input_shape):
    shape = list(input_shape)
    shape.insert(self.batch_axis % (len(shape) + 1), 1)
    return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)

  def apply(self, variables, x, hook: Hook | None = None):
    params = self.params(variables)
    if self.kind == "relu" and hook is None:
      return self.fn(params, x)
    cf = self._ready(params, x)
    thr = variables.get(THRESHOLDS)
    lam = None if thr is None else {s: v["lam"] for s, v in thr.items()}
    return cf(params, lam, x, hook=hook)

  def with_kind(self, kind: str, granularity: str) -> "FunctionNetwork":
    return dataclasses.replace(self, kind=kind, granularity=granularity)

  def site_order(self, variables, input_shape) -> list[str]:
    return list(self._ready(self.params(variables), self._example(input_shape)).sites)

  def init_thresholds(self, variables, input_shape) -> dict:
    params = self.params(variables)
    lam = self._clipped.init_thresholds(_abstract(params), self._example(input_shape),
                                        value=DEFAULT_LAM)
    return {s: {"lam": v} for s, v in lam.items()}

  def profile(self, variables, batches) -> dict:
    relu = ClippedFunction(self.fn, "relu", "layer", self.k, self.batch_axis)
    return dict(relu.profile(self.params(variables), batches)["neuron"])

  def __repr__(self):
    return (f"FunctionNetwork({getattr(self.fn, '__qualname__', self.fn)!r}, kind={self.kind!r}, "
            f"granularity={self.granularity!r}, k={self.k})")


def function_network(fn: Callable, params, *, batch_axis: int = 0,
                     k: float = 20.0) -> tuple[FunctionNetwork, dict]:
  """``(network, variables)`` for any JAX model ``fn(params, x) -> logits``.

  Args:
    fn: the model, e.g. ``lambda p, x: model.apply({"params": p}, x)`` (linen),
      ``lambda s, x: nnx.merge(graphdef, s)(x)`` (NNX), ``lambda p, x:
      jax.vmap(eqx.combine(p, static))(x)`` (Equinox), or a plain function. Its ReLUs are
      ``jax.nn.relu`` calls or ``jnp.maximum(x, 0)``.
    params: its parameters (any pytree of arrays).
    batch_axis: the batch axis of ``x``.
    k: steepness of the smooth clip.

  Returns:
    The baseline (``kind="relu"``) network and ``{"params": nested dict of the leaves}``; hand
    both to ``methods.ranger`` / ``proact`` / ..., ``campaign.run_campaign``.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  paths = _paths(params)
  nested: dict = {}
  for path, leaf in zip(paths, leaves):
    node = nested
    for name in path[:-1]:
      node = node.setdefault(name, {})
      if not isinstance(node, dict):
        raise ValueError(f"parameter path {'/'.join(path)} clashes with a leaf")
    node[path[-1]] = jnp.asarray(leaf)
  return FunctionNetwork(fn, treedef, paths, batch_axis=batch_axis, k=float(k)), {"params": nested}


def as_network(model) -> Network:
  """``model`` as a :class:`Network`: a network passes through, a linen module is wrapped."""
  if isinstance(model, nn.Module):
    return FlaxNetwork(model)
  if isinstance(model, Network):
    return model
  raise ValueError(f"{type(model).__name__} is neither a Flax module with an `act` field nor a "
                   "Network; wrap a function with proact_jax.function_network(fn, params)")


def capture(model, variables, x) -> dict[str, jax.Array]:
  """Every site's output (batch on axis 0), ``{site: activation}`` in forward order.

  Traceable (the values are those of the trace ``capture`` is called in); a site evaluated
  twice keeps its first output.
  """
  out: dict = {}

  def hook(name, y):
    out.setdefault(name, y)
    return y

  as_network(model).apply(variables, x, hook=hook)
  return out
