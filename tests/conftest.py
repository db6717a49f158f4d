import gc
import os

import pytest

# Keep the suite on CPU and single-threaded-friendly; subprocess tests set their own XLA_FLAGS.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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
