"""Figures from saved results: accuracy vs BER (Figs. 5/7) and activation histograms (Figs. 3/6).

matplotlib only (no jax): figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas,
without pyplot, so no global backend state is touched. Outputs are deterministic: PNG and PDF
files are written without software/creation-date metadata, so the same inputs give the same bytes.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

_METADATA = {"png": {"Software": None},
             "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
_COLORS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
           "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def save_figure(fig: Figure, paths: str | Sequence[str]) -> list[str]:
  """Saves ``fig`` to each path (format from the extension) through a temporary file."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  for path in paths:
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    tmp = f"{path}.tmp.{ext}"
    fig.savefig(tmp, format=ext, dpi=120, metadata=_METADATA.get(ext))
    os.replace(tmp, path)
  return paths


def _rows(result_or_rows) -> list[dict]:
  return (result_or_rows.summary_rows() if hasattr(result_or_rows, "summary_rows")
          else list(result_or_rows))


def plot_accuracy_vs_ber(result_or_rows, path: str | Sequence[str],
                         title: str | None = None) -> list[str]:
  """Top-1 accuracy (%) vs bit error rate, one line per variant with its 95 % CI band.

  Args:
    result_or_rows: a :class:`~proact_jax.faults.results.CampaignResult`, its ``summary_rows()``
      (dicts with ``variant, ber, mean, ci_low, ci_high``), or ``{panel title: either}`` for one
      panel per model/dataset, side by side.
    path: output file(s); the extension picks the format (``.png``, ``.pdf``).
    title: figure title.

  Returns:
    The written paths. BER 0 cannot be shown on the log axis and is left out.
  """
  panels = (dict(result_or_rows) if isinstance(result_or_rows, Mapping)
            else {"": result_or_rows})
  panels = {t: _rows(r) for t, r in panels.items()}
  variants = list(dict.fromkeys(r["variant"] for rows in panels.values() for r in rows))
  fig = Figure(figsize=(5.0 * len(panels), 3.8), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (panel, rows) in zip(axes, panels.items()):
    for v in variants:
      pts = sorted((r["ber"], r["mean"], r["ci_low"], r["ci_high"]) for r in rows
                   if r["variant"] == v and r["ber"] > 0 and math.isfinite(r["mean"]))
      if not pts:
        continue
      ber, mean, lo, hi = (np.asarray(c, np.float64) for c in zip(*pts))
      color = _COLORS[variants.index(v) % len(_COLORS)]
      ax.plot(ber, 100 * mean, marker="o", ms=3, lw=1.5, color=color, label=v)
      ok = np.isfinite(lo) & np.isfinite(hi)
      ax.fill_between(ber[ok], np.clip(100 * lo[ok], 0, 100), np.clip(100 * hi[ok], 0, 100),
                      color=color, alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    if panel:
      ax.set_title(panel)
    if ax.has_data():
      ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)


def _fractions(h: Mapping[str, Any], which: str, side: str) -> np.ndarray:
  counts = np.asarray(h[f"{which}_{side}"], np.float64)
  n = h.get(f"n_{which}") or (sum(h[f"{which}_low"]) + sum(h[f"{which}_high"])) or 1
  return counts / float(n)


def plot_histograms(hists: Mapping[str, Mapping[str, Any]], path: str | Sequence[str],
                    sites: Sequence[str] | None = None, title: str | None = None) -> list[str]:
  """Fault-free vs faulty activation distributions per site, split at 1 (two panels per site).

  Args:
    hists: ``{site: counts}`` as written by :func:`activation_stats.histogram_counts`
      (``edges_low, clean_low, faulty_low, edges_high, clean_high, faulty_high, n_clean,
      n_faulty, n_nonfinite``).
    path: output file(s).
    sites: the sites to draw, in order (default: all, in the mapping's order).
    title: figure title.

  Returns:
    The written paths. Bars are fractions of each model's sampled values, on a log scale.
  """
  sites = [s for s in (sites or list(hists)) if s in hists]
  if not sites:
    raise ValueError("no activation sites to plot")
  fig = Figure(figsize=(9.0, 2.2 * len(sites) + 0.6), layout="constrained")
  axes = fig.subplots(len(sites), 2, squeeze=False)
  for (ax_lo, ax_hi), site in zip(axes, sites):
    h = hists[site]
    for which, color, label in (("clean", "tab:blue", "fault-free"),
                                ("faulty", "tab:red", "faulty")):
      ax_lo.stairs(_fractions(h, which, "low"), h["edges_low"], color=color, label=label)
      if h["edges_high"]:
        ax_hi.stairs(_fractions(h, which, "high"), h["edges_high"], color=color, label=label)
    ax_lo.set_yscale("log", nonpositive="mask")
    ax_lo.set_title(f"{site}: values in [0, 1]", fontsize=9)
    ax_lo.legend(fontsize=7)
    note = f", {h['n_nonfinite']} non-finite" if h.get("n_nonfinite") else ""
    ax_hi.set_title(f"{site}: values > 1{note}", fontsize=9)
    if h["edges_high"]:
      if h["edges_high"][-1] > 10 * h["edges_high"][0]:  # a log x axis only over > 1 decade
        ax_hi.set_xscale("log")
        ax_hi.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_hi.xaxis.set_minor_formatter(NullFormatter())
      ax_hi.set_yscale("log", nonpositive="mask")
    else:
      ax_hi.text(0.5, 0.5, "no values > 1", ha="center", va="center", transform=ax_hi.transAxes)
    ax_lo.set_ylabel("fraction")
  axes[-1][0].set_xlabel("activation value")
  axes[-1][1].set_xlabel("activation value")
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)


def plot_vulnerability(result, path: str | Sequence[str], variant: str,
                       title: str | None = None) -> list[str]:
  """Heatmap of a vulnerability map: mean single-flip accuracy drop (points), leaves x bits.

  Args:
    result: a :class:`~proact_jax.vulnerability.VulnerabilityResult` (``matrix(variant)``).
    path: output file(s).
    variant: which variant's map.
    title: figure title (default: the variant).

  Returns:
    The written paths. Cells not measured are blank; the colour scale is logarithmic from
    0.01 points (drops at or below it, including 0 and negative means, share the lowest colour).
  """
  from matplotlib.colors import LogNorm
  leaves, groups, mat = result.matrix(variant)
  pp = 100 * mat
  fig = Figure(figsize=(1.6 + 0.28 * len(groups), 1.2 + 0.3 * len(leaves)), layout="constrained")
  ax = fig.subplots()
  top = max(float(np.nanmax(pp)) if np.isfinite(pp).any() else 1.0, 0.1)
  shown = np.where(np.isfinite(pp), np.maximum(pp, 0.01), np.nan)
  im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="magma_r",
                 norm=LogNorm(vmin=0.01, vmax=top), interpolation="nearest")
  ax.set_yticks(range(len(leaves)), [leaf.removeprefix("params/") for leaf in leaves],
                fontsize=7)
  labels = [str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in groups]
  ax.set_xticks(range(len(groups)), labels, fontsize=7, rotation=90)
  ax.set_xlabel("bit position (0 = least significant)")
  fig.colorbar(im, ax=ax, label="mean accuracy drop (pp)")
  width = fig.get_figwidth()  # wrap the title to the figure (about 11 characters per inch)
  ax.set_title(textwrap.fill(title or f"single-flip accuracy drop: {variant}",
                             max(20, int(11 * width))), fontsize=9)
  return save_figure(fig, path)


def plot_learning_curve(metrics: Sequence[Mapping[str, Any]], path: str | Sequence[str],
                        title: str = "") -> list[str]:
  """Train and validation accuracy per epoch, from a run's ``metrics.jsonl`` records."""
  epochs = [int(m["epoch"]) + 1 for m in metrics]
  fig = Figure(figsize=(5.5, 3.6))
  ax = fig.add_subplot()
  ax.plot(epochs, [100 * float(m["train_accuracy"]) for m in metrics], "o-", ms=3,
          label="train (augmented batches)")
  ax.plot(epochs, [100 * float(m["val_accuracy"]) for m in metrics], "s-", ms=3,
          label="validation")
  ax.set_xlabel("epoch")
  ax.set_ylabel("accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return save_figure(fig, path)
