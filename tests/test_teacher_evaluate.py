"""mode=evaluate (modes/evaluate.py, evaluation.metrics) of the digits session teacher: from its
workdir, its checkpoints dir and as a release `.pth` (written without torch)."""

import json
import math
import os

import jax
import numpy as np
import pytest

from fastdfkd_jax import modes
from fastdfkd_jax.teacher import loader, pth, torch_import

from conftest import load_config_file, rows

pytestmark = pytest.mark.integration


def to_torch(variables, arch: str, num_classes: int, input_shape) -> dict[str, np.ndarray]:
  """The release state_dict whose conversion gives `variables`: `convert_state_dict`
  inverted through a state_dict that holds each element's index."""
  layout = torch_import.torch_layout(arch, num_classes, input_shape)
  sizes = [math.prod(shape) for shape in layout.values()]
  assert sum(sizes) < 2 ** 24  # indices exact in float32
  flat_index = np.split(np.arange(sum(sizes), dtype=np.float32), np.cumsum(sizes)[:-1])
  index = {k: i.reshape(shape) for (k, shape), i in zip(layout.items(), flat_index)}
  where = torch_import.convert_state_dict(index, arch, num_classes, input_shape)
  flat = np.full(sum(sizes), np.nan, np.float32)
  for w, v in zip(jax.tree.leaves(where), jax.tree.leaves(variables)):
    flat[w.astype(np.int64)] = v
  assert not np.isnan(flat).any()
  return {k: flat[i.astype(np.int64)].reshape(i.shape) for k, i in index.items()}


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
  (row,) = rows(str(tmp_path))
  assert set(row) >= {"epoch", "step", "wall_seconds", "test_accuracy"}
  assert row["test_accuracy"] == pytest.approx(teacher_summary["test_accuracy"])


def test_evaluate_also_accepts_the_checkpoints_dir(digits_teacher, tmp_path):
  teacher_dir, teacher_summary = digits_teacher
  c = load_config_file("evaluate.py", "digits")
  c.checkpoint = os.path.join(teacher_dir, "checkpoints")
  c.eval_batch_size = 100   # 360 test images: a padded, masked last batch
  summary = modes.run(c, str(tmp_path))
  assert summary["test_accuracy"] == pytest.approx(teacher_summary["test_accuracy"], abs=1e-9)


def test_evaluate_a_pth_teacher(digits_teacher, tmp_path):
  """The teacher's weights in the release layout, as a `.pth` read as config.model: the same
  accuracy."""
  teacher_dir, teacher_summary = digits_teacher
  variables, _ = loader.load(teacher_dir)
  sd = to_torch(variables, "resnet8", 10, (8, 8, 1))
  jax.tree.map(np.testing.assert_array_equal,
               torch_import.convert_state_dict(sd, "resnet8", 10, (8, 8, 1)), variables)
  path = str(tmp_path / "teacher.pth")
  pth.write(path, sd)
  c = load_config_file("evaluate.py", "digits")
  c.checkpoint, c.model = path, "resnet8"
  summary = modes.run(c, str(tmp_path / "run"))
  assert summary["checkpoint"] == path and summary["arch"] == "resnet8"
  assert summary["test_accuracy"] == pytest.approx(teacher_summary["test_accuracy"], abs=1e-9)
