"""Campaign results: the resumable JSONL results file and the summary of a campaign.

File layout (one JSON object per line):

* line 1, ``{"type": "header", "config": {...}, "run": {...}}``: ``config`` identifies the trials
  (PRNG key, BERs, number format, fault space, each variant's model and a SHA-256 fingerprint of
  its variables, the evaluation set's size and hash, caller extras); ``run`` records how the
  first run was launched (trial counts, stopping rule, batching) and is not compared.
* ``{"type": "clean", "variant", "accuracy", "loss"}``: accuracy of the quantised, unflipped
  variables in the campaign's format.
* ``{"type": "trial", "variant", "ber_index", "ber", "trial", "accuracy", "loss", "n_flips",
  "n_flips_weights", "n_flips_thresholds"}``: one trial (per-trial key
  ``fold_in(fold_in(key, ber_index), trial)``).

A stratified campaign (:mod:`proact_jax.faults.stratified`) writes the same layout with a
``strata`` entry in ``config`` (the critical set, ``k_max``, the exact stratum weights per BER)
and ``stratum`` and ``n_flips_critical`` in its trial rows, which are keyed by (variant,
ber_index, stratum, trial); :func:`load_results` then returns a :class:`StratifiedResult`. A
vulnerability map (:mod:`proact_jax.faults.vulnerability`) uses the store with its own keys.

Rows are appended as whole lines and fsynced as trials finish (a failed append, e.g. on a full
disk, is cut back). Reopening a file with the same ``config`` resumes from any prefix a crash can
leave: an empty file, a torn header, a torn last line; a different ``config`` is refused. The
writing process holds an exclusive ``flock`` on the file, so a second writer is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any, Iterable

import numpy as np

from proact_jax.core.files import (check_regular_output, json_default as _default,
                                   json_differences, lock, normalise_json, tree_digest, unlock,
                                   write_bytes_atomic)
from proact_jax.faults import stats, strata

_FIELDS = ("accuracy", "loss", "n_flips", "n_flips_weights", "n_flips_thresholds")


def fingerprint(tree: Any) -> str:
  """SHA-256 (hex, 16 chars) over the sorted leaf paths, dtypes, shapes and bytes of a pytree."""
  return tree_digest(tree)[:16]


class ResultsStore:
  """The trial rows of one campaign, in memory and (optionally) in a JSONL file.

  Args:
    path: results file, or None for an in-memory campaign.
    config: the identifying configuration (JSON-serialisable).
    run: informational settings written into a new file's header.
    write: whether this process writes (False on non-zero processes of a multi-host run).
    key_fields: the row fields identifying a trial (the last one an integer trial index);
      e.g. a stratified campaign adds ``stratum`` before ``trial``.

  Raises:
    ValueError: the file exists and was written by a different configuration, or is not a
      results file.
  """

  KEY = ("variant", "ber_index", "trial")

  def __init__(self, path: str | None, config: dict, run: dict | None = None,
               write: bool = True, key_fields: tuple[str, ...] | None = None):
    self.path = os.path.abspath(path) if path else None
    self.config = normalise_json(config)
    self.key_fields = tuple(key_fields or self.KEY)
    self.rows: dict[tuple, dict] = {}
    self.clean: dict[str, dict] = {}
    self._write = write and self.path is not None
    self._lock = None
    header = {"type": "header", "config": self.config, "run": normalise_json(run or {})}
    if self._write:
      check_regular_output(self.path, "results file")
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._lock = lock(self.path)  # creates the file empty if absent: a resumable prefix
    try:
      if self.path and os.path.exists(self.path):  # a writer's lock created it: at least empty
        self._load(header)
    except BaseException:
      self.close()
      raise

  def close(self) -> None:
    """Releases the results file's lock (the process's exit does too)."""
    unlock(self._lock)
    self._lock = None

  def _torn_header(self, data: bytes) -> bool:
    """Whether ``data`` is this campaign's header line cut by a crash (``run`` may differ)."""
    part = json.dumps({"type": "header", "config": self.config}, default=_default)[:-1].encode()
    return part.startswith(data) or data.startswith(part + b', "run": ')

  def _load(self, header_row: dict):
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[:data.rfind(b"\n") + 1]  # a torn final line (crash mid-write) is dropped
    if not complete and self._write and (not data or self._torn_header(data)):
      with open(self.path, "r+b") as f:  # empty, or a torn header: start the file again
        f.truncate(0)
      self._append([header_row])
      return
    try:
      lines = complete.decode().splitlines()
      header = json.loads(lines[0]) if lines else None
    except (UnicodeDecodeError, json.JSONDecodeError):
      header = None
    if not isinstance(header, dict) or header.get("type") != "header":
      raise ValueError(f"results file {self.path} is not a proact results file; use another --out")
    diff = json_differences(header.get("config"), self.config)
    if diff:
      raise ValueError(f"results file {self.path} was written by a different configuration "
                       f"(differs in: {', '.join(diff[:8])}); use another --out")
    for i, line in enumerate(lines[1:], 2):
      try:
        row = json.loads(line)
        if row.get("type") == "trial":
          self.rows[self._key(row)] = row
        elif row.get("type") == "clean":
          self.clean[row["variant"]] = row
      except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"results file {self.path} is damaged at line {i} (not a crash's torn "
                         "last line); use another --out") from None
    if self._write and len(complete) != len(data):
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))

  def _append(self, rows: list[dict]):
    """Appends whole lines; on a failure (full disk, interrupt) the file is cut back."""
    if not self._write or not rows:
      return
    size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
    try:
      with open(self.path, "a") as f:
        for r in rows:
          f.write(json.dumps(r, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except BaseException as e:
      try:
        os.truncate(self.path, size)
      except OSError:
        pass
      if isinstance(e, OSError) and not e.filename:
        raise OSError(e.errno, e.strerror, self.path) from None
      raise

  def _key(self, row: dict) -> tuple:
    return tuple(row[f] if isinstance(row[f], str) else int(row[f]) for f in self.key_fields)

  def done(self, *prefix) -> set[int]:
    """The trial indices (last key field) of the rows whose key starts with ``prefix`` (by
    default ``variant, ber_index``)."""
    k = len(prefix)
    return {key[-1] for key in self.rows if key[:k] == prefix}

  def add_trials(self, rows: Iterable[dict]):
    new = []
    for r in rows:
      k = self._key(r)
      if k not in self.rows:
        self.rows[k] = r
        new.append(r)
    self._append(new)

  def add_clean(self, variant: str, accuracy: float, loss: float):
    row = {"type": "clean", "variant": variant, "accuracy": float(accuracy), "loss": float(loss)}
    self.clean[variant] = row
    self._append([row])

  def arrays(self, variant: str, ber_index: int, n: int | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` trials (by index; all when None) of a (variant, BER) as arrays."""
    ts = sorted(self.done(variant, ber_index))
    if n is not None:
      ts = [t for t in ts if t < n]
    out = {"trial": np.asarray(ts, np.int64)}
    rows = [self.rows[(variant, ber_index, t)] for t in ts]
    for f in _FIELDS + ("n_flips_activations",):
      if f in _FIELDS or (rows and f in rows[0]):  # activation flips: only when injected
        out[f] = np.asarray([r[f] for r in rows], np.float64)
    return out


@dataclasses.dataclass
class CampaignResult:
  """Per-trial results of a campaign and their summaries.

  Attributes:
    config: the identifying configuration (as in the results file header).
    bers: bit error rates, in campaign order.
    variants: variant names; ``reference`` is the one paired differences are taken against.
    trials: ``trials[variant][ber_index]`` = dict of arrays ``trial, accuracy, loss, n_flips,
      n_flips_weights, n_flips_thresholds`` (sorted by trial index).
    clean: ``clean[variant]`` = dict(accuracy, loss) of the quantised, unflipped variables.
    path: the results file, if any.
  """
  config: dict
  bers: list
  variants: list
  reference: str
  trials: dict
  clean: dict
  confidence: float = 0.95
  path: str | None = None

  def accuracies(self, variant: str) -> list[np.ndarray]:
    return [t["accuracy"] for t in self.trials[variant]]

  def summary_rows(self) -> list[dict]:
    """One dict per (variant, BER): n, mean, std, ci_low, ci_high, half_width (accuracies in
    [0, 1]), mean_flips, clean_accuracy, and vs the reference (same trial indices):
    diff_mean, diff_ci_low, diff_ci_high (nan for the reference itself)."""
    rows = []
    for v in self.variants:
      for i, ber in enumerate(self.bers):
        row = {"variant": v, "ber": ber, **self._cell(v, i),
               "clean_accuracy": self.clean.get(v, {}).get("accuracy", math.nan),
               "diff_mean": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan}
        if v != self.reference:
          d = self.paired(v, self.reference, i)
          if d is not None:
            row.update(diff_mean=d["mean"], diff_ci_low=d["ci_low"], diff_ci_high=d["ci_high"])
        rows.append(row)
    return rows

  def _cell(self, v: str, i: int) -> dict:
    """The summary of one (variant, BER index) cell: accuracy statistics and mean_flips."""
    t = self.trials[v][i]
    return {**stats.summarize(t["accuracy"], self.confidence, bounds=(0.0, 1.0)),
            "mean_flips": float(np.mean(t["n_flips"])) if len(t["n_flips"]) else math.nan}

  def paired(self, a: str, b: str, ber_index: int) -> dict | None:
    """Paired difference a - b of accuracies over the trials both ran (same fault draws on the
    weights they share), or None with fewer than two common trials."""
    ta, tb = self.trials[a][ber_index], self.trials[b][ber_index]
    common, ia, ib = np.intersect1d(ta["trial"], tb["trial"], return_indices=True)
    if len(common) < 2:
      return None
    return stats.paired_difference(ta["accuracy"][ia], tb["accuracy"][ib], self.confidence,
                                   bounds=(-1.0, 1.0))

  def pairwise_rows(self, exclude: tuple = ("relu",)) -> list[dict]:
    """Every pair (a, b) of variants (a after b in variant order, ``exclude`` left out) at each
    BER: the paired difference a - b with its CI, whether the CI excludes 0, the paired t-test's
    raw p-value and its Holm-adjusted p-value over the family of every row returned (all pairs
    x all BERs of this campaign; :func:`stats.holm`)."""
    names = [v for v in self.variants if v not in exclude]
    rows = []
    for i, ber in enumerate(self.bers):
      for j, a in enumerate(names):
        for b in names[:j]:
          d = self.paired(a, b, i)
          if d is not None:
            rows.append({"ber": ber, "a": a, "b": b, "n": d["n"], "diff_mean": d["mean"],
                         "diff_ci_low": d["ci_low"], "diff_ci_high": d["ci_high"],
                         "decided": bool(d["ci_low"] > 0 or d["ci_high"] < 0),
                         "p_value": self.paired_pvalue(a, b, i)})
    for r, p in zip(rows, stats.holm([r["p_value"] for r in rows])):
      r["p_holm"] = float(p)
    return rows

  def paired_pvalue(self, a: str, b: str, ber_index: int) -> float:
    """Two-sided paired t-test p-value of a - b over the trials both ran."""
    ta, tb = self.trials[a][ber_index], self.trials[b][ber_index]
    _, ia, ib = np.intersect1d(ta["trial"], tb["trial"], return_indices=True)
    return stats.paired_pvalue(ta["accuracy"][ia], tb["accuracy"][ib])

  def format_table(self) -> str:
    """Markdown table: accuracies and differences in percentage points."""
    pct = lambda x: "-" if not math.isfinite(x) else f"{100 * x:.2f}"
    paired = len(self.variants) > 1
    head = ["variant", "BER", "trials", "mean acc (%)", "95% CI", "mean flips", "clean (%)"]
    if paired:
      head.append(f"diff vs {self.reference} (pp, 95% CI)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in self.summary_rows():
      cells = [r["variant"], f"{r['ber']:.0e}", str(r["n"]), pct(r["mean"]),
               f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]", f"{r['mean_flips']:.1f}",
               pct(r["clean_accuracy"])]
      if paired:
        cells.append("-" if r["variant"] == self.reference else
                     f"{pct(r['diff_mean'])} [{pct(r['diff_ci_low'])}, {pct(r['diff_ci_high'])}]")
      lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

  def write_summary(self, prefix: str) -> tuple[str, str]:
    """Writes ``prefix.summary.csv`` and ``prefix.summary.md``; returns their paths."""
    csv_path, md_path = prefix + ".summary.csv", prefix + ".summary.md"
    rows = self.summary_rows()
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(csv_path, buf.getvalue().encode())
    write_bytes_atomic(md_path, (self.format_table() + "\n").encode())
    return csv_path, md_path


@dataclasses.dataclass
class StratifiedResult(CampaignResult):
  """A stratified campaign's trials (``trials[v][b]`` also holds ``stratum`` and
  ``n_flips_critical``) summarised with the stratified estimator (:mod:`proact_jax.strata`):
  means, intervals, paired differences and their p-values use the exact stratum weights
  ``weights[b]``; ``mean_flips`` is the stratified mean of the flip counts."""
  weights: list = dataclasses.field(default_factory=list)

  def _samples(self, v: str, b: int, field: str = "accuracy") -> list[np.ndarray]:
    t = self.trials[v][b]
    return [t[field][t["stratum"] == h] for h in range(len(self.weights[b]))]

  def _cell(self, v: str, i: int) -> dict:
    s = strata.stratified_summary(self._samples(v, i), self.weights[i], self.confidence)
    flips = strata.stratified_summary(self._samples(v, i, "n_flips"), self.weights[i])
    return {**{k: s[k] for k in ("n", "mean", "std", "ci_low", "ci_high", "half_width", "dof")},
            "n_strata": " ".join(map(str, s["n_strata"])), "mean_flips": flips["mean"]}

  def paired(self, a: str, b: str, ber_index: int) -> dict | None:
    """Stratified paired difference a - b over the (stratum, trial) pairs both ran."""
    ta, tb = self.trials[a][ber_index], self.trials[b][ber_index]
    xa, xb = [], []
    for h in range(len(self.weights[ber_index])):
      ia, ib = ta["stratum"] == h, tb["stratum"] == h
      _, ja, jb = np.intersect1d(ta["trial"][ia], tb["trial"][ib], return_indices=True)
      xa.append(ta["accuracy"][ia][ja])
      xb.append(tb["accuracy"][ib][jb])
    d = strata.stratified_difference(xa, xb, self.weights[ber_index], self.confidence)
    return None if not math.isfinite(d["mean"]) else d

  def paired_pvalue(self, a: str, b: str, ber_index: int) -> float:  # stratified, not plain t
    d = self.paired(a, b, ber_index)
    return math.nan if d is None else strata.stratified_pvalue(d)


STRATA_FIELDS = ("variant", "ber_index", "stratum", "trial")


def strata_arrays(store: ResultsStore, variant: str, ber_index: int,
                  counts: list | None = None) -> dict[str, np.ndarray]:
  """A stratified (variant, BER)'s trials as arrays sorted by (stratum, trial); with ``counts``
  only trials ``t < counts[h]`` of stratum ``h``."""
  keys = sorted(k[2:] for k in store.rows if k[:2] == (variant, ber_index)
                and (counts is None or k[3] < counts[k[2]]))
  out = {"stratum": np.asarray([k[0] for k in keys], np.int64),
         "trial": np.asarray([k[1] for k in keys], np.int64)}
  for f in _FIELDS + ("n_flips_critical",):
    out[f] = np.asarray([store.rows[(variant, ber_index, *k)][f] for k in keys], np.float64)
  return out


def result_from_store(store: ResultsStore, bers: list, variants: list, reference: str,
                      n_per_ber: list | None = None, confidence: float = 0.95) -> CampaignResult:
  if "strata" in store.config:
    weights = store.config["strata"]["weights"]
    trials = {v: [strata_arrays(store, v, i, None if n_per_ber is None else n_per_ber[i])
                  for i in range(len(bers))] for v in variants}
    clean = {v: {"accuracy": r["accuracy"], "loss": r["loss"]} for v, r in store.clean.items()}
    return StratifiedResult(store.config, list(bers), list(variants), reference, trials, clean,
                            confidence, store.path, [np.asarray(w) for w in weights])
  trials = {v: [store.arrays(v, i, None if n_per_ber is None else n_per_ber[i])
                for i in range(len(bers))] for v in variants}
  clean = {v: {"accuracy": r["accuracy"], "loss": r["loss"]} for v, r in store.clean.items()}
  return CampaignResult(store.config, list(bers), list(variants), reference, trials, clean,
                        confidence, store.path)


def load_results(path: str, reference: str | None = None) -> CampaignResult:
  """Every trial in a results file as a :class:`CampaignResult` (no jax computation)."""
  if not os.path.isfile(path):
    raise ValueError(f"no results file {path}")
  with open(path) as f:
    first = f.readline()
  try:
    header = json.loads(first)
  except json.JSONDecodeError:
    header = {}
  if header.get("type") != "header":
    raise ValueError(f"{path} is not a proact results file")
  config = header["config"]
  if config.get("kind") == "vulnerability":
    raise ValueError(f"{path} is a vulnerability map (proact vulnerability), not a campaign")
  store = ResultsStore(path, config, write=False,
                       key_fields=STRATA_FIELDS if "strata" in config else ResultsStore.KEY)
  variants = list(config["variants"])
  return result_from_store(store, config["bers"], variants, reference or variants[0])
