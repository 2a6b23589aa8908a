"""Evaluation (fastdfkd_jax.evaluation.metrics, mode=evaluate) of the digits session teacher."""

import json
import os

import pytest

from fastdfkd_jax import modes

from conftest import load_config_file


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_evaluate_reproduces_accuracy(digits_teacher, tmp_path):
  teacher_dir, teacher_summary = digits_teacher
  c = load_config_file("evaluate.py", "digits")
  c.checkpoint = teacher_dir
  summary = modes.run(c, str(tmp_path))
  assert summary["test_accuracy"] == pytest.approx(teacher_summary["test_accuracy"], abs=1e-9)
  assert summary["arch"] == "resnet8" and summary["mode"] == "evaluate"
  with open(tmp_path / "summary.json") as f:
    on_disk = json.load(f)
  for key in ("mode", "arch", "dataset", "test_accuracy", "checkpoint", "wall_seconds",
              "num_devices"):
    assert key in on_disk, key
  rows = read_rows(str(tmp_path))
  assert len(rows) == 1
  assert set(rows[0]) >= {"epoch", "step", "wall_seconds", "test_accuracy"}
  assert rows[0]["test_accuracy"] == pytest.approx(teacher_summary["test_accuracy"])


def test_evaluate_also_accepts_the_checkpoints_dir(digits_teacher, tmp_path):
  teacher_dir, teacher_summary = digits_teacher
  c = load_config_file("evaluate.py", "digits")
  c.checkpoint = os.path.join(teacher_dir, "checkpoints")
  c.eval_batch_size = 100   # 360 test images: a padded, masked last batch
  summary = modes.run(c, str(tmp_path))
  assert summary["test_accuracy"] == pytest.approx(teacher_summary["test_accuracy"], abs=1e-9)
