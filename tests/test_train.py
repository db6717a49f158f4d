import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proact_jax import cli
import proact_jax as pj
from proact_jax.training import checkpoint as ckpt
from proact_jax.training.loop import TrainConfig, create_train_state, train_and_evaluate, train_step


def _leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def test_a_few_steps_reduce_the_loss():
  model = pj.create_model("resnet20", 3)  # batch norm: exercises batch_stats updates
  cfg = TrainConfig(learning_rate=0.05, epochs=1)
  state = create_train_state(jax.random.PRNGKey(0), model, (8, 8, 3), cfg, 30)
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 32).astype(np.int32)
  x = (rng.normal(size=(32, 8, 8, 3)) + y[:, None, None, None]).astype(np.float32)
  step = jax.jit(train_step, static_argnums=(4, 5, 6))
  losses = []
  for i in range(30):
    state, loss, _ = step(state, x, y, jax.random.PRNGKey(i), 1, True, False)
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_checkpoint_roundtrip_is_bit_identical(tmp_path):
  model = pj.create_model("resnet20", 10, "smooth", "hybrid")
  v = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
  v = jax.tree_util.tree_map(lambda a: a + jax.random.normal(jax.random.PRNGKey(1), a.shape), v)
  meta = {"model": "resnet20", "num_classes": 10, "input_shape": [32, 32, 3], "kind": "smooth",
          "granularity": "hybrid"}
  ckpt.save_checkpoint(str(tmp_path / "c"), v, meta)
  model2, v2, meta2 = ckpt.load_checkpoint(str(tmp_path / "c"))
  assert _leaves_equal(dict(v), v2)
  sha = meta2.pop("content_sha256")  # issue 11: the variables' content hash, verified on load
  assert meta2 == meta and len(sha) == 64 and int(sha, 16) >= 0
  assert model2.act.granularity == "hybrid"
  with pytest.raises(ValueError, match="already exists"):
    ckpt.save_checkpoint(str(tmp_path / "c"), v, meta)


def test_checkpoint_of_another_model_is_refused(tmp_path):
  v = pj.create_model("small_cnn").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  ckpt.save_checkpoint(str(tmp_path / "c"), v, {"model": "alexnet", "num_classes": 10,
                                                "input_shape": [8, 8, 1]})
  with pytest.raises(ValueError, match="does not match model 'alexnet'"):
    ckpt.load_checkpoint(str(tmp_path / "c"))


def test_resume_continues_from_last_epoch_and_matches(tmp_path):
  cfg = TrainConfig(model="small_cnn", dataset="digits", epochs=3, batch_size=128, seed=1)
  full = train_and_evaluate(cfg, str(tmp_path / "full"), progress=False)
  assert train_and_evaluate(cfg, str(tmp_path / "cut"), progress=False, stop_after=2) is None
  rows = [json.loads(l) for l in open(tmp_path / "cut" / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [0, 1]
  resumed = train_and_evaluate(cfg, str(tmp_path / "cut"), progress=False)
  rows = [json.loads(l) for l in open(tmp_path / "cut" / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [0, 1, 2]  # epoch 2 only: not restarted from zero
  assert resumed["accuracy"] == full["accuracy"]
  assert _leaves_equal(ckpt.load_variables(str(tmp_path / "full" / "model")),
                       ckpt.load_variables(str(tmp_path / "cut" / "model")))
  with pytest.raises(ValueError, match="different configuration"):
    train_and_evaluate(TrainConfig(epochs=4, seed=1), str(tmp_path / "cut"), progress=False)


def test_provenance_records_the_environment_and_a_resume_in_another_is_told(tmp_path, capsys):
  """provenance.json holds the environment; resuming after a (simulated) jaxlib change warns on
  stderr once and appends the new environment; a later resume in that environment is silent."""
  from proact_jax.training.environment import environment
  cfg = TrainConfig(model="small_cnn", dataset="digits", epochs=3, batch_size=128, seed=2)
  run, prov = tmp_path / "run", tmp_path / "run" / "provenance.json"
  assert train_and_evaluate(cfg, str(run), progress=False, stop_after=1) is None
  recorded = json.load(open(prov))
  now = environment()
  assert recorded["environment"] == json.loads(json.dumps(now)) and "resumed_in" not in recorded
  import jaxlib
  assert now["jaxlib"] == jaxlib.__version__ and now["cpus"] == os.cpu_count()
  recorded["environment"]["jaxlib"] = "0.0.1"
  json.dump(recorded, open(prov, "w"))
  capsys.readouterr()
  assert train_and_evaluate(cfg, str(run), progress=False, stop_after=1) is None
  err = capsys.readouterr().err
  assert "another environment (jaxlib: 0.0.1 -> " + now["jaxlib"] in err and "bit for bit" in err
  assert json.load(open(prov))["resumed_in"] == [json.loads(json.dumps(now))]
  assert train_and_evaluate(cfg, str(run), progress=False) is not None
  assert "another environment" not in capsys.readouterr().err
  assert len(json.load(open(prov))["resumed_in"]) == 1


def test_cli_train_errors_are_one_line(tmp_path, capsys):
  assert cli.main(["train", "--model", "nope", "--out", str(tmp_path / "x")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "unknown model 'nope'" in err
  assert cli.main(["train", "--dataset", "mnist", "--out", str(tmp_path / "x")]) == 2
  assert "unknown dataset 'mnist'" in capsys.readouterr().err
  assert cli.main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "missing.tar.gz"),
                   "--out", str(tmp_path / "y")]) == 2
  assert capsys.readouterr().err.strip().count("\n") == 0
  assert not os.path.exists(tmp_path / "y" / "model")
