"""mode=synthesize (fastdfkd_jax.modes.synthesize): a set of exactly num_images from the
teacher alone, its inspection, and resume after a crash with the same images."""

import json
import os

import numpy as np
import pytest

from fastdfkd_jax.config import checks as config_checks, schema
from fastdfkd_jax import errors
from fastdfkd_jax.modes import synthesize
from fastdfkd_jax.transfer import formats
from fastdfkd_jax.distill import steps
from conftest import rows as _rows, run
from fastdfkd_jax.distill import epochs

# 200 images in calls of 64: 4 calls, the last one cut to 8 images.
NUM_IMAGES, BATCH = 200, 64


def tiny_config(teacher_dir):
  c = schema.default_config()
  c.mode = "synthesize"
  c.teacher.arch, c.student.arch = "resnet8", "resnet8"
  c.teacher.checkpoint, c.teacher.train_if_missing = teacher_dir, False
  c.batch_size, c.k, c.synth.nz, c.synth.ngf = BATCH, 2, 16, 8
  c.transfer.num_images, c.transfer.format = NUM_IMAGES, "image_folder"
  c.transfer.diversity_images, c.checkpoint_every = 100, 2
  return c


def test_num_calls_and_validation():
  c = tiny_config("")
  assert synthesize.num_calls(c) == 4
  c.transfer.num_images = 0
  with pytest.raises(errors.UserError, match="transfer.num_images"):
    config_checks.validate(c)


@pytest.fixture(scope="module")
def synth_run(digits_teacher, tmp_path_factory):
  config = tiny_config(digits_teacher[0])
  workdir = str(tmp_path_factory.mktemp("synthesize"))
  with pytest.MonkeyPatch.context() as mp:
    def no_kd(*args, **kwargs):
      raise AssertionError("mode=synthesize must not train a student")
    mp.setattr(steps.Distiller, "jit_kd_steps", no_kd)
    mp.setattr(steps.Distiller, "jit_kd_batch", no_kd)
    summary = run(config, workdir)
  return config, workdir, summary


@pytest.mark.integration
def test_synthesize_writes_num_images_with_their_calls(synth_run):
  config, workdir, summary = synth_run
  ts = formats.load(os.path.join(workdir, synthesize.TRANSFER_DIR))
  assert formats.detect_format(os.path.join(workdir, "transfer_set")) == "image_folder"
  assert ts.images.shape == (NUM_IMAGES, 8, 8, 1) and summary["num_images"] == NUM_IMAGES
  np.testing.assert_array_equal(ts.synthesis_call, np.arange(NUM_IMAGES) // BATCH)
  assert summary["mode"] == "synthesize" and summary["synthesis_calls"] == 4
  rows = _rows(workdir)
  assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
  assert [r["images"] for r in rows] == [64, 128, 192, 256]
  # Adversarial term off in every call.
  assert all(r["synth_seconds"] > 0 and "loss_adv" in r for r in rows)


@pytest.mark.integration
def test_synthesize_histogram_is_the_teachers(synth_run):
  """The per-class histogram of summary.json counts the teacher's predictions."""
  _, workdir, summary = synth_run
  ts = formats.load(os.path.join(workdir, synthesize.TRANSFER_DIR))
  counts = np.bincount(ts.labels, minlength=10)
  assert summary["per_class_count"] == counts.tolist()
  assert sum(summary["per_class_count"]) == NUM_IMAGES
  assert summary["count_over_uniform"]["max"] == counts.max() / (NUM_IMAGES / 10)
  assert 0.1 <= summary["mean_confidence"] <= 1.0
  with open(os.path.join(workdir, "transfer_set", "summary.json")) as f:
    assert json.load(f)["per_class_count"] == counts.tolist()


@pytest.mark.integration
def test_rerun_of_a_finished_synthesis_is_a_no_op(synth_run):
  config, workdir, summary = synth_run
  assert run(config, workdir) == json.load(open(os.path.join(workdir, "summary.json")))


@pytest.mark.integration
def test_a_crash_then_resume_writes_the_same_set(synth_run, tmp_path, monkeypatch):
  """Killed after its third call (as by SIGKILL: nothing of the process survives), the
  same command resumes from the last checkpoint and writes the same set bit for bit."""
  config, full, _ = synth_run
  real = epochs.synthesize
  calls = []

  def synthesize(*args, **kwargs):
    calls.append(1)
    if len(calls) == 4:
      raise RuntimeError("killed")
    return real(*args, **kwargs)

  with monkeypatch.context() as m:
    m.setattr(epochs, "synthesize", synthesize)
    with pytest.raises(RuntimeError, match="killed"):
      run(config, tmp_path)
  assert len(_rows(tmp_path)) == 3 and not os.path.exists(tmp_path / "summary.json")
  run(config, tmp_path)
  a, b = (formats.load(os.path.join(w, "transfer_set")) for w in (full, tmp_path))
  assert len(a.images) == NUM_IMAGES and a.images.tobytes() == b.images.tobytes()
  np.testing.assert_array_equal(a.labels, b.labels)
  keep = ("epoch", "images", "loss", "loss_bn", "loss_oh")
  assert [{k: r[k] for k in keep} for r in _rows(tmp_path)] == \
      [{k: r[k] for k in keep} for r in _rows(full)]


def test_synthesize_keeps_the_synthetic_source():
  c = tiny_config("")
  c.kd.source = "real"
  with pytest.raises(errors.UserError, match="mode=synthesize"):
    config_checks.validate(c)
