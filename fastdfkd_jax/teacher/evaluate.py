"""Test accuracy of a classifier, data-parallel over the mesh (mode=evaluate)."""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import data, models, parallel, reporting
from fastdfkd_jax.data import augment
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.teacher import loader

AXIS = parallel.AXIS


def make_eval_step(model, info: data.DatasetInfo, mesh):
  """jitted (variables, images u8 (B,..), labels (B,), mask (B,)) -> correct count."""
  mean, std = jnp.asarray(info.mean), jnp.asarray(info.std)

  def step(variables, images, labels, mask):
    x = augment.normalize(augment.to_float(images), mean, std)
    logits = model.apply(variables, x, train=False)
    return jax.lax.psum(jnp.sum((logits.argmax(-1) == labels) * mask), AXIS)

  sharded = parallel.shard(step, mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                           out_specs=P())
  return jax.jit(sharded)


def evaluate(eval_step, variables, images: np.ndarray, labels: np.ndarray,
             batch_size: int, mesh) -> float:
  """Top-1 accuracy (%) over the whole split; the last batch is padded and masked."""
  n = len(images)
  batch_size = -(-batch_size // parallel.num_shards(mesh)) * parallel.num_shards(mesh)
  correct = 0  # summed on device: one host transfer per evaluation, not per batch
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    mask = np.ones(len(x), np.float32)
    pad = batch_size - len(x)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros((pad,), y.dtype)])
      mask = np.concatenate([mask, np.zeros((pad,), np.float32)])
    correct = correct + eval_step(variables, *parallel.put_batch((x, y, mask), mesh))
  return 100.0 * float(correct) / n


def run_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """mode=evaluate: test accuracy of `config.checkpoint` on the dataset's test split.

  An orbax checkpoint gives its own arch; a `.pth` is read as `config.model`.
  """
  mesh = parallel.make_mesh()
  info = data.get_info(config.dataset.name)
  is_torch = config.checkpoint.endswith(loader.TORCH_SUFFIXES)
  variables, meta = loader.load(config.checkpoint, arch=config.model if is_torch else None,
                                num_classes=info.num_classes, input_shape=info.image_shape)
  ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                                   config.dataset.cache_dir or None)
  t0 = time.time()
  module = models.get_model(meta["arch"], meta["num_classes"],
                            dtype=model_util.activation_dtype(config.dtype), axis_name=AXIS)
  acc = evaluate(make_eval_step(module, info, mesh), parallel.put_replicated(variables, mesh),
                 ds.test_images, ds.test_labels, config.eval_batch_size, mesh)
  summary = dict(mode="evaluate", arch=meta["arch"], dataset=info.name, test_accuracy=acc,
                 checkpoint=config.checkpoint, wall_seconds=time.time() - t0,
                 num_devices=parallel.num_shards(mesh))
  reporting.Reporter(workdir).write_metrics(dict(epoch=0, step=0, test_accuracy=acc,
                                                 wall_seconds=time.time() - t0))
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  logging.info("evaluate %s: test accuracy %.2f%%", meta["arch"], acc)
  return summary
