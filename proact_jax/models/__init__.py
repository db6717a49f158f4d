"""Models chosen by name (registry in ``registry.py``)."""
from proact_jax.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
