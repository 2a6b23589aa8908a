"""Atomic, resumable checkpoints (orbax) with a uniform layout.

Every checkpoint step directory holds up to three items:
  - `meta`: JSON: arch, num_classes, input_shape, dataset, mode, epoch, ...
  - `model`: {'params', 'batch_stats'} of the model a user evaluates (the teacher
    for `train_teacher`, the student for `distill`);
  - `state`: the whole run state needed to resume exactly (optimizer states,
    generator, pool, keys, counters), absent in imported checkpoints.
Orbax writes into a temporary directory and renames it on commit, so a crash
mid-save leaves no half checkpoint behind; files torn later (a file system that
lost unflushed data, a truncated copy) are caught on resume by
`restore_newest_good`, which falls back to the newest step that reads and moves
the torn ones aside to `torn_<step>/`. A full disk during a save stops the run
with an `errors.DiskFullError`; the steps saved before stay intact.
"""

import os
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from fastdfkd_jax import errors
from fastdfkd_jax.run import reporting


class CheckpointError(errors.UserError):
  """A checkpoint that is missing, unreadable or does not fit the requested model."""


def manager(directory: str, keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=False,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, meta: dict, model: Any,
         state: Any = None) -> None:
  """Saves meta + model (+ run state) at `step`; returns when committed.

  An existing checkpoint at `step` (left by a run killed after it saved, e.g.
  the `best/` one) is replaced: a resumed run re-does that epoch bit-identically.
  """
  check_space(mngr, step, (model, state))
  if jax.process_count() == 1:
    # One host copy is what a single process writes; handed device arrays replicated over
    # several devices, orbax slices each one out with a compiled program per shape.
    model, state = jax.device_get((model, state))
  if step in mngr.all_steps():
    mngr.delete(step)
  items = dict(meta=ocp.args.JsonSave(meta), model=ocp.args.StandardSave(model))
  if state is not None:
    items["state"] = ocp.args.StandardSave(state)
  try:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  # orbax wraps OSError
    if not errors.is_disk_full(e):
      raise
    kept = [s for s in mngr.all_steps() if s != step]
    raise errors.DiskFullError(
        f"no space left on the device while saving checkpoint step {step} in "
        f"{mngr.directory}; the run stops here. Kept: "
        f"{f'step {max(kept)}' if kept else 'no earlier step'}. Free some space and "
        "re-run the same command to resume") from e


def check_space(mngr: ocp.CheckpointManager, step: int, trees: Any) -> None:
  """Refuses a save the disk cannot hold (its arrays' bytes, 25 % and 16 MiB to spare)
  before orbax writes anything: a clear `errors.DiskFullError` instead of a write that
  fails half way in orbax's threads."""
  need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(trees))
  need = int(need * 1.25) + 16 * 2**20
  free = shutil.disk_usage(mngr.directory).free
  if free < need:
    kept = mngr.all_steps()
    raise errors.DiskFullError(
        f"no space left on the device for checkpoint step {step} in {mngr.directory} "
        f"({free / 2**20:.0f} MiB free, {need / 2**20:.0f} MiB needed); the run stops "
        f"here. Kept: {f'step {max(kept)}' if kept else 'no earlier step'}. Free some "
        "space and re-run the same command to resume")


def restore_newest_good(mngr: ocp.CheckpointManager, restore: Callable[[int], Any],
                        set_aside: bool = True) -> tuple[int | None, Any]:
  """(step, restore(step)) of the newest step that restores; (None, None) if none saved.

  A step whose files do not read (truncated, emptied, half-written) is logged
  with the reason and, with `set_aside` (a run's own checkpoints, not a teacher it
  only reads), moved aside to `torn_<step>/`; the step before is tried. A
  `errors.UserError` from `restore` (a mismatch the user must fix) is raised as is;
  when every step is torn, `CheckpointError` lists them.
  """
  torn = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      result = restore(step)
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any read failure: torn files
      reason = errors.one_line(f"{type(e).__name__}: {e}")[:300]
      logging.warning("checkpoint step %d in %s does not read (%s)", step, mngr.directory,
                      reason)
      torn.append((step, reason))
      continue
    if torn and set_aside:
      _set_aside(mngr, [s for s, _ in torn])
      logging.warning("resuming from step %d, the newest checkpoint that reads; torn "
                      "steps moved aside: %s", step, ", ".join(f"torn_{s}" for s, _ in torn))
    elif torn:
      logging.warning("using step %d of %s, the newest that reads (steps %s do not)", step,
                      mngr.directory, ", ".join(str(s) for s, _ in torn))
    return step, result
  if torn:
    fix = ("move the directory away to start over, or restore it from a copy" if set_aside
           else "restore it from a copy, or point at another checkpoint")
    raise CheckpointError(f"no checkpoint in {mngr.directory} reads ("
                          + "; ".join(f"step {s}: {r[:160]}" for s, r in torn) + f"); {fix}")
  return None, None


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames torn step directories to `torn_<step>` (kept for inspection, ignored by orbax)."""
  if reporting.is_main_process():
    for step in steps:
      src = os.path.join(mngr.directory, str(step))
      dst = os.path.join(mngr.directory, f"torn_{step}")
      if os.path.exists(dst):
        dst += f"_{os.getpid()}"
      os.replace(src, dst)
  if jax.process_count() > 1:  # every process lists the steps only after the renames
    multihost_utils.sync_global_devices("fastdfkd_jax: torn checkpoints set aside")
  mngr.reload()


def restore_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict:
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_state(mngr: ocp.CheckpointManager, abstract_state: Any,
                  step: int | None = None) -> Any:
  """Restores the run state onto the shardings of `abstract_state`."""
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state


def restore_model(mngr: ocp.CheckpointManager, abstract_model: Any,
                  step: int | None = None) -> Any:
  """Restores the `model` item onto the shapes and shardings of `abstract_model`."""
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore(abstract_model))).model


def model_meta(arch: str, info, mode: str, **extra) -> dict:
  """The `meta` item of a checkpoint of `arch` on the data set `info` (a DatasetInfo)."""
  return dict(arch=arch, num_classes=info.num_classes, input_shape=list(info.image_shape),
              dataset=info.name, mode=mode, **extra)
