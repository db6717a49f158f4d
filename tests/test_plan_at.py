"""Per-BER flip caps (trial.plan_at): the trials are those of the caps sized at the largest BER."""

import numpy as np
import pytest

from proact_jax.faults import campaign, critical, stratified, trial
from proact_jax.faults import injection as faults
from proact_jax.faults.formats import get_format

from test_campaign import DATA, KEY, VARIANTS

BERS = [3e-4, 1e-2]  # caps at the largest BER: several thousand; at 3e-4 a few hundred


@pytest.fixture
def never_shrink(monkeypatch):
  """Shrinks every cap (``_MIN_SHRINK`` 0); ``never_shrink(fn)`` runs ``fn`` with ``plan_at``
  switched off, i.e. the caps at the largest BER as before."""
  monkeypatch.setattr(trial, "_MIN_SHRINK", 0)

  def run(fn):
    with pytest.MonkeyPatch.context() as m:
      for module in (campaign, stratified):
        m.setattr(module, "plan_at", lambda plan, ber: plan)
      return fn()
  return run


def _trials(result):
  return {(n, b, f): np.asarray(t[f]) for n in result.trials
          for b, t in enumerate(result.trials[n]) for f in t}


def test_plan_at_shrinks_the_caps_at_low_ber_only(never_shrink):
  _, v = VARIANTS["ranger"]
  plan = campaign.make_plan(v, "q15.16", None, max(BERS))
  low, high = trial.plan_at(plan, BERS[0]), trial.plan_at(plan, BERS[1])
  assert high == plan  # the largest BER's cap is the plan's
  need = faults.default_cap(plan.bits_weights, BERS[0])
  assert need <= low.cap_weights < 2 * need < plan.cap_weights
  assert low.cap_weights & (low.cap_weights - 1) == 0  # a power of two
  assert trial.plan_at(low, BERS[0]) == low  # idempotent (the carried path's reruns)
  floor = campaign.make_plan(v, "q15.16", None, max(BERS), rule="toolbox-floor",
                             bers=tuple(BERS))
  row = trial.plan_at(floor, BERS[0])
  assert row.floor_bers == (BERS[0],) and row.floor_weights == (floor.floor_weights[0],)


@pytest.mark.parametrize("rule,carried", [("bernoulli", True), ("bernoulli", False),
                                           ("toolbox-floor", False)])
def test_campaign_trials_do_not_depend_on_the_caps(never_shrink, rule, carried):
  model, v = VARIANTS["ranger"]
  plan = campaign.make_plan(v, "q15.16", None, max(BERS), rule=rule, bers=tuple(BERS))
  clean = faults.quantize_with_aux(v)
  run = lambda: campaign._run_trials(model, plan, clean, DATA, KEY, 0, BERS[0], range(8), "map",
                                     None, carried=carried)
  shrunk, full = run(), never_shrink(run)
  for got, want in zip(shrunk, full):
    np.testing.assert_array_equal(got, want)
  assert np.mean(full[2]) > 3  # weight flips were in fact injected at the low BER


def test_stratified_trials_do_not_depend_on_the_caps(never_shrink):
  model, v = VARIANTS["ranger"]
  cs = critical.CriticalSet.resolve(v, faults.FaultSpace(), get_format("q15.16"),
                                    critical.parse_critical("Dense_0:24:32"))
  run = lambda: stratified.run_stratified_campaign(
      KEY, {"ranger": (model, v)}, DATA, BERS, 8, critical_set=cs, k_max=2, pilot=2,
      progress=False)
  shrunk, full = run(), never_shrink(run)
  got, want = _trials(shrunk), _trials(full)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
  assert np.mean(want[("ranger", 1, "n_flips_weights")]) > 10
