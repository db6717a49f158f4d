"""proact-jax: activation restriction (ProAct, Ranger, FT-ClipAct, FitAct) and fault injection
in JAX. Mousavi et al., "ProAct: Progressive Training for Hybrid Clipped Activation Function to
Enhance Resilience of DNNs", arXiv 2406.06313."""

from proact_jax.activations import (ACT_STATS, GRANULARITIES, KINDS, THRESHOLDS, Activation,
                                    ClippedAct, activation_fn, clip_to_threshold, clip_to_zero,
                                    relu, smooth_clip)
from proact_jax.distill import kd_loss, kd_loss_jit, kl_divergence, l2_thresholds
from proact_jax.models import MODELS, create_model, register_model
from proact_jax.profile import layer_max, profile_max, thresholds_from_profile
from proact_jax.thresholds import (count, get_site, memory_overhead, merge, set_site, site_mask,
                                   site_names, site_optimizer, site_order, split)

__version__ = "0.1.0"

__all__ = [
    "ACT_STATS", "GRANULARITIES", "KINDS", "THRESHOLDS", "Activation", "ClippedAct", "MODELS",
    "activation_fn", "clip_to_threshold", "clip_to_zero", "count", "create_model", "get_site",
    "kd_loss", "kd_loss_jit", "kl_divergence", "l2_thresholds", "layer_max", "memory_overhead",
    "merge", "profile_max", "register_model", "relu", "set_site", "site_mask", "site_names",
    "site_optimizer", "site_order", "smooth_clip", "split", "thresholds_from_profile",
]
