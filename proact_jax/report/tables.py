"""The paper's tables and figures from saved results (campaign JSONL and activations JSON files).

Definitions (accuracies are top-1 fractions; tables print percent / percentage points):

* Table II, clean accuracy drop = baseline accuracy - variant accuracy, both float (unquantised)
  test accuracies of the checkpoints (``extra.variants`` of the campaign header); for files
  without them, the campaign's clean (quantised, unflipped) accuracies vs the relu variant.
* Table III, memory overhead (Eq. 6) = threshold values / model parameters, in percent: the
  model at each granularity, and each variant.
* Table IV, accuracy drop under faults = baseline clean accuracy - the variant's mean accuracy
  over the trials at that BER, where the baseline clean accuracy is the campaign's clean
  (quantised, unflipped) accuracy of the unprotected (relu) variant on the same images (else the
  checkpoint's); its 95 % CI is the t interval of the mean, mirrored. The paired difference vs
  the reference variant (same fault draws) with its CI is what decides orderings.
* Table IV-b, paired differences between protected variants: paired t-test p-values, raw and
  Holm-adjusted (step-down) over the family of every method pair x BER in the table for that
  model; an ordering is claimed only where the Holm p-value is <= 0.05.
* Table IV beside the paper's: at the paper's (model, dataset, BER) cells, its printed drops
  (no intervals) next to our Table IV drop with its CI, under the campaign's fault rule
  (:mod:`proact_jax.report.paper`).
* Table V, mean squared L2 distance ``||a_faulty - a_clean||^2`` per image, faults in one layer
  at a time (:mod:`proact_jax.activation_stats`): averaged over all activation sites (Eq. 9)
  and, as a second column, at the last activation site; per-site breakdown
  (:mod:`proact_jax.report.table5`).

Several campaign files of one model/dataset are merged when they share every setting but their
variants (and agree on the variants they share); files of different models/datasets are grouped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Sequence

from proact_jax.core.files import json_differences
from proact_jax.faults.results import CampaignResult, StratifiedResult, load_results
from proact_jax.faults import stats
from proact_jax.report import paper, plots
from proact_jax.report.table5 import _variants, table5  # noqa: F401  (table5 re-exported)
from proact_jax.report.table_format import (  # noqa: F401  (markdown_table re-exported)
    _ber, _ci, _col, _md, _num, _pct, csv_text, markdown_table)

@dataclasses.dataclass
class Group:
  """The merged inputs of one model/dataset: a campaign and/or an activations report."""
  model: str
  dataset: str
  campaign: CampaignResult | None = None
  info: dict = dataclasses.field(default_factory=dict)     # campaign config extra
  activations: dict | None = None
  paths: list = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    return f"{self.model} / {self.dataset}"


def read_input(path: str) -> tuple[str, dict]:
  """``("campaign", header)`` or ``("activations", data)``; ValueError for anything else."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  with open(path, "rb") as f:
    text = f.read()
  if not text.strip():
    raise ValueError(f"{path} is empty")
  for chunk, kind in ((text.split(b"\n", 1)[0], "header"), (text, "activations")):
    try:
      obj = json.loads(chunk)
    except (UnicodeDecodeError, json.JSONDecodeError):
      continue
    if isinstance(obj, dict) and obj.get("type") == kind:
      return ("campaign" if kind == "header" else "activations"), obj
  raise ValueError(f"{path} is neither a campaign results file (JSONL with a header line) nor "
                   "an activations file (JSON with type 'activations')")


def _strip(config: dict) -> dict:
  out = {k: v for k, v in config.items() if k != "variants"}
  out["extra"] = {k: v for k, v in config.get("extra", {}).items() if k != "variants"}
  return out


def _merge_campaign(g: Group, res: CampaignResult, path: str) -> None:
  if g.campaign is None:
    g.campaign, g.info = res, dict(res.config.get("extra", {}))
    return
  old = g.campaign
  diff = json_differences(_strip(old.config), _strip(res.config))
  if diff:
    raise ValueError(f"{path} and {g.paths[0]} are both {g.name} campaigns but cannot be merged "
                     f"(they differ in: {', '.join(diff[:6])})")
  infos = g.info.setdefault("variants", {})
  for v in res.variants:
    new_info = res.config.get("extra", {}).get("variants", {}).get(v)
    if v in old.variants and (old.config["variants"][v] != res.config["variants"][v]
                              or infos.get(v) != new_info):
      raise ValueError(f"{path} and {g.paths[0]} disagree on variant {v!r} of {g.name}")
    if v not in old.variants:
      old.variants.append(v)
      old.config["variants"][v] = res.config["variants"][v]
      infos.update({} if new_info is None else {v: new_info})
    n = lambda r: sum(len(t["trial"]) for t in r.trials.get(v, []))
    if n(res) > n(old):  # a variant in both files: the one with more trials
      old.trials[v] = res.trials[v]
    if v in res.clean:
      old.clean.setdefault(v, res.clean[v])


def _merge_activations(g: Group, data: dict, path: str) -> None:
  if g.activations is None:
    g.activations = data
    return
  keys = ("ber", "fmt", "trials", "images", "hist_ber", "layers", "sites")
  diff = [k for k in keys if g.activations.get(k) != data.get(k)]
  diff += [f"variant {v!r} in both" for v in data["table_v"] if v in g.activations["table_v"]]
  if diff:
    raise ValueError(f"{path} and {g.paths[0]} are both {g.name} activation reports but cannot "
                     f"be merged ({', '.join(diff[:6])})")
  g.activations["variants"] = _variants(g.activations, "table_v") + _variants(data, "table_v")
  for k in ("table_v", "histograms"):
    g.activations[k] = {**g.activations.get(k, {}), **data.get(k, {})}


def load_inputs(paths: Sequence[str], reference: str | None = None) -> list[Group]:
  """Reads, checks, groups (by model/dataset) and merges the input files; sorted groups."""
  if not paths:
    raise ValueError("no RESULTS given: pass campaign results (.jsonl) and/or activations files")
  groups: dict[tuple, Group] = {}
  for path in dict.fromkeys(paths):  # a file named twice is read once
    kind, obj = read_input(path)
    meta = obj.get("config", {}).get("extra", {}) if kind == "campaign" else obj
    key = (str(meta.get("model") or os.path.splitext(os.path.basename(path))[0]),
           str(meta.get("dataset", "?")))
    if kind == "campaign":
      try:
        res = load_results(path)
      except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: malformed results file ({type(e).__name__}: {e})") from None
    elif not isinstance(obj.get("table_v"), dict):
      raise ValueError(f"{path}: activations file without a 'table_v' mapping")
    g = groups.setdefault(key, Group(*key))
    (_merge_campaign(g, res, path) if kind == "campaign" else _merge_activations(g, obj, path))
    g.paths.append(path)
  out = [groups[k] for k in sorted(groups)]
  campaigns = [g for g in out if g.campaign is not None]
  if reference is not None and not any(reference in g.campaign.variants for g in campaigns):
    raise ValueError(f"--reference {reference!r} is not a variant of any campaign (they have "
                     f"{', '.join(sorted({v for g in campaigns for v in g.campaign.variants}))})")
  for g in campaigns:  # where the reference is missing, the default; Table IV names it per row
    vs = g.campaign.variants
    g.campaign.reference = next(r for r in (reference, "relu", vs[0]) if r in vs)
  return out


def _baseline_variant(g: Group) -> str | None:
  infos = g.info.get("variants", {})
  relu = [v for v in g.campaign.variants if infos.get(v, {}).get("kind") == "relu"]
  return relu[0] if relu else ("relu" if "relu" in g.campaign.variants else None)


_GROUP = (_col("model"), _col("dataset"))


def table2_rows(groups: Sequence[Group]) -> list[dict]:
  """Clean accuracy drop of each variant vs the baseline (Table II)."""
  rows = []
  for g in (g for g in groups if g.campaign is not None):
    infos, base = g.info.get("variants", {}), _baseline_variant(g)
    for v in g.campaign.variants:
      info, q = infos.get(v, {}), g.campaign.clean.get(v, {}).get("accuracy", math.nan)
      acc, b_acc, src = info.get("accuracy"), info.get("baseline_accuracy"), "checkpoint"
      if acc is None or b_acc is None:
        acc, src = q, "campaign clean (quantised)"
        b_acc = g.campaign.clean.get(base, {}).get("accuracy", math.nan) if base else math.nan
      rows.append({"model": g.model, "dataset": g.dataset, "variant": v,
                   "method": info.get("method", v), "granularity": info.get("granularity", ""),
                   "accuracy": float(acc), "baseline_accuracy": float(b_acc),
                   "drop": float(b_acc) - float(acc), "quantised_accuracy": float(q),
                   "source": src})
  return rows


TABLE2 = _GROUP + (_col("variant"), _col("granularity"), _col("accuracy", "clean acc (%)", _pct),
                   _col("baseline_accuracy", "baseline acc (%)", _pct),
                   _col("drop", "drop (pp)", _pct),
                   _col("quantised_accuracy", "quantised clean acc (%)", _pct))


def table3_rows(groups: Sequence[Group]) -> list[dict]:
  """Memory overhead of the model at each granularity and of each variant (Table III)."""
  rows = []
  for g in (g for g in groups if g.campaign is not None):
    by_g, n_by_g = (g.info.get(k, {}) for k in ("memory_overhead_by_granularity",
                                                "n_thresholds_by_granularity"))
    base = {"model": g.model, "dataset": g.dataset, "n_params": g.info.get("n_params")}
    for gran in (x for x in ("neuron", "layer", "hybrid") if x in by_g):
      rows.append({**base, "entry": f"({gran}{'' if gran == 'hybrid' else '-wise'})",
                   "granularity": gran, "n_thresholds": n_by_g.get(gran),
                   "memory_overhead": by_g[gran]})
    for v in g.campaign.variants:
      info = g.info.get("variants", {}).get(v)
      if info is not None:
        rows.append({**base, "entry": v, "granularity": info.get("granularity", ""),
                     "n_thresholds": info.get("n_thresholds"),
                     "memory_overhead": info.get("memory_overhead")})
  return rows


TABLE3 = _GROUP + (_col("entry", "model / variant"), _col("granularity"),
                   _col("n_thresholds", "threshold values", _num),
                   _col("n_params", "parameters", _num),
                   _col("memory_overhead", "memory overhead (%)",
                        lambda x: "-" if x is None else f"{100 * x:.4g}"))


def table4_rows(groups: Sequence[Group], bers: Sequence[float] | None = None) -> list[dict]:
  """Accuracy drop under faults with 95 % CIs and paired differences (Table IV)."""
  rows = []
  for g in (g for g in groups if g.campaign is not None):
    res, base = g.campaign, _baseline_variant(g)
    if base is not None and base in res.clean:
      b_acc, src = res.clean[base]["accuracy"], f"{base} clean (quantised)"
    else:
      b_accs = [i.get("baseline_accuracy") for i in g.info.get("variants", {}).values()]
      b_acc = next((b for b in b_accs if b is not None), math.nan)
      src = "checkpoint baseline accuracy"
    for s in res.summary_rows():
      if bers is not None and not any(math.isclose(s["ber"], b, rel_tol=1e-9) for b in bers):
        continue
      rows.append({"model": g.model, "dataset": g.dataset, "ber": s["ber"],
                   "variant": s["variant"], "n": s["n"], "mean": s["mean"],
                   "ci_low": s["ci_low"], "ci_high": s["ci_high"], "baseline_accuracy": b_acc,
                   "baseline_source": src, "drop": b_acc - s["mean"],
                   "drop_ci_low": b_acc - s["ci_high"], "drop_ci_high": b_acc - s["ci_low"],
                   "reference": res.reference, "diff_mean": s["diff_mean"],
                   "diff_ci_low": s["diff_ci_low"], "diff_ci_high": s["diff_ci_high"]})
  have = sorted({b for g in groups if g.campaign for b in g.campaign.bers})
  for b in bers or []:
    if not any(math.isclose(b, h, rel_tol=1e-9) for h in have):
      raise ValueError(f"BER {b:g} is not in the campaign results (they have "
                       f"{', '.join(f'{h:g}' for h in have) or 'none'})")
  rows.sort(key=lambda r: (r["model"], r["dataset"], r["ber"]))  # stable: variant order kept
  return rows


TABLE4 = _GROUP + (
    _col("ber", "BER", _ber), _col("variant"), _col("n", "trials"),
    _col("mean", "mean acc (%)", _pct), ("95% CI", lambda r: _ci(r["ci_low"], r["ci_high"])),
    _col("drop", "drop (pp)", _pct),
    ("95% CI", lambda r: _ci(r["drop_ci_low"], r["drop_ci_high"])),
    _col("diff_mean", "diff vs reference (pp)", _pct),  # "-" for the reference itself
    ("95% CI", lambda r: _ci(r["diff_ci_low"], r["diff_ci_high"])))


def table4b_rows(groups: Sequence[Group], bers: Sequence[float] | None = None) -> list[dict]:
  """Table IV-b: paired differences between every two protected variants at each BER."""
  rows = []
  for g in (g for g in groups if g.campaign is not None):
    mine = [{"model": g.model, "dataset": g.dataset, **r} for r in g.campaign.pairwise_rows()
            if bers is None or any(math.isclose(r["ber"], b, rel_tol=1e-9) for b in bers)]
    # Holm over the family shown: every method pair x BER of this model in the table.
    for r, p in zip(mine, stats.holm([r["p_value"] for r in mine])):
      r["p_holm"], r["family_size"] = float(p), len(mine)
    rows += mine
  return rows


def _p(x) -> str:
  return "-" if x is None or not math.isfinite(x) else f"{x:.2g}"


TABLE4B = _GROUP + (
    _col("ber", "BER", _ber), ("comparison", lambda r: f"{r['a']} - {r['b']}"),
    _col("n", "trials"), _col("diff_mean", "paired diff (pp)", _pct),
    ("95% CI", lambda r: _ci(r["diff_ci_low"], r["diff_ci_high"])),
    ("CI excludes 0", lambda r: "yes" if r["decided"] else "no"),
    _col("p_value", "p (raw)", _p), _col("p_holm", "p (Holm)", _p),
    ("Holm p <= 0.05", lambda r: "yes" if r["p_holm"] <= 0.05 else "no"))


def _table4b_title(rows: Sequence[dict], stratified: bool = False) -> str:
  fams = {}
  for r in rows:
    fams.setdefault(f"{r['model']} / {r['dataset']}", r["family_size"])
  test = ("paired t-test; stratified campaigns: the stratified paired difference's t with "
          "Welch-Satterthwaite degrees of freedom" if stratified else "paired t-test")
  return ("Table IV-b: paired differences between protected variants (" + test + "; Holm "
          "family: all method pairs x BERs in this table, " + ", ".join(
              f"m = {m} for {n}" for n, m in fams.items()) + ")")


def _write(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)  # never a half-written table


def write_report(paths: Sequence[str], out_dir: str, bers: Sequence[float] | None = None,
                 reference: str | None = None) -> dict[str, str]:
  """Writes Tables II-V (``.md``/``.csv``), the figures and ``report.md`` into ``out_dir``.

  Args:
    paths: campaign results (JSONL) and/or activations (JSON) files.
    out_dir: output directory (created).
    bers: BERs for Table IV (default: every BER of the campaigns).
    reference: variant the paired differences are taken against (default relu, else the
      first variant of each campaign).

  Returns:
    ``{name: path}`` of the written files.

  Raises:
    ValueError: no inputs, an empty/unknown/malformed file, files that cannot be merged, an
      unknown reference or BER, an output directory that cannot be created (nothing written).
  """
  groups = load_inputs(paths, reference)
  # The module docstring's definitions go into report.md; its Table V line keeps the 0.1 module
  # path (proact_jax.activation_stats, now report/activation_stats.py) so the committed results
  # stay byte-identical.
  intro = re.sub(r":(?:func|mod):`([^`]+)`", r"`\1`",
                 __doc__.split("\n\n", 1)[1].split("\n\nSeveral")[0]).replace("``", "`")
  written, sections = {}, ["# ProAct report\n", "Inputs: " + ", ".join(
      f"`{os.path.basename(p)}` ({g.name})" for g in groups for p in g.paths) + "\n", intro + "\n"]
  campaigns = [g for g in groups if g.campaign is not None]
  sections[2:2] = [  # only campaigns run with image subsets get this line, in input order
      f"Campaign trials of {g.name} are each evaluated on a fresh random subset of "
      f"{g.campaign.config['images_per_trial']} of the {g.campaign.config['eval_set']['n']} "
      "test images (`images_per_trial`); clean accuracies use all of them.\n"
      for g in campaigns if g.campaign.config.get("images_per_trial") is not None] + [
      f"Campaign trials of {g.name} are stratified on the number of flips K in "
      f"{g.campaign.config['strata']['n_bits']} critical bits (strata K = 0 .. "
      f"{g.campaign.config['strata']['k_max'] - 1} and K >= {g.campaign.config['strata']['k_max']}"
      ", exact binomial weights): means, CIs and paired differences are stratified estimates "
      "with Welch-Satterthwaite t intervals (`proact_jax.faults.strata`).\n"
      for g in campaigns if "strata" in g.campaign.config]
  tables = [("table5_activation_distance", "Table V: mean squared L2 distance of activations",
             *reversed(table5(groups)))]
  if campaigns:
    t4, t4b = table4_rows(groups, bers), table4b_rows(groups, bers)
    rules = {(g.model, g.dataset): g.campaign.config.get("fault_rule", "bernoulli")
             for g in campaigns}
    tables = [(name, title, _md(rows, cols), rows) for name, title, rows, cols in (
        ("table2_clean_drop", "Table II: clean accuracy drop vs the baseline",
         table2_rows(groups), TABLE2),
        ("table3_memory", "Table III: memory overhead", table3_rows(groups), TABLE3),
        ("table4_faults", "Table IV: accuracy drop under faults (reference: " + ", ".join(
            f"{g.campaign.reference} for {g.name}" for g in campaigns) + ")", t4, TABLE4),
        ("table4b_pairwise", _table4b_title(t4b, any(isinstance(g.campaign, StratifiedResult)
                                                     for g in campaigns)), t4b, TABLE4B),
        ("table4p_paper", "Table IV beside the paper's (its drops have no intervals; ours: the "
         "campaign's fault rule, 95 % CI)", paper.paper_rows(t4, rules), paper.PAPER4))] + tables
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the output directory {out_dir}: {e.strerror}") from None
  if not os.access(out_dir, os.W_OK):
    raise ValueError(f"the output directory {out_dir} is not writable")
  for name, title, md, rows in (t for t in tables if t[3]):
    sections.append(f"## {title}\n\n{md}")
    for ext, text in (("md", md), ("csv", csv_text(rows))):
      written[f"{name}.{ext}"] = os.path.join(out_dir, f"{name}.{ext}")
      _write(written[f"{name}.{ext}"], text)
  figures = []
  if campaigns:
    paths_f = [os.path.join(out_dir, f"fig_accuracy_vs_ber.{e}") for e in ("png", "pdf")]
    plots.plot_accuracy_vs_ber({g.name: g.campaign for g in campaigns}, paths_f)
    figures.append(("Figs. 5/7: top-1 accuracy vs BER (95 % CI bands)", paths_f[0]))
    written.update({os.path.basename(p): p for p in paths_f})
  acts = [g for g in groups if g.activations is not None and g.activations.get("histograms")]
  for g in acts:
    for v in _variants(g.activations, "histograms"):
      name = "fig_histograms_%s.png" % re.sub(  # model/dataset in the name only when needed
          r"[^\w.-]+", "_", v if len(acts) == 1 else f"{g.model}_{g.dataset}_{v}")
      plots.plot_histograms(g.activations["histograms"][v], os.path.join(out_dir, name),
                            g.activations.get("sites"), f"{g.name}, {v}: fault-free vs faulty "
                            f"activations (BER {_ber(g.activations.get('hist_ber', math.nan))})")
      figures.append((f"Figs. 3/6: activation histograms, {g.name}, {v}", name))
      written[name] = os.path.join(out_dir, name)
  if figures:
    sections.append("## Figures\n\n" + "\n".join(
        f"- {t}: ![{os.path.basename(p)}]({os.path.basename(p)})" for t, p in figures) + "\n")
  written["report.md"] = os.path.join(out_dir, "report.md")
  _write(written["report.md"], "\n".join(sections))
  return written
