"""Supervised teacher training (mode=train_teacher), data-parallel over the mesh.

One jitted `train_chunk` runs S SGD steps as a `lax.scan` over S pre-stacked
batches. The loop structure is chosen by `loops.use_scan`: on TPU/GPU S is a
whole epoch (one dispatch per epoch); on CPU S = 1 and the host drives the
steps (XLA:CPU conv gradients inside loops are ~50x slower).

Device-count invariant: the augmentation randomness is drawn for the global
batch (each device applies its stripe) and BatchNorm's batch statistics are
all-reduced over the mesh, so N devices train the teacher of 1 device up to
float32 reduction order.

With config.task='segmentation' a step crops (to the data set's `image_shape`) and
flips each image and its label map alike (`segmentation.augment_stripe`) and
minimises the pixel-wise cross-entropy over the labelled pixels (255 ignored);
the test score is the mIoU, and the summary adds pixel accuracy and per-class IoU.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import checkpoint, data, loops, losses, models, optim, parallel, reporting
from fastdfkd_jax import runs, xla_env
from fastdfkd_jax.data import augment, segmentation
from fastdfkd_jax.models import precise_bn, util as model_util
from fastdfkd_jax.teacher import evaluate as evaluate_lib
from fastdfkd_jax.train_state import TrainState

AXIS = parallel.AXIS


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer labels, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def task_objective(info: data.DatasetInfo, task: str):
  """(augment(key, images u8, labels) -> (x, labels), objective(logits, labels) ->
  (loss, accuracy)) of a training step, per device inside `shard_map`: the
  classification crop/flip and cross-entropy, or for task='segmentation' the
  synchronised crop/flip and the pixel-wise cross-entropy and pixel accuracy."""
  mean, std = jnp.asarray(info.mean), jnp.asarray(info.std)
  if task == "segmentation":
    def augment_seg(key, images, labels):
      return segmentation.augment_stripe(key, augment.to_float(images), labels,
                                         info.image_shape[:2], info.mean, info.std, AXIS)
    return augment_seg, lambda logits, labels: losses.pixel_cross_entropy(logits, labels,
                                                                          AXIS)

  def augment_cls(key, images, labels):
    return augment.augment_stripe(key, augment.to_float(images), mean, std,
                                  info.crop_padding, AXIS), labels

  def objective(logits, labels):
    return (jax.lax.pmean(cross_entropy(logits, labels), AXIS),
            jax.lax.pmean(jnp.mean(logits.argmax(-1) == labels), AXIS))
  return augment_cls, objective


def make_train_chunk(model, tx: optax.GradientTransformation,
                     info: data.DatasetInfo, mesh, unroll: bool,
                     task: str = "classification"):
  """jitted (state, images (S,B,H,W,C) u8, labels (S,B) or (S,B,H,W), key) ->
  (state, metrics).

  Batches are sharded over the data axis (axis 1); metrics are per-step means.
  `model` must have been built with `axis_name=AXIS` (BN over the global batch).
  """
  augment_fn, objective = task_objective(info, task)

  def one_step(state: TrainState, batch):
    images, labels, key = batch
    x, labels = augment_fn(key, images, labels)

    def loss_fn(params):
      logits, new_vars = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"])
      loss, acc = objective(logits, labels)
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


def init_state(config: ml_collections.ConfigDict, info: data.DatasetInfo,
               tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  """A fresh (host) state of `config.model` on `info`'s images."""
  variables = model_util.init_variables(models.get_model(config.model, info.num_classes),
                                        key, info.image_shape)
  return TrainState.create(variables, tx)


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
  parallel.local_batch_size(config.batch_size, mesh)
  steps_per_epoch = len(ds.train_images) // config.batch_size
  tx = optim.teacher_optimizer(config.optim, steps_per_epoch, config.epochs)
  root = jax.random.key(config.seed)
  state = parallel.put_replicated(
      init_state(config, info, tx, jax.random.fold_in(root, 0)), mesh)

  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  _, restored = checkpoint.restore_newest_good(
      mngr, lambda step: (checkpoint.restore_meta(mngr, step),
                          checkpoint.restore_state(mngr, state, step)))
  meta, state = restored or (dict(epoch=-1), state)
  start_epoch, wall_seconds = meta["epoch"] + 1, meta.get("wall_seconds", 0.0)
  finished = runs.finished_summary(workdir, start_epoch, config.epochs)
  if finished is not None:
    return finished
  reporter = reporting.Reporter(workdir, resume_wall_seconds=wall_seconds)
  reporter.truncate_metrics(start_epoch - 1)
  if start_epoch:
    logging.info("resumed from epoch %d", start_epoch)
  model = models.get_model(config.model, info.num_classes,
                           dtype=model_util.activation_dtype(config.dtype), axis_name=AXIS)
  scan = loops.use_scan(config)
  train_chunk = make_train_chunk(model, tx, info, mesh, unroll=not scan, task=config.task)
  eval_step = evaluate_lib.make_eval_step(model, info, mesh, config.task)
  logging.info("train_teacher %s on %s: %d epochs x %d steps, batch %d, %d devices, %s, %s",
               config.model, info.name, config.epochs, steps_per_epoch, config.batch_size,
               parallel.num_shards(mesh), loops.describe(config),
               xla_env.describe_dtype(config.dtype))
  test_acc, scores = None, {}
  rate = reporting.RateLogger(steps_per_epoch * config.epochs, config.log_every,
                              config.batch_size, "teacher")
  for epoch in range(start_epoch, config.epochs):
    t0 = time.time()
    state, metrics = _train_epoch(config, train_chunk, state, ds, root, epoch,
                                  steps_per_epoch if scan else 1, rate, mesh)
    epoch_seconds = time.time() - t0
    last = epoch + 1 == config.epochs
    if last and config.precise_bn:
      state = _precise_bn(config, model, state, ds, mesh)
    if last or (epoch + 1) % config.eval_every == 0:
      total = evaluate_lib.accumulate(eval_step, state.variables, ds.test_images,
                                      ds.test_labels, config.eval_batch_size, mesh)
      test_acc = evaluate_lib.headline(total, len(ds.test_images))
      scores = evaluate_lib.summary_scores(total)
    reporter.write_metrics(dict(
        epoch=epoch, step=int(state.step), wall_seconds=reporter.wall_seconds(),
        epoch_seconds=epoch_seconds, test_accuracy=test_acc,
        train_loss=float(metrics["loss"]), train_accuracy=100 * float(metrics["train_acc"]),
        images_per_second=steps_per_epoch * config.batch_size / epoch_seconds))
    logging.info("teacher epoch %d: loss %.4f test acc %s (%.1f s)", epoch,
                 metrics["loss"], test_acc, epoch_seconds)
    if last or preemption.requested or (epoch + 1) % config.checkpoint_every == 0:
      checkpoint.save(mngr, epoch, checkpoint.model_meta(
          config.model, info, "train_teacher", epoch=epoch, test_accuracy=test_acc,
          wall_seconds=reporter.wall_seconds()), state.variables, state)
    if preemption.requested and not last:
      raise runs.Preempted(f"preempted after epoch {epoch}; checkpoint saved")

  summary = dict(mode="train_teacher", arch=config.model, dataset=info.name,
                 test_accuracy=test_acc, wall_seconds=reporter.wall_seconds(),
                 num_devices=parallel.num_shards(mesh), epochs=config.epochs,
                 dtype=xla_env.resolve_dtype(config.dtype),
                 checkpoint=os.path.join(os.path.abspath(workdir), "checkpoints"),
                 **scores)
  reporting.write_json(os.path.join(workdir, "summary.json"), summary)
  reporter.close()
  return summary


def _train_epoch(config, train_chunk, state: TrainState, ds, root, epoch: int,
                 chunk_steps: int, rate: reporting.RateLogger, mesh):
  """One epoch of shuffled batches in chunks of `chunk_steps`; (state, host metrics)."""
  steps_per_epoch = len(ds.train_images) // config.batch_size
  rng = np.random.default_rng([config.seed, epoch])
  perm = rng.permutation(len(ds.train_images))[:steps_per_epoch * config.batch_size]
  perm = perm.reshape(-1, chunk_steps, config.batch_size)
  for c, idx in enumerate(perm):
    images, labels = parallel.put_batch((ds.train_images[idx], ds.train_labels[idx]),
                                        mesh, axis=1)
    key = jax.random.fold_in(root, epoch * steps_per_epoch + c + 1)
    state, metrics = train_chunk(state, images, labels, key)
    done = (c + 1) * chunk_steps
    rate.maybe_log(epoch * steps_per_epoch + done, epoch,
                   metrics if done % config.log_every == 0 else None)
  metrics = jax.device_get(metrics)
  runs.check_finite(metrics, epoch)
  return state, metrics


def _precise_bn(config, model, state: TrainState, ds, mesh) -> TrainState:
  """`state` with its BN statistics recomputed over the un-augmented training split."""
  step = precise_bn.make_moments_step(model, ds.info.mean, ds.info.std, mesh)
  variables = precise_bn.recompute(step, state.variables, ds.train_images,
                                   config.batch_size, mesh)
  logging.info("precise BN: running statistics recomputed over %d training images",
               len(ds.train_images) // config.batch_size * config.batch_size)
  return state.replace(batch_stats=variables["batch_stats"])
