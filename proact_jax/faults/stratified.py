"""Stratified campaigns: trials stratified on the number of flips in a critical set ``C``.

The estimator, its variance, degrees of freedom and the allocation rule are in
:mod:`proact_jax.strata`; the sampling of one trial's weight faults in
:mod:`proact_jax.critical`. This module runs the trials, paired, resumable and batched like
:func:`campaign.run_campaign`:

* Trial ``t`` of stratum ``h`` at BER index ``b`` uses ``tkey = fold_in(fold_in(fold_in(
  fold_in(key, b), 0x5354), h), t)``; in it the weights outside ``C`` ``fold_in(tkey, 0)``, the
  thresholds ``fold_in(tkey, 1)`` (the ordinary Bernoulli model, as in a plain campaign), the
  image subset ``fold_in(tkey, 2)``, the positions in ``C`` ``fold_in(tkey, 3)`` and the tail
  count ``fold_in(tkey, 4)``. ``C`` lies in the weights (every fault-space collection but
  ``thresholds``), which the variants share: every variant sees the same faults in the same
  stratum and trial, and paired differences get stratified intervals too.
* Schedule per BER: a pilot of ``pilot`` trials in each stratum of positive weight, then rounds.
  Fixed budget (``trials`` per BER): each round at most doubles the total, shared by Neyman
  allocation (``strata.neyman_allocation`` on the root mean square over variants of the
  allocation sigmas) and never below what is done. Sequential (``ci_target``): each round
  moves towards the allocation at which every target (each variant's mean; with ``ci_pairs``
  also every pair's difference) reaches the half-width (``strata.target_allocation``), adding
  at most as many trials as are done (at least ``chunk``), until every stratified interval is
  within the target or ``max_trials`` is reached. Rounds depend only on the trials' outcomes,
  so the same key gives the same trials and numbers whatever the batching, chunking or
  interruptions.
* The results file is a campaign file whose configuration has a ``strata`` entry (``C``,
  ``k_max``, the exact weights per BER) and whose trial rows carry ``stratum`` and
  ``n_flips_critical``; :func:`results.load_results` summarises it with the stratified estimator.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from proact_jax.faults import carry, critical, critical_faults, strata
from proact_jax.faults import injection as faults
from proact_jax.faults.campaign import (_batched, _clean_references, _resolve_mode,
                                       header_config)
from proact_jax.core.evaluate import EvalSet, accuracy_and_loss, eval_apply, take_images
from proact_jax.faults.formats import DEFAULT_FORMAT, NumberFormat, get_format
from proact_jax.faults.neuron_faults import ACTIVATIONS
from proact_jax.faults.results import (STRATA_FIELDS, ResultsStore, StratifiedResult,
                                result_from_store, strata_arrays)
from proact_jax.faults.stratified_rounds import _next_counts, _targets, _undecided
from proact_jax.faults.trial import FaultPlan, check_campaign_inputs, make_plan, plan_at
from proact_jax.faults.trial import trial_image_indices

__all__ = ["StratifiedResult", "run_stratified_campaign"]

TAG = 0x5354


@dataclasses.dataclass(frozen=True)
class _Static:
  plan: FaultPlan
  critical: critical.CriticalSet
  k_max: int
  cap_c: int
  images: tuple | None
  n_directed: int = 0  # directed positions of C (CriticalSet.positions), passed as arrays


@functools.lru_cache(maxsize=32)
def _runner(model, st: _Static, mode: str, trial_batch: int | None, n_dev: int, exact: bool):
  """jit f((clean, aux), data, key, ber_index, ber, table, directed, hs, ts) -> (acc, loss,
  n_out, k_c, n_t, ok) per trial (``directed``: ``CriticalSet.positions`` arrays). ``exact``:
  copy the tree per trial with the dense fallback (ok always True); else carry it (map mode)
  and flag trials to rerun."""
  apply_fn = eval_apply(model)
  plan = st.plan
  lo, hi = plan.weights.bit_range(plan.fmt)

  def local(clean, data, key, ber_index, ber, table, directed, hs, ts):
    tree, aux = clean
    flat = faults._flat(tree)
    wpaths, wleaves, wauxes = carry.space_leaves(flat, aux, plan.weights, plan.fmt)
    tpaths, tleaves, tauxes = carry.space_leaves(flat, aux, plan.thresholds, plan.fmt)
    geo = critical_faults._geometry(["/".join(p) for p in wpaths],
                                    [int(x.size) for x in wleaves], st.critical, st.n_directed)
    bkey = jax.random.fold_in(jax.random.fold_in(key, ber_index), TAG)
    kw = dict(fmt=plan.fmt, lo=lo, hi=hi, cap=plan.cap_weights, cap_c=st.cap_c, geo=geo,
              directed=directed)

    def keys(x):
      h, t = x[0], x[1]
      tkey = jax.random.fold_in(jax.random.fold_in(bkey, h), t)
      k_c = jnp.where(h < st.k_max, h,
                      critical_faults.tail_count(jax.random.fold_in(tkey, 4), table, st.k_max))
      return tkey, k_c

    def evaluate_fn(variables, x, extra):
      tkey, n_out, k_c, n_t, ok = extra
      if st.images is None:
        acc, loss = accuracy_and_loss(apply_fn, variables, data)
      else:
        pick = trial_image_indices(jax.random.fold_in(tkey, 2), *st.images)
        acc, loss = accuracy_and_loss(apply_fn, variables, take_images(data, pick))
      return acc, loss, n_out, k_c, n_t, ok

    def threshold_updates(tkey):
      if not tleaves:
        return [], jnp.bool_(True), jnp.int32(0)
      tlo, thi = plan.thresholds.bit_range(plan.fmt)
      return carry.plain_updates(jax.random.fold_in(tkey, 1), tleaves, tauxes, ber, fmt=plan.fmt,
                                 lo=tlo, hi=thi, cap=plan.cap_thresholds)

    if not exact:
      def updates(x):
        tkey, k_c = keys(x)
        wu, ok_w, n_out, _ = critical_faults.stratified_weight_faults(
            jax.random.fold_in(tkey, 0), jax.random.fold_in(tkey, 3), wleaves, wauxes, ber, k_c,
            sparse_only=True, **kw)
        tu, ok_t, n_t = threshold_updates(tkey)
        return wu + tu, (tkey, n_out, k_c, n_t, ok_w & ok_t)

      return carry.carried_scan(flat, wpaths + tpaths, wleaves + tleaves, updates, evaluate_fn,
                                jnp.stack([hs, ts], -1))

    def one(x):
      tkey, k_c = keys(x)
      new, n_out, _ = critical_faults.stratified_weight_faults(
          jax.random.fold_in(tkey, 0), jax.random.fold_in(tkey, 3), wleaves, wauxes, ber, k_c,
          **kw)
      variables = dict(flat)
      variables.update({p: x.reshape(flat[p].shape) for p, x in zip(wpaths, new)})
      variables = traverse_util.unflatten_dict(variables)
      n_t = jnp.int32(0)
      if plan.thresholds is not None:
        variables, n_t = faults.flip_bits(jax.random.fold_in(tkey, 1), variables, ber, plan.fmt,
                                          plan.thresholds, max_flips=plan.cap_thresholds,
                                          prequantized=True, aux=aux)
      return evaluate_fn(variables, x, (tkey, n_out, k_c, n_t, jnp.bool_(True)))

    return _batched(one, jnp.stack([hs, ts], -1), mode, trial_batch)

  if n_dev == 1:
    return jax.jit(local)
  mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("trials",))
  f = jax.shard_map(local, mesh=mesh, in_specs=(P(),) * 7 + (P("trials"), P("trials")),
                    out_specs=P("trials"), check_vma=False)
  return jax.jit(f)


def _call(model, st, mode, trial_batch, exact, clean, data, key, b, ber, table, directed, pairs,
          size):
  n_dev = jax.device_count()
  size = -(-max(size, len(pairs)) // n_dev) * n_dev
  pad = list(pairs) + [pairs[-1]] * (size - len(pairs))
  hs, ts = (np.asarray(c, np.int32) for c in zip(*pad))
  if n_dev > 1:
    mesh = Mesh(np.asarray(jax.devices()), ("trials",))
    hs, ts = (jax.make_array_from_callback(a.shape, NamedSharding(mesh, P("trials")),
                                           lambda i, a=a: a[i]) for a in (hs, ts))
  f = _runner(model, dataclasses.replace(st, plan=plan_at(st.plan, ber)), mode, trial_batch,
              n_dev, exact)
  out = f(clean, data, key, jnp.int32(b), jnp.float32(ber), jnp.asarray(table), directed, hs,
          ts)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    out = multihost_utils.process_allgather(out, tiled=True)
  return [np.asarray(o)[:len(pairs)] for o in out]


def _run_pairs(model, st, mode, trial_batch, clean, data, key, b, ber, table, directed, pairs,
               size):
  """Runs (stratum, trial) pairs; carried in map mode, with an exact rerun of short trials."""
  carried = mode == "map" and not (trial_batch and trial_batch > 1)
  out = _call(model, st, mode, trial_batch, not carried, clean, data, key, b, ber, table,
              directed, pairs, size)
  redo = [i for i, ok in enumerate(out[5]) if not ok]
  if redo:
    again = _call(model, st, "map", None, True, clean, data, key, b, ber, table, directed,
                  [pairs[i] for i in redo], len(redo))
    for o, a in zip(out, again):
      o[redo] = a
  n = data.n if st.images is None else st.images[1]
  acc = np.rint(out[0].astype(np.float64) * n) / n
  return acc, out[1], out[2], out[3], out[4]


def run_stratified_campaign(key: chex.PRNGKey, variants: dict, eval_set: EvalSet, bers,
                            trials: int, *, critical_set: critical.CriticalSet, k_max: int = 3,
                            pilot: int = 8, fmt: str | NumberFormat = DEFAULT_FORMAT,
                            space: faults.FaultSpace | None = None,
                            results_path: str | None = None, ci_target: float | None = None,
                            ci_pairs: bool = False, max_trials: int | None = None,
                            chunk: int | None = None, progress: bool = True,
                            config_extra: dict | None = None, reference: str | None = None,
                            trial_batch: int | None = None, mode: str = "auto",
                            confidence: float = 0.95, on_chunk: Callable | None = None,
                            images_per_trial: int | None = None,
                            stop_pairwise: bool = False) -> StratifiedResult:
  """A paired campaign stratified on the flips in ``critical_set`` (module docstring).

  Args:
    key, variants, eval_set, bers, fmt, space, results_path, config_extra, reference,
      trial_batch, mode, confidence, images_per_trial: as :func:`campaign.run_campaign`.
    trials: trials per BER over all strata (fixed budget); with ``ci_target`` the maximum
      unless ``max_trials`` is given.
    critical_set: ``C``, inside the weight fault space of every variant
      (:meth:`critical.CriticalSet.resolve`, or cells of a vulnerability map).
    k_max: strata ``K_C = 0 .. k_max - 1`` and the tail ``K_C >= k_max``.
    pilot: first trials in each stratum of positive weight (at least 2).
    ci_target: sequential mode, the half-width target in points (0.5 = half a point).
    ci_pairs: sequential mode: every pair of variants' difference must reach the target too.
    stop_pairwise: sequential mode, instead of the variant means: a BER stops once every
      pairwise difference between the protected variants (all but ``relu``) excludes 0 after
      Holm (x the number of BERs) or has a half-width within ``ci_target``, as
      ``run_campaign(stop_pairwise=True)`` with the stratified estimator; the allocation aims
      at the open pairs. The p-values are not corrected for the repeated looks (a screening
      rule; report the final Holm p-values of ``pairwise_rows``).
    max_trials: sequential mode: at most this many trials per BER.
    chunk: trials per compiled call (default 32); also the smallest growth of a round.
    on_chunk: optional ``f(variant, ber_index, [(stratum, trial), ...])`` after each saved chunk.

  Returns:
    A :class:`results.StratifiedResult`.

  Raises:
    ValueError: bad inputs (as ``run_campaign``), ``C`` outside a variant's weight space, a
      budget below the pilot, activation faults in ``space`` (not stratified), or a results
      file of another configuration. Nothing is written
      before the inputs are validated.
  """
  bers, m, reference = check_campaign_inputs(variants, bers, trials, ci_target, eval_set.n,
                                             images_per_trial, reference)
  if stop_pairwise and (ci_target is None or ci_pairs):
    raise ValueError("stop_pairwise needs ci_target and replaces ci_pairs")
  if int(k_max) < 1 or int(pilot) < 2:
    raise ValueError(f"need k_max >= 1 and pilot >= 2, got {k_max} and {pilot}")
  if not critical_set.sites and not critical_set.directed:
    raise ValueError("the critical set is empty")
  mode = _resolve_mode(mode)
  fmt = get_format(fmt)
  space = space or faults.FaultSpace()
  if ACTIVATIONS in space.collections:
    raise ValueError("a stratified campaign stratifies weight faults: activation faults are "
                     "not supported there (use run_campaign)")
  names = list(variants)
  plans = {n: make_plan(v, fmt, space, max(bers), require_match=False)
           for n, (_, v) in variants.items()}
  n_c = None
  # a directed C is a fixed position list read from the reference's clean weights, the same
  # positions for every variant (any fixed C keeps the estimator unbiased and the pairing)
  masks = critical_set.value_masks(variants[reference][1], fmt) if critical_set.directed else {}
  directed, layouts = {}, {}
  for n, (_, v) in variants.items():
    if plans[n].weights is None:
      raise ValueError(f"variant {n!r} has no weights in the fault space: nothing to stratify")
    paths = faults.fault_leaves(v, plans[n].weights)
    sites = critical_set.sites + tuple(d[:2] for d in critical_set.directed)
    missing = [p for p, _ in sites if p not in paths]
    lo, hi = space.bit_range(fmt)
    if missing or any(not lo <= b < hi for _, bits in sites for b in bits):
      raise ValueError(f"critical set {critical_set.describe()} is not inside variant {n!r}'s "
                       f"weight fault space (leaves {missing or 'ok'}, bits [{lo}, {hi}))")
    flat = faults._flat(v)
    layout = (tuple(paths), tuple(int(np.size(flat[tuple(p.split("/"))])) for p in paths))
    same = next((directed[m] for m, lay in layouts.items() if lay == layout), None)
    layouts[n] = layout  # variants of one architecture share the position arrays
    directed[n] = same or tuple(jnp.asarray(a) for a in critical.CriticalSet.positions(
        masks, *layout))
    n_c = dataclasses.replace(critical_set, directed=()).n_bits(v) + int(directed[n][0].size)
  if n_c == 0:
    raise ValueError(f"the critical set {critical_set.describe()} holds no position")
  k_max = int(k_max)
  length = max(strata.tail_length(n_c, b, k_max) for b in bers)
  cap_c = min(n_c, k_max + length - 1)
  weights = [strata.stratum_weights(n_c, b, k_max) for b in bers]
  tables = [strata.tail_thresholds(n_c, b, k_max, length) for b in bers]
  max_trials = int(max_trials or trials)
  sequential = ci_target is not None
  budget = max_trials if sequential else int(trials)
  live = [int(np.sum(w > 0)) for w in weights]
  if budget < max(live) * int(pilot):
    raise ValueError(f"{budget} trials per BER cannot hold the pilot of {pilot} trials in each "
                     f"of {max(live)} strata")
  chunk = max(1, int(chunk or 32))
  pairs = [(a, b) for j, a in enumerate(names) for b in names[:j]] if ci_pairs else []
  config = {
      **header_config(key, bers, fmt, space,
                      f"fold_in(fold_in(fold_in(fold_in(key, ber_index), {TAG}), stratum), "
                      "trial); weights outside C fold_in(k, 0), thresholds fold_in(k, 1), images "
                      "fold_in(k, 2), positions in C fold_in(k, 3), tail count fold_in(k, 4)",
                      variants, plans, eval_set),
      "strata": {"critical": critical_set.to_json(), "n_bits": n_c, "k_max": k_max,
                 "table_length": length, "cap": cap_c,
                 "weights": [w.tolist() for w in weights]},
      "extra": config_extra or {},
  }
  if m is not None:
    config["images_per_trial"] = m
    config["image_key"] = "fold_in(trial_key, 2): permutation(n)[:images_per_trial]"
  run = {"trials": int(trials), "ci_target": ci_target, "ci_pairs": bool(ci_pairs),
         "pilot": int(pilot), "max_trials": max_trials, "chunk": chunk, "mode": mode,
         **({"stop_pairwise": True} if stop_pairwise else {}),
         "trial_batch": trial_batch, "devices": jax.device_count(), "reference": reference}
  store = ResultsStore(results_path, config, run, write=jax.process_index() == 0,
                       key_fields=STRATA_FIELDS)
  try:
    clean = _clean_references(store, variants, fmt, space, eval_set)
  except BaseException:
    store.close()
    raise
  statics = {n: _Static(plans[n], critical_set, k_max, cap_c,
                        None if m is None else (int(eval_set.n), m), int(directed[n][0].size))
             for n in names}
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(bers) * len(names) * budget, unit="trial", dynamic_ncols=True)
  final = []
  try:
    for b, ber in enumerate(bers):
      w = weights[b]
      counts = np.where(w > 0, int(pilot), 0).astype(np.int64)
      shown = 0
      while True:
        for name in names:
          todo = [(h, t) for h in range(len(w)) for t in range(counts[h])
                  if t not in store.done(name, b, h)]
          for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            acc, loss, n_out, k_c, n_t = _run_pairs(
                variants[name][0], statics[name], mode, trial_batch, clean[name], eval_set, key,
                b, ber, tables[b], directed[name], part, chunk)
            store.add_trials(
                {"type": "trial", "variant": name, "ber_index": b, "ber": ber, "stratum": int(h),
                 "trial": int(t), "accuracy": float(a), "loss": float(lo),
                 "n_flips": int(no) + int(kc) + int(nt), "n_flips_weights": int(no) + int(kc),
                 "n_flips_thresholds": int(nt), "n_flips_critical": int(kc)}
                for (h, t), a, lo, no, kc, nt in zip(part, acc, loss, n_out, k_c, n_t))
            if on_chunk is not None:
              on_chunk(name, b, list(part))
        if bar is not None:
          bar.update(len(names) * (int(counts.sum()) - shown))
          shown = int(counts.sum())
        samples = {}
        for name in names:
          arr = strata_arrays(store, name, b, counts.tolist())
          samples[name] = [arr["accuracy"][arr["stratum"] == h] for h in range(len(w))]
        targets = _targets(samples, pairs)
        widths = [strata.stratified_summary(t, w, confidence)["half_width"] for t in targets]
        if sequential and stop_pairwise:
          targets = _undecided(samples, w, ci_target / 100.0, confidence, len(bers))
        if bar is not None:
          mean = strata.stratified_summary(samples[reference], w)["mean"]
          bar.set_postfix(ber=f"{ber:.0e}", n=int(counts.sum()), mean=f"{100 * mean:.2f}%",
                          hw=f"{100 * max(widths):.2f}pp",
                          **({"open": len(targets)} if sequential and stop_pairwise else {}))
        if sequential and stop_pairwise:
          if not targets:
            break
        elif sequential and max(widths) <= ci_target / 100.0:
          break
        nxt = _next_counts(w, counts, targets, total=None if sequential else budget,
                           half_width=ci_target / 100.0 if sequential else None,
                           max_total=budget, grow_min=chunk, confidence=confidence)
        if np.array_equal(nxt, counts):
          break
        counts = nxt
      if bar is not None:
        bar.update(len(names) * (budget - shown))
      final.append(counts.tolist())
  finally:
    if bar is not None:
      bar.close()
    store.close()
  return result_from_store(store, bers, names, reference, final, confidence)
