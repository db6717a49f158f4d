"""Gradient training of activation thresholds with the weights frozen (FitAct and ProAct).

Only the thresholds are differentiated (the weights are a non-differentiated argument, as in
big_vision's distillation trainer), and an optax partition updates exactly the chosen sites:
every other leaf, threshold or weight, stays bit-identical.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from proact_jax.core import thresholds as thr_lib
from proact_jax.core.distill import kl_divergence, l2_thresholds
from proact_jax.core.evaluate import EvalSet, eval_apply, evaluate


@dataclasses.dataclass(frozen=True)
class ThresholdTraining:
  """Settings of one threshold-training run (paper defaults for ProAct)."""
  epochs: int = 20
  batch_size: int = 128
  learning_rate: float = 0.01
  halve_every: int = 10          # epochs between learning-rate halvings (0: constant)
  temperature: float = 1.0
  kd_weight: float = 1.0
  ce_weight: float = 1.0
  gamma: float = 0.0             # weight of sum(lam^2) over the trained sites
  kd_direction: str = "student-teacher"  # KL(student || teacher), the paper's Eq. 7


def make_step(model, tx: optax.GradientTransformation, cfg: ThresholdTraining, trained: dict,
              upper: dict):
  """A jitted ``step(thr, opt_state, frozen, x, y, teacher_logits) -> (thr, opt_state, loss)``.

  ``trained`` is a bool tree like the thresholds marking the sites being trained (their L2 term
  applies only there). ``upper`` (a tree like the thresholds) bounds the trained sites: after each
  update they are projected onto [0, upper] (the profiled maxima: a threshold above every
  activation seen protects nothing more).
  """
  def loss_fn(thr, frozen, x, y, t_logits):
    logits = eval_apply(model)(thr_lib.merge(frozen, thr), x)
    loss = cfg.ce_weight * jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    if cfg.kd_weight:
      loss = loss + cfg.kd_weight * kl_divergence(logits, t_logits, cfg.temperature,
                                                  cfg.kd_direction)
    if cfg.gamma:
      own = jax.tree_util.tree_map(lambda a, m: a if m else jnp.zeros(()), thr, trained)
      loss = loss + cfg.gamma * l2_thresholds(own)
    return loss

  @jax.jit
  def step(thr, opt_state, frozen, x, y, t_logits):
    loss, grads = jax.value_and_grad(loss_fn)(thr, frozen, x, y, t_logits)
    updates, opt_state = tx.update(grads, opt_state, thr)
    new = optax.apply_updates(thr, updates)
    new = jax.tree_util.tree_map(lambda a, m, u: jnp.clip(a, 0.0, u) if m else a, new, trained,
                                 upper)
    return new, opt_state, loss

  return step


def optimizer(cfg: ThresholdTraining, steps_per_epoch: int) -> optax.GradientTransformation:
  if cfg.halve_every:
    lr = optax.exponential_decay(cfg.learning_rate, cfg.halve_every * steps_per_epoch, 0.5,
                                 staircase=True)
  else:
    lr = cfg.learning_rate
  return optax.adam(lr)


def train_thresholds(key: jax.Array, model, frozen: dict, thr: dict, sites: Sequence[str],
                     x: np.ndarray, y: np.ndarray, teacher_logits: np.ndarray | None,
                     val_set: EvalSet, cfg: ThresholdTraining, *, floor: float | None = None,
                     desc: str = "", progress: bool = True, guard=None,
                     resume: dict | None = None, on_epoch: Callable[[dict], None] | None = None):
  """Trains the thresholds of ``sites`` (all others frozen).

  Args:
    key: PRNG key for the per-epoch shuffles.
    floor: the accuracy guard: when given, return the thresholds of the last epoch whose
      validation accuracy was >= floor (None if no epoch was); else those of the last epoch.
    guard: instead of ``floor``, ``guard(model, variables) -> (accepted, val_accuracy, info)``
      (:class:`proact_jax.methods.guard.AccuracyGuard`); its info goes into the history.
    on_epoch: called after every epoch with ``{"epoch": epochs done, "history", "thr", "opt",
      "accepted"}`` (tree leaves as numpy arrays); passing that dict back as ``resume``
      continues from there with the uninterrupted run's result (the shuffle of epoch ``e`` is
      ``fold_in(key, e)``, and the optimiser state is restored).

  Returns:
    (thresholds or None, history of per-epoch dicts).
  """
  for name, ok in (("epochs", isinstance(cfg.epochs, int) and cfg.epochs >= 1),
                   ("batch_size", isinstance(cfg.batch_size, int) and cfg.batch_size >= 1),
                   ("learning_rate", 0.0 < cfg.learning_rate < float("inf")),
                   ("gamma", 0.0 <= cfg.gamma < float("inf")),
                   ("temperature", 0.0 < cfg.temperature < float("inf"))):
    if not ok:
      raise ValueError(f"threshold training: {name} = {getattr(cfg, name)!r} is out of range")
  if len(x) < cfg.batch_size:
    raise ValueError(f"{len(x)} training images are fewer than the batch size {cfg.batch_size}")
  trained = jax.tree_util.tree_map(lambda _: False, thr)
  for s in sites:
    trained = jax.tree_util.tree_map(jnp.logical_or, trained, thr_lib.site_mask(thr, s))
  trained = jax.tree_util.tree_map(bool, trained)
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", trained)
  steps = len(x) // cfg.batch_size
  tx = optax.multi_transform({"train": optimizer(cfg, steps), "freeze": optax.set_to_zero()},
                             labels)
  step = make_step(model, tx, cfg, trained, thr)
  opt_state = tx.init(thr)
  if cfg.kd_weight and teacher_logits is None:
    raise ValueError("knowledge distillation needs teacher logits")
  t_logits = teacher_logits if teacher_logits is not None else np.zeros((len(x), 1), np.float32)
  accepted, history, start = None, [], 0
  thr_def, opt_def = jax.tree_util.tree_structure(thr), jax.tree_util.tree_structure(opt_state)
  if resume is not None:
    start, history = int(resume["epoch"]), list(resume["history"])
    thr = jax.tree_util.tree_unflatten(thr_def, [jnp.asarray(a) for a in resume["thr"]])
    opt_state = jax.tree_util.tree_unflatten(opt_def, [jnp.asarray(a) for a in resume["opt"]])
    if resume["accepted"] is not None:
      accepted = jax.tree_util.tree_unflatten(thr_def, [jnp.asarray(a)
                                                        for a in resume["accepted"]])
  leaves = lambda t: [np.asarray(a) for a in jax.tree_util.tree_leaves(t)]
  bar = tqdm(range(start, cfg.epochs), desc=desc, disable=not progress, leave=False)
  for epoch in bar:
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(x)))
    losses = []
    for i in range(steps):
      idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
      thr, opt_state, loss = step(thr, opt_state, frozen, x[idx], y[idx], t_logits[idx])
      losses.append(loss)
    if guard is not None:
      ok, acc, info = guard(model, thr_lib.merge(frozen, thr))
    else:
      acc, info = evaluate(model, thr_lib.merge(frozen, thr), val_set)[0], {}
      ok = floor is None or acc >= floor
    history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy": acc, **info})
    bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", val_acc=f"{acc:.4f}")
    if ok:
      accepted = thr
    if on_epoch is not None:
      on_epoch({"epoch": epoch + 1, "history": history, "thr": leaves(thr),
                "opt": leaves(opt_state), "accepted": None if accepted is None else
                leaves(accepted)})
  return accepted, history
