"""The one teacher loader (fastdfkd_jax.teacher.loader): orbax dirs, workdirs, errors.

The `.pth` route is covered with PyTorch in tests/test_import_torch.py.
"""

import os
import shutil

import pytest

from fastdfkd_jax.run import checkpoint
from fastdfkd_jax import errors
from fastdfkd_jax.teacher import loader

from conftest import TEACHER_EPOCHS


def test_checkpoint_meta(digits_teacher):
  workdir, summary = digits_teacher
  variables, meta = loader.load(workdir)
  assert meta["arch"] == "resnet8" and meta["num_classes"] == 10
  assert meta["input_shape"] == [8, 8, 1] and meta["epoch"] == TEACHER_EPOCHS - 1
  assert meta["test_accuracy"] == pytest.approx(summary["test_accuracy"])
  assert set(variables) == {"params", "batch_stats"}


def test_fields_are_checked_against_the_meta(digits_teacher):
  workdir, _ = digits_teacher
  variables, _ = loader.load(os.path.join(workdir, "checkpoints"), arch="resnet8",
                             num_classes=10, input_shape=(8, 8, 1))
  assert set(variables) == {"params", "batch_stats"}
  with pytest.raises(checkpoint.CheckpointError, match="arch='resnet8'.*teacher.arch"):
    loader.load(workdir, arch="resnet20")
  with pytest.raises(checkpoint.CheckpointError, match="input_shape.*dataset.name"):
    loader.load(workdir, input_shape=(32, 32, 3))


def test_missing_and_empty_paths_are_user_errors(tmp_path):
  with pytest.raises(errors.UserError, match="does not exist"):
    loader.load(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found"):
    loader.load(str(tmp_path / "empty"))
  with pytest.raises(checkpoint.CheckpointError, match="arch, class count"):
    loader.load(str(tmp_path / "teacher.pth"))


def test_corrupt_checkpoint_is_a_user_error(digits_teacher, tmp_path):
  workdir, _ = digits_teacher
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(workdir, "checkpoints"), copy)
  (step,) = [d for d in os.listdir(copy) if d.isdigit()]
  shutil.rmtree(copy / step / "model")
  with pytest.raises(checkpoint.CheckpointError, match="cannot restore the resnet8 weights"):
    loader.load(str(copy))
