"""proact demo input checks (the full demo runs in the README's first command, not here)."""

import os

from proact_jax import cli


def _one_line_error(argv, capsys, match):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and match in err, err


def test_demo_refuses_unwritable_output(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  _one_line_error(["demo", "--out", str(blocker / "out")], capsys, "is not writable")
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o500)
  try:
    if not os.access(ro, os.W_OK):  # root can write anyway; then only the first case applies
      _one_line_error(["demo", "--out", str(ro / "out")], capsys, "is not writable")
  finally:
    os.chmod(ro, 0o700)


def test_demo_bad_arguments(tmp_path, capsys):
  _one_line_error(["demo", "--out", str(tmp_path / "d"), "--trials", "1"], capsys,
                  "--trials must be >= 2")
  _one_line_error(["demo", "--out", str(tmp_path / "d"), "--bers", "1e-5,2"], capsys,
                  "outside [0, 1]")
  assert not (tmp_path / "d").exists()
