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

Rows are appended and flushed as trials finish. Reopening a file with the same ``config``
resumes (a torn last line from a crash is cut off); a different ``config`` is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Iterable

import jax
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from proact_jax.faults import stats

_FIELDS = ("accuracy", "loss", "n_flips", "n_flips_weights", "n_flips_thresholds")


def fingerprint(tree: Any) -> str:
  """SHA-256 (hex, 16 chars) over the sorted leaf paths, dtypes, shapes and bytes of a pytree."""
  h = hashlib.sha256()
  flat = traverse_util.flatten_dict(unfreeze(dict(tree))) if isinstance(tree, dict) else {
      (str(i),): leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(tree))}
  for path in sorted(flat):
    a = np.ascontiguousarray(np.asarray(flat[path]))
    h.update("/".join(map(str, path)).encode())
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _normalise(obj: Any) -> Any:
  """JSON round trip, so that tuples/lists and numpy scalars compare equal to what was read."""
  return json.loads(json.dumps(obj, default=_default))


def _default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      name = f"{prefix}.{k}" if prefix else str(k)
      if k not in a or k not in b:
        out.append(name)
      else:
        out += _differences(a[k], b[k], name)
    return out
  return [] if a == b else [prefix or "config"]


class ResultsStore:
  """The trial rows of one campaign, in memory and (optionally) in a JSONL file.

  Args:
    path: results file, or None for an in-memory campaign.
    config: the identifying configuration (JSON-serialisable).
    run: informational settings written into a new file's header.
    write: whether this process writes (False on non-zero processes of a multi-host run).

  Raises:
    ValueError: the file exists and was written by a different configuration, or is not a
      results file.
  """

  def __init__(self, path: str | None, config: dict, run: dict | None = None,
               write: bool = True):
    self.path = os.path.abspath(path) if path else None
    self.config = _normalise(config)
    self.rows: dict[tuple[str, int, int], dict] = {}
    self.clean: dict[str, dict] = {}
    self._write = write and self.path is not None
    if self.path and os.path.exists(self.path):
      self._load()
    elif self._write:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._append([{"type": "header", "config": self.config, "run": _normalise(run or {})}])

  def _load(self):
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[:data.rfind(b"\n") + 1]  # a torn final line (crash mid-write) is dropped
    lines = complete.decode().splitlines()
    try:
      header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
      header = None
    if not isinstance(header, dict) or header.get("type") != "header":
      raise ValueError(f"results file {self.path} is not a proact results file; use another --out")
    diff = _differences(header.get("config"), self.config)
    if diff:
      raise ValueError(f"results file {self.path} was written by a different configuration "
                       f"(differs in: {', '.join(diff[:8])}); use another --out")
    for line in lines[1:]:
      row = json.loads(line)
      if row.get("type") == "trial":
        self.rows[(row["variant"], int(row["ber_index"]), int(row["trial"]))] = row
      elif row.get("type") == "clean":
        self.clean[row["variant"]] = row
    if self._write and len(complete) != len(data):
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))

  def _append(self, rows: list[dict]):
    if not self._write or not rows:
      return
    with open(self.path, "a") as f:
      for r in rows:
        f.write(json.dumps(r, default=_default) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def done(self, variant: str, ber_index: int) -> set[int]:
    return {t for (v, b, t) in self.rows if v == variant and b == ber_index}

  def add_trials(self, rows: Iterable[dict]):
    new = []
    for r in rows:
      k = (r["variant"], int(r["ber_index"]), int(r["trial"]))
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
        t = self.trials[v][i]
        s = stats.summarize(t["accuracy"], self.confidence)
        row = {"variant": v, "ber": ber, **s,
               "mean_flips": float(np.mean(t["n_flips"])) if len(t["n_flips"]) else math.nan,
               "clean_accuracy": self.clean.get(v, {}).get("accuracy", math.nan),
               "diff_mean": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan}
        if v != self.reference:
          d = self.paired(v, self.reference, i)
          if d is not None:
            row.update(diff_mean=d["mean"], diff_ci_low=d["ci_low"], diff_ci_high=d["ci_high"])
        rows.append(row)
    return rows

  def paired(self, a: str, b: str, ber_index: int) -> dict | None:
    """Paired difference a - b of accuracies over the trials both ran (same fault draws on the
    weights they share), or None with fewer than two common trials."""
    ta, tb = self.trials[a][ber_index], self.trials[b][ber_index]
    common, ia, ib = np.intersect1d(ta["trial"], tb["trial"], return_indices=True)
    if len(common) < 2:
      return None
    return stats.paired_difference(ta["accuracy"][ia], tb["accuracy"][ib], self.confidence)

  def pairwise_rows(self, exclude: tuple = ("relu",)) -> list[dict]:
    """Every pair (a, b) of variants (a after b in variant order, ``exclude`` left out) at each
    BER: the paired difference a - b with its CI and whether the CI excludes 0."""
    names = [v for v in self.variants if v not in exclude]
    rows = []
    for i, ber in enumerate(self.bers):
      for j, a in enumerate(names):
        for b in names[:j]:
          d = self.paired(a, b, i)
          if d is not None:
            rows.append({"ber": ber, "a": a, "b": b, "n": d["n"], "diff_mean": d["mean"],
                         "diff_ci_low": d["ci_low"], "diff_ci_high": d["ci_high"],
                         "decided": bool(d["ci_low"] > 0 or d["ci_high"] < 0)})
    return rows

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
    with open(csv_path + ".tmp", "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
    os.replace(csv_path + ".tmp", csv_path)
    with open(md_path + ".tmp", "w") as f:
      f.write(self.format_table() + "\n")
    os.replace(md_path + ".tmp", md_path)
    return csv_path, md_path


def result_from_store(store: ResultsStore, bers: list, variants: list, reference: str,
                      n_per_ber: list | None = None, confidence: float = 0.95) -> CampaignResult:
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
  store = ResultsStore(path, config, write=False)
  variants = list(config["variants"])
  return result_from_store(store, config["bers"], variants, reference or variants[0])
