"""Activation ("neuron") faults: transient bit flips in the activations at every site.

The PyTorchFI "neuron" fault model, for any model behind
:class:`proact_jax.transform.network.Network` (a package Flax model or a transformed function):
while an image is evaluated, the output of every activation site is stored in the number format
and each stored bit flips independently with probability ``BER``. Each image's forward pass is an
independent transient, so the model is per image: image ``p`` of a trial's evaluation order
(0-based position in its padded batches) and the ``j``-th site evaluation of the forward pass
(forward order for Flax models, walk order for functions) draw

  ``K ~ Binomial(elements of the site for one image x selected bits, BER)``

flips at ``K`` distinct uniform positions with key ``fold_in(fold_in(activation_key, j), p)``,
through :func:`proact_jax.faults.injection.flip_bits` (the same count and position sampler, the
same formats, sparse fast path and exact dense fallback as weight faults). In a campaign
``activation_key = fold_in(trial_key, 5)`` (``0``: weights, ``1``: thresholds, ``2``: image subset;
``3``, ``4`` are left to the stratified campaign), so every variant of a paired campaign gets the
same activation flips in trial ``t`` (same sites and shapes), whatever the batching, devices or
resumption. Summed over sites and the trial's ``n`` valid images, the number of flips is
``Binomial(n x n_activation_bits_per_image, BER)``; padded images receive flips that are not
counted (their predictions are masked out anyway).

Number formats (:mod:`proact_jax.faults.formats`): as for weights, the site outputs are *stored*
in the format: every site output is quantised (``fmt.quantize``; int8 with a per-image, per-site
scale ``max|a| / 127``), and a flipped value is decoded from its flipped word. In ``float32`` the
clean activations are unchanged; in a fixed-point or half format the activation-fault model
computes with quantised activations (the clean accuracy in a results file is the float one).

Fault space: ``"activations"`` in :attr:`FaultSpace.collections` (a pseudo-collection: no variable
collection has that name) turns the model on; ``FaultSpace.layer`` may name a site (``"act6"``,
``"relu_3"``, ``"activations/act6"``) to flip only there (every site is still quantised);
``bit_lo``/``bit_hi`` select bits as for weights. Sites inside ``scan``/``while``/``cond``/
``remat`` bodies of a transformed function are refused (their activations are not one tensor
per image).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from proact_jax.core import evaluate as plain
from proact_jax.core.evaluate import EvalSet, batch_counts
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import NumberFormat, get_format
from proact_jax.faults.sampling import default_cap
from proact_jax.transform.network import as_network

ACTIVATIONS = "activations"
ACTIVATION_KEY = 5  # fold_in(trial_key, ACTIVATION_KEY) is a campaign trial's activation key

__all__ = ["ACTIVATIONS", "ACTIVATION_KEY", "ActivationPlan", "accuracy_and_loss",
           "activation_bits", "activation_plan", "faulty_apply", "trial_evaluator"]


@dataclasses.dataclass(frozen=True)
class ActivationPlan:
  """Static description of activation faults (hashable).

  Attributes:
    fmt: the number format activations are stored in.
    layer: site filter (``FaultSpace.layer``), None for every site.
    bit_lo, bit_hi: the selected bits of each word.
    max_ber: the campaign's largest BER (sizes the static flip caps).
  """
  fmt: NumberFormat
  layer: str | None
  bit_lo: int
  bit_hi: int
  max_ber: float

  def selects(self, site: str) -> bool:
    return self.layer is None or faults._matches((ACTIVATIONS, *site.split("/")), self.layer)


def activation_plan(space: faults.FaultSpace | None, fmt, max_ber: float) -> ActivationPlan | None:
  """The activation plan of ``space`` (None when ``"activations"`` is not in its collections)."""
  if space is None or ACTIVATIONS not in space.collections:
    return None
  fmt = get_format(fmt)
  lo, hi = space.bit_range(fmt)
  return ActivationPlan(fmt, space.layer, lo, hi, float(max_ber))


def _site_faults(plan: ActivationPlan, key, ber, positions, a, selected: bool):
  """Site output ``a`` ([B, ...]) stored in the format, with image ``positions[i]``'s flips;
  returns ``(a', flips per image [B])``."""
  fmt = plan.fmt
  space = faults.FaultSpace(collections=(ACTIVATIONS,), bit_lo=plan.bit_lo, bit_hi=plan.bit_hi)
  n_bits = int(np.prod(a.shape[1:], dtype=np.int64)) * (plan.bit_hi - plan.bit_lo)
  cap = default_cap(n_bits, plan.max_ber)

  def one(k, ai):
    bits, aux = fmt.encode(ai)
    clean = fmt.decode(bits, aux).astype(ai.dtype)
    if not selected or n_bits == 0:
      return clean, jnp.int32(0)
    out, n = faults.flip_bits(k, {ACTIVATIONS: {"a": clean}}, ber, fmt, space, max_flips=cap,
                              prequantized=True, aux={f"{ACTIVATIONS}/a": aux})
    return out[ACTIVATIONS]["a"], n

  keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
  return jax.vmap(one)(keys, a)


def faulty_apply(model, variables, x, key, ber, plan: ActivationPlan, positions=None):
  """``(logits, flips per image [B])`` of ``model`` on ``x`` with activation faults.

  ``positions``: the images' positions in the trial (default ``0..B-1``); image ``p`` at the
  ``j``-th site uses ``fold_in(fold_in(key, j), p)``. Traceable; ``ber`` may be traced.
  """
  positions = jnp.arange(x.shape[0]) if positions is None else positions
  counts, calls = [], [0]

  def hook(name, a):
    j = calls[0]
    calls[0] += 1
    a, n = _site_faults(plan, jax.random.fold_in(key, j), ber, positions, a, plan.selects(name))
    counts.append(n)
    return a

  logits = as_network(model).apply(variables, x, hook=hook)
  total = sum(counts) if counts else jnp.zeros(x.shape[:1], jnp.int32)
  return logits, total


def accuracy_and_loss(model, variables, data: EvalSet, key, ber, plan: ActivationPlan):
  """Traceable: ``(accuracy, mean loss, number of activation flips in the valid images)`` of
  ``model`` on ``data`` with activation faults keyed by ``key`` (the trial's activation key).

  Like :func:`proact_jax.core.evaluate.accuracy_and_loss`, batches are visited with ``lax.map``;
  image positions are ``batch index * batch size + row``.
  """
  bs = int(data.x.shape[1])

  def one(batch):
    b, x, y, m = batch
    logits, n = faulty_apply(model, variables, x, key, ber, plan, b * bs + jnp.arange(bs))
    correct, loss = batch_counts(logits, y, m)
    return correct, loss, jnp.sum(jnp.where(m, n, 0))

  nb = int(data.x.shape[0])
  correct, loss, flips = jax.lax.map(one, (jnp.arange(nb), data.x, data.y, data.mask))
  return jnp.sum(correct) / data.n, jnp.sum(loss) / data.n, jnp.sum(flips)


def trial_evaluator(model, plan: ActivationPlan | None):
  """``ev(variables, data, trial_key, ber) -> (accuracy, loss, activation flips)`` of one campaign
  trial: :func:`accuracy_and_loss` keyed by ``fold_in(trial_key, ACTIVATION_KEY)``, or with
  ``plan`` None the plain evaluation and 0 flips. Traceable."""
  apply_fn = plain.eval_apply(model)

  def ev(variables, data: EvalSet, trial_key, ber):
    if plan is None:
      return (*plain.accuracy_and_loss(apply_fn, variables, data), jnp.int32(0))
    return accuracy_and_loss(model, variables, data,
                             jax.random.fold_in(trial_key, ACTIVATION_KEY), ber, plan)

  return ev


def activation_bits(model, variables, input_shape, plan: ActivationPlan) -> int:
  """``n_activation_bits`` of one image: selected site elements times selected bits."""
  sizes = []

  def hook(name, a):
    if plan.selects(name):
      sizes.append(int(np.prod(a.shape[1:], dtype=np.int64)))
    return a

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  jax.eval_shape(lambda v, x: as_network(model).apply(v, x, hook=hook), variables, x)
  return sum(sizes) * (plan.bit_hi - plan.bit_lo)
