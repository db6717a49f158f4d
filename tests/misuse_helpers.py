"""Shared by the misuse tests (test_misuse.py, test_misuse_resume.py): the CLI helpers that
check a refusal (exit code 2, one line on stderr, no traceback, no file changed) and the
``work`` fixture (a 1-epoch digits baseline and a perturbed copy). Only the public API
(``import proact_jax as pj``, ``proact_jax.cli``, ``proact_jax.methods``) and CLI subprocesses
are used, so the tests do not depend on the package's module layout."""

import hashlib
import os
import shutil
import subprocess
import sys

import jax

import proact_jax as pj
from proact_jax import cli

HARDEN = ["--method", "proact", "--epochs", "1", "--last-epochs", "1", "--profile-images", "100",
          "--train-images", "256", "--val-images", "100", "--test-images", "100", "--budget",
          "100", "--quiet"]


SWEEP = ["--bers", "1e-4", "--trials", "2", "--images", "40", "--quiet"]


def _snapshot(root) -> dict:
  """{relative path: sha256 of the content, or 'dir'} of everything under ``root``."""
  out = {}
  for d, dirs, files in os.walk(root):
    for name in dirs:
      out[os.path.relpath(os.path.join(d, name), root)] = "dir"
    for name in files:
      p = os.path.join(d, name)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _cli(capsys, *argv):
  try:
    rc = cli.main([str(a) for a in argv])
  except SystemExit as e:  # argparse
    rc = e.code
  cap = capsys.readouterr()
  return rc, cap.out, cap.err


def _refused(rc, err, *match):
  lines = err.strip().splitlines()
  assert rc == 2, err
  assert len(lines) == 1, err
  assert "Traceback" not in err
  for m in match:
    assert m in lines[0], err
  return lines[0]


def _refused_unchanged(capsys, root, argv, *match):
  before = _snapshot(root)
  rc, _, err = _cli(capsys, *argv)
  line = _refused(rc, err, *match)
  assert _snapshot(root) == before, f"files changed by a refused command: {line}"
  return line


def _subprocess(argv, timeout=300, fsize=None):
  """``proact ARGV`` in a new process, with a file-size limit of ``fsize`` bytes if given (set
  by the child itself: no fork of this multithreaded process)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if fsize:  # it would write the suite's compilation cache under the limit: truncated entries
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
  code = ("import resource, runpy, sys; "
          + (f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, resource.RLIM_INFINITY)); "
             if fsize else "")
          + "sys.argv = ['proact'] + sys.argv[1:]; runpy.run_module('proact_jax.cli', "
          "run_name='__main__')")
  return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                        text=True, timeout=timeout, env=env)


def _garble(path, n=64):
  """Overwrites ``n`` bytes in the middle of the largest file under ``path``."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  big = max(files, key=os.path.getsize)
  size = os.path.getsize(big)
  with open(big, "r+b") as f:
    f.seek(max(0, size // 2 - n // 2))
    f.write(bytes((i * 37 + 11) % 256 for i in range(n)))
  return big


def _meta_path(ckpt):
  return os.path.join(ckpt, "meta.json")


def _campaign():
  """The campaign module, wherever the package layout puts it."""
  try:
    from proact_jax.faults import campaign
  except ImportError:
    from proact_jax import campaign
  return campaign


def _module_with(*names):
  """The loaded proact_jax module defining all ``names`` (layout-independent monkeypatching)."""
  found = [m for n, m in list(sys.modules.items()) if n.startswith("proact_jax.") and m
           and all(getattr(m, a, None) is not None for a in names)
           and getattr(getattr(m, names[0]), "__module__", None) == n]
  assert len(found) == 1, (names, found)
  return found[0]


def make_work(tmp_path_factory):
  """The ``work`` fixture of the misuse tests (module-scoped there): a 1-epoch digits baseline (``base``), another baseline of the same model (``other``)."""
  root = tmp_path_factory.mktemp("misuse")
  run = root / "run"
  assert cli.main(["train", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
  base = str(run / "model")
  model, variables, meta = pj.load_checkpoint(base)
  noisy = jax.tree_util.tree_map(
      lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(7), a.shape, a.dtype), variables)
  other = pj.save_checkpoint(str(root / "other"), noisy, meta)
  return {"root": root, "run": str(run), "base": base, "other": other, "meta": meta,
          "model": model, "variables": variables}


def _copy_ckpt(src, dst):
  shutil.copytree(src, dst)
  return str(dst)
