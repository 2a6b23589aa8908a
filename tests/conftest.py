"""Shared fixtures: config-file loading and one digits teacher per session."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

# The session teacher: configs/teacher.py:digits shrunk to resnet8, batch 64,
# lr 0.05, 15 epochs; measured 96.9% test accuracy in ~15 s on a free CPU.
TEACHER_ARCH = "resnet8"
TEACHER_EPOCHS = 15


def load_config_file(name: str, arg: str | None = None):
  """`--config=configs/NAME[:ARG]` as ml_collections' config_flags loads it."""
  path = os.path.join(CONFIGS, name)
  spec = importlib.util.spec_from_file_location(f"_cfg_{name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def load_tool(name: str):
  """The module of tools/NAME.py (tools are scripts, not a package)."""
  path = os.path.join(os.path.dirname(CONFIGS), "tools", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session", autouse=True)
def subprocess_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache per test session, for the subprocesses it starts.

  The end-to-end tests start `python -m fastdfkd_jax.main` and the workers dozens of
  times on the same tiny settings; each compiled the same programs again (about half
  of a tiny run's CPU time: a tiny digits run took 20.8 s, 12.9 s with the cache). Set in
  os.environ, which every subprocess inherits (jax reads it at import, so this process's
  jax, imported at collection, keeps compiling as before). A cached executable is the one
  the compile gives: results do not change. Under pytest-xdist the workers share one
  cache (their base temp dirs' parent is this session's): runs of the same settings on
  two workers compile once. An entry read while another process still writes it fails to
  decompress; jax then warns and compiles.
  """
  base = tmp_path_factory.getbasetemp()
  cache = str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JAX_COMPILATION_CACHE_DIR", cache)
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    yield cache


@pytest.fixture(scope="session")
def config_file():
  return load_config_file


# Programs a test runs a handful of times are compiled without XLA's backend
# optimisation: about 2x less compile time on CPU, and runtime does not matter.
COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def compile_unoptimized(fn, *args):
  """jax.jit(fn) lowered for `args` and compiled unoptimised; call with the same shapes."""
  import jax
  lowered = jax.jit(fn).lower(*args)
  try:
    return lowered.compile(COMPILE_OPTIONS)
  except Exception:  # pylint: disable=broad-except  # option unknown to this XLA
    return lowered.compile()


@pytest.fixture(scope="session")
def tiny_nets():
  """resnet8 teacher/student on 8x8x1 (random init) and a nz=16 ngf=8 generator.

  Returns (teacher, student, generator, teacher_vars, student_vars).
  """
  import jax
  from fastdfkd_jax import models
  from fastdfkd_jax.models import util as model_util
  teacher = models.get_model("resnet8", 10, axis_name=None)
  generator = models.get_model("generator", nz=16, ngf=8, img_size=8, channels=1,
                               axis_name=None)
  init = model_util.init_variables(teacher, jax.random.key(1), (8, 8, 1))
  # Non-trivial running statistics, so the BN prior is not centred on (0, 1).
  tv = dict(init, batch_stats=jax.tree.map(lambda s: np.asarray(s) * 0.5 + 0.1, init["batch_stats"]))
  # A different student without a second init compile: the params scaled by
  # host-side noise, running statistics as initialised (0, 1).
  rng = np.random.default_rng(2)
  sv = dict(init, params=jax.tree.map(
      lambda p: np.asarray(p) * rng.uniform(0.5, 1.5, p.shape).astype(p.dtype),
      init["params"]))
  return teacher, teacher, generator, tv, sv


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory):
  """A resnet8 digits teacher trained once via runner.run: (workdir, summary)."""
  from fastdfkd_jax import runner
  c = load_config_file("teacher.py", "digits")
  c.model, c.batch_size, c.optim.lr = TEACHER_ARCH, 64, 0.05
  c.epochs = TEACHER_EPOCHS
  c.checkpoint_every = TEACHER_EPOCHS   # only the final checkpoint
  workdir = str(tmp_path_factory.mktemp("digits_teacher"))
  summary = runner.run(c, workdir)
  return workdir, summary


@pytest.fixture(scope="session")
def cli_teacher(tmp_path_factory):
  """A resnet8 digits teacher trained by the CLI (`python -m fastdfkd_jax.main
  --config=configs/teacher.py:digits`, 3 epochs), once per test process: the teacher
  of the end-to-end runs of test_runs and test_reliability. Returns its workdir."""
  work = tmp_path_factory.mktemp("cli_teacher")
  proc = subprocess.run(
      [sys.executable, "-m", "fastdfkd_jax.main", f"--workdir={work}",
       f"--config={os.path.join(CONFIGS, 'teacher.py')}:digits", "--config.epochs=3",
       "--config.model=resnet8"],
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"), capture_output=True,
      text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(work)
