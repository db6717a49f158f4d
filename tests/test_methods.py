"""Threshold methods on the digits model (fast budgets)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from proact_jax import cli, methods
import proact_jax as pj
from proact_jax.core.evaluate import evaluate
from proact_jax.methods.threshold_training import ThresholdTraining, train_thresholds
from proact_jax.training import checkpoint as ckpt
from proact_jax.training.checkpoint_data import checkpoint_data
from proact_jax.training.loop import TrainConfig, train_and_evaluate


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  work = tmp_path_factory.mktemp("base")
  train_and_evaluate(TrainConfig(model="small_cnn", dataset="digits", epochs=12, seed=0),
                     str(work), progress=False)
  model, variables, meta = ckpt.load_checkpoint(str(work / "model"))
  data = checkpoint_data(meta, profile_images=600, train_images=640, seed=0)
  return str(work / "model"), model, variables, meta, data


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_ranger_thresholds_are_profiled_maxima(base):
  _, model, variables, _, data = base
  prof = pj.profile_max(model, variables, [data.x_profile[:300], data.x_profile[300:]])
  for gran in ("layer", "neuron"):
    h = methods.ranger(model, variables, data.x_profile, data.val, gran)
    for site, m in prof.items():
      lam = np.asarray(pj.get_site(h.variables[pj.THRESHOLDS], site))
      ref = np.max(np.asarray(m)) if gran == "layer" else np.asarray(m)
      np.testing.assert_array_equal(lam, ref)
    assert h.kind == "zero"


def test_stage_changes_only_its_site(base):
  _, model, variables, _, data = base
  h = methods.ranger(model, variables, data.x_profile, data.val, "layer")
  student = methods.with_activation(model, "smooth", "hybrid")
  frozen = {k: v for k, v in h.variables.items() if k != pj.THRESHOLDS}
  tmpl = student.init(jax.random.PRNGKey(0), data.x_profile[:1])[pj.THRESHOLDS]
  tree = pj.thresholds_from_profile(tmpl, pj.profile_max(model, variables, [data.x_profile]))
  cfg = ThresholdTraining(epochs=2, batch_size=64, learning_rate=0.05, gamma=1e-2)
  teacher = np.asarray(model.apply(frozen, data.x_train))
  for site in pj.site_order(student, (8, 8, 1)):
    new, _ = train_thresholds(jax.random.PRNGKey(0), student, frozen, tree, [site], data.x_train,
                              data.y_train, teacher, data.val, cfg, progress=False)
    for s in pj.site_names(tree):
      same = np.array_equal(np.asarray(pj.get_site(new, s)), np.asarray(pj.get_site(tree, s)))
      assert same == (s != site), (site, s)
  # The weights were never an optimisation target: identical objects, untouched.
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(frozen), _leaves(variables)))


def test_proact_below_ranger_within_budget(base, tmp_path):
  _, model, variables, _, data = base
  cfg = methods.ProActConfig(last_epochs=6, layer_epochs=3, learning_rate=0.05, budget=0.01,
                             batch_size=64, target=None)  # the fixed-tolerance guard
  h = methods.proact(model, variables, data.x_profile, data.x_train, data.y_train, data.val, cfg,
                     workdir=str(tmp_path / "p"), progress=False)
  prof = pj.profile_max(model, variables, [data.x_profile])
  thr = h.variables[pj.THRESHOLDS]
  order = pj.site_order(h.model, (8, 8, 1))
  for site in order[:-1]:
    assert pj.get_site(thr, site).shape == ()
    assert float(pj.get_site(thr, site)) <= float(np.max(prof[site])) + 1e-6
  assert np.all(np.asarray(pj.get_site(thr, order[-1])) <= np.asarray(prof[order[-1]]) + 1e-6)
  assert h.extra["val_baseline"] - h.clean_accuracy <= 0.01 + 1e-9
  # The search did lower thresholds (the point of ProAct), not merely keep the profile.
  lowered = [float(pj.get_site(thr, s)) < float(np.max(prof[s])) - 1e-3 for s in order[:-1]]
  assert any(lowered), [s["max"] for s in h.sites]
  # Resuming from the finished progress gives the same thresholds without training again.
  h2 = methods.proact(model, variables, data.x_profile, data.x_train, data.y_train, data.val,
                      cfg, workdir=str(tmp_path / "p"), progress=False)
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(thr), _leaves(h2.variables[
      pj.THRESHOLDS])))


def test_fitact_is_neuron_wise_everywhere(base):
  _, model, variables, _, data = base
  h = methods.fitact(model, variables, data.x_profile, data.x_train, data.y_train, data.val,
                     methods.FitActConfig(epochs=1, batch_size=64), progress=False)
  thr = h.variables[pj.THRESHOLDS]
  acts = {}
  relu = methods.with_activation(model, "relu", "layer")
  _, inter = relu.apply(variables, data.x_profile[:2], capture_intermediates=True,
                        mutable=["intermediates"])
  for site in pj.site_order(h.model, (8, 8, 1)):
    acts[site] = inter["intermediates"][site]["__call__"][0].shape[1:]
    assert pj.get_site(thr, site).shape == acts[site]
  assert h.memory_overhead > 0.05


def test_hardened_checkpoint_reloads_to_reported_accuracy(base, tmp_path):
  _, model, variables, meta, data = base
  h = methods.ranger(model, variables, data.x_profile, data.val, "neuron")
  acc = evaluate(h.model, h.variables, data.x_test, data.y_test)[0]
  methods.save_hardened(str(tmp_path / "h"), h, meta, acc)
  m2, v2, meta2 = ckpt.load_checkpoint(str(tmp_path / "h"))
  assert meta2["method"] == "ranger" and meta2["granularity"] == "neuron"
  assert evaluate(m2, v2, data.x_test, data.y_test)[0] == acc == meta2["accuracy"]


class UserNet(nn.Module):
  """A model defined outside the package, using the package's activation module."""
  act: pj.Activation = pj.Activation()

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    x = self.act(name="hidden")(nn.Dense(32)(x))
    x = self.act(name="penultimate", last=True)(nn.Dense(16)(x))
    return nn.Dense(10)(x)


def test_user_model_is_hardened_by_each_method(base):
  _, _, _, _, data = base
  model = UserNet()
  v = model.init(jax.random.PRNGKey(0), data.x_profile[:1])
  x, y = data.x_train, data.y_train
  # A few plain SGD steps so the network is better than chance.
  import optax
  tx = optax.adam(1e-2)
  params, st = v["params"], tx.init(v["params"])
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, x), y).mean()
  @jax.jit
  def step(params, st):
    u, st = tx.update(jax.grad(loss)(params), st)
    return optax.apply_updates(params, u), st

  for _ in range(60):
    params, st = step(params, st)
  v = {"params": params}
  hs = [methods.ranger(model, v, data.x_profile, data.val),
        methods.fitact(model, v, data.x_profile, x, y, data.val,
                       methods.FitActConfig(epochs=1, batch_size=64), progress=False),
        methods.proact(model, v, data.x_profile, x, y, data.val,
                       methods.ProActConfig(last_epochs=1, layer_epochs=1, batch_size=64),
                       progress=False),
        methods.ft_clipact(model, v, data.x_profile, x, y, data.val,
                           methods.FTClipActConfig(images=128, trials=2, max_rounds=2,
                                                   min_rounds=1, bers=(1e-4, 1e-3)),
                           progress=False)]
  assert [h.method for h in hs] == ["ranger", "fitact", "proact", "ft-clipact"]
  for h in hs:
    assert h.clean_accuracy > 0.5
    assert set(pj.site_names(h.variables[pj.THRESHOLDS])) == {"hidden", "penultimate"}
  from proact_jax.core.evaluate import make_eval_set
  from proact_jax.faults.campaign import accuracy_under_faults
  acc = accuracy_under_faults(jax.random.PRNGKey(1), hs[2].model, hs[2].variables,
                              make_eval_set(data.x_test, data.y_test), [1e-3], 3)
  assert acc.shape == (1, 3) and np.all((acc >= 0) & (acc <= 1))


def test_ft_clipact_search_narrows_and_stays_in_range(base):
  _, model, variables, _, data = base
  cfg = methods.FTClipActConfig(images=200, trials=2, bers=(1e-4, 1e-3, 3e-3))
  h = methods.ft_clipact(model, variables, data.x_profile, data.x_train, data.y_train, data.val,
                         cfg, progress=False)
  prof = pj.layer_max(pj.profile_max(model, variables, [data.x_profile]))
  for stage in h.extra["search"]:
    site, rounds = stage["stage"], stage["rounds"]
    assert 0 <= stage["lam"] <= float(prof[site]) + 1e-6
    widths = [r["interval"][1] - r["interval"][0] for r in rounds]
    assert len(rounds) >= cfg.min_rounds or widths[-1] == 0
    assert all(b < a for a, b in zip(widths, widths[1:]))


def test_cli_bad_inputs(base, tmp_path, capsys):
  path, *_ = base
  def one_line_error(argv, match):
    try:
      rc = cli.main(argv)
    except SystemExit as e:   # argparse's range check of numeric options (one line, code 2)
      rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
  out = str(tmp_path / "h")
  one_line_error(["harden", "--checkpoint", path, "--method", "ft-clipact", "--granularity",
                  "neuron", "--out", out], "does not allow granularity 'neuron'")
  one_line_error(["harden", "--checkpoint", path, "--method", "proact", "--budget", "-1",
                  "--out", out], "argument --budget: expected a finite number in [0, 100]")
  one_line_error(["harden", "--checkpoint", str(tmp_path / "nope"), "--method", "ranger",
                  "--out", out], "not a proact checkpoint")
  assert cli.main(["harden", "--checkpoint", path, "--method", "ranger", "--out", out,
                   "--quiet", "--seed", "5"]) == 0
  capsys.readouterr()
  meta = pj.load_checkpoint(out)[2]  # the baseline's training seed and the method's, both kept
  assert meta["method_seed"] == 5 and meta.get("seed") == pj.load_checkpoint(path)[2].get("seed")
  one_line_error(["harden", "--checkpoint", out, "--method", "proact", "--out",
                  str(tmp_path / "h2")], "already hardened with ranger")
  one_line_error(["harden", "--checkpoint", path, "--method", "ranger", "--out", out],
                 "refusing to overwrite")
