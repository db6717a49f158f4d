"""Knowledge-distillation loss of ProAct (Eq. 7-8 of arXiv 2406.06313).

``KL(softmax(s/T) || softmax(t/T))`` as the paper's Eq. 7 and DESIGN.md write it (student
first, ``direction="student-teacher"``, the default), or the usual distillation loss the
authors' code computes, ``KL(softmax(t/T) || softmax(s/T))`` (``direction="teacher-student"``).
The two have different gradients in the student's logits: for ``P_s || P_t`` the gradient is
``P_s * (log P_s - log P_t - KL)`` / T (mode-seeking), for ``P_t || P_s`` it is
``(P_s - P_t) / T`` (mass-covering). Computed from log-softmax for stability, optionally plus
cross-entropy and ``gamma * ||lam||^2``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax


KD_DIRECTIONS = ("student-teacher", "teacher-student")
"""``student-teacher``: KL(P_s || P_t), the paper's Eq. 7 (default); ``teacher-student``:
KL(P_t || P_s), the authors' toolbox (and Hinton et al.'s) distillation loss."""


def check_kd_direction(direction: str) -> str:
  if direction not in KD_DIRECTIONS:
    raise ValueError(f"unknown KD direction {direction!r}; expected one of "
                     f"{', '.join(KD_DIRECTIONS)}")
  return direction


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array,
                  temperature: float = 1.0, direction: str = "student-teacher") -> jax.Array:
  """Mean over the batch of KL(P_s || P_t) (default, the paper's Eq. 7) or, with
  ``direction="teacher-student"``, KL(P_t || P_s); P = softmax(logits / T)."""
  check_kd_direction(direction)
  chex.assert_rank([student_logits, teacher_logits], 2)
  chex.assert_equal_shape([student_logits, teacher_logits])
  log_ps = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  if direction == "teacher-student":
    log_ps, log_pt = log_pt, log_ps
  return jnp.mean(jnp.sum(jnp.exp(log_ps) * (log_ps - log_pt), axis=-1))


def l2_thresholds(thresholds) -> jax.Array:
  """Sum of squared threshold values (the regulariser R(lam))."""
  leaves = jax.tree_util.tree_leaves(thresholds)
  if not leaves:
    return jnp.zeros(())
  return sum(jnp.sum(jnp.square(x)) for x in leaves)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array | None = None,
            thresholds=None, *, temperature: float = 1.0, ce_weight: float = 1.0,
            gamma: float = 0.0, direction: str = "student-teacher") -> jax.Array:
  """Eq. 8: KL(T) + ce_weight * CE(student, labels) + gamma * ||lam||^2.

  Args:
    student_logits: [B, C] logits of the clipped model.
    teacher_logits: [B, C] logits of the unclipped fault-free model.
    labels: [B] int labels; CE is skipped when None.
    thresholds: the trainable threshold tree for the L2 term (skipped when None or gamma == 0).
    direction: the KL term's direction (:data:`KD_DIRECTIONS`; default the paper's).
  """
  loss = kl_divergence(student_logits, teacher_logits, temperature, direction)
  if labels is not None and ce_weight:
    chex.assert_shape(labels, student_logits.shape[:1])
    loss = loss + ce_weight * jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(student_logits, labels))
  if thresholds is not None and gamma:
    loss = loss + gamma * l2_thresholds(thresholds)
  return loss


kd_loss_jit = jax.jit(kd_loss, static_argnames=("temperature", "ce_weight", "gamma",
                                                  "direction"))
