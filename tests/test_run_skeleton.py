"""The run skeleton (run/skeleton.py) with a fake mode: epochs, checkpoints, resume, faults.

The fake `Task` keeps a small pytree and a counter and computes each epoch from the
epoch number alone, so an interrupted run that resumes must end exactly like an
uninterrupted one. Every fault of docs/RELIABILITY.md that the skeleton owns is
provoked here in process: a crash mid-run, a preemption signal, a NaN metric, torn
checkpoint files, a full disk while checkpointing or writing metrics, a changed
config, a second writer, a setup that fails. Nothing is compiled, so the file runs in
seconds; the modes' own runs are in test_modes.py.
"""

import dataclasses
import errno
import json
import os
import time

import jax
import ml_collections
import numpy as np
import pytest

from conftest import rows
from fastdfkd_jax import errors
from fastdfkd_jax.run import checkpoint, skeleton, workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Counters(skeleton.Counters):
  total: float = 0.0


class Crash(Exception):
  """Stands for a process killed mid-epoch: nothing after it runs."""


class FakeTask:
  """A mode whose epoch e adds e + 1 to every leaf; metrics from the state alone."""
  mode = "fake"
  counters = Counters
  saves_checkpoints = True
  first_epoch = 0

  def __init__(self, ctx, epochs=5, crash_at=None, preempt_at=None, nan_at=None):
    self.ctx, self.epochs = ctx, epochs
    self.crash_at, self.preempt_at, self.nan_at = crash_at, preempt_at, nan_at
    self.ran = []

  def init_state(self):
    return {"w": np.zeros((3, 2), np.float32), "b": np.arange(4, dtype=np.int32)}

  def restore(self, mngr, step, state):
    return skeleton.default_restore(self, mngr, step, state)

  def prepare(self, state):
    return 0.5

  def describe(self):
    return "fake run"

  def epoch(self, state, counters, epoch):
    if epoch == self.crash_at:
      raise Crash(epoch)
    self.ran.append(epoch)
    state = jax.tree.map(lambda x: np.asarray(x) + (epoch + 1), state)
    if epoch == self.preempt_at:
      self.ctx.preemption.request()
    loss = float("nan") if epoch == self.nan_at else float(state["w"].sum()) / 100
    return state, counters.replace(total=counters.total + loss), {"loss": loss}

  def evaluate(self, state, counters, epoch, last):
    return counters, {}, {"score": float(state["b"].sum()), "step": epoch}

  def checkpoint_items(self, state, counters):
    return dict(counters.to_meta(), mode=self.mode), state, state

  def summary(self, state, counters):
    return {"total": counters.total, "w": float(state["w"].sum())}


def config(**changes):
  c = ml_collections.ConfigDict(dict(
      seed=0, dtype="float32", checkpoint_every=1, keep_checkpoints=2,
      allow_config_change=False, lr=0.1, stop_at=0.0))
  c.update(changes)
  return c


def run_fake(workdir, c=None, **task_kw):
  """skeleton.run of a FakeTask; returns (summary, task)."""
  made = []

  def setup(ctx):
    made.append(FakeTask(ctx, **task_kw))
    return made[0]

  summary = skeleton.run(setup, c or config(), str(workdir), mesh=None)
  return summary, made[0]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  """An uninterrupted fake run of 5 epochs: (workdir, summary)."""
  work = tmp_path_factory.mktemp("full")
  summary, task = run_fake(work)
  assert task.ran == [0, 1, 2, 3, 4]
  return work, summary


def test_a_run_writes_its_rows_checkpoints_and_summary(full):
  work, summary = full
  assert [r["epoch"] for r in rows(work)] == [0, 1, 2, 3, 4]
  assert [r["score"] for r in rows(work)] == [4 * (e + 1) * (e + 2) / 2 + 6 for e in range(5)]
  assert summary["w"] == 6 * 15 and summary["mode"] == "fake"
  assert summary["num_devices"] == jax.device_count() and summary["dtype"] == "float32"
  assert summary["compile_seconds"] == 0.5 and summary["wall_seconds"] > 0
  assert json.load(open(os.path.join(work, "config.json")))["lr"] == 0.1
  steps = sorted(int(d) for d in os.listdir(os.path.join(work, "checkpoints")) if d.isdigit())
  assert steps == [3, 4]    # keep_checkpoints=2


def test_a_finished_run_is_a_no_op(full):
  work, summary = full
  again, task = run_fake(work)
  assert task.ran == [] and again == json.load(open(os.path.join(work, "summary.json")))


@pytest.mark.parametrize("crash_at", [1, 3])
def test_a_crash_resumes_from_the_last_checkpoint_exactly(full, tmp_path, crash_at):
  with pytest.raises(Crash):
    run_fake(tmp_path, crash_at=crash_at)
  assert len(rows(tmp_path)) == crash_at
  summary, task = run_fake(tmp_path)
  assert task.ran == list(range(crash_at, 5))
  assert rows(tmp_path) == [dict(r, wall_seconds=rows(tmp_path)[i]["wall_seconds"])
                            for i, r in enumerate(rows(full[0]))]
  assert summary["total"] == pytest.approx(full[1]["total"], rel=1e-12)   # counters continue


def test_rows_after_the_restored_checkpoint_and_a_torn_row_are_dropped(full, tmp_path):
  with pytest.raises(Crash):
    run_fake(tmp_path, c=config(checkpoint_every=2), crash_at=3)
  with open(os.path.join(tmp_path, "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 3, "sco')   # a row torn by a kill
  run_fake(tmp_path, c=config(checkpoint_every=2))
  assert [r["epoch"] for r in rows(tmp_path)] == [0, 1, 2, 3, 4]


def test_preemption_checkpoints_the_epoch_and_returns(full, tmp_path):
  summary, task = run_fake(tmp_path, c=config(checkpoint_every=100), preempt_at=1)
  assert summary["preempted"] and task.ran == [0, 1]
  assert checkpoint.manager(os.path.join(tmp_path, "checkpoints")).all_steps() == [1]
  resumed, task = run_fake(tmp_path, c=config(checkpoint_every=100))
  assert task.ran == [2, 3, 4] and resumed["w"] == full[1]["w"]


def test_a_passed_deadline_checkpoints_the_epoch_and_the_run_resumes(full, tmp_path):
  far = time.time() + 3600
  summary, task = run_fake(tmp_path, c=config(checkpoint_every=100, stop_at=far), epochs=2)
  assert "preempted" not in summary and task.ran == [0, 1]
  work = tmp_path / "late"
  summary, task = run_fake(work, c=config(checkpoint_every=100, stop_at=time.time() - 1))
  assert summary["preempted"] and task.ran == [0]
  assert checkpoint.manager(os.path.join(work, "checkpoints")).all_steps() == [0]
  resumed, task = run_fake(work, c=config(checkpoint_every=100))   # another stop_at: allowed
  assert task.ran == [1, 2, 3, 4] and resumed["w"] == full[1]["w"]


def test_a_nan_metric_stops_before_its_checkpoint(tmp_path):
  with pytest.raises(errors.UserError, match="loss became nan at epoch 2"):
    run_fake(tmp_path, nan_at=2)
  assert max(checkpoint.manager(os.path.join(tmp_path, "checkpoints")).all_steps()) == 1


@pytest.mark.parametrize("how", ["truncated", "emptied", "half-written"])
def test_a_torn_newest_checkpoint_falls_back_and_ends_identical(full, tmp_path, how):
  with pytest.raises(Crash):
    run_fake(tmp_path, crash_at=3)
  newest = os.path.join(tmp_path, "checkpoints", "2")
  victims = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(newest, "state"))
             for f in fs if os.path.basename(d) == "d" or f == "manifest.ocdbt"]
  assert len(victims) >= 3 and all(os.path.getsize(p) > 0 for p in victims)
  for p in victims:
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
      if how == "truncated":
        f.truncate(size // 2)
      elif how == "emptied":
        f.truncate(0)
      else:
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2 + 7))
  summary, task = run_fake(tmp_path)
  assert task.ran == [2, 3, 4]     # resumed from step 1
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", "torn_2"))
  assert summary["w"] == full[1]["w"]
  assert [r["score"] for r in rows(tmp_path)] == [r["score"] for r in rows(full[0])]


def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_keeps_the_previous_step(full, tmp_path, monkeypatch):
  real_save = checkpoint.save

  def half_written(mngr, step):
    """The file system fills up during the save: a half-written orbax temporary
    directory, then ENOSPC."""
    def save(*args, **kwargs):
      tmp = os.path.join(mngr.directory, f"{step}.orbax-checkpoint-tmp-1234", "state")
      os.makedirs(tmp, exist_ok=True)
      with open(os.path.join(tmp, "partial"), "wb") as f:
        f.write(b"\0" * 4096)
      _enospc()
    return save

  def save(mngr, step, *args):
    if step == 2:
      with monkeypatch.context() as m:
        m.setattr(mngr, "save", half_written(mngr, step))
        return real_save(mngr, step, *args)
    return real_save(mngr, step, *args)

  monkeypatch.setattr(checkpoint, "save", save)
  with pytest.raises(errors.DiskFullError, match="step 2.*Kept: step 1"):
    run_fake(tmp_path)
  monkeypatch.undo()
  summary, task = run_fake(tmp_path)
  assert task.ran == [2, 3, 4] and summary["w"] == full[1]["w"]
  assert not [d for d in os.listdir(tmp_path / "checkpoints") if "tmp" in d]


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_orbax_writes(full, tmp_path,
                                                                         monkeypatch):
  import collections
  import shutil
  real = shutil.disk_usage
  usage = collections.namedtuple("usage", "total used free")

  def disk_usage(path):
    if "checkpoints" in str(path) and len(rows(tmp_path)) >= 3:
      return usage(2**30, 2**30 - 2**20, 2**20)     # 1 MiB left from epoch 2 on
    return real(path)

  monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
  with pytest.raises(errors.DiskFullError, match=r"step 2 .*1 MiB free.*Kept: step 1"):
    run_fake(tmp_path)
  assert checkpoint.manager(os.path.join(tmp_path, "checkpoints")).all_steps() == [0, 1]
  monkeypatch.undo()
  summary, task = run_fake(tmp_path)
  assert task.ran == [2, 3, 4] and summary["w"] == full[1]["w"]


def test_a_full_disk_while_writing_metrics_resumes_identical(full, tmp_path, monkeypatch):
  from fastdfkd_jax.run import reporting
  real = reporting.Reporter.write_metrics

  def write(self, row):
    if row["epoch"] == 3:
      with reporting.disk_full_stops("metrics.jsonl"):
        _enospc()
    return real(self, row)

  monkeypatch.setattr(reporting.Reporter, "write_metrics", write)
  with pytest.raises(errors.DiskFullError, match="metrics.jsonl"):
    run_fake(tmp_path)
  monkeypatch.undo()
  run_fake(tmp_path)
  assert [r["score"] for r in rows(tmp_path)] == [r["score"] for r in rows(full[0])]


def test_a_changed_config_is_refused_unless_allowed(full, tmp_path):
  import shutil
  work = tmp_path / "w"
  shutil.copytree(full[0], work)
  os.remove(work / "summary.json")
  with pytest.raises(workdir_lib.ConfigMismatchError, match=r"lr: 0\.1 -> 0\.3"):
    run_fake(work, c=config(lr=0.3))
  run_fake(work, c=config(lr=0.3, allow_config_change=True))
  assert json.load(open(work / "config.json"))["lr"] == 0.3


def test_a_run_whose_setup_fails_binds_nothing(tmp_path):
  def failing(ctx):
    raise errors.UserError("no such data")

  with pytest.raises(errors.UserError, match="no such data"):
    skeleton.run(failing, config(lr=0.5), str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")
  run_fake(tmp_path, c=config(lr=0.3))   # the corrected command is not refused


def test_a_second_writer_is_refused_and_a_dead_holder_taken_over(tmp_path, caplog):
  import socket
  with workdir_lib.WorkdirLock(str(tmp_path)):
    with pytest.raises(errors.UserError, match=f"in use by another run .pid {os.getpid()} "
                       f"on host {socket.gethostname()}"):
      run_fake(tmp_path)
  assert not os.path.exists(tmp_path / "config.json")   # the refused run wrote nothing
  with open(tmp_path / ".lock", "w") as f:
    f.write("pid 999999 on host gone\n")   # a killed holder's file, its flock released
  run_fake(tmp_path)
  assert "taking over the lock" in caplog.text and open(tmp_path / ".lock").read() == ""


def test_an_unwritable_or_full_workdir_fails_before_setup(tmp_path, monkeypatch):
  target = tmp_path / "file"
  target.write_text("")
  with pytest.raises(errors.UserError, match="not writable"):
    workdir_lib.check_workdir(config(), str(target / "sub"))
  monkeypatch.setattr(workdir_lib, "MIN_FREE_BYTES", 2**62)
  with pytest.raises(errors.UserError, match="MiB free"):
    workdir_lib.check_workdir(config(), str(tmp_path))


def test_config_diff_lists_changed_fields():
  diff = workdir_lib.config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
  assert diff == ["b.c: 2 -> 3", "d: '<absent>' -> 4"]


def test_counters_round_trip_through_meta():
  c = Counters(epoch=3, wall_seconds=1.5, total=2.25)
  assert Counters.from_meta(dict(c.to_meta(), other=1)) == c
  assert c.replace(total=1.0).total == 1.0 and c.total == 2.25   # a new one, c unchanged


@pytest.mark.parametrize("value", ["0", "-5", "ten", "1.5", ""])
def test_a_bad_heartbeat_setting_is_one_line(value):
  """FASTDFKD_HEARTBEAT_SECONDS (how long a multi-process run waits for a process that is
  gone; tests/test_e2e.py uses 10) takes whole seconds >= 1; 100, jax's, by default."""
  from fastdfkd_jax.run import parallel
  assert parallel._heartbeat_seconds({}) == 100
  assert parallel._heartbeat_seconds({"FASTDFKD_HEARTBEAT_SECONDS": "30"}) == 30
  with pytest.raises(errors.UserError, match="FASTDFKD_HEARTBEAT_SECONDS"):
    parallel._heartbeat_seconds({"FASTDFKD_HEARTBEAT_SECONDS": value})
