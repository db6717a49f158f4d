"""The test suite's XLA backend optimisation level: CPU time of test files at level 3 and 0.

  python benchmarks/bench_test_compile.py [tests/test_activation_faults.py ...] [--repeats 1]

The suite is compile-bound (small models, many distinct programs), so ``tests/conftest.py``
compiles with ``--xla_backend_optimization_level=0`` (XLA's default is 3). This runs the given
test files in one pytest process (``-n 0``, a fresh compilation cache each run, as CI starts)
once per level, alternating, and prints the CPU seconds (user + system of the child) and the wall
time of each, with the ratio taken in the same run. By hand, on an otherwise idle machine; not a
test.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

_DEFAULT = ["tests/test_activation_faults.py", "tests/test_fault_rule.py"]


def _run(files: list[str], level: int) -> tuple[float, float, bool]:
  """CPU seconds, wall seconds and success of one pytest run at ``level``."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_backend_optimization_level={level}")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # conftest makes a fresh one
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                         *files], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return cpu, wall, proc.returncode == 0


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("files", nargs="*", default=_DEFAULT)
  ap.add_argument("--repeats", type=int, default=1)
  args = ap.parse_args(argv)
  rows = {3: [], 0: []}
  for r in range(args.repeats):
    for level in (3, 0):
      cpu, wall, ok = _run(args.files, level)
      rows[level].append((cpu, wall))
      print(f"repeat {r} level {level}: {cpu:.1f} CPU-s, {wall:.1f} s wall, "
            f"{'passed' if ok else 'FAILED'}", flush=True)
  cpu3, cpu0 = (sum(c for c, _ in rows[k]) for k in (3, 0))
  wall3, wall0 = (sum(w for _, w in rows[k]) for k in (3, 0))
  print(f"{' '.join(args.files)}: level 0 / level 3 = {cpu0 / cpu3:.2f} (CPU), "
        f"{wall0 / wall3:.2f} (wall)")


if __name__ == "__main__":
  main()
