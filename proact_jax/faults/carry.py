"""Trials that carry one corrupted tree instead of copying the clean one (issue 12, item 4).

A trial's faults touch at most a few hundred values, but writing them into a fresh copy of the
clean tree copies every value (about 70 ms for AlexNet's 23 M). :func:`carried_scan` runs the
trials of a chunk in one ``lax.scan`` whose carry is the corrupted fault leaves and the indices
the previous trial wrote: each step writes the clean values back at those indices, then the new
trial's values, then evaluates. The tree a trial sees equals the clean tree with that trial's
values written, i.e. exactly what the copying path builds, so every number is unchanged.

The updates come from the sparse sampling path only (:func:`plain_updates` reproduces
``faults.flip_bits``'s draws and values; :func:`critical.stratified_weight_faults` with
``sparse_only``). A trial whose sparse candidates fall short (probability below 1e-30 at the
campaign's cap, or after many collisions) reports ``ok = False``: its carried tree is
incomplete, and the caller reruns it on the exact copying path.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import traverse_util

from proact_jax.core.evaluate import take_images
from proact_jax.faults import injection as faults
from proact_jax.faults.critical_faults import leaf_updates
from proact_jax.faults.sampling import _sparse_masks, _sparse_pick, sample_count
from proact_jax.faults.formats import NumberFormat
from proact_jax.faults.trial import trial_image_indices

__all__ = ["carried_scan", "plain_updates", "space_leaves"]


def space_leaves(flat: dict, aux: dict, space: faults.FaultSpace | None, fmt: NumberFormat):
  """``(paths, flat 1-D leaves, auxes)`` of a fault space in injection order (none if None)."""
  if space is None:
    return [], [], []
  paths = faults._select(flat, space)
  return (paths, [jnp.asarray(flat[p]).reshape(-1) for p in paths],
          [faults._leaf_aux(fmt, aux, p) for p in paths])


def plain_updates(key, leaves: list, auxes: list, ber: Any, *, fmt: NumberFormat, lo: int,
                  hi: int, cap: int):
  """``flip_bits(key, ...)`` on prequantised leaves as sparse updates: ``(per-leaf (local,
  values), ok, n_flips)``; the same draws and values as ``flip_bits`` whenever ``ok``."""
  n_values = sum(int(x.size) for x in leaves)
  nb = hi - lo
  k_count, k_pos = jax.random.split(key)
  k = sample_count(k_count, n_values * nb, ber)
  sv, sb, take, ok, _, _ = _sparse_pick(k_pos, k, n_values, nb, cap)
  return leaf_updates(sv, _sparse_masks(sv, sb, take, lo), leaves, auxes, fmt), ok, k


def carried_scan(flat: dict, paths: list, leaves: list, updates_fn: Callable,
                 evaluate_fn: Callable, xs):
  """``lax.scan`` over ``xs`` with one carried corrupted copy of ``leaves`` (module docstring).

  Args:
    flat: the clean tree, flattened (``faults._flat``); leaves outside ``paths`` stay as they are.
    paths, leaves: the fault leaves (1-D clean values) the updates index.
    updates_fn: ``x -> (updates, extra)``; ``updates`` a list aligned with ``leaves`` of
      ``(local indices, values)`` or None (the leaf is not written), the same structure for
      every ``x``; indices equal to the leaf's size are unused slots.
    evaluate_fn: ``(variables, x, extra) -> outputs`` on the corrupted tree.
    xs: the scanned inputs.

  Returns:
    The stacked outputs of ``evaluate_fn``.
  """
  x0 = jax.tree_util.tree_map(lambda a: a[0], xs)
  shapes = jax.eval_shape(updates_fn, x0)[0]
  prev0 = [None if s is None else jnp.full(s[0].shape, x.size, jnp.int32)
           for s, x in zip(shapes, leaves)]

  def step(carry, x):
    cur, prev = carry
    cur = [c if p is None else c.at[p].set(l[jnp.minimum(p, l.size - 1)], mode="drop")
           for c, p, l in zip(cur, prev, leaves)]
    updates, extra = updates_fn(x)
    cur = [c if u is None else c.at[u[0]].set(u[1], mode="drop") for c, u in zip(cur, updates)]
    variables = dict(flat)
    variables.update({p: c.reshape(flat[p].shape) for p, c in zip(paths, cur)})
    out = evaluate_fn(traverse_util.unflatten_dict(variables), x, extra)
    return (cur, [None if u is None else u[0].astype(jnp.int32) for u in updates]), out

  _, out = jax.lax.scan(step, (list(leaves), prev0), xs)
  return out


def campaign_trials(evaluate_trial: Callable, plan, images: tuple | None):
  """The carried form of the campaign's trial loop: ``f((clean, aux), data, key, ber_index,
  ber, idx) -> (acc, loss, n_w, n_t, n_a, ok)`` per trial of ``idx`` (traceable; the caller jits
  or shards it). Trial keys, image subsets and values are the campaign's (``campaign._runner``);
  ``evaluate_trial(variables, images, trial_key, ber) -> (acc, loss, n_a)`` evaluates one trial
  (:func:`neuron_faults.trial_evaluator`); ``ok`` False marks a trial to rerun on the copying
  path."""
  def f(clean, data, key, ber_index, ber, idx):
    tree, aux = clean
    flat = faults._flat(tree)
    parts = [(i, sub, cap) + space_leaves(flat, aux, sub, plan.fmt)
             for i, (sub, cap) in enumerate(((plan.weights, plan.cap_weights),
                                             (plan.thresholds, plan.cap_thresholds)))
             if sub is not None]
    paths = [p for part in parts for p in part[3]]
    leaves = [x for part in parts for x in part[4]]
    bkey = jax.random.fold_in(key, ber_index)

    def updates(t):
      tkey = jax.random.fold_in(bkey, t)
      out, ok, counts = [], jnp.bool_(True), [jnp.int32(0), jnp.int32(0)]
      for i, sub, cap, _, xs, auxes in parts:
        lo, hi = sub.bit_range(plan.fmt)
        u, ok_i, n = plain_updates(jax.random.fold_in(tkey, i), xs, auxes, ber, fmt=plan.fmt,
                                   lo=lo, hi=hi, cap=cap)
        out += u
        ok &= ok_i
        counts[i] = n
      return out, (tkey, ok, counts[0], counts[1])

    def evaluate(variables, t, extra):
      tkey, ok, nw, nt = extra
      subset = data
      if images is not None:
        subset = take_images(data, trial_image_indices(jax.random.fold_in(tkey, 2), *images))
      acc, loss, na = evaluate_trial(variables, subset, tkey, ber)
      return acc, loss, nw, nt, na, ok

    if not leaves:  # nothing in the fault space: every trial is the clean model
      return jax.lax.map(lambda t: evaluate(tree, t, (jax.random.fold_in(bkey, t), jnp.bool_(
          True), jnp.int32(0), jnp.int32(0))), idx)
    return carried_scan(flat, paths, leaves, updates, evaluate, idx)

  return f
