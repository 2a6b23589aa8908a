"""Subprocess worker for tests/test_generative_runs.py (needs XLA_FLAGS set before jax).

  python tests/generative_worker.py OUT.npz

Runs, on 1 and then on 8 devices from the same keys, a `generative` round with every
loss term on: one host-dispatched synthesis call (k = 2 generator updates), 2 KD
updates on fresh generator samples, a second synthesis call; saves every leaf. The
8-device run also takes the TPU/GPU form (the generator updates and the KD updates
each one `lax.scan`), saved as `scanned/...`.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fastdfkd_jax.config import checks as config_checks, schema  # noqa: E402
from fastdfkd_jax import data, models
from fastdfkd_jax.run import parallel
from fastdfkd_jax.distill import state as state_lib, steps  # noqa: E402
from fastdfkd_jax.models import util  # noqa: E402


def tiny_config():
  c = schema.default_config()
  c.method, c.k, c.batch_size, c.synth.nz, c.synth.ngf = "generative", 2, 16, 16, 8
  c.synth.adv, c.synth.bn, c.synth.oh, c.synth.act, c.synth.balance = 1.0, 1.0, 1.0, 0.1, 5.0
  c.synth.lr_g, c.synth.kd_steps, c.kd.steps, c.kd.lr = 1e-3, 2, 4, 0.1
  c.teacher.arch, c.student.arch = "resnet8", "resnet8"
  return c


def round_trip(c, info, teacher_vars, devices: int, scanned: bool) -> dict:
  """Synthesis, KD, synthesis from fixed keys on `devices` devices: every leaf."""
  mesh = parallel.make_mesh(jax.devices()[:devices])
  d = steps.build(c, info, "resnet8", mesh)
  t = parallel.put_replicated(teacher_vars, mesh)
  st = state_lib.init_state(d, c, info, t, jax.random.key(0))
  assert st.pool is None
  adv = jnp.float32(c.synth.adv)
  if scanned:
    synth = d.jit_synth(st)
  else:
    synth = d.compile_synth(st, t, jax.random.key(10), adv, host_inner=True)
  kd = d.jit_kd_steps(st, c.synth.kd_steps, unroll=not scanned)
  st, images, m_synth = synth(st, t, jax.random.key(10), adv)
  st, m_kd = kd(st, t, jax.random.key(11))
  st, images2, m_synth2 = synth(st, t, jax.random.key(12), adv)
  flat = {"images": np.asarray(images), "images2": np.asarray(images2)}
  leaves = jax.tree_util.tree_leaves_with_path((st.synth, st.student, m_synth, m_kd,
                                                m_synth2))
  for path, leaf in leaves:
    flat["tree" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return flat


def equivalence(out_path):
  c = tiny_config()
  config_checks.validate(c)
  info = data.get_info("digits")
  teacher_vars = util.init_variables(models.get_model("resnet8", 10), jax.random.key(1),
                                     info.image_shape)
  results = {n: round_trip(c, info, teacher_vars, n, scanned=False) for n in (1, 8)}
  c.inner_unroll = "scan"
  scanned = round_trip(c, info, teacher_vars, 8, scanned=True)
  results[1].update({"scanned/" + k: v for k, v in results[1].items()})
  results[8].update({"scanned/" + k: v for k, v in scanned.items()})
  np.savez(out_path, **{f"d{n}/{k}": v for n, flat in results.items() for k, v in flat.items()})


if __name__ == "__main__":
  equivalence(sys.argv[1])
