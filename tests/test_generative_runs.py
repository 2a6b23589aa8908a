"""Generative baselines end to end: 8 forced CPU devices equal 1 device, resume after
SIGKILL gives identical metrics, and a short digits run per method ends above chance.

The device check runs tests/generative_worker.py in a subprocess (the device count is
fixed before jax is imported); the resume check runs `python -m fastdfkd_jax.main`
through tests/test_runs.py's helpers.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, load_config_file
from runlib import main as _main, rows as _rows

pytestmark = pytest.mark.slow

WORKER = os.path.join(os.path.dirname(__file__), "generative_worker.py")
TIMING = ("synth_seconds", "kd_seconds", "wall_seconds")


def test_generative_on_8_devices_equals_1_device(tmp_path):
  """Host-dispatched (CPU) and scanned (TPU/GPU) forms on 8 devices vs 1 device."""
  out = tmp_path / "eq.npz"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, WORKER, str(out)], env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  data = np.load(out)
  keys = sorted(k[3:] for k in data.files if k.startswith("d1/"))
  assert any("gen_params" in k for k in keys) and any("loss_balance" in k for k in keys)
  for k in keys:
    one, eight = data["d1/" + k], data["d8/" + k]
    assert one.shape == eight.shape, k
    if one.dtype == np.uint8:
      # Quantised images: a float32 rounding difference may flip one level.
      assert np.abs(one.astype(int) - eight.astype(int)).max() <= 1, k
    elif k.startswith(("tree[1]", "scanned/tree[1]")):
      # The student after KD steps on 8x8 images: see test_parallel.py's equivalence
      # test for why one ReLU near 0 allows a per-leaf relative error of up to ~1e-2.
      rel = np.linalg.norm(one - eight) / (np.linalg.norm(one) + 1e-12)
      assert rel < 2e-2, (k, rel)
    else:
      np.testing.assert_allclose(one, eight, rtol=2e-4, atol=2e-5, err_msg=k)


# ------------------------------------------------------------- resume
TINY = ["--config=configs/baselines_cpu.py:dfq-digits", "--config.epochs=6",
        "--config.kd.steps=4", "--config.synth.kd_steps=2", "--config.kd.cosine_epochs=6",
        "--config.batch_size=32", "--config.synth.nz=16", "--config.synth.ngf=8",
        "--config.checkpoint_every=1", "--config.sample_every=0",
        "--config.teacher.arch=resnet8", "--config.student.arch=resnet8"]


def _untimed(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(digits_teacher, tmp_path_factory):
  work = tmp_path_factory.mktemp("gen_full")
  proc = _main(work, *TINY, f"--config.teacher.checkpoint={digits_teacher[0]}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(work)


def test_sigkill_then_resume_gives_identical_metrics(digits_teacher, uninterrupted, tmp_path):
  flags = [*TINY, f"--config.teacher.checkpoint={digits_teacher[0]}"]
  proc = _main(tmp_path, *flags, wait=False)
  deadline = time.time() + 600
  while len(_rows(tmp_path)) < 3 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be interrupted"
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL and len(_rows(tmp_path)) < 6
  resumed = _main(tmp_path, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  rows = _untimed(tmp_path)
  assert [r["epoch"] for r in rows] == list(range(6))
  assert rows == _untimed(uninterrupted)
  assert all("loss_balance" in r and "kd_loss" in r for r in rows)
  full = json.load(open(os.path.join(uninterrupted, "summary.json")))
  again = json.load(open(os.path.join(tmp_path, "summary.json")))
  for key in ("student_acc", "best_student_acc", "teacher_acc", "method"):
    assert again[key] == full[key], key


# --------------------------------------------------------- end to end
# Each method on a resnet8 digits teacher (conftest.py's recipe) with 20 KD steps per epoch
# at batch 64, KD lr 0.1. Measured (teacher 95.8%): dafl 29.2%, zskt 34.4%, dfq 36.7% after
# 8 epochs; dfad 15.8% after 8 and 37.5% after 16 (its L1 KD gradient is ~1/C of a
# sample's, so it learns slower at the same lr, as in the release). Chance is 10%.
EPOCHS = dict(dafl=8, zskt=8, dfq=8, dfad=16)
E2E_MIN_ACC = 20.0


@pytest.mark.parametrize("method", sorted(EPOCHS))
def test_digits_run_ends_above_chance(method, digits_teacher, tmp_path):
  from fastdfkd_jax import modes
  c = load_config_file("baselines_cpu.py", f"{method}-digits")
  c.teacher.checkpoint, c.teacher.arch, c.student.arch = digits_teacher[0], "resnet8", "resnet8"
  c.epochs = c.kd.cosine_epochs = c.eval_every = c.sample_every = EPOCHS[method]
  c.checkpoint_every, c.log_every = c.epochs, 1000
  c.kd.steps, c.batch_size, c.kd.lr = 20, 64, 0.1
  c.synth.nz, c.synth.ngf = (64 if method == "dafl" else 32), 16
  summary = modes.run(c, str(tmp_path))
  assert summary["method"] == method and summary["synth_seconds"] > 0
  assert summary["student_acc"] >= E2E_MIN_ACC, summary
  assert _rows(tmp_path)[-1]["step"] == c.epochs * c.kd.steps
  assert (tmp_path / "samples" / "epoch_0000.png").exists()
  assert os.listdir(tmp_path / "checkpoints" / "best")
