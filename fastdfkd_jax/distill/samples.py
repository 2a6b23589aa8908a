"""The sample grids of a distillation run: `samples/epoch_NNNN.png` and the reporter image.

A grid shows the newest synthesis batch (the pool's newest slot, or a generator
method's latest batch), 8 images a row. In a segmentation run (config.task) every
row of images is followed by a row of the teacher's predicted label maps of them,
coloured with the release's palette (`segmentation.colorize`): what the teacher
segments in the synthetic images.
"""

import os

import jax
import numpy as np

from fastdfkd_jax import parallel, reporting
from fastdfkd_jax.data import augment, segmentation

GRID_IMAGES = 64
GRID_COLUMNS = 8


def latest_images(run, state) -> np.ndarray:
  """The newest synthesis batch on the host, uint8 (B, H, W, C)."""
  host_pool = run.source.host_pool
  if not run.distiller.synth.uses_pool:
    return parallel.gather_to_host(run.last_images)
  if host_pool is not None:
    return host_pool.images[(host_pool.cursor - 1) % len(host_pool.images)]
  slot = (int(state.pool.cursor) - 1) % state.pool.images.shape[0]
  return parallel.gather_to_host(state.pool.images[slot])


def teacher_label_maps(run, images: np.ndarray) -> np.ndarray:
  """The teacher's coloured per-pixel predictions of uint8 images, (N, H, W, 3) uint8."""
  if run.label_maps is None:
    synth = run.distiller.synth
    teacher = synth.teacher.clone(axis_name=None)

    def predict(variables, x):
      x = augment.normalize(augment.to_float(x), synth.mean, synth.std)
      return teacher.apply(variables, x, train=False).argmax(-1)

    run.label_maps = jax.jit(predict)
  return segmentation.colorize(np.asarray(run.label_maps(run.teacher_vars, images)))


def interleave_rows(images: np.ndarray, maps: np.ndarray, ncol: int) -> np.ndarray:
  """Rows of `ncol` images each followed by the row of their label maps."""
  rows = []
  for start in range(0, len(images), ncol):
    rows += [images[start:start + ncol], maps[start:start + ncol]]
  return np.concatenate(rows)


def write_samples(run, reporter, state, epoch: int) -> None:
  """The newest synthesis batch as samples/epoch_NNNN.png and a reporter image."""
  images = latest_images(run, state)[:GRID_IMAGES]
  if run.config.task == "segmentation":
    images = interleave_rows(images, teacher_label_maps(run, images),
                             GRID_COLUMNS)
  grid = reporting.image_grid(images, ncol=GRID_COLUMNS)
  scale = max(1, 128 // max(images.shape[1], 1))
  reporting.save_png(os.path.join(run.workdir, "samples", f"epoch_{epoch:04d}.png"), grid,
                     scale=min(scale, 4))
  reporter.image("samples", grid, epoch)
