"""Nothing lost: resume after SIGKILL/SIGTERM, config-change refusal, clear failures.

Runs `python -m fastdfkd_jax.main` in subprocesses on a tiny digits setting.
"""

import json
import os
import signal
import time

import pytest

from fastdfkd_jax.run import workdir as workdir_lib

from runlib import main as _main, rows as _rows

TINY = ["--config.epochs=6", "--config.warmup=1", "--config.kd.steps=4",
        "--config.batch_size=32", "--config.k=2", "--config.synth.nz=16",
        "--config.synth.ngf=8", "--config.checkpoint_every=1", "--config.sample_every=0",
        "--config.teacher.arch=resnet8", "--config.student.arch=resnet8"]


def _accuracies(workdir):
  return [(r["epoch"], r["student_acc"], r.get("best_loss"), r.get("kd_loss"))
          for r in _rows(workdir)]


@pytest.fixture(scope="module")
def teacher(cli_teacher):
  """The CLI-trained resnet8 digits teacher (conftest.py), shared with test_reliability."""
  return cli_teacher


@pytest.fixture(scope="module")
def uninterrupted(teacher, tmp_path_factory):
  work = tmp_path_factory.mktemp("full")
  proc = _main(work, f"--config.teacher.checkpoint={teacher}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(work)


def _interrupt(teacher, work, sig, after_rows, *flags):
  proc = _main(work, f"--config.teacher.checkpoint={teacher}", *TINY, *flags, wait=False)
  deadline = time.time() + 600
  while len(_rows(work)) < after_rows and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be interrupted"
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


@pytest.mark.slow  # end to end: digits runs of `main` in subprocesses
def test_sigkill_then_resume_gives_identical_metrics(teacher, uninterrupted, tmp_path):
  code, _, _ = _interrupt(teacher, tmp_path, signal.SIGKILL, after_rows=3)
  assert code == -signal.SIGKILL
  assert len(_rows(tmp_path)) < 6
  proc = _main(tmp_path, f"--config.teacher.checkpoint={teacher}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _accuracies(tmp_path) == _accuracies(uninterrupted)
  full = json.load(open(os.path.join(uninterrupted, "summary.json")))
  resumed = json.load(open(os.path.join(tmp_path, "summary.json")))
  for key in ("student_acc", "best_student_acc", "teacher_acc"):
    assert resumed[key] == full[key], key


# CMI keeps a memory bank, an MLP head and its Adam state across calls: all of it must
# come back from the checkpoint for the losses after the resume to repeat.
CMI = ["--config.method=cmi", "--config.cmi.bank_size=96", "--config.cmi.n_neg=48",
       "--config.cmi.head_dim=16", "--config.synth.lr_g=1e-3", "--config.synth.bn=1",
       "--config.synth.oh=1", "--config.synth.adv=0.5"]


@pytest.mark.slow  # end to end: digits runs of `main` in subprocesses
def test_cmi_sigkill_then_resume_gives_identical_metrics(teacher, tmp_path):
  full = tmp_path / "full"
  proc = _main(full, f"--config.teacher.checkpoint={teacher}", *TINY, *CMI)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _rows(full)
  assert all(r["loss_cr"] > 0 for r in rows) and len(rows) == 6
  work = tmp_path / "cut"
  code, _, _ = _interrupt(teacher, work, signal.SIGKILL, 3, *CMI)
  assert code == -signal.SIGKILL and len(_rows(work)) < 6
  proc = _main(work, f"--config.teacher.checkpoint={teacher}", *TINY, *CMI)
  assert proc.returncode == 0, proc.stderr[-3000:]
  keys = ("epoch", "student_acc", "best_loss", "loss_cr", "loss_bn", "kd_loss")
  assert [[r.get(k) for k in keys] for r in _rows(work)] == [
      [r.get(k) for k in keys] for r in rows]
  summary = json.load(open(os.path.join(work, "summary.json")))
  assert (summary["method"], summary["synth_images"]) == ("cmi", 6 * 32)


@pytest.mark.slow  # end to end: a digits run of `main` in a subprocess
def test_deepinversion_runs_end_to_end(teacher, tmp_path):
  proc = _main(tmp_path, f"--config.teacher.checkpoint={teacher}", *TINY,
               "--config.method=deepinversion", "--config.synth.lr_g=0.1",
               "--config.deepinversion.tv=1e-4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(os.path.join(tmp_path, "summary.json")))
  assert summary["method"] == "deepinversion" and 0.0 <= summary["student_acc"] <= 100.0
  assert summary["kd_images"] == 5 * 4 * 32
  rows = _rows(tmp_path)
  assert len(rows) == 6 and all(r["loss_adv"] <= 0 and r["loss_tv"] > 0 for r in rows[1:])


@pytest.mark.slow  # end to end: digits runs of `main` in subprocesses
def test_sigterm_checkpoints_exits_zero_and_resumes(teacher, uninterrupted, tmp_path):
  code, out, err = _interrupt(teacher, tmp_path, signal.SIGTERM, after_rows=2)
  assert code == 0, err[-3000:]
  assert "preempted" in out
  done = len(_rows(tmp_path))
  steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert max(steps) >= done - 1  # a checkpoint at or after the last completed epoch
  proc = _main(tmp_path, f"--config.teacher.checkpoint={teacher}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _accuracies(tmp_path) == _accuracies(uninterrupted)


@pytest.mark.slow  # end to end: digits runs of `main` in subprocesses
def test_changed_config_is_refused_unless_allowed(teacher, uninterrupted, tmp_path):
  import shutil
  work = tmp_path / "w"
  shutil.copytree(uninterrupted, work)
  proc = _main(work, f"--config.teacher.checkpoint={teacher}", *TINY, "--config.kd.lr=0.3")
  assert proc.returncode == 2
  assert "kd.lr: 0.1 -> 0.3" in proc.stderr or "kd.lr" in proc.stderr
  assert "allow_config_change" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _main(work, f"--config.teacher.checkpoint={teacher}", *TINY, "--config.kd.lr=0.3",
               "--config.allow_config_change=True")
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("flag, message", [
    ("--config.method=fastest", "fast_meta"),
    ("--config.student.arch=resnet9", "resnet8"),
    ("--config.dataset.name=cifar11", "cifar10"),
])
def test_unknown_names_list_valid_ones(tmp_path, flag, message):
  proc = _main(tmp_path, flag)
  assert proc.returncode == 2
  assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # end to end: digits runs of `main` in subprocesses
def test_teacher_architecture_mismatch_names_field(teacher, tmp_path):
  proc = _main(tmp_path, f"--config.teacher.checkpoint={teacher}", *TINY,
               "--config.teacher.arch=resnet20")
  assert proc.returncode == 2
  assert "arch='resnet8'" in proc.stderr and "resnet20" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_data_dir_names_path_and_layout(tmp_path):
  proc = _main(tmp_path, "--config=configs/teacher.py:mnist",
               f"--config.dataset.data_dir={tmp_path}/nowhere")
  assert proc.returncode == 2
  assert "nowhere" in proc.stderr and "train-images-idx3-ubyte" in proc.stderr


def test_unwritable_workdir_fails_before_training(tmp_path):
  if os.geteuid() == 0:
    target = "/proc/fastdfkd_cannot_write_here"
  else:
    os.chmod(tmp_path, 0o500)
    target = str(tmp_path / "sub")
  proc = _main(target, "--config.epochs=2", "--config.warmup=1")
  assert proc.returncode == 2
  assert "not writable" in proc.stderr


@pytest.mark.slow  # end to end: digits runs of `main` in subprocesses
def test_nan_loss_stops_with_epoch_and_term(teacher, tmp_path):
  proc = _main(tmp_path, f"--config.teacher.checkpoint={teacher}", *TINY,
               "--config.synth.lr_g=1e30", "--config.synth.lr_z=1e30",
               "--config.kd.lr=1e30")
  assert proc.returncode == 2
  assert "at epoch" in proc.stderr and "became" in proc.stderr


def test_config_diff_lists_changed_fields():
  diff = workdir_lib.config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
  assert diff == ["b.c: 2 -> 3", "d: '<absent>' -> 4"]
