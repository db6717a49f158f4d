"""Model-side data for ``proact report``: variant/model metadata, activation distances, histograms.

:func:`variant_info`, :func:`model_info` and :func:`campaign_extra` describe the variants of a
campaign (method, granularity, float clean accuracies, memory overhead; Tables II/III) for its
results header (``config_extra`` of :func:`campaign.run_campaign`).

:func:`activation_report` measures, for each variant,

* Table V: the mean squared L2 distance ``||a_faulty - a_clean||^2`` (per image, averaged over
  images and trials) at every activation site, with faults injected into one parameter layer at
  a time (:func:`activation_faults.activation_distance` with ``layer=<faulted layer>``);
* Figs. 3/6: histograms of fault-free and faulty activation values at every site under
  whole-model faults (:func:`activation_faults.activation_samples`), split at 1 as in the
  paper: values in
  [0, 1] on linear bins, values above 1 on log-spaced bins up to the largest finite value seen.
  Only the counts are stored, so the file stays small.

Every variant receives the same key, hence (for variants sharing the baseline's params) the same
weight faults. :func:`save_activation_report` writes the result as JSON for ``proact report``.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from proact_jax.core import thresholds
from proact_jax.core.activations import GRANULARITIES
from proact_jax.core.files import create_json_exclusive
from proact_jax.faults import activations as activation_faults
from proact_jax.faults import injection as faults
from proact_jax.models import create_model
from proact_jax.training.checkpoint import write_json_atomic
from proact_jax.transform.network import as_network

DEFAULT_BINS = 40


def variant_info(model, variables, meta: dict) -> dict:
  """What the report needs about one campaign variant, from its checkpoint metadata."""
  act = getattr(model, "act", None)
  kind = meta.get("kind", getattr(act, "kind", "relu"))
  hardened = "method" in meta
  return {"method": meta.get("method") or ("relu" if kind == "relu" else kind), "kind": kind,
          "granularity": meta.get("granularity", getattr(act, "granularity", "layer")),
          "accuracy": meta.get("accuracy"),
          "baseline_accuracy": meta.get("baseline_accuracy" if hardened else "accuracy"),
          "memory_overhead": thresholds.memory_overhead(variables),
          "n_thresholds": thresholds.count(variables.get("thresholds", {}))}


def model_info(meta: dict) -> dict:
  """Model name, dataset, parameter count and the overhead it would have at each granularity."""
  x = jax.ShapeDtypeStruct((1, *meta["input_shape"]), jnp.float32)
  overhead, n_thr, n_params = {}, {}, 0
  for g in GRANULARITIES:
    model = create_model(meta["model"], meta["num_classes"], "smooth", g)
    shapes = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), x), x)
    overhead[g] = thresholds.memory_overhead(shapes)
    n_thr[g] = thresholds.count(shapes.get("thresholds", {}))
    n_params = thresholds.count(shapes["params"])
  return {"model": meta["model"], "dataset": meta["dataset"], "n_params": n_params,
          "memory_overhead_by_granularity": overhead, "n_thresholds_by_granularity": n_thr}


def campaign_extra(entries: dict, **extra) -> dict:
  """``config_extra`` for :func:`campaign.run_campaign`: :func:`model_info` of the first entry,
  ``variants`` = :func:`variant_info` of each, plus ``extra``.

  Args:
    entries: ``{variant name: (model, variables, meta)}``.
  """
  first = next(iter(entries.values()))[2]
  return {**extra, **model_info(first),
          "variants": {n: variant_info(m, v, meta) for n, (m, v, meta) in entries.items()}}


def kernel_layers(variables) -> list[str]:
  """Names of the parameter layers that have a ``kernel`` (the per-layer FI targets of Table V)."""
  flat = traverse_util.flatten_dict(unfreeze(dict(variables.get("params", {}))))
  with_kernel = {"/".join(p[:-1]) for p in flat if p[-1] == "kernel"}
  return [n for n in faults.layer_names(variables, ("params",)) if n in with_kernel]


def _site_order(model, variables, x, sites: Sequence[str]) -> list[str]:
  """``sites`` in forward order (unknown names, if any, keep their order at the end)."""
  try:
    order = as_network(model).site_order(variables, tuple(x.shape[1:]))
  except ValueError:
    order = []
  known = [s for s in order if s in sites]
  return known + [s for s in sites if s not in known]


def histogram_counts(clean: np.ndarray, faulty: np.ndarray, bins: int = DEFAULT_BINS) -> dict:
  """Fault-free and faulty counts on shared edges, split at 1.

  Returns:
    ``edges_low`` (``bins + 1`` linear edges on [0, 1]), ``clean_low``, ``faulty_low``;
    ``edges_high`` (``bins + 1`` log-spaced edges from 1 to the largest finite value, empty when
    no value exceeds 1), ``clean_high``, ``faulty_high``; ``n_clean``, ``n_faulty`` (samples),
    ``n_nonfinite`` (faulty non-finite values), ``n_negative`` (finite values below 0, counted
    in neither range).
  """
  if int(bins) < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  clean = np.asarray(clean, np.float64).ravel()
  faulty = np.asarray(faulty, np.float64).ravel()
  fin = [a[np.isfinite(a)] for a in (clean, faulty)]
  top = max((float(a.max()) for a in fin if a.size), default=0.0)
  edges_low = np.linspace(0.0, 1.0, int(bins) + 1)
  edges_high = np.geomspace(1.0, top, int(bins) + 1) if top > 1.0 else np.zeros(0)
  out: dict[str, Any] = {"edges_low": edges_low.tolist(), "edges_high": edges_high.tolist()}
  for name, a in zip(("clean", "faulty"), fin):
    out[f"{name}_low"] = np.histogram(a[(a >= 0) & (a <= 1)], edges_low)[0].tolist()
    out[f"{name}_high"] = (np.histogram(a[a > 1], edges_high)[0].tolist() if edges_high.size
                           else [])
  out.update(n_clean=int(clean.size), n_faulty=int(faulty.size),
             n_nonfinite=int(faulty.size - fin[1].size),
             n_negative=int(np.sum(fin[0] < 0) + np.sum(fin[1] < 0)))
  return out


def activation_report(key: chex.PRNGKey, variants: dict, x, *, ber: float = 1e-4,
                      fmt: str = "q15.16", trials: int = 5, layers: Sequence[str] | None = None,
                      hist_ber: float | None = None, hist_variants: Sequence[str] | None = None,
                      bins: int = DEFAULT_BINS, max_samples: int = 20000,
                      meta: dict | None = None) -> dict:
  """Table V distances and Figs. 3/6 histograms for several variants (paired: one key).

  Args:
    key: PRNG key shared by every variant and faulted layer.
    variants: ``{name: (model, variables)}`` (linen modules with an ``act`` field or networks
      from :func:`proact_jax.function_network`).
    x: a modest batch of (normalised) images, ``[N, H, W, C]``.
    ber: bit error rate of the per-layer injections (paper: 1e-4).
    fmt: number format of the stored values.
    trials: fault draws per (variant, layer), and for the histograms.
    layers: faulted layers (default: every params layer with a kernel, in parameter order).
    hist_ber: bit error rate of the whole-model histograms (default ``ber``; paper: 3e-5).
    hist_variants: variants to histogram (default all; ``[]`` for none).
    bins: bins on each side of 1.
    max_samples: activation elements sampled per site for the histograms.
    meta: optional identification stored in the file, e.g. ``{"model": ..., "dataset": ...}``.

  Returns:
    ``{"type": "activations", "ber", "fmt", "trials", "images", "hist_ber", "variants",
    "layers", "sites", "table_v": {variant: {layer: {site: distance}}}, "histograms":
    {variant: {site: counts}}, "site_sizes": {site: neurons per image}}`` plus ``meta``'s
    items. ``variants``, ``layers`` and ``sites``
    (forward order) keep the order the sorted JSON file loses; counts as in
    :func:`histogram_counts`.

  Raises:
    ValueError: no variants, unknown histogram variant, a layer that matches nothing, bad BER.
  """
  if not variants:
    raise ValueError("need at least one variant")
  if int(trials) < 1:
    raise ValueError(f"trials must be >= 1, got {trials}")
  hist_ber = ber if hist_ber is None else hist_ber
  hist_variants = list(variants) if hist_variants is None else list(hist_variants)
  unknown = [v for v in hist_variants if v not in variants]
  if unknown:
    raise ValueError(f"histogram variants {unknown} are not among {', '.join(variants)}")
  first_model, first_vars = next(iter(variants.values()))
  layers = list(kernel_layers(first_vars) if layers is None else layers)
  x = np.asarray(x, np.float32)
  table, hists, sites = {}, {}, []
  for name, (model, variables) in variants.items():
    table[name] = {}
    for layer in layers:
      d = activation_faults.activation_distance(key, model, variables, x, ber, fmt=fmt,
                                                layer=layer, trials=int(trials))
      table[name][layer] = d
      sites = sites or list(d)
    if name in hist_variants:
      samples = activation_faults.activation_samples(
          key, model, variables, x, hist_ber, fmt=fmt, trials=int(trials),
          max_samples=int(max_samples))
      hists[name] = {s: histogram_counts(v["clean"], v["faulty"], bins)
                     for s, v in samples.items()}
      sites = sites or list(samples)
  shapes = jax.eval_shape(lambda v, x: activation_faults._capture(first_model, v, x),
                          dict(first_vars), x)
  out = {"type": "activations", **(meta or {}), "ber": float(ber), "fmt": str(fmt),
         "trials": int(trials), "images": int(x.shape[0]), "hist_ber": float(hist_ber),
         "variants": list(variants), "layers": layers,
         "sites": _site_order(first_model, first_vars, x, sites), "table_v": table,
         "histograms": hists,
         "site_sizes": {s: int(np.prod(a.shape[1:])) for s, a in shapes.items()}}
  return out


def save_activation_report(path: str, data: dict, exclusive: bool = False) -> str:
  """Writes :func:`activation_report`'s result as JSON (atomically); returns the path.

  ``exclusive``: refuse if ``path`` exists, even if another process creates it meanwhile."""
  if data.get("type") != "activations":
    raise ValueError("not an activation report (expected type 'activations')")
  if exclusive:
    create_json_exclusive(path, data)
  else:
    write_json_atomic(path, data)
  return path
