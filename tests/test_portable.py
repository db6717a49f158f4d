"""Portable checkpoint files (training/portable.py): a hardened model's thresholds exported and
put back on its baseline, a whole small checkpoint exported and rebuilt, each the same
checkpoint again and refused on another baseline or when edited; the issue-14 pipeline restores
lost stages from them."""

import json
import os

import jax
import numpy as np
import pytest

import proact_jax as pj
from proact_jax import methods
import proact_jax as tf  # the re-exported names


@pytest.fixture(scope="module")
def hardened(misuse_work, tmp_path_factory):
  work = misuse_work
  model, variables, meta = work["model"], work["variables"], work["meta"]
  ds = pj.load_dataset("digits")
  norm = lambda x: pj.normalize(x, np.asarray(meta["mean"]), np.asarray(meta["std"]))
  test = pj.make_eval_set(norm(ds.x_test[:64]), ds.y_test[:64])
  # layer-wise: one scalar threshold per site (0-d arrays must keep their shape in the file)
  h = methods.ranger(model, variables, norm(ds.x_train[:200]), test, "layer")
  path = methods.save_hardened(str(tmp_path_factory.mktemp("h") / "h"), h, meta, 0.5,
                               method_seed=3)
  return {**work, "hardened": path}


def _files(d):
  return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
          for r, _, fs in os.walk(d) for f in fs}


def test_round_trip_rebuilds_the_same_checkpoint(hardened, tmp_path):
  npz = tf.export_thresholds(hardened["hardened"], str(tmp_path / "t.npz"))
  out = tf.import_thresholds(npz, hardened["base"], str(tmp_path / "again"))
  meta = json.load(open(os.path.join(hardened["hardened"], "meta.json")))
  assert json.load(open(os.path.join(out, "meta.json"))) == meta
  _, v1, _ = pj.load_checkpoint(hardened["hardened"])
  _, v2, _ = pj.load_checkpoint(out)
  for k in ("params", pj.THRESHOLDS):
    a, b = jax.tree_util.tree_leaves(v1[k]), jax.tree_util.tree_leaves(v2[k])
    assert len(a) == len(b) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert all(np.ndim(x) == 0 for x in jax.tree_util.tree_leaves(v2[pj.THRESHOLDS]))
  n = sum(np.asarray(x).size for x in jax.tree_util.tree_leaves(v1[pj.THRESHOLDS]))
  assert tf.read_thresholds(npz)[1]["content_sha256"] == meta["content_sha256"]
  # no timestamps: the rebuilt checkpoint exports to the same bytes (results stay unchanged)
  again = tf.export_thresholds(out, str(tmp_path / "again.npz"))
  assert open(again, "rb").read() == open(npz, "rb").read()
  assert os.path.getsize(npz) < 4 * n + 16384


def test_other_baseline_edited_file_and_existing_out_are_refused(hardened, tmp_path):
  npz = tf.export_thresholds(hardened["hardened"], str(tmp_path / "t.npz"))
  with pytest.raises(ValueError, match="does not fit baseline"):
    tf.import_thresholds(npz, hardened["other"], str(tmp_path / "o"))
  assert not os.path.exists(tmp_path / "o")
  with np.load(npz) as z:
    arrays = {k: z[k] for k in z.files}
  key = next(k for k in arrays if k != "__meta__")
  arrays[key] = arrays[key] + np.float32(1e-3)
  np.savez(tmp_path / "edited.npz", **arrays)
  with pytest.raises(ValueError, match="does not fit baseline"):
    tf.import_thresholds(str(tmp_path / "edited.npz"), hardened["base"], str(tmp_path / "e"))
  assert not os.path.exists(tmp_path / "e")
  os.makedirs(tmp_path / "full")
  (tmp_path / "full" / "keep.txt").write_text("x")
  before = _files(str(tmp_path / "full"))
  with pytest.raises(ValueError, match="refusing"):
    tf.import_thresholds(npz, hardened["base"], str(tmp_path / "full"), overwrite=True)
  assert _files(str(tmp_path / "full")) == before
  # a hardened checkpoint is not a baseline: importing onto it is refused
  with pytest.raises(ValueError, match="already has thresholds"):
    tf.import_thresholds(npz, hardened["hardened"], str(tmp_path / "h2"))


def test_bad_inputs_are_one_line(hardened, tmp_path):
  with pytest.raises(ValueError, match="no thresholds"):
    tf.export_thresholds(hardened["base"], str(tmp_path / "b.npz"))
  assert not os.path.exists(tmp_path / "b.npz")
  (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
  np.savez(tmp_path / "plain.npz", a=np.zeros(3))
  for bad, match in (("junk.npz", "not a thresholds file"), ("plain.npz", "no __meta__"),
                     ("missing.npz", "does not exist")):
    with pytest.raises(ValueError, match=match) as e:
      tf.read_thresholds(str(tmp_path / bad))
    assert "\n" not in str(e.value)


def test_pipeline_restores_a_lost_hardening_from_its_committed_file(hardened, tmp_path):
  """experiments/cifar10_alexnet.py: a hardened checkpoint lost with WORK is rebuilt from
  RESULTS/hardened/NAME.thresholds.npz, its record (search, spent epochs) kept, and FitAct's
  budget still reads the epochs ProAct spent."""
  import shutil

  from test_faithful_pipeline import _load
  mod = _load()
  work, res = tmp_path / "w", tmp_path / "r"
  out = work / "faithful" / "proact"
  shutil.copytree(hardened["hardened"], out)
  os.makedirs(str(out) + ".progress")
  state = {"stages": [{"stage": "a", "history": [{"gamma": 0.01, "epochs": [{}] * 4}]}]}
  np.savez(os.path.join(str(out) + ".progress", "progress.npz"),
           __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
  mod.record_hardened("proact", str(out), str(res))
  record = (res / "hardened" / "proact.json").read_text()
  assert json.loads(record)["spent_epochs"] == 4
  assert (res / "hardened" / "proact.thresholds.npz").exists()
  assert mod.restore_hardened("proact", hardened["base"], str(out), str(res)) is False  # exists
  shutil.rmtree(work)                                # the session's WORK is gone
  assert mod.finished_spent(str(work), "proact", str(res)) is None
  assert mod.restore_hardened("proact", hardened["base"], str(out), str(res)) is True
  assert (out / "meta.json").read_text() == open(os.path.join(hardened["hardened"],
                                                                "meta.json")).read()
  pj.load_checkpoint(str(out))  # its variables match the content hash of that meta.json
  assert mod.finished_spent(str(work), "proact") is None          # no progress file, no record
  assert mod.finished_spent(str(work), "proact", str(res)) == 4   # the record's
  mod.record_hardened("proact", str(out), str(res))  # no progress file: the record stands
  assert (res / "hardened" / "proact.json").read_text() == record
  shutil.rmtree(out)
  with pytest.raises(ValueError, match="does not fit baseline"):
    mod.restore_hardened("proact", hardened["other"], str(out), str(res))


def test_whole_checkpoint_round_trip_and_pipeline_baseline(hardened, tmp_path):
  from test_faithful_pipeline import _load
  npz = tf.export_checkpoint(hardened["hardened"], str(tmp_path / "c.npz"))
  out = tf.import_checkpoint(npz, str(tmp_path / "c"))
  assert (open(os.path.join(out, "meta.json")).read()
          == open(os.path.join(hardened["hardened"], "meta.json")).read())
  pj.load_checkpoint(out)
  with np.load(npz) as z:
    arrays = {k: z[k] for k in z.files}
  key = next(k for k in arrays if k.startswith("params/"))
  arrays[key] = -arrays[key]
  np.savez(tmp_path / "edited.npz", **arrays)
  with pytest.raises(ValueError, match="does not fit its own metadata"):
    tf.import_checkpoint(str(tmp_path / "edited.npz"), str(tmp_path / "e"))
  assert not os.path.exists(tmp_path / "e")
  # the pipeline: a small baseline's weights are recorded with its learning record ...
  mod = _load()
  res = tmp_path / "r"
  mod.record_baseline(hardened["run"], str(res), "small_cnn", "digits")
  recorded = _files(str(res))
  assert "baseline/model.npz" in recorded and "baseline/metrics.jsonl" in recorded
  # ... and rebuilt from it once WORK is gone; the restored run leaves the record as it is
  run = tmp_path / "w" / "base"
  assert mod.restore_baseline(str(run), str(res)) is True
  assert (run / "model" / "meta.json").read_text() == open(
      os.path.join(hardened["base"], "meta.json")).read()
  assert mod.restore_baseline(str(run), str(res)) is False
  mod.record_baseline(str(run), str(res), "small_cnn", "digits")
  assert _files(str(res)) == recorded
