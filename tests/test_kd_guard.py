"""Issue 14: the KD direction option (default: the paper's Eq. 7) and ProAct's sized guard."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax import methods
from proact_jax.commands import harden
from proact_jax.core.distill import KD_DIRECTIONS, kd_loss, kl_divergence
from proact_jax.methods.guard import GuardRule
from proact_jax.methods.threshold_training import ThresholdTraining

S = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
T = np.array([[0.5, 0.5, 1.0], [1.0, 1.0, 0.0]], np.float32)


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_default_direction_is_the_papers_student_teacher():
  ps, pt = _softmax(S.astype(np.float64)), _softmax(T.astype(np.float64))
  paper = np.mean(np.sum(ps * np.log(ps / pt), -1))      # KL(P_s || P_t), Eq. 7
  toolbox = np.mean(np.sum(pt * np.log(pt / ps), -1))    # KL(P_t || P_s)
  np.testing.assert_allclose(float(kl_divergence(S, T)), paper, rtol=1e-5)
  np.testing.assert_allclose(float(kl_divergence(S, T, direction="teacher-student")), toolbox,
                             rtol=1e-5)
  assert abs(paper - toolbox) > 1e-3
  assert KD_DIRECTIONS[0] == "student-teacher"
  assert ThresholdTraining().kd_direction == "student-teacher"
  assert methods.ProActConfig().kd_direction == "student-teacher"
  assert inspect.signature(kd_loss).parameters["direction"].default == "student-teacher"
  import argparse
  p = argparse.ArgumentParser()
  harden.add_arguments(p)
  a = p.parse_args(["--checkpoint", "c", "--method", "proact", "--out", "o"])
  assert a.kd_direction == "student-teacher"


def test_direction_changes_the_gradient_as_derived():
  ps, pt = _softmax(S.astype(np.float64)), _softmax(T.astype(np.float64))
  g_paper = jax.grad(lambda s: kl_divergence(s, jnp.asarray(T)))(jnp.asarray(S))
  g_tool = jax.grad(lambda s: kl_divergence(s, jnp.asarray(T), direction="teacher-student"))(
      jnp.asarray(S))
  kl = np.sum(ps * np.log(ps / pt), -1, keepdims=True)
  np.testing.assert_allclose(g_paper, ps * (np.log(ps / pt) - kl) / len(S), atol=1e-6)
  np.testing.assert_allclose(g_tool, (ps - pt) / len(S), atol=1e-6)
  assert np.max(np.abs(np.asarray(g_paper) - np.asarray(g_tool))) > 1e-2
  with pytest.raises(ValueError, match="unknown KD direction"):
    kl_divergence(S, T, direction="sideways")


def test_guard_margin_hand_worked():
  # digits defaults: 143 validation, 360 test images, no disagreement: q~ = 1/145.
  rule = GuardRule(tolerance=0.01, target=0.01, z=1.645, test_images=360)
  m = rule.margin(0, 143)
  assert m == pytest.approx(1.645 * math.sqrt((1 / 145) * (1 / 143 + 1 / 360)), rel=1e-12)
  assert m == pytest.approx(0.013503, abs=2e-6)
  assert not rule.accepts(0.0, 0, 143)              # 143 images cannot certify 1 point
  # 500 validation images: k = 2 (one gained, one lost), margin 0.879 points.
  assert rule.margin(2, 500) == pytest.approx(0.008790, abs=2e-6)
  assert rule.accepts(0.0, 2, 500)
  assert not rule.accepts(0.002, 2, 500)           # 0.2 + 0.879 > 1 point
  assert not GuardRule(tolerance=0.001, target=0.01, test_images=360).accepts(0.002, 0, 5000)
  assert GuardRule(tolerance=0.002, target=None).accepts(0.002, 50, 100)  # toolbox rule


def test_guard_bounds_the_test_drop_in_simulation():
  """Candidates at the guard's boundary: the test drop exceeds the target <= ~5 % of the time."""
  rng = np.random.default_rng(0)
  rule = GuardRule(tolerance=1.0, target=0.01, test_images=2000)
  n_val, n_test, exceed, accepted = 2000, 2000, 0, 0
  for _ in range(4000):
    q = rng.uniform(0.005, 0.05)
    d_true = rng.uniform(0.0, min(0.02, q))
    qp, qm = (q + d_true) / 2, (q - d_true) / 2
    val = rng.multinomial(n_val, [qp, qm, 1 - q])
    if rule.accepts((val[0] - val[1]) / n_val, int(val[0] + val[1]), n_val):
      accepted += 1
      test = rng.multinomial(n_test, [qp, qm, 1 - q])
      exceed += (test[0] - test[1]) / n_test > 0.01
  assert accepted > 500
  assert exceed / accepted < 0.05
