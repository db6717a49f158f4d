"""experiments/cifar10_alexnet.py: every stage is a valid `proact` command line, FitAct and
ProAct get the same threshold-training epochs, and both fault rules are planned."""

import importlib.util
import os

from proact_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str = "cifar10_alexnet"):
  """The experiment script ``experiments/NAME.py`` as a module."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "experiments", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_plan_is_valid_and_budgets_are_matched(tmp_path):
  mod = _load()
  parser = cli.build_parser()
  work = ["--work", str(tmp_path / "w")]  # no finished ProAct there: the planned FitAct epochs
  for smoke in (False, True):
    stages, budget = mod.plan(mod.parse_args(work + (["--smoke"] if smoke else
                                                     ["--data-dir", "D"])))
    names = [n for n, _, _ in stages]
    for rule in ("bernoulli", "toolbox-floor"):
      assert f"campaign-{rule}" in names and f"report-{rule}" in names
    for _, args, _ in stages:
      parser.parse_args(args)   # every flag exists (argparse exits otherwise)
    p = budget["proact"]
    assert budget["fitact"]["epochs"] == p["total_epochs"] == \
        p["last_epochs"] + p["layer_epochs"] * (budget["sites"] - 1)
  assert budget["sites"] == 3            # small_cnn in the smoke plan
  _, full = mod.plan(mod.parse_args(work + ["--data-dir", "D"]))
  assert full["sites"] == 7 and full["proact"] == {"last_epochs": 5, "layer_epochs": 2,
                                                    "total_epochs": 17}
  assert full["ft_clipact"]["max_fault_trials"] == 7 * 3 * 4 * 5 * 3
  # the second model: its own directories, recipe and classifier layer
  stages, res = mod.plan(mod.parse_args(["--data-dir", "D", "--model", "resnet20"]))
  argv = dict((n, a) for n, a, _ in stages)
  assert argv["baseline"][argv["baseline"].index("--model") + 1] == "resnet20"
  assert "runs/cifar10_resnet20/base" in argv["baseline"]
  cls = argv["classifier-bernoulli"]
  assert cls[cls.index("--layer") + 1] == "Dense_0" and res["sites"] > 7
  for _, args in argv.items():
    parser.parse_args(args)


def test_record_baseline_copies_the_run_and_draws_its_curve(tmp_path):
  import json
  run, res = tmp_path / "base", tmp_path / "results"
  (run / "model").mkdir(parents=True)
  rows = [{"epoch": e, "train_accuracy": 0.3 + 0.1 * e, "val_accuracy": 0.4 + 0.1 * e}
          for e in range(3)]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (run / "config.json").write_text('{"epochs": 3}')
  (run / "model" / "meta.json").write_text('{"accuracy": 0.6123}')
  (run / "provenance.json").write_text('{"data": "d", "environment": {"jaxlib": "0.10.2"}}')
  mod = _load()
  mod.record_baseline(str(run), str(res))
  out = res / "baseline"
  assert (out / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
  assert (out / "provenance.json").read_text() == (run / "provenance.json").read_text()
  assert json.loads((out / "meta.json").read_text()) == {"accuracy": 0.6123}
  assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fitact_gets_the_epochs_proact_spent(tmp_path):
  import json
  import os

  import numpy as np
  mod = _load()
  work = str(tmp_path / "w")
  prog = os.path.join(work, "faithful", "proact.progress")
  os.makedirs(prog)
  assert mod.spent_epochs(prog) is None
  # two sites; the first was refused twice and retried: 4 + 4 + 4 + 3 epochs
  four = [{}] * 4
  state = {"stages": [{"stage": "a", "history": [{"gamma": 0.01, "epochs": four},
                                                 {"gamma": 0.001, "epochs": four},
                                                 {"gamma": 0.0001, "epochs": four}]},
                      {"stage": "b", "history": [{"gamma": 0.01, "epochs": [{}] * 3}]}]}
  np.savez(os.path.join(prog, "progress.npz"),
           __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
  assert mod.spent_epochs(prog) == 15
  args = ["--data-dir", "D", "--work", work, "--scale", "0.02"]
  _, budget = mod.plan(mod.parse_args(args))   # ProAct not finished: the planned count
  assert budget["fitact"] == {"epochs": budget["proact"]["total_epochs"],
                              "matched_to": "proact planned"}
  os.makedirs(os.path.join(work, "faithful", "proact"))
  open(os.path.join(work, "faithful", "proact", "meta.json"), "w").write("{}")
  stages, budget = mod.plan(mod.parse_args(args))
  assert budget["proact"]["total_epochs"] == 7 and budget["fitact"] == {
      "epochs": 15, "matched_to": "proact spent"}
  fit = next(a for n, a, _ in stages if n == "harden-fitact")
  assert fit[fit.index("--epochs") + 1] == "15"
  names = [n for n, _, _ in stages]
  assert names.index("harden-proact") < names.index("harden-fitact")


def test_record_hardened_keeps_accuracy_and_the_search(tmp_path):
  import json
  import os

  import numpy as np
  mod = _load()
  out = tmp_path / "w" / "faithful" / "proact"
  os.makedirs(out)
  meta = {"method": "proact", "model": "alexnet", "accuracy": 0.81, "baseline_accuracy": 0.82,
          "hardening": {"wall_time": 3.0}, "mean": [0.5], "seed": 0, "method_seed": 3}
  (out / "meta.json").write_text(json.dumps(meta))
  os.makedirs(str(out) + ".progress")
  state = {"stages": [{"stage": "act1", "gamma": 0.001, "kept": True,
                       "history": [{"gamma": 0.01, "epochs": [{"val_drop": 0.004}, {}]},
                                   {"gamma": 0.001, "epochs": [{}, {"margin": 0.003}]}]}]}
  np.savez(os.path.join(str(out) + ".progress", "progress.npz"),
           __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
  mod.record_hardened("proact", str(out), str(tmp_path / "r"))
  rec = json.load(open(tmp_path / "r" / "hardened" / "proact.json"))
  assert rec["accuracy"] == 0.81 and rec["baseline_accuracy"] == 0.82 and "mean" not in rec
  assert rec["seed"] == 0 and rec["method_seed"] == 3
  assert rec["search"] == [{"site": "act1", "kept_gamma": 0.001, "kept": True,
                            "tried": [{"gamma": 0.01, "epochs": 2,
                                       "per_epoch": [{"val_drop": 0.004}, {}]},
                                      {"gamma": 0.001, "epochs": 2,
                                       "per_epoch": [{}, {"margin": 0.003}]}]}]
  assert rec["spent_epochs"] == 4
  # FitAct's history is its epochs (one run, no weight): one try holding every epoch's figures
  epochs = [{"epoch": 0, "loss": 1.3, "val_accuracy": 0.87}, {"epoch": 1, "loss": 1.2}]
  state = {"stages": [{"stage": "all", "history": epochs}]}
  np.savez(os.path.join(str(out) + ".progress", "progress.npz"),
           __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
  mod.record_hardened("fitact", str(out), str(tmp_path / "r"))
  rec = json.load(open(tmp_path / "r" / "hardened" / "fitact.json"))
  assert rec["search"] == [{"site": "all", "kept_gamma": None, "kept": None,
                            "tried": [{"gamma": None, "epochs": 2, "per_epoch": epochs}]}]
  assert rec["spent_epochs"] == 2


def test_fitact_started_after_proact_in_the_same_run_gets_the_spent_epochs(tmp_path,
                                                                          monkeypatch):
  """The stages are planned again as each starts: ProAct finishing (with retries) in the same
  invocation gives FitAct ProAct's spent epochs, not the count planned at the start."""
  import json

  import numpy as np
  mod = _load()
  work, res = str(tmp_path / "w"), str(tmp_path / "r")
  ran = {}

  def fake_run(name, argv, work_dir, poll=30.0):
    ran[name] = argv
    out = argv[argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "meta.json"), "w").write("{}")
    if name == "harden-proact":  # 2 sites, the first retried twice: 3 x 5 + 5 epochs spent
      os.makedirs(out + ".progress", exist_ok=True)
      state = {"stages": [{"stage": "a", "history": [{"epochs": [{}] * 5}] * 3},
                          {"stage": "b", "history": [{"epochs": [{}] * 5}]}]}
      np.savez(os.path.join(out + ".progress", "progress.npz"),
               __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
    return 1.0, 1

  monkeypatch.setattr(mod, "run_timed", fake_run)
  monkeypatch.setattr(mod, "record_hardened", lambda *a: None)
  args = ["--data-dir", str(tmp_path), "--work", work, "--results", res, "--baseline",
          str(tmp_path / "base"), "--only", "harden-proact,harden-fitact"]
  os.makedirs(tmp_path / "base" / "model")
  (tmp_path / "base" / "model" / "meta.json").write_text("{}")
  _, planned = mod.plan(mod.parse_args(args))
  assert planned["fitact"]["epochs"] == 17  # 5 + 2 x 6, less than ProAct will spend
  assert mod.main(args) == 0
  fit = ran["harden-fitact"]
  assert fit[fit.index("--epochs") + 1] == "20"
  stages = json.load(open(os.path.join(res, "stages.json")))
  assert "--epochs 20 " in stages["harden-fitact"]["command"]
  assert json.load(open(os.path.join(res, "budget.json")))["fitact"] == {
      "epochs": 20, "matched_to": "proact spent"}


def test_a_resumed_stage_sums_the_time_of_every_invocation(tmp_path):
  import json
  import subprocess
  import sys

  import pytest
  mod = _load()
  work = str(tmp_path)
  # an earlier invocation was killed after 100 s: its time is on the clock
  (tmp_path / "stage_clock.json").write_text(json.dumps({"harden-fitact": [100.0, 1]}))
  sleep = [sys.executable, "-c", "import time; time.sleep(0.5)"]
  spent, calls = mod.run_timed("harden-fitact", sleep, work, poll=0.1)
  assert calls == 2 and 100.5 <= spent < 130
  clock = json.loads((tmp_path / "stage_clock.json").read_text())
  assert clock["harden-fitact"][1] == 2 and clock["harden-fitact"][0] == pytest.approx(spent,
                                                                                      abs=0.2)
  with pytest.raises(subprocess.CalledProcessError):
    mod.run_timed("other", [sys.executable, "-c", "raise SystemExit(3)"], work, poll=0.1)
  assert json.loads((tmp_path / "stage_clock.json").read_text())["other"][1] == 1


def test_a_method_seed_repeat_campaigns_only_the_methods_it_runs(tmp_path):
  mod = _load()
  only = "harden-ranger,harden-ft-clipact,harden-proact,harden-fitact,campaign-bernoulli"
  stages, _ = mod.plan(mod.parse_args(["--data-dir", "D", "--method-seed", "3", "--baseline",
                                       str(tmp_path / "base"), "--work", str(tmp_path / "s3"),
                                       "--only", only]))
  argv = dict((n, a) for n, a, _ in stages)
  camp = argv["campaign-bernoulli"]
  ckpts = [camp[i + 1] for i, x in enumerate(camp) if x == "--checkpoint"]
  assert ckpts[0] == str(tmp_path / "base" / "model")
  assert [os.path.basename(c) for c in ckpts[1:]] == ["ranger", "ft-clipact", "proact", "fitact"]
  assert camp[camp.index("--seed") + 1] == "3"  # the seed's own campaign key
  assert "--seed" in argv["harden-proact"] and argv["harden-proact"][
      argv["harden-proact"].index("--seed") + 1] == "3"
  # without --only every method, the KD-direction run included, is in the campaign
  stages, _ = mod.plan(mod.parse_args(["--data-dir", "D", "--work", str(tmp_path / "w")]))
  camp = dict((n, a) for n, a, _ in stages)["campaign-bernoulli"]
  assert camp.count("--checkpoint") == 6 and "--seed" not in camp  # the main run: key 0


def test_skip_leaves_a_method_out_of_the_later_stages(tmp_path, capsys):
  mod = _load()
  args = ["--data-dir", "D", "--model", "resnet20", "--work", str(tmp_path / "w"),
          "--results", str(tmp_path / "r")]
  stages, _ = mod.plan(mod.parse_args(args + ["--skip", "harden-proact-ts"]))
  for name in ("clean-paired", "campaign-bernoulli", "campaign-toolbox-floor", "activations"):
    argv = dict((n, a) for n, a, _ in stages)[name]
    ckpts = [argv[i + 1] for i, x in enumerate(argv) if x == "--checkpoint"]
    assert [os.path.basename(c) for c in ckpts[1:]] == ["ranger", "ft-clipact", "proact",
                                                       "fitact"], name
  # a misspelt stage is refused in one line before anything runs
  assert mod.main(args + ["--skip", "harden-proact_ts"]) == 2
  err = capsys.readouterr().err
  assert "harden-proact_ts" in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def test_stages_share_a_persistent_compilation_cache_in_work(tmp_path, monkeypatch):
  import sys
  mod = _load()
  out = tmp_path / "cache_dir.txt"
  show = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write("
          "os.environ['JAX_COMPILATION_CACHE_DIR'])", str(out)]
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  mod.run_timed("activations", show, str(tmp_path), poll=0.1)
  assert out.read_text() == os.path.join(str(tmp_path), "xla_cache")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))  # the user's wins
  mod.run_timed("activations", show, str(tmp_path), poll=0.1)
  assert out.read_text() == str(tmp_path / "mine")


def test_bad_options_are_refused_in_one_line(tmp_path, capsys):
  import pytest
  mod = _load()
  base = ["--data-dir", "D", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
  for bad, words in ((["--scale", "0"], "--scale"), (["--scale", "nan"], "--scale"),
                     (["--max-trials", "10"], "30 trials"), (["--method-seed", "-1"], "integer"),
                     (["--fi-trials", "0"], "--fi-trials")):
    with pytest.raises(SystemExit) as e:
      mod.parse_args(base + bad)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and words in err[-1], (bad, err)
  # a missing data directory is refused before anything is written
  assert mod.main(base + ["--data-dir", str(tmp_path / "nowhere")]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "w")


def test_a_failed_stage_stops_with_one_line_and_its_exit_code(tmp_path, capsys, monkeypatch):
  import subprocess
  mod = _load()

  def fail(name, argv, work):
    raise subprocess.CalledProcessError(2, argv)
  monkeypatch.setattr(mod, "run_timed", fail)
  rc = mod.main(["--smoke", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "stage baseline stopped with exit code 2" in err[0]
  assert not os.path.exists(tmp_path / "r" / "stages.json")   # nothing recorded as done
