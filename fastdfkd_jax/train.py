"""Supervised teacher training and evaluation, data-parallel over the mesh.

One jitted `train_chunk` runs S SGD steps as a `lax.scan` over S pre-stacked
batches. The loop structure is chosen by `loops.use_scan`: on TPU/GPU S is a
whole epoch (one dispatch per epoch); on CPU S = 1 and the host drives the
steps (XLA:CPU conv gradients inside loops are ~50x slower).
"""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import checkpoint, data, loops, models, parallel
from fastdfkd_jax.data import augment
from fastdfkd_jax import reporting, runs
from fastdfkd_jax.models import util as model_util

AXIS = parallel.AXIS


@struct.dataclass
class TrainState:
  """Supervised training state (replicated)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array


def activation_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def sgd(lr_schedule, momentum: float, weight_decay: float) -> optax.GradientTransformation:
  """PyTorch SGD: weight decay added to the gradient before momentum."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr_schedule, momentum=momentum))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def make_train_chunk(model, tx, info: data.DatasetInfo, mesh, unroll: bool):
  """jitted (state, images (S,B,H,W,C) u8, labels (S,B), key) -> (state, metrics).

  Batches are sharded over the data axis (axis 1); metrics are per-step means.
  """
  mean, std = jnp.asarray(info.mean), jnp.asarray(info.std)

  def one_step(state, batch):
    images, labels, key = batch
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    x = augment.augment(key, augment.to_float(images), mean, std, info.crop_padding)

    def loss_fn(params):
      logits, new_vars = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"])
      loss = jax.lax.pmean(cross_entropy(logits, labels), AXIS)
      acc = jax.lax.pmean(jnp.mean(logits.argmax(-1) == labels), AXIS)
      return loss, (new_vars["batch_stats"], acc)

    (loss, (batch_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state,
                          step=state.step + 1)
    return state, dict(loss=loss, train_acc=acc)

  def chunk(state, images, labels, key):
    keys = jax.random.split(key, images.shape[0])
    state, metrics = loops.scan(one_step, state, (images, labels, keys), unroll)
    return state, jax.tree.map(jnp.mean, metrics)

  sharded = parallel.shard(chunk, mesh, in_specs=(P(), P(None, AXIS), P(None, AXIS), P()),
                           out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


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


def model_meta(arch: str, info: data.DatasetInfo, mode: str, **extra) -> dict:
  return dict(arch=arch, num_classes=info.num_classes, input_shape=list(info.image_shape),
              dataset=info.name, mode=mode, **extra)


def train_teacher(config: ml_collections.ConfigDict, workdir: str,
                  preemption: runs.Preemption | None = None) -> dict:
  """mode=train_teacher: supervised training of `config.model`; returns the summary.

  Writes checkpoints (meta + model + resumable state) into workdir/checkpoints,
  metrics.jsonl per epoch and summary.json at the end.
  """
  preemption = preemption or runs.Preemption()
  mesh = parallel.make_mesh()
  ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                         config.dataset.cache_dir or None)
  info = ds.info
  model = models.get_model(config.model, info.num_classes, dtype=activation_dtype(config),
                           axis_name=AXIS)
  batch = config.batch_size
  parallel.local_batch_size(batch, mesh)
  steps_per_epoch = len(ds.train_images) // batch
  total_steps = steps_per_epoch * config.epochs
  warmup = config.optim.warmup_epochs * steps_per_epoch
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.optim.lr, max(warmup, 1), max(total_steps, warmup + 1)) if warmup else \
      optax.cosine_decay_schedule(config.optim.lr, total_steps)
  tx = sgd(schedule, config.optim.momentum, config.optim.weight_decay)

  root = jax.random.key(config.seed)
  variables = model_util.init_variables(models.get_model(config.model, info.num_classes),
                                        jax.random.fold_in(root, 0), info.image_shape)
  state = TrainState(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                     opt_state=tx.init(variables["params"]), step=jnp.int32(0))
  state = parallel.put_replicated(state, mesh)

  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  start_epoch, wall_seconds = _resume_point(mngr)
  finished = runs.finished_summary(workdir, start_epoch, config.epochs)
  if finished is not None:
    return finished
  reporter = reporting.Reporter(workdir, resume_wall_seconds=wall_seconds)
  reporter.truncate_metrics(start_epoch - 1)
  if start_epoch:
    state = checkpoint.restore_state(mngr, state)
    logging.info("resumed from epoch %d", start_epoch)

  scan = loops.use_scan(config)
  chunk_steps = steps_per_epoch if scan else 1
  train_chunk = make_train_chunk(model, tx, info, mesh, unroll=not scan)
  eval_step = make_eval_step(model, info, mesh)
  logging.info("train_teacher %s on %s: %d epochs x %d steps, batch %d, %d devices, %s",
               config.model, info.name, config.epochs, steps_per_epoch, batch,
               parallel.num_shards(mesh), loops.describe(config))
  test_acc = None
  rate = reporting.RateLogger(total_steps, config.log_every, batch, "teacher")
  for epoch in range(start_epoch, config.epochs):
    rng = np.random.default_rng([config.seed, epoch])
    perm = rng.permutation(len(ds.train_images))[:steps_per_epoch * batch]
    perm = perm.reshape(-1, chunk_steps, batch)
    t0 = time.time()
    for c, idx in enumerate(perm):
      images, labels = parallel.put_batch((ds.train_images[idx], ds.train_labels[idx]),
                                          mesh, axis=1)
      key = jax.random.fold_in(root, epoch * steps_per_epoch + c + 1)
      state, metrics = train_chunk(state, images, labels, key)
      rate.maybe_log(epoch * steps_per_epoch + (c + 1) * chunk_steps, epoch,
                     metrics if (c + 1) * chunk_steps % config.log_every == 0 else None)
    metrics = jax.device_get(metrics)
    runs.check_finite(metrics, epoch)
    epoch_seconds = time.time() - t0
    variables = dict(params=state.params, batch_stats=state.batch_stats)
    last = epoch + 1 == config.epochs
    if last or (epoch + 1) % config.eval_every == 0:
      test_acc = evaluate(eval_step, variables, ds.test_images, ds.test_labels,
                          config.eval_batch_size, mesh)
    reporter.write_metrics(dict(
        epoch=epoch, step=int(state.step), wall_seconds=reporter.wall_seconds(),
        epoch_seconds=epoch_seconds, test_accuracy=test_acc,
        train_loss=float(metrics["loss"]), train_accuracy=100 * float(metrics["train_acc"]),
        images_per_second=steps_per_epoch * batch / epoch_seconds))
    logging.info("teacher epoch %d: loss %.4f test acc %s (%.1f s)", epoch,
                 metrics["loss"], test_acc, epoch_seconds)
    if last or preemption.requested or (epoch + 1) % config.checkpoint_every == 0:
      checkpoint.save(mngr, epoch, model_meta(
          config.model, info, "train_teacher", epoch=epoch, test_accuracy=test_acc,
          wall_seconds=reporter.wall_seconds()), variables, state)
    if preemption.requested and not last:
      raise runs.Preempted(f"preempted after epoch {epoch}; checkpoint saved")

  summary = dict(mode="train_teacher", arch=config.model, dataset=info.name,
                 test_accuracy=test_acc, wall_seconds=reporter.wall_seconds(),
                 num_devices=parallel.num_shards(mesh), epochs=config.epochs,
                 checkpoint=os.path.join(os.path.abspath(workdir), "checkpoints"))
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  reporter.close()
  return summary


def _resume_point(mngr) -> tuple[int, float]:
  """(first epoch to run, wall seconds so far) from the latest checkpoint in `mngr`."""
  if mngr.latest_step() is None:
    return 0, 0.0
  meta = checkpoint.restore_meta(mngr)
  return meta["epoch"] + 1, meta.get("wall_seconds", 0.0)


def run_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """mode=evaluate: test accuracy of `config.checkpoint` on the dataset's test split."""
  mesh = parallel.make_mesh()
  info = data.get_info(config.dataset.name)
  module, variables, meta = checkpoint.load_model(
      config.checkpoint, dict(num_classes=info.num_classes,
                              input_shape=list(info.image_shape),
                              arch=None if not config.checkpoint.endswith(".pth")
                              else config.model))
  ds = data.load_dataset(config.dataset.name, config.dataset.data_dir,
                         config.dataset.cache_dir or None)
  t0 = time.time()
  module = models.get_model(meta["arch"], meta["num_classes"],
                            dtype=activation_dtype(config), axis_name=AXIS)
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
