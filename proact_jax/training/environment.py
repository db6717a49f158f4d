"""What a run was computed with: package versions, CPU, devices.

XLA's kernels differ between jaxlib builds and between CPUs (vector width, convolution
algorithms), JPEG decoders between builds, and training amplifies a last-bit difference into a
different model: the same command and seed rebuild a run bit for bit only in the same
environment. Training records :func:`environment` in its ``provenance.json`` and warns when a
run resumes in another.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import jax

# pillow decodes image-folder datasets (CIFAR-10 as JPEG): libjpeg builds can decode differently
PACKAGES = ("proact-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pillow")


def _cpuinfo() -> dict:
  """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block ends here
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return fields


def _cpu() -> dict:
  """The CPU's model and its vector extensions (what XLA:CPU compiles for)."""
  info = _cpuinfo()
  flags = info.get("flags", "").split()
  return {"cpu": info.get("model name") or platform.processor() or "unknown",
          "cpu_vector_features": " ".join(sorted(
              f for f in flags if f.startswith(("avx", "fma", "amx", "sse4", "f16c")))) or
          "unknown"}


def _version(pkg: str) -> str:
  try:
    return metadata.version(pkg)
  except metadata.PackageNotFoundError:
    return "not installed"


def environment() -> dict:
  """The versions, CPU and devices this process computes with (JSON-ready, deterministic)."""
  devices = jax.devices()
  return {"python": platform.python_version(), "machine": platform.machine(), **_cpu(),
          "cpus": os.cpu_count(),
          "devices": f"{len(devices)} x {devices[0].platform}:{devices[0].device_kind}",
          **{pkg: _version(pkg) for pkg in PACKAGES}}


def differences(recorded: dict, current: dict) -> list[str]:
  """``key: old -> new`` for every entry of ``recorded`` that ``current`` does not match."""
  return [f"{k}: {recorded[k]} -> {current.get(k, 'absent')}" for k in sorted(recorded)
          if recorded[k] != current.get(k)]
