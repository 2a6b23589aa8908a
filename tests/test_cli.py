"""The command-line layer (fastdfkd_jax.cli), in process: a bad flag or config value ends
with one `error:` line and exit 2; the `--config` flag loads files and overrides.

The exit codes of a real process (2 for a user error, 1 with a traceback for a bug) are
test_e2e.py's.
"""

import os

import pytest
from absl import flags

from conftest import REPO
from fastdfkd_jax import cli, errors


def parse(argv):
  """`main.py`'s flags (--workdir, --config) parsed from argv into fresh FlagValues."""
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  flags.mark_flag_as_required("workdir", flag_values=fv)
  env = os.environ.get("XLA_FLAGS")
  try:
    rest = cli.parse_flags(["main", *argv], fv)
  finally:   # parse_flags may add the config's XLA flags: keep the suite's environment
    os.environ["XLA_FLAGS"] = env
  return fv, rest


def one_error_line(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    parse(argv)
  assert e.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


@pytest.mark.parametrize("flag, message", [
    ("--config.epochs=0", "config.epochs=0 must be > 0"),
    ("--config.kd.lr=abc", "--config.kd.lr=abc"),
    ("--config.kd.lrr=0.3", "'kd.lrr'; did you mean kd.lr"),
    ("--config.student.arc=resnet8", "did you mean student.arch"),
    ("--config.method=fastest", "fast_meta"),
    ("--config.student.arch=resnet9", "resnet8"),
    ("--config.dataset.name=cifar11", "cifar10"),
])
def test_a_bad_config_value_is_one_line_and_exit_2(tmp_path, capsys, flag, message):
  """Refused while parsing (exit 2, one line), or by the validation `modes.run` does first
  (an errors.UserError: main prints it as one line and exits 2)."""
  from fastdfkd_jax.config import checks
  try:
    fv, _ = parse([f"--workdir={tmp_path}", flag])
  except SystemExit as e:
    assert e.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
  else:
    with pytest.raises(errors.UserError) as e:
      checks.validate(fv.config)
    line = f"error: {e.value}"
  assert message in line and "\n" not in line


def test_an_unknown_field_after_a_config_file_names_the_nearest(tmp_path, capsys):
  line = one_error_line([f"--workdir={tmp_path}",
                         f"--config={REPO}/configs/teacher.py:digits",
                         "--config.optim.lrr=0.1"], capsys)
  assert "optim.lr" in line


def test_a_missing_workdir_is_one_line(capsys):
  assert "workdir" in one_error_line([], capsys)


def test_a_config_file_and_overrides_load(tmp_path):
  fv, rest = parse([f"--workdir={tmp_path}", f"--config={REPO}/configs/teacher.py:digits",
                    "--config.epochs=3", "--config.optim.lr=0.2"])
  assert rest == ["main"] and fv.workdir == str(tmp_path)
  assert (fv.config.mode, fv.config.epochs, fv.config.optim.lr) == ("train_teacher", 3, 0.2)
  fv, _ = parse([f"--workdir={tmp_path}"])   # no --config: the embedded default
  assert (fv.config.dataset.name, fv.config.teacher.train_if_missing) == ("digits", True)


def test_a_config_file_that_does_not_load_is_one_line(tmp_path, capsys):
  line = one_error_line([f"--workdir={tmp_path}", f"--config={tmp_path}/nope.py"], capsys)
  assert "nope.py" in line


def test_override_names():
  argv = ["main", "--workdir=w", "--config=c.py:x", "--config.kd.lr=0.1", "-config.k", "3",
          "--noconfig.pool.on_device", "--configs.x=1"]
  assert cli.override_names(argv) == ["kd.lr", "k", "pool.on_device"]


def test_positional_arguments_or_the_usage_line(capsys):
  assert cli.positional(["prog", "a", "b"], ("A", "B"), "prog A B") == ["a", "b"]
  assert cli.positional(["prog", "a", "b", "c"], ("A",), "prog A...", at_least=True) == [
      "a", "b", "c"]
  for argv in (["prog", "a"], ["prog", "a", "b", "c"]):
    with pytest.raises(SystemExit) as e:
      cli.positional(argv, ("A", "B"), "prog A B")
    assert e.value.code == 2 and capsys.readouterr().err == "usage: prog A B\n"


def test_user_errors_and_listed_types_exit_2_others_propagate(capsys):
  with pytest.raises(SystemExit) as e:
    with cli.exit_2_on(FileNotFoundError):
      raise FileNotFoundError("no metrics.jsonl in runs/x")
  assert e.value.code == 2 and capsys.readouterr().err == (
      "error: no metrics.jsonl in runs/x\n")
  with pytest.raises(SystemExit):
    with cli.exit_2_on(FileNotFoundError):
      raise errors.UserError("bad value")
  with pytest.raises(KeyError):          # a bug keeps its traceback
    with cli.exit_2_on(FileNotFoundError):
      raise KeyError("params")


def test_orbax_info_is_quiet_unless_verbosity_asks_for_it():
  """Orbax's per-step INFO lines are dropped, its warnings kept; `--verbosity=1` (absl's
  own flag) brings the INFO back. Other libraries' records pass untouched."""
  import logging as py_logging
  from absl import logging
  def record(path, level):
    return py_logging.LogRecord("x", level, path, 1, "saved step 3", None, None)
  quiet, before = cli._QuietOrbax(), logging.get_verbosity()
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  try:
    logging.set_verbosity(logging.INFO)
    assert not quiet.filter(record(orbax, py_logging.INFO))
    assert quiet.filter(record(orbax, py_logging.WARNING))
    assert quiet.filter(record("/fastdfkd_jax/run/skeleton.py", py_logging.INFO))
    logging.set_verbosity(logging.DEBUG)
    assert quiet.filter(record(orbax, py_logging.INFO))
  finally:
    logging.set_verbosity(before)
