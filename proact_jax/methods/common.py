"""What every threshold method shares: rebuilding a model with clipped activations, filling its
thresholds from a profile, and the result record.

A model takes part through :class:`proact_jax.transform.network.Network`: either a linen module
whose activation sites are built by a :class:`proact_jax.Activation` held in a field named
``act`` (all built-in models; the methods rebuild it with ``model.clone(act=Activation(kind,
granularity))`` and return linen modules), or any JAX function wrapped by
:func:`proact_jax.function_network` (the methods return networks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.activations import THRESHOLDS
from proact_jax.core.evaluate import EvalSet, evaluate
from proact_jax.core.profile import thresholds_from_profile
from proact_jax.methods.progress import Progress, open_progress  # noqa: F401  (re-exported)
from proact_jax.transform.network import FlaxNetwork, as_network

METHODS = ("ranger", "ft-clipact", "fitact", "proact")
ALLOWED_GRANULARITY = {
    "ranger": ("layer", "neuron"),
    "ft-clipact": ("layer",),
    "fitact": ("neuron",),
    "proact": ("hybrid", "layer", "neuron"),
}
KIND = {"ranger": "zero", "ft-clipact": "zero", "fitact": "smooth", "proact": "smooth"}


@dataclasses.dataclass
class Hardened:
  """A hardened model: the baseline weights untouched plus a threshold tree."""
  method: str
  model: Any                       # rebuilt with the clipped activation (linen module or network)
  variables: dict                  # baseline collections + "thresholds"
  kind: str
  granularity: str
  clean_accuracy: float            # on the evaluation images given to the method
  baseline_accuracy: float
  sites: list = dataclasses.field(default_factory=list)   # per-site summaries, forward order
  wall_time: float = 0.0
  extra: dict = dataclasses.field(default_factory=dict)

  @property
  def memory_overhead(self) -> float:
    return thr_lib.memory_overhead(self.variables)

  def summary(self) -> dict:
    return {"method": self.method, "kind": self.kind, "granularity": self.granularity,
            "clean_accuracy": self.clean_accuracy, "baseline_accuracy": self.baseline_accuracy,
            "memory_overhead": self.memory_overhead,
            "n_threshold_values": thr_lib.count(self.variables.get(THRESHOLDS, {})),
            "wall_time": self.wall_time, "sites": self.sites, **self.extra}


def check_granularity(method: str, granularity: str) -> None:
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
  if granularity not in ALLOWED_GRANULARITY[method]:
    raise ValueError(f"{method} does not allow granularity {granularity!r}; allowed: "
                     f"{', '.join(ALLOWED_GRANULARITY[method])}")


def with_activation(model, kind: str, granularity: str):
  """The same architecture with its activation sites rebuilt as ``kind``/``granularity`` (a
  linen module for a linen module, else a network)."""
  net = as_network(model).with_kind(kind, granularity)
  return net.module if isinstance(net, FlaxNetwork) else net


def site_order(model, variables, input_shape) -> list[str]:
  """The activation sites of ``model`` (a linen module or a network) in forward order."""
  return as_network(model).site_order(variables, tuple(input_shape))


def baseline_variables(variables) -> dict:
  """The baseline collections (params, batch_stats), without thresholds or profiling stats."""
  return {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats")}


def profiled_thresholds(base_model, variables, clipped, input_shape,
                        batches: Iterable) -> tuple[dict, dict]:
  """(threshold tree of ``clipped`` filled from the profile, per-neuron maxima by site)."""
  frozen = baseline_variables(variables)
  neuron_max = as_network(base_model).with_kind("relu", "layer").profile(frozen, batches)
  tree = as_network(clipped).init_thresholds(frozen, tuple(input_shape))
  return thresholds_from_profile(tree, neuron_max), neuron_max


def site_summary(tree, order, accuracies: dict | None = None) -> list:
  out = []
  for s in order:
    lam = np.asarray(thr_lib.get_site(tree, s))
    row = {"site": s, "n_values": int(lam.size), "min": float(lam.min()),
           "max": float(lam.max()), "mean": float(lam.mean())}
    if accuracies and s in accuracies:
      row["clean_accuracy"] = accuracies[s]
    out.append(row)
  return out


def accuracy(model, variables, data: EvalSet) -> float:
  return evaluate(model, variables, data)[0]


def batches_of(x: np.ndarray, batch_size: int = 256):
  for i in range(0, len(x), batch_size):
    yield x[i:i + batch_size]
