"""One trial's fault plan: what a campaign trial corrupts, with which key, on which images.

A :class:`FaultPlan` splits a fault space into the weights (every collection but
``thresholds``) and the thresholds, with static flip caps sized at the campaign's largest BER
(:func:`plan_at` resizes them for one BER without changing the trials).
:func:`corrupt` applies one trial's faults: weights with ``fold_in(trial_key, 0)``, thresholds
with ``fold_in(trial_key, 1)``, so variants sharing a baseline's params receive identical weight
faults. :func:`trial_image_indices` draws a trial's image subset (the campaign calls it with
``fold_in(trial_key, 2)``). Used by :mod:`proact_jax.faults.campaign` and
:mod:`proact_jax.faults.activations`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.core.activations import THRESHOLDS
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import DEFAULT_FORMAT, NumberFormat, get_format

__all__ = ["FAULT_RULES", "FaultPlan", "check_bers", "plan_at", "check_images_per_trial", "corrupt", "make_plan",
           "trial_image_indices"]


@dataclasses.dataclass(frozen=True)
class FaultPlan:
  """Static description of one variant's corruption (hashable).

  Attributes:
    fmt: the number format.
    weights: fault space of the non-threshold collections (None: no weight faults).
    thresholds: fault space of the thresholds collection (None: none, e.g. a relu model).
    cap_weights, cap_thresholds: static flip caps at the campaign's largest BER.
    bits_weights, bits_thresholds: number of stored bits in each space.
  """
  fmt: NumberFormat
  weights: faults.FaultSpace | None
  thresholds: faults.FaultSpace | None
  cap_weights: int = 0
  cap_thresholds: int = 0
  bits_weights: int = 0
  bits_thresholds: int = 0
  rule: str = "bernoulli"
  floor_bers: tuple = ()         # toolbox-floor: the campaign's BERs and, per BER, the flips
  floor_weights: tuple = ()      # per leaf of ``weights`` / ``thresholds``
  floor_thresholds: tuple = ()


def _subspace(variables, space: faults.FaultSpace, collections: tuple) -> faults.FaultSpace | None:
  if not collections:
    return None
  sub = dataclasses.replace(space, collections=collections)
  try:
    leaves = faults.fault_leaves(variables, sub)
  except ValueError:  # the layer filter matches nothing in these collections
    return None
  return sub if leaves else None


FAULT_RULES = ("bernoulli", "toolbox-floor")


def make_plan(variables, fmt: str | NumberFormat = DEFAULT_FORMAT,
              space: faults.FaultSpace | None = None, max_ber: float = 1e-4,
              require_match: bool = True, rule: str = "bernoulli",
              bers: tuple = ()) -> FaultPlan:
  """Splits ``space`` into weights and thresholds and sizes the static caps for ``max_ber``.

  ``rule``: ``"bernoulli"`` (every bit flips independently with probability BER) or
  ``"toolbox-floor"``, the authors' toolbox rule: exactly ``floor(n_leaf * bits * BER)`` flips
  in every leaf of the fault space (each kernel, each bias, each threshold tensor, scalar
  thresholds included), so a leaf with ``n_leaf * bits * BER < 1`` (biases, scalar thresholds,
  small layers at low BER) is never hit and the count has no variance. It needs ``bers``, the
  campaign's BERs (counts are computed per BER on the host, in float64).

  Raises:
    ValueError: bad bit range, or (``require_match``) a layer filter that matches nothing.
  """
  fmt = get_format(fmt)
  space = space or faults.FaultSpace()
  space.bit_range(fmt)
  cols = tuple(space.collections)
  w = _subspace(variables, space, tuple(c for c in cols if c != THRESHOLDS))
  t = _subspace(variables, space, (THRESHOLDS,) if THRESHOLDS in cols else ())
  if require_match and space.layer is not None and w is None and t is None:
    faults.fault_leaves(variables, space)  # raises with the list of layer names
  bw = faults.count_bits(variables, fmt, w) if w else 0
  bt = faults.count_bits(variables, fmt, t) if t else 0
  if rule not in FAULT_RULES:
    raise ValueError(f"unknown fault rule {rule!r}; expected one of {', '.join(FAULT_RULES)}")
  if rule == "toolbox-floor":
    bers = tuple(check_bers(bers))
    per = lambda sub: tuple(faults.floor_counts(variables, b, fmt, sub) for b in bers) if sub \
        else ()
    fw, ft = per(w), per(t)
    return FaultPlan(fmt, w, t, sum(max(c) for c in zip(*fw)) if fw else 0,
                     sum(max(c) for c in zip(*ft)) if ft else 0, bw, bt, rule, bers, fw, ft)
  return FaultPlan(fmt, w, t, faults.default_cap(bw, max_ber) if bw else 0,
                   faults.default_cap(bt, max_ber) if bt else 0, bw, bt)


_MIN_SHRINK = 1 << 12  # caps below this are cheap to sort: keep one compilation for every BER


def _bucket_cap(cap: int, n_bits: int, ber: float) -> int:
  if cap < _MIN_SHRINK:
    return cap
  need = faults.default_cap(n_bits, ber)
  return min(cap, 1 << max(0, math.ceil(math.log2(max(need, 1)))))


def plan_at(plan: FaultPlan, ber: float) -> FaultPlan:
  """``plan`` with its static caps sized for one concrete ``ber`` instead of the largest.

  The trials are the same: candidate positions are a prefix-stable stream
  (``jax.random.bits`` under the default partitionable threefry: the first ``m`` of a longer
  draw are the draw of ``m``), and a trial takes the first ``K`` distinct ones in draw order, so
  a shorter batch that still holds ``K`` distinct candidates picks the very same positions. Only
  a shortfall (probability below 1e-30 at :func:`faults.default_cap` of ``ber``) takes the exact
  dense path with other draws. What changes is the work: the candidates drawn and sorted per
  trial (at BER 1e-6 on the CIFAR AlexNet, about 2 k instead of 78 k sized at 1e-4). Bernoulli
  caps are rounded up to a power of two (neighbouring BERs share a compilation) and left alone
  below 4,096; a toolbox-floor plan keeps only ``ber``'s row of per-leaf counts, so its caps are
  that row's counts. The header of a campaign keeps the original plan. With
  ``jax_threefry_partitionable`` off the stream is not prefix-stable: the plan is kept as is.
  """
  if not jax.config.jax_threefry_partitionable:
    return plan
  if plan.rule == "toolbox-floor":
    b = int(np.argmin(np.abs(np.asarray(plan.floor_bers, np.float64) - float(ber))))
    row = lambda table: (table[b],) if table else ()
    return dataclasses.replace(plan, floor_bers=(plan.floor_bers[b],),
                               floor_weights=row(plan.floor_weights),
                               floor_thresholds=row(plan.floor_thresholds))
  return dataclasses.replace(
      plan, cap_weights=_bucket_cap(plan.cap_weights, plan.bits_weights, ber),
      cap_thresholds=_bucket_cap(plan.cap_thresholds, plan.bits_thresholds, ber))


def corrupt(key: chex.PRNGKey, variables, ber: Any, plan: FaultPlan, *,
            prequantized: bool = False, aux: dict | None = None):
  """One trial's corruption: ``(variables, n_flips_weights, n_flips_thresholds)``.

  Weights use ``fold_in(key, 0)``, thresholds ``fold_in(key, 1)``; ``ber`` may be traced.
  ``prequantized``, ``aux``: ``variables, aux = faults.quantize_with_aux(v, plan.fmt)`` (see
  ``faults.flip_bits``); otherwise the whole model is quantised here first, so the thresholds'
  call does not re-store the weights the first call faulted (an int8 scale would change).
  """
  if not prequantized:
    variables, aux = faults.quantize_with_aux(variables, plan.fmt)
    prequantized = True
  nw = nt = jnp.int32(0)
  if plan.rule == "toolbox-floor":  # the BER selects its row of per-leaf counts
    b = jnp.argmin(jnp.abs(jnp.asarray(plan.floor_bers, jnp.float32) - jnp.float32(ber)))
  for i, (sub, cap) in enumerate(((plan.weights, plan.cap_weights),
                                  (plan.thresholds, plan.cap_thresholds))):
    if sub is not None and plan.rule == "toolbox-floor":
      table = plan.floor_weights if i == 0 else plan.floor_thresholds
      caps = tuple(max(c) for c in zip(*table))
      variables, n = faults.floor_flips(jax.random.fold_in(key, i), variables,
                                        jnp.asarray(table, jnp.int32)[b], caps, plan.fmt, sub,
                                        prequantized=prequantized, aux=aux)
      nw, nt = (n, nt) if i == 0 else (nw, n)
    elif sub is not None:
      variables, n = faults.flip_bits(jax.random.fold_in(key, i), variables, ber, plan.fmt, sub,
                                      max_flips=cap, prequantized=prequantized, aux=aux)
      nw, nt = (n, nt) if i == 0 else (nw, n)
  return variables, nw, nt


def trial_image_indices(key: chex.PRNGKey, n: int, m: int) -> jax.Array:
  """``m`` distinct indices in ``[0, n)``, uniform without replacement (traceable; static n, m).

  The campaign calls it with ``fold_in(trial_key, 2)``.
  """
  return jax.random.permutation(key, int(n))[:int(m)]


def check_images_per_trial(images_per_trial, n: int) -> int | None:
  m = images_per_trial
  if m is None:
    return None
  if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
    raise ValueError(f"images_per_trial must be an integer in [1, {n}] (the eval set's "
                     f"images), got {m!r}")
  return int(m)


def check_bers(bers) -> list[float]:
  try:
    out = [float(b) for b in np.atleast_1d(np.asarray(bers, np.float64))]
  except (TypeError, ValueError):
    raise ValueError(f"bit error rates must be numbers, got {bers!r}") from None
  if not out:
    raise ValueError("need at least one bit error rate")
  for b in out:
    if not 0.0 <= b <= 1.0 or math.isnan(b):
      raise ValueError(f"bit error rate must be in [0, 1], got {b}")
  return out


def check_campaign_inputs(variants, bers, trials, ci_target, n_images: int, images_per_trial,
                          reference):
  """The checks every campaign kind shares: ``(bers, images_per_trial, reference)``, validated."""
  bers = check_bers(bers)
  if not variants:
    raise ValueError("need at least one variant")
  if int(trials) < 1:
    raise ValueError(f"trials must be >= 1, got {trials}")
  if ci_target is not None and not ci_target > 0:
    raise ValueError(f"the CI half-width target must be > 0 points, got {ci_target}")
  images_per_trial = check_images_per_trial(images_per_trial, int(n_images))
  reference = reference or ("relu" if "relu" in variants else list(variants)[0])
  if reference not in variants:
    raise ValueError(f"reference variant {reference!r} is not one of {', '.join(variants)}")
  return bers, images_per_trial, reference
