"""A real two-process campaign: two `proact` processes joined by `jax.distributed` on this machine
(a localhost coordinator, gloo CPU collectives) write the same results file, byte for byte, as one
process with two devices (that the trials do not depend on the device count is
test_campaign.py::test_four_devices_give_the_same_numbers)."""

import json
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import proact_jax as pj
from proact_jax.training import checkpoint as ckpt

from child_env import cpu_devices_env  # tests/child_env.py

META = {"model": "small_cnn", "num_classes": 10, "input_shape": [8, 8, 1], "dataset": "digits",
        "mean": [0.3], "std": [0.37], "n_val": 100, "kind": "relu", "granularity": "layer",
        "config": {"seed": 0}}
SWEEP = ["sweep", "--bers", "1e-3,1e-2", "--trials", "6", "--images", "200", "--quiet"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _proact(*argv) -> list[str]:
  return [sys.executable, "-m", "proact_jax.cli", *argv]


def _trials(path):
  with open(path) as f:
    return [r for r in map(json.loads, f) if r["type"] == "trial"]


def test_two_processes_equal_one_process(tmp_path):
  base = str(tmp_path / "base")
  model = pj.create_model("small_cnn", 10)
  ckpt.save_checkpoint(base, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))), META)
  two = str(tmp_path / "two.jsonl")
  port = _free_port()
  procs = [subprocess.Popen(
      _proact("--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
              str(i), *SWEEP, "--checkpoint", base, "--out", two),
      env=cpu_devices_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  one_two_dev = str(tmp_path / "one_two_devices.jsonl")
  r = subprocess.run(_proact(*SWEEP, "--checkpoint", base, "--out", one_two_dev),
                     env=cpu_devices_env(2), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  with open(two, "rb") as a, open(one_two_dev, "rb") as b:
    assert a.read() == b.read()   # byte for byte (both record "devices": 2)
  assert len(_trials(two)) == 2 * 6
  # only process 0 wrote the summary and printed the table
  assert outs[0][0].count("| relu |") == 2 and "| relu |" not in outs[1][0]


def test_distributed_options_go_together(capsys):
  from proact_jax import cli
  rc = cli.main(["--num-processes", "2", "sweep", "--checkpoint", "x", "--out", "y"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "go together" in err[0]


def test_stratified_campaign_on_two_devices_equals_one(tmp_path):
  """The sharded stratified runner (a directed critical set's position arrays replicated, the
  (stratum, trial) pairs sharded) gives the one-device trials."""
  base = str(tmp_path / "base")
  model = pj.create_model("small_cnn", 10)
  ckpt.save_checkpoint(base, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))), META)
  argv = ["sweep", "--bers", "1e-4", "--trials", "40", "--images", "200", "--quiet",
          "--stratify", "2", "--pilot", "4", "--critical", "Dense_1:24:32:raise,Conv_0:16:32",
          "--checkpoint", base]
  paths = [str(tmp_path / f"d{n}.jsonl") for n in (1, 2)]
  for path, devices in zip(paths, (1, 2)):
    r = subprocess.run(_proact(*argv, "--out", path), env=cpu_devices_env(devices),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
  one, two = _trials(paths[0]), _trials(paths[1])
  assert len(one) == 40 and one == two
  assert {r["stratum"] for r in one} == {0, 1, 2}
