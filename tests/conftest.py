import os

# Keep the suite on CPU and single-threaded-friendly; subprocess tests set their own XLA_FLAGS.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
