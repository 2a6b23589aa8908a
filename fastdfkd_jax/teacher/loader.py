"""The one teacher loader, used by distillation and evaluation alike.

    variables, meta = loader.load(path, arch="resnet34", num_classes=10,
                                  input_shape=(32, 32, 3))

`path` is one of
  - an orbax checkpoint directory written by `train_teacher`, `distill` or
    `python -m fastdfkd_jax.import_torch` (or the workdir holding it as
    `checkpoints/`): arch, class count and input shape come from its meta;
  - a release PyTorch `.pth` / `.pt` state_dict, read without PyTorch (teacher/pth.py):
    it carries no meta, so arch, num_classes and input_shape must be given.
Every field given is checked against the checkpoint; the first that disagrees
raises `checkpoint.CheckpointError` naming the config field to change. Weights
holding NaN or Inf are refused too.
"""

import os
from typing import Sequence

import jax
import numpy as np

from fastdfkd_jax.run import checkpoint
from fastdfkd_jax.teacher import torch_import
from fastdfkd_jax import models
from fastdfkd_jax.models import util as model_util

TORCH_SUFFIXES = (".pth", ".pt")
_CONFIG_FIELD = {"arch": "teacher.arch", "num_classes": "dataset.name",
                 "input_shape": "dataset.name"}


def load(path: str, arch: str | None = None, num_classes: int | None = None,
         input_shape: Sequence[int] | None = None) -> tuple[dict, dict]:
  """Loads a trained classifier's variables for evaluation or teaching.

  Args:
    path: checkpoints dir, the workdir holding it, or a PyTorch `.pth`/`.pt`.
    arch: zoo name the caller needs (required for a `.pth`).
    num_classes: class count the caller needs (required for a `.pth`).
    input_shape: (H, W, C) the caller needs (required for a `.pth`).

  Returns:
    ({'params', 'batch_stats'} as host numpy arrays, meta dict with at least
    'arch', 'num_classes', 'input_shape').

  Raises:
    checkpoint.CheckpointError: no such path, no checkpoint in it, an unreadable
      checkpoint, or one that does not fit the given fields.
  """
  if path.endswith(TORCH_SUFFIXES):
    if arch is None or num_classes is None or input_shape is None:
      raise checkpoint.CheckpointError(
          f"{path}: a PyTorch checkpoint carries no meta; loading it needs the arch, "
          "class count and input shape (from the config's arch and dataset.name)")
    variables = torch_import.load_pth(path, arch, num_classes, tuple(input_shape))
    meta = dict(arch=arch, num_classes=num_classes, input_shape=list(input_shape),
                source=path)
    check_finite(variables, path)
    return variables, meta
  directory = resolve_dir(path)
  mngr = checkpoint.manager(directory, create=False)
  try:
    if mngr.latest_step() is None:
      raise checkpoint.CheckpointError(f"no checkpoint found in {directory}")
    expect = dict(arch=arch, num_classes=num_classes, input_shape=input_shape)
    _, (variables, meta) = checkpoint.restore_newest_good(
        mngr, lambda step: _restore_step(mngr, step, expect, directory), set_aside=False)
  finally:
    mngr.close()
  return variables, meta


def _restore_step(mngr, step: int, expect: dict, directory: str) -> tuple[dict, dict]:
  """(variables on the host, meta) of checkpoint `step`, checked against `expect`; a read
  failure propagates (the caller tries the step before), a mismatch is a UserError."""
  meta = checkpoint.restore_meta(mngr, step)
  if not _well_formed(meta):  # torn, not a mismatch: the caller tries the step before
    raise ValueError(f"a damaged meta item {ascii(meta)[:120]}")
  _check(meta, expect, directory)
  variables = _restore_variables(mngr, meta, step)
  check_finite(variables, directory)
  return variables, meta


def _well_formed(meta) -> bool:
  """Whether `meta` holds an arch name, a class count and an (H, W, C) input shape."""
  shape = meta.get("input_shape") if isinstance(meta, dict) else None
  return (isinstance(meta, dict) and isinstance(meta.get("arch"), str)
          and type(meta.get("num_classes")) is int and meta["num_classes"] > 0
          and isinstance(shape, list) and len(shape) == 3
          and all(type(d) is int and d > 0 for d in shape))


def check_finite(variables: dict, where: str) -> None:
  """Refuses weights holding NaN or Inf (a diverged run, a damaged file)."""
  bad = [jax.tree_util.keystr(path)
         for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
         if not np.all(np.isfinite(leaf))]
  if bad:
    raise checkpoint.CheckpointError(
        f"the weights in {where} hold NaN or Inf values in {len(bad)} arrays (first: "
        f"{bad[0]}); they can neither teach nor be evaluated: retrain the teacher or "
        "point teacher.checkpoint (or checkpoint) at a good one")


def resolve_dir(path: str) -> str:
  """Accepts a checkpoints dir, or a workdir that contains `checkpoints/`."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise checkpoint.CheckpointError(
        f"checkpoint path {path} does not exist; pass the `checkpoints` directory "
        "(or the workdir) of a train_teacher/distill run, or a release .pth file")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  return path


def _restore_variables(mngr, meta: dict, step: int) -> dict:
  """The `model` item on host, whatever topology saved it (8 devices -> 1, ...)."""
  module = models.get_model(meta["arch"], meta["num_classes"])
  abstract = jax.eval_shape(lambda: model_util.init_variables(
      module, jax.random.key(0), tuple(meta["input_shape"])))
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local),
                          abstract)
  return jax.tree.map(np.asarray, checkpoint.restore_model(mngr, abstract, step))


def _check(meta: dict, expect: dict, where: str) -> None:
  for field, want in expect.items():
    if want is None:
      continue
    got = meta.get(field)
    if field == "input_shape":
      got, want = list(got or []), list(want)
    if got != want:
      raise checkpoint.CheckpointError(
          f"checkpoint {where} has {field}={got!r} but the config needs {want!r}; point "
          f"teacher.checkpoint at a matching checkpoint or change the config "
          f"({_CONFIG_FIELD[field]})")
