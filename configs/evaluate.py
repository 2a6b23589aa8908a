"""Evaluate a checkpoint on the test split: `configs/evaluate.py:<dataset>`.

  python -m fastdfkd_jax.main --workdir=runs/eval --config=configs/evaluate.py:cifar10 \
      --config.checkpoint=runs/teacher_cifar10/checkpoints \
      --config.dataset.data_dir=../shared/data/cifar10_jpeg.tar.gz

Seconds on a CPU. The architecture and class count come from the checkpoint. A
segmentation set (shapes_seg, nyuv2) sets config.task=segmentation: its summary gives
mIoU (as test_accuracy, %), pixel accuracy and per-class IoU.
"""

from fastdfkd_jax.config import schema
from fastdfkd_jax import data


def get_config(arg: str = "digits"):
  c = schema.base_config()
  c.mode = "evaluate"
  c.dataset.name = arg
  c.task = data.get_info(arg).task
  return c
