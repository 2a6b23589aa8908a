"""Test scores, data-parallel over the mesh.

A classifier is scored by top-1 accuracy; a segmentation model by its confusion
matrix over the labelled test pixels, from which come the headline mIoU (%) and
`summary_scores`' pixel accuracy and per-class IoU. `evaluate` returns the
headline number of either (the run loop logs and keeps the best of it).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import data
from fastdfkd_jax.data import augment, segmentation
from fastdfkd_jax.run import parallel

AXIS = parallel.AXIS


def make_eval_step(model, info: data.DatasetInfo, mesh, task: str = "classification"):
  """jitted (variables, images u8 (B,..), labels, mask (B,)) -> correct count (labels
  (B,)), or for task='segmentation' the int32 (K, K) confusion matrix (labels
  (B, H, W); masked images count as unlabelled)."""
  mean, std = jnp.asarray(info.mean), jnp.asarray(info.std)

  def step(variables, images, labels, mask):
    x = augment.normalize(augment.to_float(images), mean, std)
    logits = model.apply(variables, x, train=False)
    if task == "segmentation":
      labels = jnp.where(mask[:, None, None] > 0, labels, segmentation.IGNORE_INDEX)
      cm = segmentation.confusion_matrix(labels, logits.argmax(-1), info.num_classes)
      return jax.lax.psum(cm, AXIS)
    return jax.lax.psum(jnp.sum((logits.argmax(-1) == labels) * mask), AXIS)

  sharded = parallel.shard(step, mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                           out_specs=P())
  return jax.jit(sharded)


def evaluate(eval_step, variables, images: np.ndarray, labels: np.ndarray,
             batch_size: int, mesh) -> float:
  """Top-1 accuracy (%), or mIoU (%) for a segmentation step, over the whole split."""
  return headline(accumulate(eval_step, variables, images, labels, batch_size, mesh),
                  len(images))


def headline(total: np.ndarray, n: int) -> float:
  """The headline score (%) of `accumulate`'s total over n images: accuracy or mIoU."""
  if np.ndim(total) == 2:
    return 100.0 * segmentation.scores(total)["miou"]
  return 100.0 * float(total) / n


def summary_scores(total: np.ndarray) -> dict:
  """A segmentation total's pixel accuracy, mIoU and per-class IoU (None where a class
  never occurs) for a summary; {} for a classifier's."""
  if np.ndim(total) != 2:
    return {}
  s = segmentation.scores(total)
  return dict(miou=s["miou"], pixel_acc=s["pixel_acc"],
              per_class_iou=[None if np.isnan(v) else float(v) for v in s["iou"]])


def accumulate(eval_step, variables, images: np.ndarray, labels: np.ndarray,
               batch_size: int, mesh) -> np.ndarray:
  """The eval step's output summed over the split (the last batch padded and masked)."""
  n = len(images)
  batch_size = -(-batch_size // parallel.num_shards(mesh)) * parallel.num_shards(mesh)
  total = 0  # summed on device: one host transfer per evaluation, not per batch
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    mask = np.ones(len(x), np.float32)
    pad = batch_size - len(x)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
      mask = np.concatenate([mask, np.zeros((pad,), np.float32)])
    total = total + eval_step(variables, *parallel.put_batch((x, y, mask), mesh))
  return np.asarray(total)
