"""Fuzzed configs (hypothesis): every field with a wrong type, an out-of-range value, and
the inconsistent combinations; each exits 2 with one line naming the field, writes
nothing into the workdir, and never shows a traceback.

Validation only: `modes.run` goes as far as validation; were a bad value to pass it,
the workdir lock (the first write) raises instead of a run starting.
"""

import contextlib
import io
import math
import os
from unittest import mock

import ml_collections
import pytest
from absl import flags
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from fastdfkd_jax import cli, data, models, modes, synthesis
from fastdfkd_jax.config import checks as config_checks, schema
from fastdfkd_jax.run import workdir as workdir_lib

BASE = schema.base_config()
DEFAULT = schema.default_config().to_dict()


def _get(c, name):
  for key in name.split("."):
    c = c[key]
  return c


def _default(name):
  return _get(BASE, name)


LEAVES = [n for n in config_checks.field_names(BASE)
          if not isinstance(_get(BASE, n), ml_collections.ConfigDict)]
CHOICES = {"mode": schema.MODES, "method": synthesis.available(),
           "kd.source": schema.KD_SOURCES, "synth.meta_grad": schema.META_GRADS,
           "loop": schema.LOOPS, "dtype": schema.DTYPES,
           "inner_unroll": schema.INNER_LOOPS, "model": models.list_models(),
           "teacher.arch": models.list_models(), "student.arch": models.list_models()}
FUZZ = settings(max_examples=3, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])
ANY = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(),
                st.text(max_size=8), st.lists(st.integers(), max_size=3).map(tuple))


def _set(c, name, value):
  *groups, key = name.split(".")
  for group in groups:
    c = c[group]
  c[key] = value


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """Where each refused config must write nothing (never created; one for the module:
  hypothesis runs many examples per test). `cli.parse_flags` may add to XLA_FLAGS: kept."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    yield str(tmp_path_factory.mktemp("fuzz") / "w")


class Accepted(Exception):
  """The config passed validation (the run would have started)."""


def _refusal(config, workdir) -> str | None:
  """The one stderr line of modes.run refusing `config`; None if it was accepted."""
  err = io.StringIO()
  with mock.patch.object(workdir_lib.WorkdirLock, "__enter__", side_effect=Accepted), \
      contextlib.redirect_stderr(err):
    try:
      with cli.user_errors():
        modes.run(config, workdir)
    except Accepted:
      return None
    except SystemExit as e:
      assert e.code == 2
  lines = err.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
  assert not os.path.exists(workdir)  # nothing written
  return lines[0]


def _config(fields: dict, mode: str = "distill"):
  """The default config (not type-safe, as a config file may build one) with `fields` set."""
  c = ml_collections.ConfigDict(DEFAULT, type_safe=False)
  c.mode = mode
  if mode == "evaluate":
    c.checkpoint = "/some/checkpoint"
  for name, value in fields.items():
    _set(c, name, value)
  return c


def _fits(value, default) -> bool:
  """The accepted types, spelled out independently of schema."""
  if isinstance(default, tuple):
    return (isinstance(value, tuple) and len(value) == len(default)
            and all(_fits(v, d) for v, d in zip(value, default)))
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if isinstance(default, float):
    return isinstance(value, (int, float)) and math.isfinite(value)
  return type(value) is type(default)


@pytest.mark.parametrize("name", LEAVES)
@FUZZ
@given(value=ANY)
def test_a_field_of_the_wrong_type_is_refused(workdir, name, value):
  config = _config({name: value})
  # what the config holds (ConfigDict turns True into 1.0 in a float field, ...)
  assume(not _fits(_get(config, name), _default(name)))
  line = _refusal(config, workdir)
  assert line is not None and f"config.{name}=" in line


def _number(default):
  if isinstance(default, tuple):
    return st.tuples(*[_number(d) for d in default])
  if isinstance(default, int):
    return st.integers(-10**6, 10**6)
  return st.floats(-1e6, 1e6, allow_nan=False)


@pytest.mark.parametrize("name", sorted(config_checks.FIELD_RANGES))
@FUZZ
@given(draw=st.data())
def test_an_out_of_range_value_is_refused(workdir, draw, name):
  ok, text = config_checks.FIELD_RANGES[name]
  value = draw.draw(_number(_default(name)))
  assume(not all(ok(v) for v in (value if isinstance(value, tuple) else (value,))))
  line = _refusal(_config({name: value}), workdir)
  assert line is not None and f"config.{name}=" in line and text in line


@pytest.mark.parametrize("name", sorted(CHOICES) + ["dataset.name"])
@FUZZ
@given(draw=st.data())
def test_an_unknown_name_is_refused(workdir, draw, name):
  value = draw.draw(st.text(min_size=1, max_size=12))
  assume(value not in CHOICES.get(name, ()))
  if name == "dataset.name":
    with contextlib.suppress(ValueError):
      data.get_info(value)
      assume(False)
  mode = "train_teacher" if name == "model" else "distill"
  line = _refusal(_config({name: value}, mode), workdir)
  assert line is not None and name in line


@st.composite
def inconsistent(draw):
  """(the field named in the refusal, the fields set) of a combination that cannot run."""
  kind = draw(st.sampled_from(["warmup", "kd.lr_min", "pool.capacity",
                               "optim.warmup_epochs", "checkpoint"]))
  epochs = draw(st.integers(1, 50))
  if kind == "warmup":
    return kind, {"epochs": epochs, "warmup": draw(st.integers(epochs, epochs + 50))}
  if kind == "kd.lr_min":
    lr = draw(st.floats(1e-4, 1.0))
    return kind, {"kd.lr": lr, "kd.lr_min": draw(st.floats(lr, 10.0, exclude_min=True))}
  if kind == "pool.capacity":
    batch = draw(st.integers(2, 512))
    return kind, {"batch_size": batch, "pool.capacity": draw(st.integers(1, batch - 1))}
  if kind == "optim.warmup_epochs":
    return kind, {"mode": "train_teacher", "epochs": epochs,
                  "optim.warmup_epochs": draw(st.integers(epochs, epochs + 50))}
  return kind, {"mode": "evaluate", "checkpoint": ""}


@settings(FUZZ, max_examples=100)
@given(case=inconsistent())
def test_inconsistent_fields_are_refused(workdir, case):
  name, fields = case
  line = _refusal(_config(fields), workdir)
  assert line is not None and f"config.{name}" in line


@pytest.mark.parametrize("name", LEAVES)
@FUZZ
@given(text=st.text(max_size=12))
def test_any_command_line_override_is_accepted_or_refused_in_one_line(workdir, name, text):
  err, fv = io.StringIO(), flags.FlagValues()
  with contextlib.redirect_stderr(err):
    try:
      cli.parse_flags(["main", f"--config.{name}={text}"], flag_values=fv)
    except SystemExit as e:
      assert e.code == 2
      lines = err.getvalue().splitlines()
      assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
      assert name in lines[0]
      return
  # parsed: validation refuses it naming the field, or accepts a value of the field's type
  line = _refusal(fv.config, workdir)
  if line is None:
    assert _fits(_get(fv.config, name), _default(name)), _get(fv.config, name)
  else:
    assert name.split(".")[-1] in line


def test_a_config_file_with_a_wrong_type_is_refused_in_one_line(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("from fastdfkd_jax.config import schema\n"
                  "def get_config():\n  c = schema.base_config()\n"
                  "  c.epochs = 'ten'\n  return c\n")
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
    cli.parse_flags(["main", f"--config={path}"], flag_values=flags.FlagValues())
  assert e.value.code == 2
  (line,) = err.getvalue().splitlines()
  assert line.startswith("error: ") and "epochs" in line and "Traceback" not in line
