"""The suite's one process setup and its shared fixtures.

Three layers (markers in setup.cfg): unit and property tests (unmarked, the bulk);
`integration`: in-process runs of `modes.run` on tiny settings; `e2e`: the few
subprocess tests where the process boundary is the point (SIGKILL and SIGTERM
resume, a dead peer of a multi-process run, the notebook, the README command, exit
codes).

Before JAX starts, this process gets 8 CPU devices (XLA's forced host platform
count), so every test compares 1 with 8 devices in process on meshes it builds
itself (`mesh1`, `mesh8`); a run on one device uses the first. The persistent
compilation cache is shared by the whole session (both xdist workers and their
subprocesses): the tiny runs of the suite compile the same programs many times
(a tiny digits run measured 25.3 s cold, 11.4 s with the cache warm).
"""

import importlib.util
import os
import subprocess
import sys
import tempfile

DEVICES = 8
# The suite's programs are tiny and compiled once each, so compiling is most of its time:
# LLVM at -O1 instead of XLA:CPU's default -O2 compiles them about 20 % faster (two integration
# tests, 94 s -> 75 s on one core; -O0 made them slower, 132 s: the learning runs then run
# slower than they compile). The children of the suite get it too (`one_device_env`).
_SUITE_XLA_FLAGS = "--xla_backend_optimization_level=1"
_CHILD_XLA_FLAGS = " ".join(
    [os.environ.get("XLA_FLAGS", "").strip(), _SUITE_XLA_FLAGS]).strip()
os.environ["XLA_FLAGS"] = " ".join(
    [_CHILD_XLA_FLAGS, f"--xla_force_host_platform_device_count={DEVICES}"]).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# One compilation cache for the session: its base directory is the pytest run's (xdist
# workers share the parent of their base temp directories), made before JAX is imported.
_CACHE = os.path.join(tempfile.gettempdir(), f"fastdfkd_test_cache_{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

# The session teacher: configs/teacher.py:digits shrunk to resnet8, batch 64, lr 0.05,
# 15 epochs; measured 96.9% test accuracy in ~15 s on a free CPU.
TEACHER_ARCH = "resnet8"
TEACHER_EPOCHS = 15


def load_module(path: str, name: str):
  """The Python file at `path` as a module (configs/ and experiments/ are no packages)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(name: str, arg: str | None = None):
  """`--config=configs/NAME[:ARG]` as ml_collections' config_flags loads it."""
  module = load_module(os.path.join(CONFIGS, name), f"_cfg_{name[:-3]}")
  return module.get_config() if arg is None else module.get_config(arg)


def load_experiment(name: str):
  """experiments/NAME.py as a module."""
  return load_module(os.path.join(REPO, "experiments", f"{name}.py"), f"experiments_{name}")


def make_mesh(n: int):
  from fastdfkd_jax.run import parallel
  return parallel.make_mesh(jax.devices()[:n])


@pytest.fixture(scope="session")
def mesh1():
  return make_mesh(1)


@pytest.fixture(scope="session")
def mesh8():
  return make_mesh(DEVICES)


def run(config, workdir, devices: int = 1) -> dict:
  """`modes.run` on the first `devices` devices (the suite's default: one)."""
  from fastdfkd_jax import modes
  return modes.run(config, str(workdir), make_mesh(devices))


def tiny_distill(teacher_dir: str, **changes):
  """The suite's tiny FastDFKD run on digits (resnet8 -> resnet8, k=2, batch 16, 3 epochs
  with 1 warmup, 2 KD steps): runs of the same shapes share their compiled programs
  (through the session's compilation cache)."""
  from fastdfkd_jax.config import schema
  c = schema.default_config()
  c.teacher.arch, c.student.arch = TEACHER_ARCH, "resnet8"
  c.teacher.checkpoint, c.teacher.train_if_missing = teacher_dir, False
  c.batch_size, c.k, c.synth.nz, c.synth.ngf = 16, 2, 16, 8
  c.epochs, c.warmup, c.kd.steps, c.kd.cosine_epochs = 3, 1, 2, 2
  c.eval_every, c.sample_every, c.checkpoint_every = 1, 0, 1
  for name, value in changes.items():
    group = c
    *parents, leaf = name.split(".")
    for p in parents:
      group = group[p]
    group[leaf] = value
  if "pool.capacity" not in changes:
    # A pool of one shape for every run of up to 8 synthesis calls (0 would size it one
    # slot a call), so runs of different lengths share their compiled programs; it never
    # wraps, so what they sample is what `capacity=0` samples.
    c.pool.capacity = max(8, c.epochs * c.synth.calls_per_epoch) * c.batch_size
  return c


def config_flags(config, skip: tuple[str, ...] = ("teacher.checkpoint",)) -> list[str]:
  """`--config.PATH=VALUE` for each field where `config` differs from the embedded default
  (what `python -m fastdfkd_jax.main` starts from), leaving out `skip`: a child given these
  flags runs the config an in-process run would."""
  from flax import traverse_util
  from fastdfkd_jax.config import schema
  leaves = lambda c: traverse_util.flatten_dict(c.to_dict(), sep=".")   # noqa: E731
  base = leaves(schema.default_config())
  return [f"--config.{path}={value}" for path, value in leaves(config).items()
          if path not in skip and value != base[path]]


# Each method's tiny settings, shared by the files that run it (test_parallel's 1-vs-8
# checks and the integration runs of test_modes_distill and test_synthesis_nayer): with
# `tiny_distill` they give the same programs, which compile once for the whole session.
TINY_METHODS = {
    # CMI keeps a memory bank, an MLP head and its Adam state across calls.
    "cmi": {"method": "cmi", "cmi.bank_size": 96, "cmi.n_neg": 48, "cmi.head_dim": 16,
            "synth.lr_g": 1e-3, "synth.bn": 1.0, "synth.oh": 1.0, "synth.adv": 0.5},
    # Every image prior on.
    "deepinversion": {"method": "deepinversion", "synth.lr_g": 0.1, "deepinversion.tv": 1e-4,
                      "deepinversion.tv_l2": 1e-4, "deepinversion.l2": 1e-5},
    # One noisy layer per chunk of 10 images: 10 images a device on 8 devices.
    "nayer": {"method": "nayer", "batch_size": 80, "nayer.le_size": 16,
              "nayer.le_emb_size": 24, "synth.g_life": 2},
}


@pytest.fixture(scope="session")
def config_file():
  return load_config_file


def _layer(item) -> int:
  return 0 if item.get_closest_marker("e2e") else (
      1 if item.get_closest_marker("integration") else 2)


def pytest_collection_modifyitems(items):
  """Modules with end-to-end tests first, then those with integration runs, then the
  rest, each module whole and in its own order: xdist's workers take the tests in this
  order, so the longest start first and the suite ends on short unit tests on both
  workers, not on one worker's subprocess run while the other waits."""
  rank = {}
  for item in items:
    rank[item.module] = min(rank.get(item.module, 2), _layer(item))
  items.sort(key=lambda item: rank[item.module])


COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def compile_unoptimized(fn, *args):
  """jax.jit(fn) lowered for `args` and compiled unoptimised (about 2x less compile time on
  CPU; for programs a test runs a handful of times)."""
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
  from fastdfkd_jax import models
  from fastdfkd_jax.models import util as model_util
  teacher = models.get_model("resnet8", 10, axis_name=None)
  generator = models.get_model("generator", nz=16, ngf=8, img_size=8, channels=1,
                               axis_name=None)
  init = model_util.init_variables(teacher, jax.random.key(1), (8, 8, 1))
  # Non-trivial running statistics, so the BN prior is not centred on (0, 1).
  tv = dict(init, batch_stats=jax.tree.map(lambda s: np.asarray(s) * 0.5 + 0.1,
                                           init["batch_stats"]))
  # A different student without a second init compile: the params scaled by host-side
  # noise, running statistics as initialised (0, 1).
  rng = np.random.default_rng(2)
  sv = dict(init, params=jax.tree.map(
      lambda p: np.asarray(p) * rng.uniform(0.5, 1.5, p.shape).astype(p.dtype),
      init["params"]))
  return teacher, teacher, generator, tv, sv


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory):
  """A resnet8 digits teacher trained in process once per pytest run: (workdir, summary).
  Under xdist the first worker to need it trains it (under a file lock in the run's base
  directory, which the workers share) and the other reads it."""
  import fcntl
  import json
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent   # pytest-N/, the parent of each worker's popen-gwK/
  workdir = base / "digits_teacher"
  with open(base / "digits_teacher.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if (workdir / "summary.json").exists():
      return str(workdir), json.loads((workdir / "summary.json").read_text())
    c = load_config_file("teacher.py", "digits")
    c.model, c.batch_size, c.optim.lr = TEACHER_ARCH, 64, 0.05
    c.epochs = TEACHER_EPOCHS
    c.checkpoint_every = TEACHER_EPOCHS   # only the final checkpoint
    return str(workdir), run(c, str(workdir))


@pytest.fixture(scope="session")
def teacher(digits_teacher):
  """The session teacher's workdir."""
  return digits_teacher[0]


def one_device_env(**extra) -> dict:
  """This process's environment for a child on one CPU device: the user's own XLA_FLAGS and
  the suite's -O1, without the suite's device count."""
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=_CHILD_XLA_FLAGS,
              **extra)


def devices_env(devices: int, **extra) -> dict:
  """`one_device_env` for a child on `devices` CPU devices (XLA's forced host count)."""
  env = one_device_env(**extra)
  if devices != 1:
    env["XLA_FLAGS"] = " ".join(
        [_CHILD_XLA_FLAGS, f"--xla_force_host_platform_device_count={devices}"]).strip()
  return env


def main(workdir, *flags, wait: bool = True, timeout: int = 600, devices: int = 1):
  """`python -m fastdfkd_jax.main --workdir=... flags` in a subprocess on `devices` CPU
  devices (default one), from the repository root: the finished process (output
  captured), or the running Popen with wait=False."""
  cmd = [sys.executable, "-m", "fastdfkd_jax.main", f"--workdir={workdir}", *flags]
  env = devices_env(devices)
  if not wait:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                        cwd=REPO)


def imported_resnet8(base) -> tuple[str, str, dict]:
  """A random resnet8 digits state_dict written as BASE/resnet8.pth and imported into the
  orbax workdir BASE/teacher: (workdir, the .pth, the state_dict)."""
  from fastdfkd_jax.teacher import pth, torch_import
  rng = np.random.default_rng(0)
  sd = {key: rng.uniform(-0.5, 0.5, shape).astype(np.float32)
        for key, shape in torch_import.torch_layout("resnet8", 10, (8, 8, 1)).items()}
  source, workdir = str(base / "resnet8.pth"), str(base / "teacher")
  pth.write(source, sd)
  torch_import.import_to_checkpoint(source, workdir, "resnet8", "digits")
  return workdir, source, sd


def crash_at_epoch(monkeypatch, epoch: int) -> None:
  """Makes a distillation run raise at the start of epoch `epoch` (a crash mid-run)."""
  from fastdfkd_jax.distill import epochs
  real = epochs.run_epoch

  def run_epoch(ep, state, counters, e):
    if e == epoch:
      raise RuntimeError("killed")
    return real(ep, state, counters, e)

  monkeypatch.setattr(epochs, "run_epoch", run_epoch)


def rows(workdir) -> list[dict]:
  """The run's metrics.jsonl rows ([] before the first)."""
  import json
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
