"""Supervised training of a classifier or segmenter (the teacher), data-parallel over the mesh.

The jitted steps and one epoch of them; `modes.train_teacher` plugs them into the run
skeleton.

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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import data, models
from fastdfkd_jax.data import augment, segmentation
from fastdfkd_jax.models import precise_bn, util as model_util
from fastdfkd_jax.run import loops, parallel, reporting
from fastdfkd_jax.training import objectives
from fastdfkd_jax.training.train_state import TrainState

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
    return augment_seg, lambda logits, labels: objectives.pixel_cross_entropy(logits, labels,
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
  model = models.get_model(config.model, info.num_classes)
  return model_util.run_init(lambda k: TrainState.create(
      model_util.init_variables(model, k, info.image_shape), tx), key)   # one program


def train_epoch(config, train_chunk, state: TrainState, ds, root, epoch: int,
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
  return state, jax.device_get(metrics)


def recompute_bn(config, model, state: TrainState, ds, mesh) -> TrainState:
  """`state` with its BN statistics recomputed over the un-augmented training split."""
  step = precise_bn.make_moments_step(model, ds.info.mean, ds.info.std, mesh)
  variables = precise_bn.recompute(step, state.variables, ds.train_images,
                                   config.batch_size, mesh)
  logging.info("precise BN: running statistics recomputed over %d training images",
               len(ds.train_images) // config.batch_size * config.batch_size)
  return state.replace(batch_stats=variables["batch_stats"])
