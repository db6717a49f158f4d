"""Issue 14: Holm's adjustment (hand-worked), Table IV-b's family, and Table V's Eq. 9 mean over
all activation sites on a tiny model computed by hand."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax.core.activations import Activation
from proact_jax.faults import stats
from proact_jax.faults.activations import activation_distance
from proact_jax.faults.results import CampaignResult
from proact_jax.report import tables
from proact_jax.report.table5 import table5, table5_summary


def test_holm_hand_worked():
  # m = 4; sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03,
  # 2 x 0.03 = 0.06, 1 x 0.04 = 0.04 -> max(0.06, 0.04) = 0.06 (step-down is monotone).
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])          # capped at 1
  out = stats.holm([0.02, math.nan, 0.01])                                # nan: not counted
  assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)
  assert stats.holm([]).size == 0


def test_paired_pvalue_matches_t_test():
  a = np.array([0.50, 0.52, 0.55, 0.51, 0.53])
  b = np.array([0.49, 0.50, 0.52, 0.51, 0.50])
  d = a - b  # mean 0.018, sd 0.013038..., t = 3.0872 on 4 dof -> p = 0.0366
  assert stats.paired_pvalue(a, b) == pytest.approx(0.03663, abs=2e-4)
  assert stats.paired_pvalue(a, a) == 1.0 and stats.paired_pvalue(a + 0.1, a) == 0.0
  assert d.size == 5


def _result(acc: dict, bers) -> CampaignResult:
  trials = {v: [{"trial": np.arange(len(x)), "accuracy": np.asarray(x, float),
                 "n_flips": np.zeros(len(x))} for x in per_ber] for v, per_ber in acc.items()}
  return CampaignResult({"variants": {v: {} for v in acc}}, list(bers), list(acc), "relu",
                        trials, {})


def test_table4b_holm_family_is_the_rows_shown():
  rng = np.random.default_rng(0)
  base = rng.normal(0.5, 0.05, (2, 12))
  acc = {"relu": list(base - 0.3), "ranger": list(base),
         "proact": list(base + [[0.02], [0.001]] + rng.normal(0, 0.01, (2, 12)))}
  res = _result(acc, [1e-5, 1e-4])
  g = tables.Group("m", "d", campaign=res)
  rows = tables.table4b_rows([g])
  assert len(rows) == 2 and all(r["family_size"] == 2 for r in rows)  # 1 pair x 2 BERs
  raw = [stats.paired_pvalue(acc["proact"][i], acc["ranger"][i]) for i in range(2)]
  np.testing.assert_allclose([r["p_value"] for r in rows], raw)
  np.testing.assert_allclose([r["p_holm"] for r in rows], stats.holm(raw))
  one = tables.table4b_rows([g], bers=[1e-4])   # one BER shown: a family of 1, no correction
  assert one[0]["family_size"] == 1 and one[0]["p_holm"] == pytest.approx(raw[1])
  assert "m = 2 for m / d" in tables._table4b_title(rows)


class Tiny(nn.Module):
  """x -> Dense(1) -> act0 -> Dense(1) -> act1 -> Dense(1)."""
  act: Activation = Activation()

  @nn.compact
  def __call__(self, x, train=False):
    x = self.act(name="act0")(nn.Dense(1)(x))
    x = self.act(name="act1", last=True)(nn.Dense(1)(x))
    return nn.Dense(1)(x)


def test_table5_eq9_on_a_tiny_model_by_hand():
  # BER 1 flips all 32 bits of a Q15.16 word: q -> ~q = -q - 1, so w -> -w - 2^-16: a
  # deterministic fault. Kernels w1 = 1, w2 = 2, biases 0, inputs x > 0.
  model = Tiny()
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
  p = jax.tree_util.tree_map(jnp.zeros_like, v["params"])
  p["Dense_0"]["kernel"] = jnp.ones((1, 1))
  p["Dense_1"]["kernel"] = jnp.full((1, 1), 2.0)
  p["Dense_2"]["kernel"] = jnp.ones((1, 1))
  v = {"params": p}
  x = jnp.asarray([[1.0], [3.0]])
  d0 = activation_distance(jax.random.PRNGKey(1), model, v, x, 1.0, layer="Dense_0", trials=1)
  d1 = activation_distance(jax.random.PRNGKey(1), model, v, x, 1.0, layer="Dense_1", trials=1)
  # Faults in Dense_0: act0 = relu(-x (1 + e) - e) = 0 (clean x), act1 = relu(-e) = 0 (clean 2x)
  assert d0["act0"] == pytest.approx((1 + 9) / 2)              # mean of x^2
  assert d0["act1"] == pytest.approx((4 + 36) / 2)             # mean of (2x)^2
  # Faults in Dense_1: act0 untouched (upstream), act1 = relu(-x (2 + e) - e) = 0.
  assert d1["act0"] == 0.0 and d1["act1"] == pytest.approx(20.0)
  a = {"type": "activations", "ber": 1.0, "fmt": "q15.16", "trials": 1, "images": 2,
       "variants": ["relu"], "layers": ["Dense_0", "Dense_1"], "sites": ["act0", "act1"],
       "table_v": {"relu": {"Dense_0": d0, "Dense_1": d1}}}
  s = table5_summary(a)["table"]["relu"]
  # Eq. 9: mean over the 2 faulted layers of the mean over the 2 sites: ((5 + 20)/2 + (0 + 20)/2)/2
  assert s["all_sites"] == pytest.approx(11.25)
  assert s["last_site"] == pytest.approx(20.0)                  # the last-site column
  assert s["by_site"] == pytest.approx({"act0": 2.5, "act1": 20.0})
  rows, md = table5([tables.Group("tiny", "x", activations=a)])
  assert len(rows) == 4
  assert "| relu | 11.25 | 20 |" in md and "| variant | L2, all 2 sites (Eq. 9) |" in md
  assert s["per_neuron"] is None                                # no site sizes in the file
  a["site_sizes"] = {"act0": 1, "act1": 2}                      # per neuron: divide by N
  assert table5_summary(a)["table"]["relu"]["per_neuron"] == pytest.approx(
      ((5 + 20 / 2) / 2 + (0 + 20 / 2) / 2) / 2)
  assert "| relu | 11.25 | 20 | 6.25 |" in table5([tables.Group("t", "x", activations=a)])[1]
