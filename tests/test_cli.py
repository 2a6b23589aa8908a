"""Entry-point errors (fastdfkd_jax.cli): a user error exits 2 with one line, a bug
exits 1 with its traceback. `main`, `bench` and `import_torch` run as subprocesses."""

import os
import subprocess
import sys

import pytest

from fastdfkd_jax import cli

from conftest import REPO
ENV = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def _run(args, timeout=300):
  return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True,
                        timeout=timeout, cwd=REPO)


def _main(workdir, *flags):
  return _run(["-m", "fastdfkd_jax.main", f"--workdir={workdir}", *flags])


def _one_error_line(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize("flag, message", [
    ("--config.epochs=0", "config.epochs=0 must be > 0"),
    ("--config.kd.lr=abc", "--config.kd.lr=abc"),
    ("--config.kd.lrr=0.3", "'kd.lrr'; did you mean kd.lr"),
    ("--config.student.arc=resnet8", "did you mean student.arch"),
])
def test_bad_config_value_exits_2_with_one_line(tmp_path, flag, message):
  assert message in _one_error_line(_main(tmp_path, flag))


def test_unknown_field_after_a_config_file(tmp_path):
  line = _one_error_line(_main(tmp_path, "--config=configs/teacher.py:digits",
                               "--config.optim.lrr=0.1"))
  assert "optim.lr" in line


def test_missing_workdir_flag_exits_2():
  assert "workdir" in _one_error_line(_run(["-m", "fastdfkd_jax.main"]))


@pytest.mark.parametrize("exc", ["ValueError('shape mismatch inside a step')",
                                 "KeyError('params')"])
def test_internal_bug_exits_1_with_traceback(tmp_path, exc):
  """A ValueError that is no errors.UserError (or any other exception) is a bug."""
  code = ("import runpy, sys\n"
          "from fastdfkd_jax import config_checks\n"
          "def validate(config):\n"
          f"  raise {exc}\n"
          "config_checks.validate = validate\n"
          f"sys.argv = ['main', '--workdir={tmp_path}']\n"
          "runpy.run_module('fastdfkd_jax.main', run_name='__main__')\n")
  proc = _run(["-c", code])
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" in proc.stderr and exc.split("(")[0] in proc.stderr
  assert "error: " not in proc.stderr


def test_import_torch_cli_missing_file_exits_2(tmp_path):
  line = _one_error_line(_run(["-m", "fastdfkd_jax.import_torch", "--arch=resnet8",
                               str(tmp_path / "nothing.pth"), str(tmp_path / "out")]))
  assert "PyTorch" in line   # no such file, or no torch installed


def test_bench_cli_bad_value_exits_2():
  line = _one_error_line(_run(["-m", "fastdfkd_jax.bench", "--config=configs/bench_smoke.py",
                               "--what=synth,bogus"]))
  assert "--what='bogus'" in line


def test_override_names():
  argv = ["main", "--workdir=w", "--config=c.py:x", "--config.kd.lr=0.1", "-config.k", "3",
          "--noconfig.pool.on_device", "--configs.x=1"]
  assert cli.override_names(argv) == ["kd.lr", "k", "pool.on_device"]

