import gc
import os
import shutil
import tempfile

import pytest

# Keep the suite on CPU and single-threaded-friendly; subprocess tests set their own XLA_FLAGS.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE_OWNER = "PROACT_TEST_CACHE_OWNER"


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run, shared by the xdist workers and the
  CLI subprocesses (they inherit the environment set here, before the workers start).

  The suite compiles the same programs in many modules (the digits models, the campaign trial
  functions) and drops the in-memory caches after each module (below), so most of its time was
  recompiling; the disk cache returns the same executable, so no number changes. Measured on
  test_carry + test_fault_rule + test_vulnerability in one process: 129 -> 101 CPU-s with an
  empty cache at the start. The cache lives in a fresh temporary directory removed at the end (a
  run never reads another run's executables). No size limit: with one, JAX keeps an access-time
  file per entry and a writer killed between the two writes breaks every later write; without,
  the worst a concurrent reader can meet is a half-written entry, which JAX rejects (its
  compressed stream is checked) with a warning and recompiles. A child under a file-size limit
  (test_misuse_resume) gets no cache.
  """
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return  # a worker: the controller set it up
  _unoptimised_backend()
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # the user's own cache
  path = tempfile.mkdtemp(prefix="proact-jax-test-xla-cache-")
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": path, _CACHE_OWNER: path,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})


def _unoptimised_backend():
  """Compile the suite's programs with XLA's backend optimisation level 0.

  The suite is compile-bound (small models, many distinct programs), so LLVM's optimisation
  passes cost more than they save: test_activation_faults + test_fault_rule took 0.68x the CPU
  time at level 0, the whole suite 740 -> 550 s (docs/benchmarks.md, "Test suite time"). No
  test compares against numbers from an optimised build: each compares paths compiled in the
  same run, or checks a tolerance. A user who sets the option in XLA_FLAGS keeps theirs;
  children that need more devices append their flag to these (child_env.py).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


def pytest_unconfigure(config):
  path = os.environ.get(_CACHE_OWNER)
  if path and not os.environ.get("PYTEST_XDIST_WORKER"):
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  """Drop JAX's compiled executables after each test module.

  Every XLA:CPU executable keeps a few dozen memory mappings of JIT-compiled code alive for as
  long as JAX's caches hold it. One process that compiles the whole suite's functions reaches the
  kernel's ``vm.max_map_count`` (65,530 here) after about 270 tests, and the next compile then
  segfaults inside LLVM (measured: 8.4 k mappings after 25 tests, 54 k after 150). A user's run
  compiles a handful of functions, so only the suite needs this.
  """
  yield
  import jax
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def misuse_work(tmp_path_factory):
  """A 1-epoch digits baseline and a perturbed copy (misuse_helpers.make_work), built once per
  worker for the modules that only read them (test_misuse*, test_portable)."""
  from misuse_helpers import make_work
  return make_work(tmp_path_factory)
