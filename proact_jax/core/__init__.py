"""Model-side core: clipped activations, threshold trees, profiling, distillation losses and
evaluation. Imports nothing else from the package but ``core`` itself."""
