"""checkpoint.restore_newest_good: torn steps are skipped, named and moved aside."""

import os

import numpy as np
import pytest

from fastdfkd_jax.run import checkpoint
from fastdfkd_jax import errors


def _manager(tmp_path, steps=(1, 2, 3)):
  mngr = checkpoint.manager(str(tmp_path / "ckpt"), keep=5)
  for step in steps:
    checkpoint.save(mngr, step, dict(epoch=step), dict(w=np.full(4, step, np.float32)),
                    dict(count=np.array(step, np.int32)))
  return mngr


def _restore(mngr):
  return lambda step: (checkpoint.restore_meta(mngr, step),
                       checkpoint.restore_state(mngr, dict(count=np.array(0, np.int32)), step))


def test_no_checkpoint_gives_none(tmp_path):
  mngr = checkpoint.manager(str(tmp_path / "ckpt"))
  assert checkpoint.restore_newest_good(mngr, _restore(mngr)) == (None, None)


def test_the_newest_step_that_reads_is_restored_and_torn_ones_moved_aside(tmp_path, caplog):
  mngr = _manager(tmp_path)
  (tmp_path / "ckpt" / "3" / "meta" / "metadata").write_text("{")
  caplog.set_level("WARNING")
  step, (meta, state) = checkpoint.restore_newest_good(mngr, _restore(mngr))
  assert step == 2 and meta["epoch"] == 2 and int(state["count"]) == 2
  assert "checkpoint step 3" in caplog.text and "JSONDecodeError" in caplog.text
  assert "resuming from step 2" in caplog.text
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2", "torn_3"]
  assert mngr.latest_step() == 2


def test_all_steps_torn_is_a_user_error_listing_each(tmp_path):
  mngr = _manager(tmp_path, steps=(1, 2))
  for step in (1, 2):
    (tmp_path / "ckpt" / str(step) / "meta" / "metadata").write_text("")
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in .* reads") as e:
    checkpoint.restore_newest_good(mngr, _restore(mngr))
  assert "step 2:" in str(e.value) and "step 1:" in str(e.value)


def test_a_user_error_of_the_restore_is_not_taken_for_a_torn_file(tmp_path):
  mngr = _manager(tmp_path)

  def mismatch(step):
    raise errors.UserError(f"step {step} does not fit this config")

  with pytest.raises(errors.UserError, match="step 3 does not fit"):
    checkpoint.restore_newest_good(mngr, mismatch)
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2", "3"]


def test_a_full_disk_during_a_save_is_a_user_error_naming_the_kept_step(tmp_path, monkeypatch):
  import errno
  mngr = _manager(tmp_path, steps=(1,))

  def no_space(*args, **kwargs):
    raise ValueError("tensorstore write failed") from OSError(errno.ENOSPC, "No space")

  monkeypatch.setattr(mngr, "save", no_space)
  with pytest.raises(errors.DiskFullError, match="Kept: step 1"):
    checkpoint.save(mngr, 2, dict(epoch=2), dict(w=np.zeros(4, np.float32)))
