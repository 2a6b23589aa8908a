"""Atomic, resumable checkpoints (orbax) with a uniform layout.

Every checkpoint step directory holds up to three items:
  - `meta`: JSON: arch, num_classes, input_shape, dataset, mode, epoch, ...
  - `model`: {'params', 'batch_stats'} of the model a user evaluates (the teacher
    for `train_teacher`, the student for `distill`);
  - `state`: the whole run state needed to resume exactly (optimizer states,
    generator, pool, keys, counters), absent in imported checkpoints.
Orbax writes into a temporary directory and renames it on commit, so a crash
mid-save never leaves a half checkpoint behind.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from fastdfkd_jax import errors


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
  if step in mngr.all_steps():
    mngr.delete(step)
  items = dict(meta=ocp.args.JsonSave(meta), model=ocp.args.StandardSave(model))
  if state is not None:
    items["state"] = ocp.args.StandardSave(state)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)
  mngr.wait_until_finished()


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
