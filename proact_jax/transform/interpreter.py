"""A jaxpr interpreter that finds the ReLUs of any JAX function and lets a hook replace them.

This is the machinery under :func:`proact_jax.transform.clip_activations` (issue 13): ProAct
(Mousavi et al., arXiv 2406.06313) and the methods it compares against replace every ReLU of a
network by a clipped activation. Rather than asking the model's author to build the model from
this package's modules, the function is traced with :func:`jax.make_jaxpr` and the jaxpr is
evaluated by an interpreter that hands every ReLU *site* to a hook (the "Writing custom Jaxpr
interpreters" pattern of the JAX docs).

A site is either

* a call of ``jax.nn.relu`` (hence ``flax.linen.relu``, ``flax.nnx.relu``, Equinox's
  ``jax.nn.relu``): a ``custom_jvp_call`` whose body is ``max(x, 0)``. The whole call is replaced,
  so gradients are those of the replacement; or
* a bare floating-point ``max(x, 0)`` / ``max(0, x)`` (``jnp.maximum(x, 0)``), the zero being a
  literal, an all-zero constant, or a broadcast / cast / reshape of one. Inside the body of a
  ``custom_jvp`` / ``custom_vjp`` function only ``jax.nn.relu`` calls count, so that the ``max``
  inside e.g. ``jnp.logaddexp`` (``softplus``) or ``relu6`` is left alone.

Sites are found inside ``jit`` (pjit), ``closed_call``, ``custom_jvp_call``, ``custom_vjp_call``,
``scan``, ``cond``, ``while`` and ``remat`` (``checkpoint``) sub-jaxprs. They are named
``relu_0, relu_1, ...`` in *walk order*: equations in program order, a higher-order equation's
sub-jaxprs in order (``cond`` branches by index, a ``while``'s condition before its body), depth
first. Names depend only on the jaxpr's structure, not on the input values. A site inside a
``scan`` or ``while`` body is one site however many iterations run (the hook sees every iteration).

Equations holding a site are re-emitted: ``jit``/``closed_call`` bodies are inlined (jit the
transformed function), ``custom_jvp``/``custom_vjp`` bodies are inlined too (their custom
derivative rule is dropped: the derivative is that of the substituted body), ``scan``/``cond``/
``while``/``remat`` go through ``lax.scan``/``lax.switch``/``lax.while_loop``/``jax.checkpoint``.
Every other equation is bound unchanged, so a function whose hook leaves every site alone
computes exactly the original primitives.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from proact_jax.transform.sites import (CUSTOM, INLINE, SOURCE_MAX, Plan, Planner, Site, SubJaxpr,
                                   site_name, walk_sites)

SiteFn = Callable[[str, jax.Array], Optional[jax.Array]]
"""``site_fn(name, x) -> y``: the activation at one site given its pre-activation ``x`` (already
broadcast to the site's shape); ``None`` leaves the site's original ReLU in place."""
CaptureFn = Callable[[str, jax.Array], jax.Array]
"""``capture(name, y) -> value``: what to record of a site's output ``y``."""

__all__ = ["Site", "Traced", "find_sites", "interpret_sites", "trace_sites", "walk_sites"]


def _bind(eqn, invals) -> list:
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
  return list(out) if eqn.primitive.multiple_results else [out]


def _max_merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = jnp.maximum(out[k], v) if k in out else v
  return out


def _neg_inf(shapes: dict) -> dict:
  return {k: jnp.full(s.shape, -jnp.inf, s.dtype) for k, s in shapes.items()}


class _Interpreter:
  """Evaluates a jaxpr, handing sites to ``site_fn`` and recording ``capture(name, y)``.

  Captured values of a site in a loop body are combined by elementwise maximum over iterations;
  sites of an untaken ``cond`` branch report ``-inf`` (this is what profiling needs).
  """

  def __init__(self, site_fn: SiteFn | None, capture: CaptureFn | None):
    self.site_fn, self.capture, self.planner = site_fn, capture, Planner()

  def run(self, jaxpr, consts, args, start: int, in_custom: bool) -> tuple[list, dict]:
    env: dict = {}

    def read(v):
      return v.val if isinstance(v, jcore.Literal) else env[v]

    def write(vs, vals):
      for v, val in zip(vs, vals, strict=True):
        if not isinstance(v, jcore.DropVar):
          env[v] = val

    write(jaxpr.constvars, consts)
    write(jaxpr.invars, args)
    captured: dict = {}
    index = start
    for eqn, plan in zip(jaxpr.eqns, self.planner.plans(jaxpr, consts, in_custom)):
      invals = [read(v) for v in eqn.invars]
      if plan.kind == "plain":
        outs = _bind(eqn, invals)
      elif plan.kind == "site":
        outs = [self._site(eqn, invals, plan, site_name(index), captured)]
      else:
        outs, sub_captured = self._higher(eqn, invals, plan, index)
        captured.update(sub_captured)
      write(eqn.outvars, outs)
      index += plan.count
    return [read(v) for v in jaxpr.outvars], captured

  def _site(self, eqn, invals, plan: Plan, name: str, captured: dict):
    aval = eqn.outvars[0].aval
    y = None
    if self.site_fn is not None:
      x = invals[plan.operand]
      if plan.source == SOURCE_MAX:
        x = jnp.broadcast_to(x, aval.shape)
      y = self.site_fn(name, x)
    if y is None:
      y = _bind(eqn, invals)[0]
    else:
      if tuple(jnp.shape(y)) != tuple(aval.shape):
        raise ValueError(f"site_fn returned shape {jnp.shape(y)} at site {name!r}, expected "
                         f"{tuple(aval.shape)}")
      y = jnp.asarray(y).astype(aval.dtype)
    if self.capture is not None:
      captured[name] = self.capture(name, y)
    return y

  def _call(self, sub: SubJaxpr, start: int):
    return lambda *args: self.run(sub.jaxpr, sub.consts, list(args), start, sub.in_custom)

  def _shapes(self, sub: SubJaxpr, start: int) -> dict:
    """Shapes of what ``sub`` captures (evaluated abstractly), to initialise loop carries."""
    if self.capture is None:
      return {}
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in sub.jaxpr.invars]
    return jax.eval_shape(lambda *a: self._call(sub, start)(*a)[1], *avals)

  def _higher(self, eqn, invals, plan: Plan, start: int) -> tuple[list, dict]:
    name, params = eqn.primitive.name, eqn.params
    if name in INLINE or name in CUSTOM:
      return self._call(plan.subs[0], start)(*invals)
    if name in ("remat2", "checkpoint"):
      fn = jax.checkpoint(self._call(plan.subs[0], start), prevent_cse=params["prevent_cse"],
                          policy=params["policy"])
      return fn(*invals)
    if name == "scan":
      return self._scan(params, invals, plan.subs[0], start)
    if name == "cond":
      return self._cond(invals, plan.subs, start)
    if name == "while":
      return self._while(params, invals, plan.subs, start)
    raise AssertionError(name)  # Planner only plans "sub" for the primitives above

  def _scan(self, params, invals, sub: SubJaxpr, start: int):
    n_consts, n_carry = params["num_consts"], params["num_carry"]
    consts = invals[:n_consts]
    init, xs = invals[n_consts:n_consts + n_carry], invals[n_consts + n_carry:]
    body_fn = self._call(sub, start)

    def body(carry, x):
      vals, cap = carry
      outs, new = body_fn(*consts, *vals, *x)
      return (outs[:n_carry], _max_merge(cap, new)), outs[n_carry:]

    (vals, cap), ys = lax.scan(body, (init, _neg_inf(self._shapes(sub, start))), xs,
                               length=params["length"], reverse=params["reverse"],
                               unroll=params["unroll"])
    return [*vals, *ys], cap

  def _cond(self, invals, subs: Sequence[SubJaxpr], start: int):
    starts = np.cumsum([start] + [s.count for s in subs])[:-1]
    shapes = [self._shapes(s, int(b)) for s, b in zip(subs, starts)]
    every = {k: v for shape in shapes for k, v in shape.items()}

    def branch(sub, b):
      def fn(*ops):
        outs, cap = self._call(sub, int(b))(*ops)
        return outs, {**_neg_inf(every), **cap}
      return fn

    return lax.switch(invals[0], [branch(s, b) for s, b in zip(subs, starts)], *invals[1:])

  def _while(self, params, invals, subs: Sequence[SubJaxpr], start: int):
    n_cond, n_body = params["cond_nconsts"], params["body_nconsts"]
    cconsts, bconsts = invals[:n_cond], invals[n_cond:n_cond + n_body]
    init = invals[n_cond + n_body:]
    csub, bsub = subs
    if self.capture is not None and csub.count:
      raise ValueError("cannot capture a ReLU inside a while loop's condition")
    cond_fn, body_fn = self._call(csub, start), self._call(bsub, start + csub.count)

    def body(carry):
      vals, cap = carry
      outs, new = body_fn(*bconsts, *vals)
      return outs, _max_merge(cap, new)

    vals, cap = lax.while_loop(lambda carry: cond_fn(*cconsts, *carry[0])[0][0], body,
                               (list(init), _neg_inf(self._shapes(bsub, start + csub.count))))
    return list(vals), cap


class Traced:
  """A function traced at some arguments: its sites, and evaluation with a hook.

  Built by :func:`trace_sites`.
  """

  def __init__(self, closed, out_tree, flat_args):
    self.closed, self.out_tree, self.flat_args = closed, out_tree, flat_args
    self.sites: list[Site] = walk_sites(closed)

  def evaluate(self, site_fn: SiteFn | None = None, capture: CaptureFn | None = None):
    """Evaluates the function with ``site_fn`` at every site.

    Returns:
      The function's output, or ``(output, {site: capture(site, y)})`` when ``capture`` is given.
    """
    interp = _Interpreter(site_fn, capture)
    outs, captured = interp.run(self.closed.jaxpr, self.closed.consts, self.flat_args, 0, False)
    out = jax.tree_util.tree_unflatten(self.out_tree, outs)
    return (out, captured) if capture is not None else out


def trace_sites(fn: Callable, *args) -> Traced:
  """Traces ``fn(*args)`` with :func:`jax.make_jaxpr` and finds its ReLU sites.

  ``args`` are pytrees of arrays (``jax.ShapeDtypeStruct`` leaves are fine for finding sites).
  """
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
  return Traced(closed, jax.tree_util.tree_structure(out_shape), jax.tree_util.tree_leaves(args))


def find_sites(fn: Callable, *args) -> list[Site]:
  """The ReLU sites of ``fn(*args)`` in walk order (nothing is computed)."""
  return trace_sites(fn, *args).sites


def interpret_sites(fn: Callable, site_fn: SiteFn | None = None,
                    capture: CaptureFn | None = None) -> Callable:
  """``fn`` with every ReLU site handed to ``site_fn`` (the hook activation faults can use).

  Args:
    fn: any JAX function of array pytrees.
    site_fn: ``site_fn(name, x) -> y`` computes the activation of site ``name`` from its
      pre-activation ``x``; returning ``None`` keeps the original ReLU. ``None``: keep them all.
    capture: optional ``capture(name, y) -> value`` recorded at every site (``y`` is the site's
      output); e.g. ``lambda name, y: y`` gives the activations, like Flax intermediates. Values
      from loop bodies are combined by elementwise maximum over iterations, untaken ``cond``
      branches give ``-inf``.

  Returns:
    ``h(*args)``: ``fn(*args)`` with the sites substituted, or ``(out, captured)`` if ``capture``.
  """
  def h(*args):
    return trace_sites(fn, *args).evaluate(site_fn, capture)
  return h
