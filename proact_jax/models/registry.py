"""A registry of model constructors by name, in the style of big_vision.

It imports none of the model files that register into it; ``proact_jax.models`` does.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from proact_jax.core.activations import Activation

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
  """Decorator: ``@register_model("alexnet")`` on a constructor ``(num_classes, act) -> Module``."""
  def wrap(fn):
    MODELS[name] = fn
    return fn
  return wrap


def create_model(name: str, num_classes: int = 10, kind: str = "relu", granularity: str = "layer",
                 k: float = 20.0) -> nn.Module:
  """Builds a registered model with its activation sites of the given kind and granularity.

  Raises:
    ValueError: unknown model name, activation kind or granularity, or num_classes < 2.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}")
  if int(num_classes) < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  return MODELS[name](num_classes=int(num_classes),
                      act=Activation(kind=kind, granularity=granularity, k=k))
