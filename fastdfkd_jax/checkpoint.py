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
import numpy as np
import orbax.checkpoint as ocp

from fastdfkd_jax import models
from fastdfkd_jax.models import util as model_util


class CheckpointError(ValueError):
  """A checkpoint that is missing or does not fit the requested model."""


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


def resolve_dir(path: str) -> str:
  """Accepts a checkpoints dir, or a workdir that contains `checkpoints/`."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointError(
        f"checkpoint path {path} does not exist; pass the `checkpoints` directory "
        "(or the workdir) of a train_teacher/distill run, or a release .pth file")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  return path


def load_model(path: str, expect: dict | None = None, dtype=None):
  """Loads (model, variables, meta) from a checkpoint for evaluation/teaching.

  Args:
    path: checkpoints dir, workdir, or a PyTorch `.pth` (release key layout).
    expect: optional {'arch', 'num_classes', 'input_shape'} the caller needs;
      the first disagreeing field raises CheckpointError.
    dtype: activation dtype for the returned module.

  Returns:
    (flax module, {'params', 'batch_stats'} on host, meta dict).
  """
  if path.endswith((".pth", ".pt")):
    from fastdfkd_jax import import_torch  # optional torch dependency
    if not expect:
      raise CheckpointError("a .pth teacher needs the config's arch and class count")
    variables = import_torch.load_pth(path, expect["arch"], expect["num_classes"],
                                      tuple(expect["input_shape"]))
    meta = dict(arch=expect["arch"], num_classes=expect["num_classes"],
                input_shape=list(expect["input_shape"]), source=path)
  else:
    directory = resolve_dir(path)
    mngr = manager(directory, create=False)
    if mngr.latest_step() is None:
      raise CheckpointError(f"no checkpoint found in {directory}")
    meta = restore_meta(mngr)
    _check(meta, expect, directory)
    module = models.get_model(meta["arch"], meta["num_classes"])
    abstract = jax.eval_shape(lambda: model_util.init_variables(
        module, jax.random.key(0), tuple(meta["input_shape"])))
    # Restore onto one local device whatever topology saved it (8 devices -> 1, ...).
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local),
                            abstract)
    variables = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        model=ocp.args.StandardRestore(abstract))).model
    variables = jax.tree.map(np.asarray, variables)
  kwargs = {} if dtype is None else dict(dtype=dtype)
  return models.get_model(meta["arch"], meta["num_classes"], **kwargs), variables, meta


def _check(meta: dict, expect: dict | None, where: str) -> None:
  for field in ("arch", "num_classes", "input_shape"):
    if expect and expect.get(field) is not None:
      got, want = meta.get(field), expect[field]
      if field == "input_shape":
        got, want = list(got or []), list(want)
      if got != want:
        raise CheckpointError(
            f"checkpoint {where} has {field}={got!r} but the config needs "
            f"{want!r}; point teacher.checkpoint at a matching checkpoint or change "
            f"the config ({'teacher.arch' if field == 'arch' else 'dataset.name'})")
