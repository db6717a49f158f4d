"""The four activation-restriction methods of the ProAct paper."""

from proact_jax.methods.common import (ALLOWED_GRANULARITY, METHODS, Hardened, check_granularity,
                                       with_activation)
from proact_jax.methods.fitact import FitActConfig, fitact
from proact_jax.methods.ft_clipact import FTClipActConfig, ft_clipact
from proact_jax.methods.proact import ProActConfig, proact
from proact_jax.methods.ranger import ranger
from proact_jax.training.checkpoint import save_checkpoint
from proact_jax.version import __version__

__all__ = ["ALLOWED_GRANULARITY", "METHODS", "FTClipActConfig", "FitActConfig", "Hardened",
           "ProActConfig", "check_granularity", "fitact", "ft_clipact", "proact", "ranger",
           "with_activation", "save_hardened"]


def save_hardened(directory: str, hardened: Hardened, base_meta: dict, test_accuracy: float,
                  overwrite: bool = True, method_seed: int | None = None) -> str:
  """Writes a hardened checkpoint: baseline weights + thresholds + how to rebuild the model.

  The baseline's metadata is kept (its ``seed`` is the baseline's training seed);
  ``method_seed``, if given, records the seed of the method's own training and search.
  """
  meta = {k: v for k, v in base_meta.items() if k not in ("accuracy", "test_loss")}
  meta.update({"kind": hardened.kind, "granularity": hardened.granularity,
               "method": hardened.method, "accuracy": test_accuracy,
               "baseline_accuracy": base_meta.get("accuracy"), "hardening": hardened.summary(),
               "version": __version__})
  if method_seed is not None:
    meta["method_seed"] = int(method_seed)
  return save_checkpoint(directory, hardened.variables, meta, overwrite=overwrite)
