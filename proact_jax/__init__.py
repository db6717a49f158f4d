"""proact-jax: activation restriction (ProAct, Ranger, FT-ClipAct, FitAct) and an exact, batched
bit-flip fault injector, in JAX/Flax.

Mousavi et al., "ProAct: Progressive Training for Hybrid Clipped Activation Function to Enhance
Resilience of DNNs", arXiv 2406.06313.

One subpackage per concept; data flows one way, and a module never imports one from a later
layer (``tests/test_layout.py`` checks it):

  core, data -> models -> training -> faults -> methods -> report -> commands

``core`` holds the model-side functions (activations, thresholds, profile, distill, evaluate);
``training`` the baseline training loop, checkpoints and a checkpoint's data; ``faults`` the
number formats, flip sampling and injection, trials, campaigns, statistics and results files.
Faults come before methods because FT-ClipAct is scored by fault campaigns. This module only
re-exports the common names; heavier modules are imported from their subpackage:
``from proact_jax import methods`` and ``from proact_jax.faults import campaign``.
"""

from proact_jax.core.activations import (ACT_STATS, GRANULARITIES, KINDS, THRESHOLDS,
                                         Activation, ClippedAct, activation_fn,
                                         clip_to_threshold, clip_to_zero, relu, smooth_clip)
from proact_jax.core.distill import kd_loss, kd_loss_jit, kl_divergence, l2_thresholds
from proact_jax.core.evaluate import EvalSet, evaluate, make_eval_set, predict
from proact_jax.core.profile import layer_max, profile_max, thresholds_from_profile
from proact_jax.core.thresholds import (count, get_site, memory_overhead, merge, set_site,
                                        site_mask, site_names, site_optimizer, site_order, split)
from proact_jax.data.dataset import Dataset
from proact_jax.data.pipeline import (augment, channel_stats, iterate_batches, normalize,
                                      split_train_val, subset)
from proact_jax.data.sources import DATASETS, load_dataset
from proact_jax.faults.formats import NumberFormat, get_format, quantize_tree
from proact_jax.faults.injection import (FaultSpace, flip_bits, flip_n, stuck_at,
                                         toolbox_floor_flips)
from proact_jax.models import MODELS, create_model, register_model
from proact_jax.transform.clip import ClippedFunction, clip_activations
from proact_jax.transform.network import Network, function_network
from proact_jax.training.checkpoint import load_checkpoint, save_checkpoint
from proact_jax.training.portable import (export_checkpoint, export_thresholds,
                                         import_checkpoint, import_thresholds, read_thresholds)
from proact_jax.version import __version__

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
    "ClippedFunction", "clip_activations", "Network", "function_network",
    "export_checkpoint", "export_thresholds", "import_checkpoint", "import_thresholds",
    "read_thresholds",
]
