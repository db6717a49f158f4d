"""``clip_activations``: the ReLUs of any JAX function become clipped activations (issue 13).

ProAct (Mousavi et al., arXiv 2406.06313), Ranger, FT-ClipAct and FitAct restrict a trained
network's activations by replacing each ReLU with a clipped one of threshold ``lam``. This module
does it for a model written with anything (flax.linen, flax.nnx, Equinox, plain JAX)::

    g = clip_activations(lambda p, x: model.apply(p, x), kind="smooth", granularity="hybrid")
    prof = g.profile(params, batches)                    # per-site maxima of the ReLU outputs
    thresholds = g.init_thresholds(params, x, profile=prof)
    logits = jax.jit(g)(params, thresholds, x)
    grads = jax.grad(lambda t: loss(g(params, t, x)))(thresholds)

Sites are found by :mod:`proact_jax.interpret` and named ``relu_0, relu_1, ...`` in walk order
(program order, depth first into jit / scan / cond / while / remat / custom_jvp bodies). The
thresholds are ``{site: array}``: a scalar per site (``layer``), one value per element of one
example's activation (``neuron``), or neuron-wise at the last site and scalars elsewhere
(``hybrid``, the paper's choice). A site inside a ``scan``/``while`` body has one threshold shared
by all iterations.

**Batch axis.** A neuron-wise threshold has the site's shape without its batch axis. That axis is
found by tracing ``fn`` at batch sizes B and B+1 of ``x`` (axis ``batch_axis`` of ``x``; other
arguments are held fixed): it is the one axis whose size goes from B to B+1. A site with no such
axis (its size does not depend on the batch), or with several, or whose batch is merged with
another axis (size B*H -> (B+1)*H), cannot be neuron-wise: :class:`ValueError`. Layer-wise sites
need no batch axis.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

from proact_jax.core.activations import DEFAULT_LAM, activation_fn, check_kind_granularity, smooth_clip
from proact_jax.transform.interpreter import Site, trace_sites

Hook = Callable[[str, jax.Array], jax.Array]
"""``hook(site, y) -> y'``: applied to a site's output ``y`` (batch on axis 0)."""


def _batch_axis(site: Site, other: Site, b: int) -> tuple[int | None, str]:
  """The axis of ``site`` (traced at batch b) that becomes b+1 in ``other``, or (None, why)."""
  if len(site.shape) != len(other.shape):
    return None, f"its rank changes with the batch size ({site.shape} vs {other.shape})"
  changed = [i for i, (m, n) in enumerate(zip(site.shape, other.shape)) if m != n]
  if not changed:
    return None, f"its shape {site.shape} does not depend on the batch size"
  if len(changed) > 1:
    return None, f"several axes {changed} of its shape {site.shape} change with the batch size"
  i = changed[0]
  if (site.shape[i], other.shape[i]) != (b, b + 1):
    return None, (f"its axis {i} grows from {site.shape[i]} to {other.shape[i]} when the batch "
                  f"grows from {b} to {b + 1} (batch merged with other axes)")
  return i, ""


class ClippedFunction:
  """``g(params, thresholds, x, *args)``: ``fn`` with its ReLUs clipped. See the module docstring.

  Attributes:
    fn: the wrapped function ``fn(params, x, *args)``.
    kind, granularity, k, batch_axis: as given to :func:`clip_activations`.
  """

  def __init__(self, fn: Callable, kind: str = "smooth", granularity: str = "hybrid",
               k: float = 20.0, batch_axis: int = 0):
    check_kind_granularity(kind, granularity)
    if not callable(fn):
      raise ValueError(f"fn must be a function fn(params, x, *args), got {type(fn).__name__}")
    if not (math.isfinite(float(k)) and float(k) > 0):
      raise ValueError(f"k (the smooth clip's steepness) must be a finite number > 0, got {k}")
    self.fn, self.kind, self.granularity, self.k = fn, kind, granularity, float(k)
    self.batch_axis = batch_axis
    self._sites: list[Site] | None = None
    self._axes: dict[str, int | None] = {}
    self._why: dict[str, str] = {}

  # -- analysis ---------------------------------------------------------------------------------

  def analyse(self, params, x, *args) -> list[Site]:
    """Finds the sites at ``x`` (any batch size >= 1) and their batch axes; caches both.

    Returns:
      The sites in walk order (shapes include the batch axis, at ``x``).

    Raises:
      ValueError: no ReLU, or a site structure that changes with the batch size.
    """
    x = jnp.asarray(x) if not hasattr(x, "shape") else x
    if not -len(x.shape) <= self.batch_axis < len(x.shape):
      raise ValueError(f"batch_axis {self.batch_axis} is out of range for x of shape {x.shape}")
    b = x.shape[self.batch_axis]
    shape2 = list(x.shape)
    shape2[self.batch_axis] = b + 1
    sites = trace_sites(self.fn, params, x, *args).sites
    if not sites:
      raise ValueError("the function has no ReLU (jax.nn.relu call or max(x, 0)) to clip")
    others = trace_sites(self.fn, params, jax.ShapeDtypeStruct(tuple(shape2), x.dtype),
                         *args).sites
    if [(s.source, s.context) for s in sites] != [(s.source, s.context) for s in others]:
      raise ValueError(f"the ReLU sites change with the batch size ({len(sites)} at batch {b}, "
                       f"{len(others)} at batch {b + 1})")
    self._sites = sites
    self._axes, self._why = {}, {}
    for s, o in zip(sites, others):
      self._axes[s.name], self._why[s.name] = _batch_axis(s, o, b)
    return sites

  def _need_sites(self) -> list[Site]:
    if self._sites is None:
      raise RuntimeError("call analyse(), init_thresholds() or profile() first")
    return self._sites

  @property
  def sites(self) -> list[str]:
    """Site names in walk order (after :meth:`analyse`)."""
    return [s.name for s in self._need_sites()]

  @property
  def batch_axes(self) -> dict[str, int | None]:
    """Per site, the batch axis of its activation (None if it has none)."""
    self._need_sites()
    return dict(self._axes)

  def neuron_wise(self, index: int, n_sites: int) -> bool:
    """Whether site ``index`` of ``n_sites`` has a per-element threshold."""
    return self.granularity == "neuron" or (self.granularity == "hybrid" and index == n_sites - 1)

  def _axis(self, site: Site) -> int:
    axis = self._axes.get(site.name)
    if axis is None:
      why = self._why.get(site.name, "call analyse() or init_thresholds() first")
      raise ValueError(f"site {site.name!r} (shape {site.shape}) cannot have neuron-wise "
                       f"thresholds: {why}")
    return axis

  @property
  def site_shapes(self) -> dict[str, tuple[int, ...]]:
    """Threshold shape per site for this granularity (after :meth:`analyse`)."""
    sites = self._need_sites()
    out = {}
    for s in sites:
      if self.neuron_wise(s.index, len(sites)):
        axis = self._axis(s)
        out[s.name] = s.shape[:axis] + s.shape[axis + 1:]
      else:
        out[s.name] = ()
    return out

  # -- thresholds -------------------------------------------------------------------------------

  def init_thresholds(self, params, x, *args, value: float = DEFAULT_LAM,
                      profile: Mapping | None = None) -> dict:
    """A thresholds tree ``{site: float32 array}`` for inputs shaped like ``x``.

    Args:
      params, x, args: example arguments of ``fn`` (``x`` with a batch axis).
      value: the fill value without a profile (``DEFAULT_LAM``, or ``jnp.inf`` for "no clip").
      profile: the output of :meth:`profile`; neuron-wise sites get the per-element maxima,
        layer-wise sites the per-site maximum (negative maxima become 0, as in
        :func:`proact_jax.profile.thresholds_from_profile`).
    """
    self.analyse(params, x, *args)
    out = {}
    for name, shape in self.site_shapes.items():
      if profile is None:
        out[name] = jnp.full(shape, value, jnp.float32)
      else:
        m = jnp.maximum(jnp.asarray(profile["neuron"][name], jnp.float32), 0.0)
        out[name] = (jnp.max(m) if shape == () else m).reshape(shape)
    return out

  def profile(self, params, batches: Iterable, *args) -> dict:
    """Maxima of every site's ReLU output over ``batches`` (arrays, or ``(x, y)`` pairs).

    Returns:
      ``{"neuron": {site: max over the batch axis, per element}, "layer": {site: scalar max}}``;
      for a site in a loop body the maximum is over iterations too. A layer-wise site without a
      batch axis gets a scalar "neuron" entry (a neuron-wise one raises ValueError).
    """
    step, running = None, None
    for batch in batches:
      x = batch[0] if isinstance(batch, (tuple, list)) else batch
      if step is None:
        sites = self.analyse(params, x, *args)
        axes = {s.name: self._axis(s) if self.neuron_wise(s.index, len(sites))
                else self._axes[s.name] for s in sites}
        capture = lambda name, y: jnp.max(y, axis=axes[name])  # noqa: E731  (None: all axes)
        step = jax.jit(lambda p, x, *a: trace_sites(self.fn, p, x, *a).evaluate(None, capture)[1])
      batch_max = step(params, x, *args)
      running = batch_max if running is None else jax.tree_util.tree_map(jnp.maximum, running,
                                                                         batch_max)
    if running is None:
      raise ValueError("profiling needs at least one batch")
    neuron = {s: running[s] for s in self.sites}
    return {"neuron": neuron, "layer": {s: jnp.max(v) for s, v in neuron.items()}}

  def _check(self, sites: list[Site], thresholds) -> dict[str, int | None]:
    """Validates the thresholds tree against the traced sites; returns each site's lam axis."""
    if not isinstance(thresholds, Mapping):
      raise ValueError(f"thresholds must be a dict {{site: array}}, got {type(thresholds)}")
    names = [s.name for s in sites]
    missing = [n for n in names if n not in thresholds]
    extra = [n for n in thresholds if n not in names]
    if missing or extra:
      raise ValueError(f"thresholds do not match the function's {len(names)} ReLU sites "
                       f"{names}: missing {missing}, unexpected {extra}")
    axes = {}
    for s in sites:
      lam_shape = tuple(jnp.shape(thresholds[s.name]))
      neuron = self.neuron_wise(s.index, len(sites))
      axes[s.name] = self._call_axis(s, lam_shape) if neuron else None
      expected = s.shape[:axes[s.name]] + s.shape[axes[s.name] + 1:] if neuron else ()
      if lam_shape != expected:
        kind = "neuron" if neuron else "layer"
        raise ValueError(f"threshold of site {s.name!r} has shape {lam_shape}, expected "
                         f"{expected} ({kind}-wise, granularity {self.granularity!r}, activation "
                         f"shape {s.shape})")
    return axes

  def _call_axis(self, site: Site, lam_shape: tuple[int, ...]) -> int:
    if site.name in self._axes:  # analysed
      return self._axis(site)
    fits = [i for i in range(len(site.shape))
            if site.shape[:i] + site.shape[i + 1:] == lam_shape]
    if len(fits) != 1:  # not analysed: only an unambiguous shape match is trusted
      raise ValueError(f"cannot tell the batch axis of site {site.name!r} (shape {site.shape}) "
                       f"from a threshold of shape {lam_shape}: call analyse() first")
    return fits[0]

  # -- evaluation -------------------------------------------------------------------------------

  def __call__(self, params, thresholds, x, *args, hook: Hook | None = None):
    """``fn(params, x, *args)`` with every ReLU site clipped at ``thresholds[site]``.

    ``thresholds`` may be None for ``kind="relu"`` (the original function, bit for bit).
    ``hook(name, y) -> y'`` (optional) post-processes every site's output ``y`` (the clipped
    activation) with the site's batch axis moved to axis 0 (activation faults, capture); it
    needs :meth:`analyse` first, a batch axis at every site, and no site inside a ``scan``,
    ``while``, ``cond`` or ``remat`` body (:class:`ValueError` otherwise).
    """
    traced = trace_sites(self.fn, params, x, *args)
    if not traced.sites:
      raise ValueError("the function has no ReLU (jax.nn.relu call or max(x, 0)) to clip")
    if hook is not None:
      self._check_hookable(traced.sites)
    if self.kind == "relu" and thresholds is None and hook is None:
      return traced.evaluate(None)
    axes = self._check(traced.sites, thresholds) if thresholds is not None else {}
    if self.kind == "relu" and hook is None:
      return traced.evaluate(None)
    fn = activation_fn(self.kind)

    def clip(name: str, x: jax.Array) -> jax.Array:
      if self.kind == "relu":
        return jnp.maximum(x, 0)  # the value of jax.nn.relu(x)
      lam = jnp.asarray(thresholds[name]).astype(x.dtype)
      if axes[name] is not None:
        lam = jnp.expand_dims(lam, axes[name])
      return smooth_clip(x, lam, self.k) if self.kind == "smooth" else fn(x, lam)

    if hook is None:
      return traced.evaluate(clip)

    def hooked(name: str, x: jax.Array) -> jax.Array:
      axis = self._axes[name]
      y = jnp.moveaxis(clip(name, x), axis, 0)
      return jnp.moveaxis(hook(name, y), 0, axis)

    return traced.evaluate(hooked)

  def _check_hookable(self, sites: list[Site]) -> None:
    for s in sites:
      bad = [c for c in s.context if c in ("scan", "while", "cond", "remat2", "checkpoint")]
      if bad:
        raise ValueError(f"site {s.name!r} sits inside a {bad[0]!r} body: activation hooks "
                         "(activation faults, capture) need every ReLU outside loops, "
                         "conditionals and remat")
      if s.name not in self._axes:
        raise ValueError("call analyse() before evaluating with a hook")
      if self._axes[s.name] is None:
        raise ValueError(f"site {s.name!r} (shape {s.shape}) has no batch axis: "
                         f"{self._why[s.name]}; activation hooks need one at every site")

  def __repr__(self):
    return (f"ClippedFunction({getattr(self.fn, '__name__', self.fn)!r}, kind={self.kind!r}, "
            f"granularity={self.granularity!r}, k={self.k})")


def clip_activations(fn: Callable, kind: str = "smooth", granularity: str = "hybrid",
                     k: float = 20.0, batch_axis: int = 0) -> ClippedFunction:
  """Turns the ReLUs of ``fn(params, x, *args)`` into clipped activations.

  Args:
    fn: any JAX function ``fn(params, x, *args)`` (a linen ``apply``, an ``nnx.merge`` call, an
      Equinox ``combine`` call, plain JAX); ``x`` carries the batch on axis ``batch_axis``.
    kind: ``relu`` (unchanged), ``zero`` (Ranger / FT-ClipAct), ``threshold`` (min(relu, lam)) or
      ``smooth`` (FitAct / ProAct's HyReLU, steepness ``k``): see :mod:`proact_jax.activations`.
    granularity: ``layer``, ``neuron`` or ``hybrid`` (neuron-wise at the last site only).
    k: steepness of the smooth clip.
    batch_axis: the batch axis of ``x``.

  Returns:
    A :class:`ClippedFunction` ``g(params, thresholds, x, *args)`` with ``init_thresholds``,
    ``profile``, ``analyse``, ``sites``, ``site_shapes``; it works under jit, grad (w.r.t.
    thresholds and params), vmap and lax.map.
  """
  return ClippedFunction(fn, kind, granularity, k, batch_axis)


def stack_thresholds(trees: list[Mapping]) -> dict:
  """Stacks threshold trees along a new leading axis (for vmap / lax.map over copies)."""
  return jax.tree_util.tree_map(lambda *v: jnp.stack(v), *trees)


__all__ = ["ClippedFunction", "clip_activations", "stack_thresholds"]
