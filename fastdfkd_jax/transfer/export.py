"""A run's synthetic pool as a reusable transfer set, with the teacher's view of it.

    python -m fastdfkd_jax.export WORKDIR OUT [--format=image_folder|npz|array_record]

Reads the pool from WORKDIR's latest checkpoint (the on-device pool of the
distillation state or the host pool, whatever topology wrote it), oldest
synthesis call first (a full ring buffer keeps the newest calls; a mode=synthesize
run keeps exactly `transfer.num_images`), labels every image with the teacher's
predicted class and confidence and the synthesis call (epoch) that made it, and
writes it in one of the layouts of `transfer.formats` into OUT. OUT/summary.json
holds the inspection: the count of teacher predictions per class and its ratio to
uniform, the mean confidence (overall and per class), and a diversity figure, the
mean pairwise Euclidean distance of the teacher's penultimate features over
`transfer.diversity_images` images, next to the same figure on the real training
set where that is available offline (digits, or `dataset.data_dir` set). A grid of
up to `transfer.grid_images` images per predicted class goes to
OUT/grids/class_<c>.png. The teacher is the run's `teacher.checkpoint` (or the
one trained into WORKDIR/teacher).
"""

import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fastdfkd_jax import data, errors, models
from fastdfkd_jax.data import augment
from fastdfkd_jax.run import checkpoint, reporting
from fastdfkd_jax.teacher import loader
from fastdfkd_jax.transfer import formats


def _restore_on_host(mngr, step: int) -> dict:
  """The checkpoint's `state` item as saved (nested dicts), every array on one device."""
  metadata = ocp.StandardCheckpointer().metadata(
      os.path.join(str(mngr.directory), str(step), "state"))
  tree = metadata.item_metadata.tree
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local),
                          tree)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state


def restore_pool(workdir: str,
                 calls_per_epoch: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
  """(images (N, H, W, C) uint8, synthesis call of each (N,), checkpoint meta) of the
  pool in WORKDIR's latest checkpoint (a memory-mapped pool: WORKDIR/pool.npy, the
  checkpoint holding its counters), oldest call first."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise checkpoint.CheckpointError(f"no checkpoint in {directory} to export")
  mngr = checkpoint.manager(directory, create=False)
  try:
    step = mngr.latest_step()
    if step is None:
      raise checkpoint.CheckpointError(f"no checkpoint in {directory} to export")
    meta = checkpoint.restore_meta(mngr, step)
    saved = _restore_on_host(mngr, step)
  finally:
    mngr.close()   # an open manager's threads outlive an error at exit
  pool = saved.get("host_pool") or saved["state"].get("pool")
  if not pool:
    raise errors.UserError(
        f"the run in {workdir} keeps no synthetic pool (kd.source is not 'synthetic', or "
        "its method trains a generator against the student without a pool)")
  images = (np.asarray(pool["images"]) if "images" in pool
            else np.load(os.path.join(workdir, "pool.npy"), mmap_mode="r"))
  slots, filled, cursor = len(images), int(pool["filled"]), int(pool["cursor"])
  order = [(cursor - filled + i) % slots for i in range(filled)]   # oldest first
  calls = (meta["epoch"] + 1) * calls_per_epoch - filled + np.arange(filled, dtype=np.int32)
  per_call = images.shape[1]
  return (images[order].reshape((-1,) + images.shape[2:]),
          np.repeat(calls, per_call).astype(np.int32), meta)


def teacher_outputs(model, variables, images: np.ndarray, info,
                    batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(penultimate features (N, D), softmax probabilities (N, classes)) of `model` in
  eval mode; the features are the input of its last Dense layer."""
  mean, std = jnp.asarray(info.mean), jnp.asarray(info.std)

  @jax.jit
  def apply(variables, x):
    captured = {}

    def grab(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
        captured["features"] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      logits = model.apply(variables, augment.normalize(augment.to_float(x), mean, std),
                           train=False)
    return captured["features"].astype(jnp.float32), jax.nn.softmax(logits)

  features, probs = [], []
  for start in range(0, len(images), batch):
    x = images[start:start + batch]
    padded = np.concatenate([x, np.zeros((batch - len(x),) + x.shape[1:], x.dtype)])
    f, p = jax.device_get(apply(variables, padded))
    features.append(f[:len(x)])
    probs.append(p[:len(x)])
  return np.concatenate(features), np.concatenate(probs)


def mean_pairwise_distance(features: np.ndarray) -> float:
  """Mean Euclidean distance over all pairs i < j of the rows of `features`."""
  f = np.asarray(features, np.float64)
  if len(f) < 2:
    return 0.0
  sq = (f * f).sum(1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
  upper = np.triu_indices(len(f), k=1)
  return float(np.sqrt(d2[upper]).mean())


def subsample(n: int, size: int, seed: int) -> np.ndarray:
  """At most `size` of the indices 0..n-1, sorted, drawn with `seed`."""
  if n <= size:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def inspect(ts: formats.TransferSet, features: np.ndarray, num_classes: int,
            real_diversity: float | None, diversity_images: int) -> dict:
  """The inspection figures of summary.json (see the module docstring)."""
  counts = np.bincount(ts.labels, minlength=num_classes)
  uniform = len(ts.labels) / num_classes
  per_class_conf = [float(ts.confidence[ts.labels == c].mean()) if counts[c] else None
                    for c in range(num_classes)]
  return dict(
      num_images=len(ts.labels), per_class_count=counts.tolist(),
      count_over_uniform=dict(min=float(counts.min() / uniform),
                              max=float(counts.max() / uniform)),
      mean_confidence=float(ts.confidence.mean()),
      per_class_mean_confidence=per_class_conf,
      diversity=dict(synthetic=mean_pairwise_distance(features), real=real_diversity,
                     images=min(diversity_images, len(ts.labels)),
                     measure="mean pairwise Euclidean distance of the teacher's "
                             "penultimate features"))


def write_grids(ts: formats.TransferSet, out: str, num_classes: int,
                per_class: int) -> None:
  """OUT/grids/class_<c>.png: up to `per_class` images the teacher puts in class c."""
  shutil.rmtree(os.path.join(out, "grids"), ignore_errors=True)
  for c in range(num_classes):
    images = ts.images[ts.labels == c][:per_class]
    if len(images):
      scale = min(4, max(1, 128 // images.shape[1]))
      reporting.save_png(os.path.join(out, "grids", f"class_{c}.png"),
                         reporting.image_grid(images, ncol=8), scale=scale)


def _real_images(config, info) -> np.ndarray | None:
  """The real training images when they can be read offline (digits, or a data_dir)."""
  if info.name != "digits" and not config.dataset.data_dir:
    return None
  try:
    images, _ = data.load_split(info.name, "train", config.dataset.data_dir,
                                config.dataset.cache_dir or None)
  except errors.UserError as e:
    logging.warning("no real-data diversity figure: %s", e)
    return None
  return images


def _teacher(config, workdir: str, info) -> tuple[Any, dict, str]:
  """(module, variables, arch) of the run's teacher."""
  path = config.teacher.checkpoint or os.path.join(workdir, "teacher")
  variables, meta = loader.load(path, arch=config.teacher.arch,
                                num_classes=info.num_classes, input_shape=info.image_shape)
  return models.get_model(meta["arch"], info.num_classes), variables, meta["arch"]


def check_out(out: str) -> None:
  """OUT must be a directory or not exist; an export already in it is replaced (logged)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.UserError(f"{out} is a file; pass a directory (new or an earlier export) "
                           "as OUT")
  try:
    fmt = formats.detect_format(out) if os.path.isdir(out) else None
  except errors.UserError:
    fmt = None
  if fmt:
    logging.warning("%s holds an earlier export (%s): it is replaced", out, fmt)


def export(workdir: str, out: str, fmt: str, config: ml_collections.ConfigDict) -> dict:
  """Writes WORKDIR's pool into OUT in the layout `fmt`, with summary.json and the
  per-class grids; returns the summary. `config`: the run's (`config.files.saved_config`)."""
  check_out(out)
  info = data.get_info(config.dataset.name)
  images, calls, meta = restore_pool(workdir, config.synth.calls_per_epoch)
  if config.mode == "synthesize":
    images, calls = images[:config.transfer.num_images], calls[:config.transfer.num_images]
  model, variables, arch = _teacher(config, workdir, info)
  features, probs = teacher_outputs(model, variables, images, info, config.eval_batch_size)
  ts = formats.TransferSet(images=images, labels=probs.argmax(1).astype(np.int32),
                                confidence=probs.max(1).astype(np.float32),
                                synthesis_call=calls)
  if reporting.is_main_process():
    formats.write(ts, out, fmt, info.num_classes)
  sample = config.transfer.diversity_images
  picked = subsample(len(images), sample, config.seed)
  real = _real_images(config, info)
  real_diversity = None
  if real is not None:
    real_features, _ = teacher_outputs(model, variables, real[subsample(len(real), sample,
                                                                        config.seed)],
                                       info, config.eval_batch_size)
    real_diversity = mean_pairwise_distance(real_features)
  summary = dict(inspect(ts, features[picked], info.num_classes, real_diversity, sample),
                 format=fmt, workdir=os.path.abspath(workdir), run_mode=config.mode,
                 method=config.method, teacher=arch, dataset=info.name,
                 checkpoint_epoch=meta["epoch"], synthesis_calls=int(len(set(calls.tolist()))))
  write_grids(ts, out, info.num_classes, config.transfer.grid_images)
  reporting.write_json(os.path.join(out, "summary.json"), summary)
  logging.info("exported %d images (%s) to %s: mean confidence %.3f, count/uniform "
               "%.2f..%.2f", len(images), fmt, out, summary["mean_confidence"],
               summary["count_over_uniform"]["min"], summary["count_over_uniform"]["max"])
  return summary
