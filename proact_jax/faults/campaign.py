"""Fault-injection campaigns: many trials of :func:`faults.flip_bits`, batched and sharded.

A trial corrupts a fresh copy of the quantised clean variables and measures top-1 accuracy and
loss on the evaluation images (non-finite logits count as wrong). Trial ``t`` at BER index ``b``
uses the key ``fold_in(fold_in(key, b), t)``, so its result does not depend on the trial batch
size, the batching mode, the number of devices, or on resumption. Inside a trial the weights
(every fault-space collection but ``thresholds``) are corrupted with ``fold_in(trial_key, 0)``
and the thresholds with ``fold_in(trial_key, 1)``, in two ``flip_bits`` calls: variants that
share a baseline's params but differ in thresholds (relu, Ranger, FT-ClipAct, FitAct, ProAct)
receive identical weight faults in trial ``t``, so their accuracies can be compared paired.

Activation faults (``"activations"`` in ``space.collections``): transient flips in every
site's output while each image is evaluated (:mod:`proact_jax.faults.neuron_faults`), keyed by
``fold_in(trial_key, 5)``; rows then carry ``n_flips_activations`` (also counted in ``n_flips``)
and the configuration an ``activation_faults`` entry. They depend only on the trial key, so
they compose with the carried tree and every batching; they follow the Bernoulli rule only
(``fault_rule="toolbox-floor"`` with them is refused). Variants are any model
:func:`proact_jax.transform.network.as_network` accepts (linen modules with an ``act`` field,
networks from :func:`proact_jax.function_network`).

Image subsets (``images_per_trial=m``): by default every trial is evaluated on all ``n`` images
of the eval set. With ``m`` set, trial ``t`` evaluates ``m`` distinct images drawn uniformly
without replacement from the ``n`` valid images with ``fold_in(trial_key, 2)``
(:func:`trial_image_indices`), a fresh subset per trial. Per-trial accuracy variance is
``Var_fault + Var_image (n - m) / ((n - 1) m)`` and the fault term usually dominates, so many
trials on small subsets reach a CI target with far fewer image evaluations than few trials on
the whole set. The subset depends only on the campaign key, BER index and trial, so every
variant of a paired campaign sees the same images in trial ``t`` and the draw does not depend
on batching, chunks, devices or resumption. It is built inside the jitted trial function
(gathered into padded, masked batches; :func:`evaluate.take_images`); the accuracy is the exact
count correct / ``m``. ``m`` is part of the results file's configuration (recorded only when
set, so files of full-set campaigns are unchanged); the clean accuracy is still measured on the
whole eval set.

The clean tree is quantised once (``faults.quantize_with_aux``: it keeps the clean int8 scales);
trials inject into it with ``prequantized=True``, encoding only the hit values. The BER is a
traced argument; the static flip caps are sized per BER (``trial.plan_at``: the same trials as
with the caps at the largest BER, which the header records, drawing and sorting far fewer
candidates at low BER), so BERs whose caps round to the same power of two share a compilation.

Batching (``mode``): ``"map"`` runs trials one after another, carrying one corrupted tree
through a ``lax.scan`` and restoring only the previous trial's values before writing the next
trial's (:mod:`carry`: no copy of the tree per trial; a trial whose sparse draw falls short,
which the static cap makes rarer than 1e-30, is rerun on the copying path); ``trial_batch``
> 1 vmaps fresh copies within chunks of that size; ``"vmap"`` vmaps every trial of a chunk (on CPU, vmapped
parameter copies turn convolutions into grouped convolutions, several times slower);
``"auto"`` is map on CPU, vmap on GPU/TPU. The trial axis is sharded over all devices with
``shard_map`` (padded to a multiple of the device count; the padding is dropped). Multi-host
(``jax.distributed.initialize()`` first): the mesh spans every process's devices, each process
computes its share of the trials, results are all-gathered and only process 0 writes the file.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from proact_jax.core.evaluate import EvalSet, evaluate, take_images
from proact_jax.faults import carry, stats
from proact_jax.faults import injection as faults
from proact_jax.faults import neuron_faults
from proact_jax.faults.formats import DEFAULT_FORMAT, NumberFormat, get_format
from proact_jax.faults.results import (CampaignResult, ResultsStore, fingerprint, load_results,
                                       result_from_store)
from proact_jax.faults.trial import (FaultPlan, check_bers, check_campaign_inputs, plan_at,
                                     check_images_per_trial, corrupt, make_plan,
                                     trial_image_indices)

MODES = ("auto", "map", "vmap")
__all__ = ["MODES", "CampaignResult", "FaultPlan", "accuracy_under_faults", "corrupt",
           "load_results", "make_plan", "run_campaign", "trial_image_indices"]


def _resolve_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"unknown batching mode {mode!r}; expected one of {', '.join(MODES)}")
  if mode == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return mode


def _batched(one: Callable, idx: jax.Array, mode: str, trial_batch: int | None):
  if mode == "vmap" and not trial_batch:
    return jax.vmap(one)(idx)
  return jax.lax.map(one, idx, batch_size=trial_batch if trial_batch and trial_batch > 1 else None)


@functools.lru_cache(maxsize=64)
def _runner(model, plan: FaultPlan, mode: str, trial_batch: int | None, n_dev: int,
            images_per_trial: tuple[int, int] | None = None, carried: bool = False,
            act_plan: neuron_faults.ActivationPlan | None = None):
  """jit(f)((clean, aux), data, key, ber_index, ber, idx) -> (acc, loss, n_w, n_t, n_a, ok),
  each [len(idx)]; ``(clean, aux) = faults.quantize_with_aux(...)``. ``images_per_trial``:
  ``(n, m)``, evaluate each trial on ``m`` of the ``n`` images (None: all of them).
  ``carried``: one carried tree (:mod:`carry`; ``ok`` False marks trials to rerun), else a
  fresh copy per trial (``ok`` always True). ``act_plan``: activation faults keyed by
  ``fold_in(trial_key, 5)`` (None: none; ``n_a`` is 0)."""
  evaluate_trial = neuron_faults.trial_evaluator(model, act_plan)

  def copying(clean, data, key, ber_index, ber, idx):
    bkey = jax.random.fold_in(key, ber_index)

    def one(t):
      tkey = jax.random.fold_in(bkey, t)
      v, nw, nt = corrupt(tkey, clean[0], ber, plan, prequantized=True, aux=clean[1])
      images = data
      if images_per_trial is not None:
        pick = trial_image_indices(jax.random.fold_in(tkey, 2), *images_per_trial)
        images = take_images(data, pick)
      acc, loss, na = evaluate_trial(v, images, tkey, ber)
      return acc, loss, nw, nt, na, jnp.bool_(True)

    return _batched(one, idx, mode, trial_batch)

  local = carry.campaign_trials(evaluate_trial, plan, images_per_trial) if carried else copying
  if n_dev == 1:
    return jax.jit(local)
  mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("trials",))
  f = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P(), P("trials")),
                    out_specs=P("trials"), check_vma=False)
  return jax.jit(f)


def _run_trials(model, plan, clean, data: EvalSet, key, ber_index: int, ber: float,
                trials: Sequence[int], mode: str, trial_batch: int | None,
                size: int | None = None, images_per_trial: int | None = None,
                carried: bool | None = None,
                act_plan: neuron_faults.ActivationPlan | None = None) -> tuple[np.ndarray, ...]:
  """Runs the given trial indices (padded to ``size`` and to a multiple of the device count).

  ``carried`` (default: in map mode without ``trial_batch``) carries one corrupted tree through
  the trials (:mod:`carry`) and reruns the rare trials it flags on the copying path; the
  numbers are the same either way. ``act_plan``: activation faults
  (:func:`neuron_faults.activation_plan`). Returns ``(acc, loss, n_w, n_t, n_a)`` per trial.

  ``clean``: ``faults.quantize_with_aux(variables, plan.fmt, space)``. ``images_per_trial``:
  evaluate each trial on that many random images of ``data`` (None: all of them); the callers
  validate it with ``check_images_per_trial``.
  """
  m = images_per_trial
  n_dev = jax.device_count()
  trials = np.asarray(trials, np.int32)
  size = max(size or len(trials), len(trials))
  size = -(-size // n_dev) * n_dev
  idx = np.concatenate([trials, np.full(size - len(trials), trials[-1], np.int32)])
  images = None if m is None else (int(data.n), m)
  if carried is None:  # the carried tree implements the Bernoulli sampler only
    carried = (mode == "map" and not (trial_batch and trial_batch > 1)
               and plan.rule == "bernoulli")
  f = _runner(model, plan_at(plan, ber), mode, trial_batch, n_dev, images, carried, act_plan)
  if n_dev > 1:
    mesh = Mesh(np.asarray(jax.devices()), ("trials",))
    idx = jax.make_array_from_callback(idx.shape, NamedSharding(mesh, P("trials")),
                                       lambda i: idx[i])
  out = f(clean, data, key, jnp.int32(ber_index), jnp.float32(ber), idx)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    out = multihost_utils.process_allgather(out, tiled=True)
  acc, loss, nw, nt, na, ok = (np.asarray(o)[:len(trials)] for o in out)
  # exact count / n in float64: float32 division may differ in the last bit across batchings
  n_eval = int(data.n) if m is None else m
  acc = np.rint(acc.astype(np.float64) * n_eval) / n_eval
  if not ok.all():  # carried trials short of sparse candidates: rerun on the copying path
    redo = np.flatnonzero(~ok)
    again = _run_trials(model, plan, clean, data, key, ber_index, ber, trials[redo], "map", 1,
                        len(redo), m, carried=False, act_plan=act_plan)
    acc, loss, nw, nt, na = (o.copy() for o in (acc, loss, nw, nt, na))
    for o, a in zip((acc, loss, nw, nt, na), again):
      o[redo] = a
  return acc, loss, nw, nt, na


def accuracy_under_faults(key: chex.PRNGKey, model, variables, eval_set: EvalSet, bers, trials,
                          *, fmt: str | NumberFormat = DEFAULT_FORMAT,
                          space: faults.FaultSpace | None = None,
                          trial_batch: int | None = None, mode: str = "auto",
                          images_per_trial: int | None = None) -> np.ndarray:
  """Top-1 accuracies under bit flips, ``[len(bers), trials]`` in [0, 1].

  Trial ``t`` at BER index ``b`` uses ``fold_in(fold_in(key, b), t)`` (see module docstring).
  ``images_per_trial``: evaluate each trial on a fresh random subset of that many images.
  """
  bers = check_bers(bers)
  if int(trials) < 1:
    raise ValueError(f"trials must be >= 1, got {trials}")
  images_per_trial = check_images_per_trial(images_per_trial, int(eval_set.n))
  mode = _resolve_mode(mode)
  act_plan = neuron_faults.activation_plan(space, fmt, max(bers))
  plan = make_plan(variables, fmt, space, max(bers), require_match=act_plan is None)
  clean = faults.quantize_with_aux(variables, plan.fmt, space or faults.FaultSpace())
  out = np.zeros((len(bers), int(trials)))
  for i, ber in enumerate(bers):
    out[i] = _run_trials(model, plan, clean, eval_set, key, i, ber, range(int(trials)), mode,
                         trial_batch, images_per_trial=images_per_trial, act_plan=act_plan)[0]
  return out


def eval_set_hash(data: EvalSet) -> str:
  return fingerprint({"x": data.x, "y": data.y, "mask": data.mask})


def header_config(key, bers, fmt: NumberFormat, space, trial_key: str, variants: dict,
                  plans: dict, eval_set: EvalSet) -> dict:
  """The fields every campaign's results header starts with (plain and stratified): the key,
  BERs, format and fault space, how trial keys derive (``trial_key``), each variant's model,
  fingerprint and fault plan, and the evaluation set. Resuming compares them."""
  return {
      # 2: exactly uniform positions and the whole model quantised (files of 1 are not resumed)
      "version": 2, "key": np.asarray(jax.random.key_data(key)).tolist(), "bers": bers,
      "format": fmt.name, "space": dataclasses.asdict(space), "trial_key": trial_key,
      "variants": {n: {"model": repr(m), "fingerprint": fingerprint(v),
                       "bits_weights": plans[n].bits_weights,
                       "bits_thresholds": plans[n].bits_thresholds,
                       "cap_weights": plans[n].cap_weights,
                       "cap_thresholds": plans[n].cap_thresholds}
                   for n, (m, v) in variants.items()},
      "eval_set": {"n": int(eval_set.n), "hash": eval_set_hash(eval_set)},
  }


def run_campaign(key: chex.PRNGKey, variants: dict, eval_set: EvalSet, bers, trials: int, *,
                 fmt: str | NumberFormat = DEFAULT_FORMAT, space: faults.FaultSpace | None = None,
                 results_path: str | None = None, ci_target: float | None = None,
                 min_trials: int = 30, max_trials: int | None = None, chunk: int | None = None,
                 progress: bool = True, config_extra: dict | None = None,
                 reference: str | None = None, trial_batch: int | None = None,
                 mode: str = "auto", confidence: float = 0.95,
                 on_chunk: Callable | None = None,
                 images_per_trial: int | None = None,
                 fault_rule: str = "bernoulli",
                 stop_pairwise: bool = False) -> CampaignResult:
  """A paired campaign over one or several variants, resumable through a JSONL results file.

  Args:
    key: the campaign's PRNG key.
    variants: ``{name: (model, variables)}``; every variant sees the same trial keys.
    eval_set: the evaluation images.
    bers: bit error rates in [0, 1].
    trials: trials per BER; with ``ci_target``, the maximum unless ``max_trials`` is given.
    fmt, space: number format and fault space (thresholds are fault sites by default).
    results_path: JSONL file written as trials finish; an existing file with the same
      configuration is resumed, one with a different configuration is refused.
    ci_target: sequential mode: half-width target of the 95% CI in accuracy points (0.5 = half a
      percentage point). Trials run in chunks; a BER stops at the first chunk boundary (at least
      ``min_trials``) where every variant's half-width is within the target, or at ``max_trials``.
    chunk: trials per chunk (fixed mode: balanced chunks of at most 64; sequential: 10).
    progress: show a tqdm bar (BER, trials, running mean and CI half-width).
    config_extra: extra JSON items identifying the campaign (compared on resume).
    reference: the variant paired differences are taken against (default "relu", else the
      first).
    trial_batch, mode: batching (see module docstring); they do not change the results.
    on_chunk: optional ``f(variant, ber_index, trial_indices)`` called after each chunk is saved.
    images_per_trial: evaluate trial ``t`` on ``m`` images drawn without replacement with
      ``fold_in(trial_key, 2)`` (the same for every variant; see module docstring), 1 <= m <=
      ``eval_set.n``; None evaluates every trial on all images. Recorded in the configuration
      when set. The clean accuracy is always measured on the whole eval set.
    fault_rule: ``"bernoulli"`` (default) or ``"toolbox-floor"``: exactly
      ``floor(n_leaf * bits * BER)`` flips in every leaf (kernels, biases, threshold tensors;
      see :func:`trial.make_plan`). Recorded in the configuration when not Bernoulli; activation
      faults (``"activations"`` in ``space.collections``) need ``"bernoulli"``.
    stop_pairwise: sequential mode: stop a BER only when every pairwise difference between
      the non-reference variants either excludes 0 after Holm's correction (over the pairs at
      that BER) or has a half-width <= ``ci_target`` (:func:`stats.pairwise_should_stop`),
      instead of every variant's own half-width; ``max_trials`` caps it.

  Returns:
    A :class:`CampaignResult`.

  Raises:
    ValueError: bad BERs, trial counts, images per trial, format, bit range, layer filter, or a
      results file from a different configuration. Nothing is written before the inputs are validated.
  """
  bers, images_per_trial, reference = check_campaign_inputs(
      variants, bers, trials, ci_target, eval_set.n, images_per_trial, reference)
  mode = _resolve_mode(mode)
  fmt = get_format(fmt)
  space = space or faults.FaultSpace()
  names = list(variants)
  plans = {n: make_plan(v, fmt, space, max(bers), require_match=False, rule=fault_rule,
                       bers=tuple(bers)) for n, (_, v) in variants.items()}
  act_plan = neuron_faults.activation_plan(space, fmt, max(bers))
  if act_plan is not None and fault_rule != "bernoulli":
    raise ValueError(f"activation faults follow the Bernoulli rule only; fault rule "
                     f"{fault_rule!r} cannot be combined with them")
  act_bits = {n: neuron_faults.activation_bits(m, v, tuple(eval_set.x.shape[2:]), act_plan)
              for n, (m, v) in variants.items()} if act_plan else {}
  if space.layer is not None and all(p.weights is None and p.thresholds is None
                                     for p in plans.values()) and not any(act_bits.values()):
    faults.fault_leaves(variants[names[0]][1], space)  # raises with the layer names
  max_trials = int(max_trials or trials)
  sequential = ci_target is not None
  min_trials = min(int(min_trials), max_trials)
  if chunk is None:
    chunk = 10 if sequential else -(-int(trials) // -(-int(trials) // 64))
  chunk = max(1, int(chunk))
  config = {**header_config(key, bers, fmt, space, "fold_in(fold_in(key, ber_index), trial); "
                             "weights fold_in(k, 0), thresholds fold_in(k, 1)", variants, plans,
                             eval_set),
            "extra": config_extra or {}}
  if act_plan is not None:  # only when set: files without activation faults keep their config
    config["activation_faults"] = {
        "key": "fold_in(trial_key, 5); site evaluation j (forward order), image position p: "
               "fold_in(fold_in(k, j), p)",
        "bits_per_image": act_bits}
  if fault_rule != "bernoulli":  # only when set: Bernoulli results files keep their config
    config["fault_rule"] = fault_rule
  if images_per_trial is not None:  # only when set: full-set results files keep their config
    config["images_per_trial"] = images_per_trial
    config["image_key"] = "fold_in(trial_key, 2): permutation(n)[:images_per_trial]"
  run = {"trials": int(trials), "ci_target": ci_target, "min_trials": min_trials,
         **({"stop_pairwise": True} if stop_pairwise else {}),
         "max_trials": max_trials, "chunk": chunk, "mode": mode, "trial_batch": trial_batch,
         "devices": jax.device_count(), "reference": reference}
  store = ResultsStore(results_path, config, run, write=jax.process_index() == 0)
  try:
    clean = _clean_references(store, variants, fmt, space, eval_set)
  except BaseException:
    store.close()
    raise

  if sequential:
    first = -(-min_trials // chunk) * chunk
    bounds = list(range(first, max_trials, chunk)) + [max_trials]
  else:
    bounds = list(range(chunk, int(trials), chunk)) + [int(trials)]
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(bers) * len(names) * bounds[-1], unit="trial", dynamic_ncols=True)
  final_n = []
  try:
    for b, ber in enumerate(bers):
      n_done = 0
      for n_k in bounds:
        for name in names:
          model, _ = variants[name]
          missing = [t for t in range(n_k) if t not in store.done(name, b)]
          if bar is not None:
            bar.update(n_k - len(missing) - min(n_k, n_done))
          for s in range(0, len(missing), chunk):
            part = missing[s:s + chunk]
            acc, loss, nw, nt, na = _run_trials(model, plans[name], clean[name], eval_set, key,
                                                b, ber, part, mode, trial_batch, size=chunk,
                                                images_per_trial=images_per_trial,
                                                act_plan=act_plan)
            store.add_trials(
                {"type": "trial", "variant": name, "ber_index": b, "ber": ber, "trial": int(t),
                 "accuracy": float(a), "loss": float(lo), "n_flips": int(w) + int(h) + int(f),
                 "n_flips_weights": int(w), "n_flips_thresholds": int(h),
                 **({"n_flips_activations": int(f)} if act_plan else {})}
                for t, a, lo, w, h, f in zip(part, acc, loss, nw, nt, na))
            if bar is not None:
              bar.update(len(part))
            if on_chunk is not None:
              on_chunk(name, b, list(part))
        n_done = n_k
        accs = {v: store.arrays(v, b, n_k)["accuracy"] for v in names}
        worst = max(stats.summarize(a, confidence)["half_width"] for a in accs.values())
        if bar is not None:
          bar.set_postfix(ber=f"{ber:.0e}", n=n_k, mean=f"{100 * np.mean(accs[reference]):.2f}%",
                          hw=f"{100 * worst:.2f}pp")
        if sequential and stop_pairwise:
          if stats.pairwise_should_stop([accs[v] for v in names if v != "relu"],
                                        ci_target / 100.0, min_trials, confidence,
                                        family_multiplier=len(bers)):
            break
        elif sequential and all(stats.should_stop(a, ci_target / 100.0, min_trials, confidence)
                                for a in accs.values()):
          break
      if bar is not None:
        bar.update(len(names) * (bounds[-1] - n_done))
      final_n.append(n_done)
  finally:
    if bar is not None:
      bar.close()
    store.close()
  return result_from_store(store, bers, names, reference, final_n, confidence)


def _clean_references(store: ResultsStore, variants: dict, fmt, space, eval_set: EvalSet):
  """Each variant's clean tree (the whole model in ``fmt``) with its aux; records the clean
  accuracy, as the exact count correct / n like the trials', when the store lacks it."""
  clean = {n: faults.quantize_with_aux(v, fmt, space) for n, (_, v) in variants.items()}
  for n, (m, _) in variants.items():
    if n not in store.clean:
      acc, loss = evaluate(m, clean[n][0], eval_set)
      store.add_clean(n, np.rint(np.float64(acc) * eval_set.n) / eval_set.n, loss)
  return clean
