"""Tests of faults.stats: CI coverage, planners against hand values, paired vs unpaired."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from proact_jax.faults import stats


def test_summarize_values():
  s = stats.summarize([1.0, 2.0, 3.0])
  assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == 1.0
  half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
  assert s["half_width"] == pytest.approx(half)
  assert s["ci_low"] == pytest.approx(2.0 - half) and s["ci_high"] == pytest.approx(2.0 + half)


def test_ci_coverage():
  # 2000 repetitions of n=20 normal samples: coverage ~ Binomial(2000, 0.95); accept within the
  # central 99.9% of that distribution (significance 0.001).
  rng = np.random.default_rng(0)
  reps, n = 2000, 20
  x = rng.normal(3.0, 2.0, size=(reps, n))
  covered = sum(s["ci_low"] <= 3.0 <= s["ci_high"] for s in map(stats.summarize, x))
  lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, 0.95)
  assert lo <= covered <= hi, covered
  # configurable confidence
  covered90 = sum(s["ci_low"] <= 3.0 <= s["ci_high"]
                  for s in (stats.summarize(r, confidence=0.9) for r in x))
  lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, 0.90)
  assert lo <= covered90 <= hi, covered90


def test_leveugle_hand_values():
  # N = 10000, e = 0.05, 95% (t = 1.959964), p = 0.5:
  # n = 10000 / (1 + 0.0025 * 9999 / (3.841459 * 0.25)) = 369.98 -> 370
  assert stats.leveugle_sample_size(10000, 0.05) == 370
  # N huge -> t^2 p(1-p)/e^2 = 384.15 -> 385; e = 0.01 -> 9604.
  assert stats.leveugle_sample_size(10 ** 12, 0.05) == 385
  assert stats.leveugle_sample_size(10 ** 12, 0.01) == 9604
  # 99%: t = 2.5758 -> 2.5758^2 * 0.25 / 0.01^2 = 16587.2 -> 16588
  assert stats.leveugle_sample_size(10 ** 12, 0.01, confidence=0.99) == 16588
  with pytest.raises(ValueError):
    stats.leveugle_sample_size(100, 1.5)


def test_pilot_planner_hand_values():
  # s = 2, e = 0.5, normal t = 1.959964: (1.959964 * 4)^2 = 61.46 -> 62
  assert stats.sample_size_from_std(2.0, 0.5) == 62
  pilot = [1.0, 2.0, 3.0, 4.0, 5.0]  # s = 1.5811, t_{0.975,4} = 2.776445
  want = math.ceil((2.776445105 * math.sqrt(2.5) / 0.5) ** 2)  # = 77.08 -> 78
  assert stats.pilot_sample_size(pilot, 0.5) == want == 78


def test_should_stop():
  rng = np.random.default_rng(1)
  x = rng.normal(0.8, 0.05, 1000)
  assert not stats.should_stop(x[:10], 0.1, min_trials=30)
  assert stats.should_stop(x[:30], 0.1, min_trials=30)
  assert not stats.should_stop(x[:30], 0.001, min_trials=30)
  assert stats.should_stop(x[:50], 0.001, min_trials=30, max_trials=50)


def test_paired_narrower_than_unpaired():
  rng = np.random.default_rng(2)
  shared = rng.normal(0.7, 0.3, 500)  # the fault draw's effect, common to both methods
  a = shared + rng.normal(0.02, 0.01, 500)
  b = shared + rng.normal(0.0, 0.01, 500)
  paired = stats.paired_difference(a, b)
  unpaired = stats.unpaired_difference(a, b)
  assert paired["half_width"] < unpaired["half_width"] / 5
  assert abs(paired["mean"] - 0.02) < 0.005
  assert paired["ci_low"] > 0  # the difference is resolved only by pairing
  assert unpaired["ci_low"] < 0
  with pytest.raises(ValueError):
    stats.paired_difference([1.0, 2.0], [1.0])
