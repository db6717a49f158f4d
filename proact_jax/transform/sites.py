"""Finding the ReLU sites of a jaxpr (see :mod:`proact_jax.interpret` for the rules).

A site is a ``jax.nn.relu`` call (a ``custom_jvp_call`` whose body is ``max(x, 0)``) or a bare
floating ``max(x, 0)`` outside custom-derivative bodies. :class:`Planner` classifies every
equation of a (sub-)jaxpr once; :func:`walk_sites` and the interpreter both follow its plans,
so site names (``relu_<walk index>``) agree between finding and evaluating. ``Planner``,
``Plan`` and ``SubJaxpr`` are internal to the two modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

INLINE = ("jit", "pjit", "closed_call", "core_call")
CUSTOM = ("custom_jvp_call", "custom_vjp_call")
_ZERO_PRESERVING = ("broadcast_in_dim", "convert_element_type", "reshape", "copy", "squeeze",
                    "expand_dims", "transpose")
SOURCE_RELU = "jax.nn.relu"
SOURCE_MAX = "max(x, 0)"


def site_name(index: int) -> str:
  """The name of the ``index``-th site in walk order."""
  return f"relu_{index}"


@dataclasses.dataclass(frozen=True)
class Site:
  """One ReLU site of a traced function.

  Attributes:
    name: ``relu_<index>``.
    index: position in walk order.
    shape: shape of the activation (= of the pre-activation) at the traced input.
    dtype: its dtype.
    source: ``"jax.nn.relu"`` or ``"max(x, 0)"``.
    context: the enclosing higher-order primitives, outermost first (e.g. ``("jit", "scan")``).
  """
  name: str
  index: int
  shape: tuple[int, ...]
  dtype: Any
  source: str
  context: tuple[str, ...]

  @property
  def in_loop(self) -> bool:
    """Whether the site sits in a ``scan``/``while`` body (one threshold for all iterations)."""
    return any(c in ("scan", "while") for c in self.context)


@dataclasses.dataclass(frozen=True)
class SubJaxpr:
  jaxpr: Any  # jcore.Jaxpr
  consts: Sequence[Any]
  in_custom: bool
  count: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the interpreter does with one equation: bind it (``plain``), replace it (``site``), or
  recurse into its sub-jaxprs (``sub``)."""
  kind: str
  count: int = 0
  operand: int = 0
  source: str = ""
  subs: tuple[SubJaxpr, ...] = ()


def _unpack(j) -> tuple[Any, Sequence[Any]]:
  if isinstance(j, jcore.ClosedJaxpr):
    return j.jaxpr, j.consts
  return j, ()


def _is_zero_literal(v) -> bool:
  if not isinstance(v, jcore.Literal):
    return False
  try:
    return bool(np.all(np.asarray(v.val) == 0))
  except Exception:  # pylint: disable=broad-except
    return False


def _is_relu_body(closed) -> bool:
  """Whether a custom_jvp body is exactly ``max(x, 0)`` (possibly wrapped in jits)."""
  jaxpr, _ = _unpack(closed)
  if (len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1 or len(jaxpr.eqns) != 1
      or jaxpr.constvars):
    return False
  (eqn,) = jaxpr.eqns
  x = jaxpr.invars[0]
  if eqn.outvars[0] is not jaxpr.outvars[0] or len(eqn.outvars) != 1:
    return False
  name = eqn.primitive.name
  if name in INLINE:
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    return len(eqn.invars) == 1 and eqn.invars[0] is x and _is_relu_body(sub)
  if name == "max":
    a, b = eqn.invars
    return (a is x and _is_zero_literal(b)) or (b is x and _is_zero_literal(a))
  return False


def _floating(aval) -> bool:
  return jnp.issubdtype(aval.dtype, jnp.floating)


def _param_jaxprs(params) -> list:
  out = []
  for v in params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(item, (jcore.ClosedJaxpr, jcore.Jaxpr)):
        out.append(item)
  return out


class Planner:
  """Classifies the equations of (sub-)jaxprs, memoised per jaxpr object."""

  def __init__(self):
    self._cache: dict[tuple[int, bool], tuple[Any, list[Plan]]] = {}

  def sub(self, j, in_custom: bool) -> SubJaxpr:
    jaxpr, consts = _unpack(j)
    plans = self.plans(jaxpr, consts, in_custom)
    return SubJaxpr(jaxpr, consts, in_custom, sum(p.count for p in plans))

  def plans(self, jaxpr, consts, in_custom: bool) -> list[Plan]:
    key = (id(jaxpr), in_custom)
    if key not in self._cache:  # the jaxpr is kept alive with its plans, so ids stay unique
      self._cache[key] = (jaxpr, self._classify(jaxpr, consts, in_custom))
    return self._cache[key][1]

  def _classify(self, jaxpr, consts, in_custom: bool) -> list[Plan]:
    zeros = set()
    for v, c in zip(jaxpr.constvars, consts):
      try:
        if np.size(c) and np.all(np.asarray(c) == 0):
          zeros.add(v)
      except Exception:  # pylint: disable=broad-except  (a tracer: not a known zero)
        pass

    def is_zero(v):
      return _is_zero_literal(v) or (isinstance(v, jcore.Var) and v in zeros)

    plans = []
    for eqn in jaxpr.eqns:
      name, params = eqn.primitive.name, eqn.params
      plan = Plan("plain")
      if name in _ZERO_PRESERVING and len(eqn.invars) == 1 and is_zero(eqn.invars[0]):
        zeros.add(eqn.outvars[0])
      elif name == "max" and not in_custom and _floating(eqn.outvars[0].aval):
        flags = [is_zero(v) for v in eqn.invars]
        if sum(flags) == 1:
          plan = Plan("site", 1, operand=flags.index(False), source=SOURCE_MAX)
      elif (name == "custom_jvp_call" and len(eqn.invars) == 1 and len(eqn.outvars) == 1
            and _floating(eqn.outvars[0].aval) and _is_relu_body(params["call_jaxpr"])):
        plan = Plan("site", 1, source=SOURCE_RELU)
      else:
        plan = self._higher(eqn, in_custom)
      plans.append(plan)
    return plans

  def _higher(self, eqn, in_custom: bool) -> Plan:
    name, params = eqn.primitive.name, eqn.params
    if name in ("jit", "pjit", "scan", "remat2", "checkpoint"):
      js = [params["jaxpr"]]
    elif name in ("closed_call", "core_call") or name in CUSTOM:
      js = [params["call_jaxpr"]]
    elif name == "cond":
      js = list(params["branches"])
    elif name == "while":
      js = [params["cond_jaxpr"], params["body_jaxpr"]]
    else:
      js = _param_jaxprs(params)
      if js and sum(self.sub(j, in_custom).count for j in js):
        raise ValueError(f"a ReLU sits inside a {name!r} equation, which the interpreter cannot "
                         "rewrite (supported: jit, closed_call, custom_jvp_call, custom_vjp_call, "
                         "scan, cond, while, remat)")
      return Plan("plain")
    subs = tuple(self.sub(j, in_custom or name in CUSTOM) for j in js)
    count = sum(s.count for s in subs)
    return Plan("sub", count, subs=subs) if count else Plan("plain")


def walk_sites(closed) -> list[Site]:
  """The sites of a closed jaxpr, in walk order (see the module docstring)."""
  planner, sites = Planner(), []

  def walk(jaxpr, consts, in_custom, context):
    for eqn, plan in zip(jaxpr.eqns, planner.plans(jaxpr, consts, in_custom)):
      if plan.kind == "site":
        aval = eqn.outvars[0].aval
        sites.append(Site(site_name(len(sites)), len(sites), tuple(aval.shape), aval.dtype,
                          plan.source, context))
      elif plan.kind == "sub":
        for s in plan.subs:
          walk(s.jaxpr, s.consts, s.in_custom, context + (eqn.primitive.name,))

  walk(closed.jaxpr, closed.consts, False, ())
  return sites
