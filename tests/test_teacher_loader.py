"""The one teacher loader (fastdfkd_jax.teacher.loader): orbax dirs, workdirs, `.pth`, errors.

The unit tests load a resnet8 digits checkpoint imported from a NumPy-made `.pth`
(`torch_import.import_to_checkpoint`: no training, no torch); the meta a train_teacher run
writes is checked on the session's trained teacher.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from fastdfkd_jax import errors
from fastdfkd_jax.run import checkpoint
from fastdfkd_jax.teacher import loader, torch_import

from conftest import TEACHER_EPOCHS, imported_resnet8

DIGITS = (8, 8, 1)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(workdir of a resnet8 digits checkpoint imported from a .pth, the .pth, its variables)."""
  workdir, source, sd = imported_resnet8(tmp_path_factory.mktemp("imported"))
  return workdir, source, torch_import.convert_state_dict(sd, "resnet8", 10, DIGITS)


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.integration
def test_checkpoint_meta(digits_teacher):
  workdir, summary = digits_teacher
  variables, meta = loader.load(workdir)
  assert meta["arch"] == "resnet8" and meta["num_classes"] == 10
  assert meta["input_shape"] == [8, 8, 1] and meta["epoch"] == TEACHER_EPOCHS - 1
  assert meta["test_accuracy"] == pytest.approx(summary["test_accuracy"])
  assert set(variables) == {"params", "batch_stats"}


def test_workdir_and_checkpoints_dir_load_the_saved_variables(imported):
  workdir, source, want = imported
  variables, meta = loader.load(workdir)
  _assert_same(variables, want)
  assert meta["arch"] == "resnet8" and meta["num_classes"] == 10
  assert meta["input_shape"] == [8, 8, 1] and meta["dataset"] == "digits"
  assert meta["mode"] == "import" and meta["source"] == source
  variables, _ = loader.load(os.path.join(workdir, "checkpoints"), arch="resnet8",
                             num_classes=10, input_shape=DIGITS)
  _assert_same(variables, want)


def test_fields_are_checked_against_the_meta(imported):
  workdir = imported[0]
  with pytest.raises(checkpoint.CheckpointError, match="arch='resnet8'.*teacher.arch"):
    loader.load(workdir, arch="resnet20")
  with pytest.raises(checkpoint.CheckpointError, match="num_classes=10.*dataset.name"):
    loader.load(workdir, num_classes=100)
  with pytest.raises(checkpoint.CheckpointError, match="input_shape.*dataset.name"):
    loader.load(workdir, input_shape=(32, 32, 3))


def test_a_pth_loads_as_the_fields_say(imported, tmp_path):
  _, source, want = imported
  variables, meta = loader.load(source, arch="resnet8", num_classes=10, input_shape=DIGITS)
  _assert_same(variables, want)
  assert meta == dict(arch="resnet8", num_classes=10, input_shape=list(DIGITS), source=source)
  pt = str(tmp_path / "teacher.pt")  # the other suffix
  shutil.copy(source, pt)
  _assert_same(loader.load(pt, arch="resnet8", num_classes=10, input_shape=DIGITS)[0], want)


def test_missing_and_empty_paths_are_user_errors(tmp_path):
  with pytest.raises(errors.UserError, match="does not exist"):
    loader.load(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found"):
    loader.load(str(tmp_path / "empty"))
  with pytest.raises(checkpoint.CheckpointError, match="arch, class count"):
    loader.load(str(tmp_path / "teacher.pth"))
  with pytest.raises(errors.UserError, match="no PyTorch checkpoint at"):
    loader.load(str(tmp_path / "teacher.pth"), arch="resnet8", num_classes=10,
                input_shape=DIGITS)


def test_corrupt_checkpoint_is_a_user_error(imported, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(imported[0], "checkpoints"), copy)
  (step,) = [d for d in os.listdir(copy) if d.isdigit()]
  shutil.rmtree(copy / step / "model")
  with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint in .* reads .step "
                     f"{step}: .*restore it from a copy, or point at another checkpoint"):
    loader.load(str(copy))


@pytest.mark.parametrize("how", ["truncated", "emptied"])
def test_a_torn_newest_teacher_step_falls_back_to_the_one_before(imported, tmp_path, how,
                                                                 caplog):
  """A teacher whose newest step's arrays are damaged loads from the step before (the
  run's own checkpoints do the same); the teacher's files are left where they are."""
  variables, meta = loader.load(imported[0])
  newer = jax.tree.map(lambda x: x + 1, variables)
  mngr = checkpoint.manager(str(tmp_path / "t" / "checkpoints"))
  checkpoint.save(mngr, 3, meta, variables)
  checkpoint.save(mngr, 7, meta, newer)
  mngr.close()
  _assert_same(loader.load(str(tmp_path / "t"))[0], newer)
  arrays = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "t" / "checkpoints" / "7")
            for f in fs if os.path.basename(d) == "d"]
  assert arrays
  for path in arrays:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2 if how == "truncated" else 0)
  caplog.set_level("WARNING")
  _assert_same(loader.load(str(tmp_path / "t"))[0], variables)
  assert "using step 3" in caplog.text and "steps 7 do not" in caplog.text
  assert sorted(os.listdir(tmp_path / "t" / "checkpoints")) == ["3", "7"]
