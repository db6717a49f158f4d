"""Table V: the mean squared L2 distance between faulty and fault-free activations (Eq. 9).

An activations file (:mod:`proact_jax.report.activation_stats`) holds, per variant, faulted
layer and activation site, ``d(layer, site)`` = the squared norm ``||a_faulty - a_clean||^2`` of
the site's output per image, averaged over images and trials. The paper's Eq. 9 averages the
distance over ALL activation layers. So:

* **all sites (Eq. 9)**: ``mean over faulted layers of (mean over the S sites of d)``; a site
  upstream of the faulted layer contributes its 0 (faults cannot reach it), as in Eq. 9's sum
  over every layer;
* **last site**: ``mean over faulted layers of d(layer, last site)``, the figure reported
  before (the distance at the activation feeding the classifier), kept as a second column;
* the per-site breakdown (mean over faulted layers) and both figures per faulted layer.

Eq. 9 also divides by the number N of neurons of a layer; the per-site values here are squared
norms summed over a site's neurons (per image), as DESIGN.md defines Table V, so a site with
more neurons weighs more. Files that record ``site_sizes`` (neurons per image of each site;
written since issue 14) get a third column, **per neuron**: the same mean with each site's
value divided by its size, Eq. 9 with its 1/N.
"""

from __future__ import annotations

import math
from typing import Sequence

from proact_jax.report.table_format import _ber, markdown_table


def _variants(a: dict, key: str) -> list[str]:
  """The variants of ``a[key]``, in the file's ``variants`` order (then sorted)."""
  order = [v for v in a.get("variants", []) if v in a[key]]
  return order + sorted(v for v in a[key] if v not in order)


def _mean(xs) -> float:
  xs = list(xs)
  return sum(xs) / len(xs) if xs else math.nan


def table5_summary(a: dict) -> dict:
  """``{variant: {"all_sites", "last_site", "by_layer_all", "by_layer_last", "by_site"}}`` of
  one activations report (see the module docstring); missing entries are skipped."""
  variants = _variants(a, "table_v")
  layers = a.get("layers") or sorted({l for v in variants for l in a["table_v"][v]})
  sites = a.get("sites") or sorted({s for v in variants for l in layers
                                    for s in a["table_v"][v].get(l, {})})
  last = sites[-1] if sites else ""
  out = {}
  for v in variants:
    t = a["table_v"][v]
    by_all = {l: _mean(t[l][s] for s in sites if s in t.get(l, {})) for l in layers}
    by_last = {l: t.get(l, {}).get(last, math.nan) for l in layers}
    sizes = a.get("site_sizes") or {}
    per_neuron = (_mean(_mean(t[l][s] / sizes[s] for s in sites if s in t.get(l, {}))
                        for l in layers) if all(s in sizes for s in sites) else None)
    out[v] = {"all_sites": _mean(by_all.values()), "last_site": _mean(by_last.values()),
              "per_neuron": per_neuron,
              "by_layer_all": by_all, "by_layer_last": by_last,
              "by_site": {s: _mean(t[l][s] for l in layers if s in t.get(l, {}))
                          for s in sites}}
  return {"variants": variants, "layers": layers, "sites": sites, "last": last, "table": out}


def table5(groups: Sequence) -> tuple[list[dict], str]:
  """Table V: CSV rows (every layer and site) and markdown (Eq. 9 all-site mean and last-site
  figure per variant, then per faulted layer and per site)."""
  rows, md = [], []
  for g in (g for g in groups if g.activations is not None):
    a = g.activations
    s = table5_summary(a)
    variants, layers, sites, last, tab = s["variants"], s["layers"], s["sites"], s["last"], \
        s["table"]
    for v in variants:
      rows += [{"model": g.model, "dataset": g.dataset, "variant": v, "layer": l, "site": st,
                "distance": float(a["table_v"][v][l][st])}
               for l in layers for st in sites if st in a["table_v"][v].get(l, {})]
    f = lambda x: f"{x:.4g}"
    head = (f"{g.name}: faults in one layer at a time, BER {_ber(a.get('ber', math.nan))}, "
            f"{a.get('fmt', '?')}, {a.get('trials', '?')} trials x {a.get('images', '?')} "
            f"images. Distance = squared norm of (faulty - fault-free) activations of a site per "
            f"image. **All sites (Eq. 9)** = mean over the {len(sites)} activation sites "
            f"({', '.join(sites)}; a site upstream of the faulted layer counts as 0) and the "
            f"{len(layers)} faulted layers; **last site** = at `{last}` only, mean over the "
            "faulted layers.\n\n")
    neuron = all(tab[v]["per_neuron"] is not None for v in variants)
    summary = markdown_table(
        ["variant", f"L2, all {len(sites)} sites (Eq. 9)", f"L2, last site `{last}`"]
        + (["L2 per neuron, all sites (Eq. 9 with 1/N)"] if neuron else []),
        [[v, f(tab[v]["all_sites"]), f(tab[v]["last_site"])]
         + ([f(tab[v]["per_neuron"])] if neuron else []) for v in variants])
    by_layer = [[l] + [f(tab[v]["by_layer_all"][l]) for v in variants] for l in layers]
    by_layer.append(["mean"] + [f(tab[v]["all_sites"]) for v in variants])
    by_site = [[st] + [f(tab[v]["by_site"][st]) for v in variants] for st in sites]
    by_site.append(["mean"] + [f(tab[v]["all_sites"]) for v in variants])
    last_rows = [[l] + [f(tab[v]["by_layer_last"][l]) for v in variants] for l in layers]
    last_rows.append(["mean"] + [f(tab[v]["last_site"]) for v in variants])
    md.append(head + summary
              + "\nPer faulted layer, mean over all sites:\n\n"
              + markdown_table(["faulted layer"] + variants, by_layer)
              + "\nPer site, mean over the faulted layers:\n\n"
              + markdown_table(["site"] + variants, by_site)
              + f"\nPer faulted layer, at the last site `{last}`:\n\n"
              + markdown_table(["faulted layer"] + variants, last_rows))
  return rows, "\n".join(md)
