"""proact-jax: activation restriction (ProAct, Ranger, FT-ClipAct, FitAct) and an exact, batched
bit-flip fault injector, in JAX/Flax.

Mousavi et al., "ProAct: Progressive Training for Hybrid Clipped Activation Function to Enhance
Resilience of DNNs", arXiv 2406.06313. Data flows one way: data -> models -> methods ->
faults/campaign -> stats -> report. Heavier modules (methods, campaign, report) are imported as
submodules: ``from proact_jax import methods, campaign``.
"""

from proact_jax.activations import (ACT_STATS, GRANULARITIES, KINDS, THRESHOLDS, Activation,
                                    ClippedAct, activation_fn, clip_to_threshold, clip_to_zero,
                                    relu, smooth_clip)
from proact_jax.checkpoint import load_checkpoint, save_checkpoint
from proact_jax.data import DATASETS, Dataset, load_dataset
from proact_jax.distill import kd_loss, kd_loss_jit, kl_divergence, l2_thresholds
from proact_jax.evaluate import EvalSet, evaluate, make_eval_set, predict
from proact_jax.faults import FaultSpace, flip_bits, flip_n, stuck_at, toolbox_floor_flips
from proact_jax.formats import NumberFormat, get_format, quantize_tree
from proact_jax.models import MODELS, create_model, register_model
from proact_jax.pipeline import (augment, channel_stats, iterate_batches, normalize,
                                 split_train_val, subset)
from proact_jax.profile import layer_max, profile_max, thresholds_from_profile
from proact_jax.transform import ClippedFunction, clip_activations  # issue 13: any JAX function
from proact_jax.thresholds import (count, get_site, memory_overhead, merge, set_site, site_mask,
                                   site_names, site_optimizer, site_order, split)

__version__ = "0.1.0"

__all__ = [
    "ACT_STATS", "DATASETS", "GRANULARITIES", "KINDS", "MODELS", "THRESHOLDS", "Activation",
    "ClippedAct", "Dataset", "EvalSet", "FaultSpace", "NumberFormat", "activation_fn", "augment",
    "channel_stats", "clip_to_threshold", "clip_to_zero", "count", "create_model", "evaluate",
    "flip_bits", "flip_n", "get_format", "get_site", "iterate_batches", "kd_loss", "kd_loss_jit",
    "kl_divergence", "l2_thresholds", "layer_max", "load_checkpoint", "load_dataset",
    "make_eval_set", "memory_overhead", "merge", "normalize", "predict", "profile_max",
    "quantize_tree", "register_model", "relu", "save_checkpoint", "set_site", "site_mask",
    "site_names", "site_optimizer", "site_order", "smooth_clip", "split", "split_train_val",
    "stuck_at", "subset", "thresholds_from_profile", "toolbox_floor_flips",
]
__all__ += ["ClippedFunction", "clip_activations"]
