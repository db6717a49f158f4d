"""Models chosen by name: the registry and one file per architecture, each registering itself.

The registry imports none of the model files; this package imports them all, so ``MODELS`` is
complete as soon as ``proact_jax.models`` is imported.
"""
from proact_jax.models import alexnet, resnet, small, vgg  # noqa: F401  (importing registers)
from proact_jax.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
