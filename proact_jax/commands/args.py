"""Command-line parsing shared by the ``proact`` subcommands: BER lists, bit ranges, and the
names of the variants a list of checkpoints is compared under."""

from __future__ import annotations


def parse_bers(text: str) -> list[float]:
  try:
    bers = [float(s) for s in str(text).split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--bers {text!r}: expected comma-separated numbers in [0, 1]") from None
  if not bers:
    raise ValueError("--bers is empty")
  for b in bers:
    if not 0.0 <= b <= 1.0:
      raise ValueError(f"--bers: bit error rate {b} is outside [0, 1]")
  return bers


def parse_bits(text: str | None) -> tuple[int, int | None]:
  if text is None:
    return 0, None
  try:
    lo, hi = text.split(":")
    return int(lo or 0), (int(hi) if hi else None)
  except ValueError:
    raise ValueError(f"--bits {text!r}: expected LO:HI, e.g. 0:16") from None


def variant_name(meta: dict, used: set) -> str:
  name = meta.get("method") or ("relu" if meta.get("kind", "relu") == "relu" else meta["kind"])
  base, i = name, 2
  while name in used:
    name, i = f"{base}-{i}", i + 1
  return name
