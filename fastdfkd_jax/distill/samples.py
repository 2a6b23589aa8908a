"""The sample grids of a distillation run: `samples/epoch_NNNN.png` (and, through the run
skeleton, a TensorBoard image).

A grid shows the newest synthesis batch (the pool's newest slot, or a generator
method's latest batch), 8 images a row. In a segmentation run (config.task) every
row of images is followed by a row of the teacher's predicted label maps of them,
coloured with the release's palette (`segmentation.colorize`): what the teacher
segments in the synthetic images.
"""

import jax
import numpy as np

from fastdfkd_jax.data import augment, segmentation
from fastdfkd_jax.run import parallel, reporting

GRID_IMAGES = 64
GRID_COLUMNS = 8


def latest_images(task, state) -> np.ndarray:
  """The newest synthesis batch on the host, uint8 (B, H, W, C)."""
  source = task.parts.source
  if source.kind == "generator":
    return parallel.gather_to_host(task.latest_images)
  if source.kind == "host_pool":
    pool = source.host_pool
    return pool.images[(pool.cursor - 1) % len(pool.images)]
  slot = (int(state.pool.cursor) - 1) % state.pool.images.shape[0]
  return parallel.gather_to_host(state.pool.images[slot])


def teacher_label_maps(task, images: np.ndarray) -> np.ndarray:
  """The teacher's coloured per-pixel predictions of uint8 images, (N, H, W, 3) uint8."""
  if task.label_maps is None:
    synth = task.parts.distiller.synth
    teacher = synth.teacher.clone(axis_name=None)

    def predict(variables, x):
      x = augment.normalize(augment.to_float(x), synth.mean, synth.std)
      return teacher.apply(variables, x, train=False).argmax(-1)

    task.label_maps = jax.jit(predict)
  return segmentation.colorize(np.asarray(task.label_maps(task.parts.teacher_vars, images)))


def interleave_rows(images: np.ndarray, maps: np.ndarray, ncol: int) -> np.ndarray:
  """Rows of `ncol` images each followed by the row of their label maps."""
  rows = []
  for start in range(0, len(images), ncol):
    rows += [images[start:start + ncol], maps[start:start + ncol]]
  return np.concatenate(rows)


def write_samples(task, state, epoch: int) -> np.ndarray:
  """The newest synthesis batch as WORKDIR/samples/epoch_NNNN.png; returns the grid."""
  images = latest_images(task, state)[:GRID_IMAGES]
  if task.config.task == "segmentation":
    images = interleave_rows(images, teacher_label_maps(task, images), GRID_COLUMNS)
  grid = reporting.image_grid(images, ncol=GRID_COLUMNS)
  scale = max(1, 128 // max(images.shape[1], 1))
  reporting.save_png(task.ctx.path("samples", f"epoch_{epoch:04d}.png"), grid,
                     scale=min(scale, 4))
  return grid
