"""Subprocess worker for the segmentation multi-device test (XLA_FLAGS set before jax).

  python tests/seg_worker.py equivalence OUT.npz

Writes, for 1 and for 8 devices from the same keys and initial values: a
segmentation teacher's training steps (synchronised crop/flip, pixel-wise CE),
two fast_meta synthesis calls (host-dispatched inner steps) and KD steps on their
pool, and a DAFL round (generator updates, KD on fresh generator samples), all on
the tiny DeepLab pair at 16 px.
"""

import dataclasses
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fastdfkd_jax.config import schema  # noqa: E402
from fastdfkd_jax import data, models
from fastdfkd_jax.training import optim
from fastdfkd_jax.run import parallel
from fastdfkd_jax.data import shapes_seg  # noqa: E402
from fastdfkd_jax.distill import state as state_lib, steps  # noqa: E402
from fastdfkd_jax.models import util  # noqa: E402
from fastdfkd_jax.teacher import train as teacher_train  # noqa: E402

SIZE, BATCH = 16, 16
INFO = dataclasses.replace(data.get_info("shapes_seg"), image_shape=(SIZE, SIZE, 3))


def seg_config(method: str):
  c = schema.base_config()
  c.task, c.dataset.name, c.method = "segmentation", "shapes_seg", method
  c.batch_size, c.k, c.synth.nz, c.synth.ngf, c.synth.oh = BATCH, 2, 8, 4, 0.0
  c.kd.steps, c.kd.lr, c.epochs, c.warmup = 2, 0.1, 3, 1
  c.teacher.arch = c.student.arch = "deeplab_tiny_half"
  if method == "dafl":
    schema.generative_preset(c, "dafl")
    c.synth.nz, c.synth.kd_steps = 8, 2
  return c


def _flatten(prefix: str, tree) -> dict:
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def teacher_steps(n: int, n_steps=2) -> dict:
  """Segmentation teacher-training steps on n devices."""
  c = seg_config("fast_meta")
  pairs = [shapes_seg.make_example(0, "train", i, SIZE, 2) for i in range(n_steps * BATCH)]
  images = np.stack([p[0] for p in pairs]).reshape(n_steps, 1, BATCH, SIZE, SIZE, 3)
  labels = np.stack([p[1] for p in pairs]).reshape(n_steps, 1, BATCH, SIZE, SIZE)
  tx = optim.teacher_optimizer(c.optim, n_steps, 1)
  c.model = "deeplab_tiny_half"
  model = models.get_model(c.model, 5, axis_name=parallel.AXIS)
  state0 = jax.device_get(teacher_train.init_state(c, INFO, tx, jax.random.key(0)))
  mesh = parallel.make_mesh(jax.devices()[:n])
  step = teacher_train.make_train_chunk(model, tx, INFO, mesh, unroll=True,
                                        task="segmentation")
  state, flat = parallel.put_replicated(state0, mesh), {}
  for i in range(n_steps):
    batch = parallel.put_batch((images[i], labels[i]), mesh, axis=1)
    state, metrics = step(state, *batch, jax.random.key(100 + i))
    flat.update({f"teacher/step{i}/{k}": np.asarray(v) for k, v in metrics.items()})
  flat.update(_flatten("teacher/vars", state.variables))
  return flat


def distill_steps(method: str, n: int) -> dict:
  """Two synthesis calls (a DAFL round each) and KD steps after each, on n devices."""
  c = seg_config(method)
  teacher_vars = util.init_variables(models.get_model("deeplab_tiny_half", 5),
                                     jax.random.key(1), INFO.image_shape)
  mesh = parallel.make_mesh(jax.devices()[:n])
  d = steps.build(c, INFO, "deeplab_tiny_half", mesh)
  t = parallel.put_replicated(teacher_vars, mesh)
  st = state_lib.init_state(d, c, INFO, t, jax.random.key(0))
  synth = d.compile_synth(st, t, jax.random.key(10), jnp.float32(1.1), host_inner=True)
  kd = d.jit_kd_steps(st, 1, unroll=True)
  flat = {}
  for call in range(2):
    st, images, m_synth = synth(st, t, jax.random.key(10 + call), jnp.float32(1.1))
    st, m_kd = kd(st, t, jax.random.key(20 + call))
    flat[f"{method}/call{call}/images"] = np.asarray(images)
    flat.update(_flatten(f"{method}/call{call}/tree", (m_synth, m_kd)))
  flat.update(_flatten(f"{method}/state", (st.synth, st.student)))
  if st.pool is not None:
    flat[f"{method}/pool"] = np.asarray(st.pool.images)
  return flat


def equivalence(out_path):
  results = {}
  for n in (1, 8):
    flat = teacher_steps(n)
    for method in ("fast_meta", "dafl"):
      flat.update(distill_steps(method, n))
    results[n] = flat
  np.savez(out_path, **{f"d{n}/{k}": v for n, flat in results.items() for k, v in flat.items()})


if __name__ == "__main__":
  if sys.argv[1] != "equivalence":
    raise SystemExit(f"unknown mode {sys.argv[1]!r}")
  equivalence(sys.argv[2])
