"""Number and table formatting for the report: Markdown and CSV text of dict rows."""

from __future__ import annotations

import csv
import io
import math
from typing import Callable, Sequence

__all__ = ["csv_text", "markdown_table"]


def _pct(x) -> str:
  return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _ci(lo, hi) -> str:
  return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{_pct(lo)}, {_pct(hi)}]"


def _ber(b: float) -> str:
  """``1e-6``, ``2.5e-6`` (paper style; ``0`` for 0)."""
  m, _, e = f"{b:.3e}".partition("e")
  return f"{m.rstrip('0').rstrip('.')}e{int(e)}" if b and math.isfinite(b) else f"{b:g}"


def _num(x) -> str:
  return f"{x:.10g}" if isinstance(x, float) else ("" if x is None else str(x))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A GitHub markdown table (cells converted with ``str``)."""
  lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict]) -> str:
  """CSV of dict rows (floats with 10 significant digits), header from the first row."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  if rows:
    w.writerow(list(rows[0]))
    w.writerows([[_num(v) for v in r.values()] for r in rows])
  return buf.getvalue()


def _md(rows: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], str]]]) -> str:
  return markdown_table([c for c, _ in columns], [[f(r) for _, f in columns] for r in rows])


def _col(key: str, title: str | None = None, fmt: Callable = str):
  return title or key, lambda r: fmt(r[key])
