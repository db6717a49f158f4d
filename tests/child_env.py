"""The environment of a test's child process on ``devices`` virtual CPU devices."""

import os


def cpu_devices_env(devices: int) -> dict:
  """``os.environ`` on CPU with ``devices`` host devices; the flags conftest set (its backend
  optimisation level) are kept, the device count appended."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())
