"""experiments/cifar10_alexnet.py: every stage is a valid `proact` command line, FitAct and
ProAct get the same threshold-training epochs, and both fault rules are planned."""

import importlib.util
import os

from proact_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
  spec = importlib.util.spec_from_file_location(
      "cifar10_alexnet", os.path.join(ROOT, "experiments", "cifar10_alexnet.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_plan_is_valid_and_budgets_are_matched():
  mod = _load()
  parser = cli.build_parser()
  for smoke in (False, True):
    stages, budget = mod.plan(mod.parse_args(["--smoke"] if smoke else ["--data-dir", "D"]))
    names = [n for n, _, _ in stages]
    for rule in ("bernoulli", "toolbox-floor"):
      assert f"campaign-{rule}" in names and f"report-{rule}" in names
    for _, args, _ in stages:
      parser.parse_args(args)   # every flag exists (argparse exits otherwise)
    p = budget["proact"]
    assert budget["fitact"]["epochs"] == p["total_epochs"] == \
        p["last_epochs"] + p["layer_epochs"] * (budget["sites"] - 1)
  assert budget["sites"] == 3            # small_cnn in the smoke plan
  _, full = mod.plan(mod.parse_args(["--data-dir", "D"]))
  assert full["sites"] == 7 and full["proact"] == {"last_epochs": 5, "layer_epochs": 2,
                                                    "total_epochs": 17}
  assert full["ft_clipact"]["max_fault_trials"] == 7 * 3 * 4 * 5 * 3
