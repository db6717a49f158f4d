"""Activations under faults: the outputs of every activation site of a model whose stored
values were corrupted, compared with the fault-free (quantised, unflipped) model.

Used for the paper's Table V (mean squared L2 distance per faulted layer) and Figs. 3/6
(histograms); the fault draws are those of :mod:`proact_jax.faults.campaign` (trial ``t`` =
trial ``t`` of BER index 0 of a campaign with the same key and this single BER). The jitted
runners are cached per (model, fault plan, trials), so repeated calls with new values do not
recompile.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from proact_jax.core.activations import ClippedAct
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import DEFAULT_FORMAT, NumberFormat
from proact_jax.faults.trial import check_bers, corrupt, make_plan
from proact_jax.transform import network


def _site_name(path: tuple) -> str:
  return "/".join(p for p in path if p != "__call__")


def _capture(model, variables, x: jax.Array) -> dict[str, jax.Array]:
  """Outputs of every activation site (site name -> activation): of every :class:`ClippedAct`
  of a linen module, else of every site of a network (:func:`network.capture`)."""
  if not isinstance(model, nn.Module):
    return network.capture(model, variables, x)
  _, state = model.apply(variables, x, train=False, mutable=["intermediates"],
                         capture_intermediates=lambda mdl, _: isinstance(mdl, ClippedAct))
  flat = traverse_util.flatten_dict(unfreeze(state["intermediates"]))
  return {_site_name(p): v[0] if isinstance(v, tuple) else v for p, v in flat.items()}


def _faulty_activations(model, plan, bkey, t, clean, aux, ber, x) -> dict[str, jax.Array]:
  """Site outputs under trial ``t``'s corruption (``bkey`` = the BER's key)."""
  v, _, _ = corrupt(jax.random.fold_in(bkey, t), clean, ber, plan, prequantized=True, aux=aux)
  return _capture(model, v, x)


def _activation_setup(model, variables, x, ber, fmt, space, layer):
  check_bers([ber])
  space = space or faults.FaultSpace()
  if layer is not None:
    space = dataclasses.replace(space, layer=layer)
  plan = make_plan(variables, fmt, space, float(ber))
  clean, aux = faults.quantize_with_aux(variables, plan.fmt, space)
  return plan, clean, aux, jnp.asarray(x, jnp.float32)


def activation_distance(key: chex.PRNGKey, model, variables, x, ber: float, *,
                        fmt: str | NumberFormat = DEFAULT_FORMAT,
                        space: faults.FaultSpace | None = None, layer: str | None = None,
                        trials: int = 10) -> dict[str, float]:
  """Mean over trials and images of ``||a_faulty - a_clean||^2`` at each activation site.

  ``a`` is a site's output for one image (the outputs of every ``ClippedAct``, or of every site
  of a network from :func:`proact_jax.function_network`); clean = the
  quantised, unflipped variables. Trial ``t`` uses the same corruption as trial ``t`` of BER
  index 0 of a campaign with key ``key`` and this single BER. Non-finite differences (float
  formats) propagate as inf/nan. ``x``: a modest batch of images (one forward pass each).
  """
  plan, clean, aux, x = _activation_setup(model, variables, x, ber, fmt, space, layer)
  ref = _capture_jit(model)(clean, x)
  out = _distance_runner(model, plan, int(trials))(clean, aux, ref, x, jnp.float32(ber),
                                                   jax.random.fold_in(key, 0))
  return {s: float(np.mean(np.asarray(out[s]))) for s in ref}


@functools.lru_cache(maxsize=32)
def _capture_jit(model):
  return jax.jit(lambda v, x: _capture(model, v, x))


@functools.lru_cache(maxsize=64)
def _distance_runner(model, plan, trials: int):
  @jax.jit
  def run(clean, aux, ref, x, ber, bkey):
    def one(t):
      acts = _faulty_activations(model, plan, bkey, t, clean, aux, ber, x)
      return {s: jnp.mean(jnp.sum(jnp.square(acts[s] - ref[s]).reshape(x.shape[0], -1), -1))
              for s in ref}
    return jax.lax.map(one, jnp.arange(trials))
  return run


def activation_samples(key: chex.PRNGKey, model, variables, x, ber: float, *,
                       fmt: str | NumberFormat = DEFAULT_FORMAT,
                       space: faults.FaultSpace | None = None, layer: str | None = None,
                       trials: int = 1, max_samples: int = 20000) -> dict[str, dict]:
  """Fault-free and faulty activations per site for histograms.

  Returns ``{site: {"clean": [s], "faulty": [trials * s]}}`` (numpy), the same ``s <=
  max_samples`` randomly chosen activation elements of every trial (seeded by ``key``).
  """
  plan, clean, aux, x = _activation_setup(model, variables, x, ber, fmt, space, layer)
  ref = _capture_jit(model)(clean, x)
  picks = {}
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  for s, a in ref.items():
    picks[s] = np.sort(rng.choice(a.size, min(a.size, max_samples), replace=False))
  bkey = jax.random.fold_in(key, 0)

  @jax.jit
  def run(clean, aux, x, ber):
    def one(t):
      acts = _faulty_activations(model, plan, bkey, t, clean, aux, ber, x)
      return {s: acts[s].reshape(-1)[picks[s]] for s in ref}
    return jax.lax.map(one, jnp.arange(int(trials)))

  out = run(clean, aux, x, jnp.float32(ber))
  return {s: {"clean": np.asarray(ref[s]).reshape(-1)[picks[s]],
              "faulty": np.asarray(out[s]).reshape(-1)} for s in ref}
