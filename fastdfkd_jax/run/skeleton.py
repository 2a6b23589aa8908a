"""The one run skeleton: every mode (teacher training, distillation, synthesis, evaluation)
plugs into it through the small `Task` protocol.

    summary = skeleton.run(setup, config, workdir, mesh)

The skeleton owns what every run needs, in this order: the workdir's lock and the
signal handlers; the workdir checks (writable, free space, the saved config);
the `Context` (config, workdir, mesh, the activation dtype resolved once,
preemption); `setup(ctx) -> Task` (data, models, compiled programs); only then the
run's `config.json` (so a run whose setup fails binds nothing); restoring the newest
checkpoint that reads (torn ones set aside); the epoch loop with its finite check,
metrics row, checkpoint cadence and preemption (a signal, or the wall-clock deadline
`config.stop_at`); and `summary.json`.

A `Task` (the mode) says what one epoch is, how it is evaluated and summarised,
and what its checkpoints hold. Its counters are a frozen dataclass (`Counters` and
a subclass per mode), returned anew by every epoch and written into each
checkpoint's meta, so a resumed run continues them exactly.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from fastdfkd_jax import errors
from fastdfkd_jax.run import checkpoint, parallel, reporting, signals, workdir as wd
from fastdfkd_jax.run import xla_env


@dataclasses.dataclass(frozen=True)
class Context:
  """What a run's setup receives: fixed for the whole run."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  dtype: str                      # config.dtype resolved once: 'float32' | 'bfloat16'
  preemption: signals.Preemption

  @property
  def num_devices(self) -> int:
    return parallel.num_shards(self.mesh)

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)


@dataclasses.dataclass(frozen=True)
class Counters:
  """What a run counts across epochs and keeps in its checkpoints' meta.

  `epoch` is the last finished epoch (-1 before the first). Modes subclass it with
  their own fields; `replace` returns a new one (nothing is mutated in place).
  """
  epoch: int = -1
  wall_seconds: float = 0.0

  def replace(self, **changes) -> "Counters":
    return dataclasses.replace(self, **changes)

  def to_meta(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_meta(cls, meta: dict) -> "Counters":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in names})


class Task(Protocol):
  """A mode, as the skeleton drives it (see the module docstring)."""
  mode: str
  epochs: int           # the run's epochs (synthesis calls for mode=synthesize)
  first_epoch: int      # epochs before it are not run (KD baselines skip the warmup)
  counters: type[Counters]
  saves_checkpoints: bool

  def init_state(self) -> Any:
    """The fresh run state on the mesh (epoch -1)."""

  def restore(self, mngr, step: int, state) -> tuple[Any, Counters]:
    """(state, counters) of checkpoint `step` onto the shardings of `state`."""

  def prepare(self, state) -> float:
    """Compiles what the epochs run; returns the seconds it took."""

  def describe(self) -> str:
    """The run's start line."""

  def epoch(self, state, counters: Counters, epoch: int) -> tuple[Any, Counters, dict]:
    """One epoch -> (state, counters, host metrics)."""

  def evaluate(self, state, counters: Counters, epoch: int,
               last: bool) -> tuple[Counters, dict, dict]:
    """The epoch's scores (when due) and outputs -> (counters, image grids by TensorBoard
    tag, the metrics row's fields)."""

  def checkpoint_items(self, state, counters: Counters) -> tuple[dict, Any, Any]:
    """(meta, model variables, resumable state) of a checkpoint after this epoch."""

  def summary(self, state, counters: Counters) -> dict:
    """The mode's fields of summary.json."""


Setup = Callable[[Context], Task]


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str,
        mesh: jax.sharding.Mesh | None = None) -> dict:
  """Runs one mode in `workdir` on `mesh` (default: every device); returns the summary.

  Holds the workdir's lock for the whole run. SIGTERM/SIGINT checkpoint at the end
  of the current epoch and return `{'preempted': True, ...}`. In a multi-process
  run, a collective failing because another process died raises
  `errors.PeerLostError`.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  with wd.WorkdirLock(workdir), signals.Preemption() as preemption:
    ctx = Context(config=config, workdir=os.path.abspath(workdir), mesh=mesh,
                  dtype=xla_env.resolve_dtype(config.dtype), preemption=preemption)
    try:
      return run_locked(setup, ctx)
    except jax.errors.JaxRuntimeError as e:
      if not parallel.peer_lost(e):
        raise
      raise errors.PeerLostError(
          f"process {jax.process_index()} of {jax.process_count()}: another process of "
          f"this run is gone ({errors.one_line(str(e))[:200]}); restart all processes "
          "with the same command to resume from the last checkpoint") from e
    except signals.Preempted as e:
      logging.warning("%s; re-run the same command to resume", e)
      print(f"{e}; re-run the same command to resume")
      return dict(preempted=True, message=str(e))


def run_locked(setup: Setup, ctx: Context) -> dict:
  """`run` inside a lock someone already holds (a teacher trained first in a subdirectory
  of a distillation run's workdir uses the run's lock, signals and mesh)."""
  wd.check_workdir(ctx.config, ctx.workdir)
  task = setup(ctx)
  wd.record_config(ctx.config, ctx.workdir)
  return _epochs(task, ctx)


def _restore(task: Task, mngr, state) -> tuple[Any, Counters]:
  _, found = checkpoint.restore_newest_good(mngr, lambda step: task.restore(mngr, step, state))
  if found is None:
    return state, task.counters()
  logging.info("resumed after epoch %d", found[1].epoch)
  return found


def default_restore(task: Task, mngr, step: int, state) -> tuple[Any, Counters]:
  """`Task.restore` of a task whose checkpoint state is the run state itself."""
  meta = checkpoint.restore_meta(mngr, step)
  return checkpoint.restore_state(mngr, state, step), task.counters.from_meta(meta)


def _epochs(task: Task, ctx: Context) -> dict:
  config = ctx.config
  mngr = checkpoint.manager(ctx.path("checkpoints"), config.keep_checkpoints)
  state, counters = _restore(task, mngr, task.init_state())
  finished = wd.finished_summary(ctx.workdir, counters.epoch + 1, task.epochs)
  if finished is not None:
    return finished
  reporter = reporting.Reporter(ctx.workdir, resume_wall_seconds=counters.wall_seconds)
  reporter.truncate_metrics(counters.epoch)
  compile_seconds = task.prepare(state)
  logging.info("%s; %d devices, %s", task.describe(), ctx.num_devices,
               xla_env.describe_dtype(config.dtype))
  for epoch in range(max(counters.epoch + 1, task.first_epoch), task.epochs):
    state, counters, metrics = task.epoch(state, counters, epoch)
    check_finite(metrics, epoch)
    last = epoch + 1 == task.epochs
    counters, grids, row = task.evaluate(state, counters, epoch, last)
    for tag, grid in grids.items():
      reporter.image(tag, grid, epoch)
    counters = counters.replace(epoch=epoch, wall_seconds=reporter.wall_seconds())
    reporter.write_metrics(dict(row, epoch=epoch, wall_seconds=counters.wall_seconds,
                                **{k: float(v) for k, v in metrics.items()}))
    if past_deadline(config.stop_at):
      ctx.preemption.request()
    save = last or ctx.preemption.requested or (epoch + 1) % config.checkpoint_every == 0
    if save and task.saves_checkpoints:
      checkpoint.save(mngr, epoch, *task.checkpoint_items(state, counters))
    if ctx.preemption.requested and not last:
      raise signals.Preempted(f"preempted after epoch {epoch}; checkpoint saved")
  summary = dict(task.summary(state, counters), mode=task.mode,
                 wall_seconds=reporter.wall_seconds(), num_devices=ctx.num_devices,
                 dtype=ctx.dtype, compile_seconds=compile_seconds)
  reporting.write_json(ctx.path("summary.json"), summary)
  reporter.close()
  mngr.close()
  return summary


def past_deadline(stop_at: float) -> bool:
  """Whether the wall-clock deadline `config.stop_at` (Unix seconds; 0: none) has passed.

  Every process of a multi-process run takes process 0's answer, so that all stop after
  the same epoch."""
  if not stop_at:
    return False
  late = time.time() >= stop_at
  if jax.process_count() > 1:
    late = bool(multihost_utils.broadcast_one_to_all(np.bool_(late)))
  return late


def check_finite(metrics: dict, epoch: int) -> None:
  """Stops the run (before any checkpoint of this epoch) on a NaN/Inf metric."""
  for name, value in metrics.items():
    if not np.all(np.isfinite(np.asarray(value))):
      raise errors.UserError(
          f"{name} became {float(np.asarray(value))} at epoch {epoch}: the run stops "
          "here and the last good checkpoint is kept. Lower the learning rates "
          "(optim.lr, synth.lr_g, kd.lr) or the loss weights, then resume.")
