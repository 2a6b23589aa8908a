"""Subprocess worker for tests/test_parallel.py (needs XLA_FLAGS set before jax).

  python tests/multidevice_worker.py equivalence OUT.npz
  python tests/multidevice_worker.py method METHOD OUT.npz
  python tests/multidevice_worker.py teacher OUT.npz
  python tests/multidevice_worker.py run WORKDIR EPOCHS [TEACHER_DIR]
"""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fastdfkd_jax.config import schema  # noqa: E402
from fastdfkd_jax import data, modes
from fastdfkd_jax.run import parallel
from fastdfkd_jax import models  # noqa: E402
from fastdfkd_jax.training import optim
from fastdfkd_jax.distill import state as state_lib, steps  # noqa: E402
from fastdfkd_jax.models import util  # noqa: E402
from fastdfkd_jax.teacher import train as teacher_train  # noqa: E402


def tiny_config():
  c = schema.default_config()
  c.batch_size, c.k, c.synth.nz, c.synth.ngf = 16, 2, 16, 8
  c.kd.steps, c.epochs, c.warmup = 2, 3, 1
  c.teacher.arch, c.student.arch = "resnet8", "resnet8"
  return c


def _flat(prefix, tree) -> dict:
  """{prefix + path: array} of a pytree's leaves."""
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _save(out_path, results):
  np.savez(out_path, **{f"d{n}/{k}": v for n, flat in results.items() for k, v in flat.items()})


def _one_vs_eight(c, out_path, on_devices, first_images):
  """`on_devices(d, t, st) -> {name: array}` on 1 and on 8 devices from the same teacher
  and keys, plus the scanned (TPU/GPU) synthesis call under shard_map on 8 devices,
  compared with the 1-device host-dispatched images `first_images`; saved to out_path."""
  info = data.get_info("digits")
  teacher_vars = util.init_variables(models.get_model("resnet8", 10), jax.random.key(1),
                                     info.image_shape)

  def build(devices):
    mesh = parallel.make_mesh(devices)
    d = steps.build(c, info, "resnet8", mesh)
    t = parallel.put_replicated(teacher_vars, mesh)
    return d, t, state_lib.init_state(d, c, info, t, jax.random.key(0))

  results = {n: on_devices(*build(jax.devices()[:n])) for n in (1, 8)}
  c.inner_unroll = "scan"
  d, t, st = build(jax.devices())
  _, images, _ = d.jit_synth(st)(st, t, jax.random.key(10), jnp.float32(1.1))
  results[8]["scanned_images"] = np.asarray(images)
  results[1]["scanned_images"] = results[1][first_images]
  _save(out_path, results)


def equivalence(out_path):
  """Synthesis, KD and a fused epoch on 1 vs 8 devices from the same keys."""
  c = tiny_config()
  c.kd.lr = 0.1

  def on_devices(d, t, st):
    # CPU default: host-dispatched inner steps (begin / k x inner / end).
    synth = d.compile_synth(st, t, jax.random.key(10), jnp.float32(1.1), host_inner=True)
    kd = d.jit_kd_steps(st, 1, unroll=True)
    epoch = d.jit_epoch(st, 2)
    st, images, m_synth = synth(st, t, jax.random.key(10), jnp.float32(1.1))
    st, m_kd = kd(st, t, jax.random.key(11))
    st, m_epoch = epoch(st, t, jax.random.key(12), jnp.float32(1.1))
    return {"images": np.asarray(images), "pool": np.asarray(st.pool.images),
            **_flat("tree", (st.synth, st.student, m_synth, m_kd, m_epoch))}

  _one_vs_eight(c, out_path, on_devices, "images")


def method(name, out_path):
  """Two host-dispatched synthesis calls of `name` (the second one reads CMI's bank)
  and its unrolled single-program call, on 1 vs 8 devices from the same keys; and the
  scanned (TPU/GPU) call on 8 devices. 'fast_meta:imagenet': fast_meta with the
  ImageNet options (meta latent, reinit at the second call, resized crop)."""
  c = tiny_config()
  name, _, variant = name.partition(":")
  c.method, c.k = name, 2
  if variant == "imagenet":
    c.synth.meta_latent, c.synth.reinit_every, c.synth.meta_lr_g = True, 2, 1e-4
    c.synth.augment, c.synth.keep = "resized_crop", "last"
  c.cmi.bank_size, c.cmi.n_neg, c.cmi.head_dim = 64, 24, 16
  c.deepinversion.tv, c.deepinversion.tv_l2, c.deepinversion.l2 = 1e-3, 1e-4, 1e-5

  def on_devices(d, t, st):
    flat = {}
    for host in (True, False):
      synth = d.compile_synth(st, t, jax.random.key(10), jnp.float32(1.1), host_inner=host)
      s = jax.tree.map(jnp.copy, st)
      for call in range(2):
        s, images, metrics = synth(s, t, jax.random.key(10 + call), jnp.float32(1.1))
        tag = f"host{int(host)}/call{call}"
        flat[f"{tag}/images"] = np.asarray(images)
        flat.update(_flat(f"{tag}/tree", (s.synth, metrics)))
    return flat

  _one_vs_eight(c, out_path, on_devices, "host1/call0/images")


def teacher(out_path, steps=3, batch=32):
  """Teacher-training steps (the CPU loop: one jitted step per call) on 1 vs 8 devices."""
  c = schema.base_config()
  c.model = "resnet8"
  ds = data.load_dataset("digits")
  tx = optim.teacher_optimizer(c.optim, steps, 1)
  model = models.get_model("resnet8", 10, axis_name=parallel.AXIS)
  state0 = jax.device_get(teacher_train.init_state(c, ds.info, tx, jax.random.key(0)))
  idx = np.arange(steps * batch).reshape(steps, 1, batch)
  results = {}
  for n in (1, 8):
    mesh = parallel.make_mesh(jax.devices()[:n])
    step = teacher_train.make_train_chunk(model, tx, ds.info, mesh, unroll=True)
    state, flat = parallel.put_replicated(state0, mesh), {}
    for i in range(steps):
      images, labels = parallel.put_batch((ds.train_images[idx[i]], ds.train_labels[idx[i]]),
                                          mesh, axis=1)
      state, metrics = step(state, images, labels, jax.random.key(100 + i))
      flat.update({f"step{i}/{k}": np.asarray(v) for k, v in metrics.items()})
    results[n] = {**flat, **_flat("tree", state.variables)}
  _save(out_path, results)


def run(workdir, epochs, teacher_dir=""):
  c = tiny_config()
  c.epochs = int(epochs)
  c.eval_every, c.checkpoint_every = 1, 1
  c.batch_size = 32
  c.pool.capacity = 8 * 32  # fixed, so runs extended to more epochs keep the pool shape
  if teacher_dir:
    c.teacher.checkpoint = teacher_dir
  c.allow_config_change = True  # the resumed run differs only in epochs/devices
  summary = modes.run(c, workdir)
  print("SUMMARY " + json.dumps({k: v for k, v in summary.items()
                                 if isinstance(v, (int, float, str))}))


if __name__ == "__main__":
  if sys.argv[1] == "equivalence":
    equivalence(sys.argv[2])
  elif sys.argv[1] == "method":
    method(sys.argv[2], sys.argv[3])
  elif sys.argv[1] == "teacher":
    teacher(sys.argv[2])
  else:
    run(*sys.argv[2:])
