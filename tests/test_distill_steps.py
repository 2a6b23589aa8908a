"""The Distiller's per-device code and jitted steps (fastdfkd_jax.distill.steps): the KD
update, KD inputs (noise, data pool), bfloat16 activations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.config import schema
from fastdfkd_jax.training import optim, train_state
from fastdfkd_jax.distill import pool as pool_lib, state as state_lib, steps
from fastdfkd_jax.synthesis import fast_meta, inversion

from conftest import compile_unoptimized
from test_distill_loop import e2e_config

# ------------------------------------------------------------ KD update


def test_one_kd_update_reduces_kd_loss(tiny_nets):
  teacher, student_model, generator, tv, sv = tiny_nets
  shape = (8, 8, 1)
  synth = fast_meta.FastMetaSynthesizer(
      generator=generator, teacher=teacher, student=student_model,
      hp=inversion.SynthesisHParams(k=2, batch_size=16, nz=16), num_classes=10,
      image_shape=shape, mean=(0.3054,), std=(0.3757,), padding=1, axis_name=None)
  c = schema.default_config()
  c.kd.lr = 0.1
  d = steps.Distiller(synth=synth, student_model=student_model,
                      tx=optim.kd_optimizer(c.kd), kd_batch=16, temperature=20.0, mesh=None)
  student = train_state.TrainState.create(sv, d.tx)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16,) + shape), jnp.uint8)
  key = jax.random.key(3)
  update = compile_unoptimized(d._kd_update, student, tv, images, key)
  new, loss0 = update(student, tv, images, key)
  _, loss1 = update(new, tv, images, key)   # the loss at the updated params
  assert int(new.step) == 1
  assert np.isfinite(float(loss0)) and float(loss0) > 0
  assert float(loss1) < float(loss0), (float(loss0), float(loss1))



@pytest.mark.slow
def test_bfloat16_activations_synthesis_and_kd_run(digits_teacher):
  """config.dtype='bfloat16': activations in bf16, params/BN stats/losses stay float32."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from fastdfkd_jax import data
  from fastdfkd_jax.run import parallel
  from fastdfkd_jax.teacher import loader
  teacher_dir = digits_teacher[0] if isinstance(digits_teacher, tuple) else digits_teacher
  c = e2e_config(teacher_dir)
  c.dtype = "bfloat16"
  c.batch_size, c.k, c.synth.nz, c.synth.ngf = 16, 2, 16, 8
  info = data.get_info("digits")
  teacher_vars, meta = loader.load(teacher_dir)
  mesh = parallel.make_mesh()
  d = steps.build(c, info, meta["arch"], mesh)
  t = parallel.put_replicated(teacher_vars, mesh)
  state = state_lib.init_state(d, c, info, t, jax.random.key(0))
  synth = d.compile_synth(state, t, jax.random.key(1), jnp.float32(1.0), host_inner=True)
  state, images, metrics = synth(state, t, jax.random.key(1), jnp.float32(1.0))
  state, kd_metrics = d.jit_kd_steps(state, 1, unroll=True)(state, t, jax.random.key(2))
  assert images.dtype == jnp.uint8
  for value in list(metrics.values()) + list(kd_metrics.values()):
    assert np.isfinite(np.asarray(value)) and np.asarray(value).dtype == np.float32
  for leaf in jax.tree.leaves((state.student.params, state.synth.gen_params)):
    assert leaf.dtype == jnp.float32



def test_kd_noise_inputs_are_uniform_uint8_and_device_invariant(tiny_nets):
  teacher, student_model, generator, _, _ = tiny_nets

  def distiller(axis_name):
    synth = fast_meta.FastMetaSynthesizer(
        generator=generator, teacher=teacher, student=student_model,
        hp=inversion.SynthesisHParams(k=2, batch_size=256, nz=16), num_classes=10,
        image_shape=(8, 8, 1), mean=(0.3054,), std=(0.3757,), padding=1,
        axis_name=axis_name)
    return steps.Distiller(synth=synth, student_model=student_model, tx=None,
                           kd_batch=256, temperature=20.0, mesh=None, kd_source="noise")

  key = jax.random.key(0)
  x = np.asarray(distiller(None)._kd_inputs(None, key))
  assert x.shape == (256, 8, 8, 1) and x.dtype == np.uint8
  assert x.min() < 10 and x.max() > 245 and abs(x.mean() - 127.5) < 4
  # Two "devices" (a vmapped named axis) draw the two halves of the same global batch.
  d2 = distiller("data")
  stripes = jax.vmap(lambda _: d2._kd_inputs(None, key), axis_name="data")(jnp.zeros(2))
  np.testing.assert_array_equal(np.concatenate(np.asarray(stripes)), x)


@pytest.mark.slow
def test_kd_steps_on_a_data_pool_scan_equals_unrolled(digits_teacher):
  """kd.source='real': the data pool is an argument of the jitted KD steps (sharded like the
  synthetic pool); the scanned form (TPU/GPU) and the unrolled one (CPU) agree."""
  from fastdfkd_jax import data
  from fastdfkd_jax.run import parallel
  from fastdfkd_jax.teacher import loader
  teacher_dir, _ = digits_teacher
  c = e2e_config(teacher_dir)
  c.kd.source, c.batch_size = "real", 16
  info = data.get_info("digits")
  teacher_vars, meta = loader.load(teacher_dir)
  mesh = parallel.make_mesh()
  d = steps.build(c, info, meta["arch"], mesh)
  t = parallel.put_replicated(teacher_vars, mesh)
  images = np.random.default_rng(0).integers(0, 256, (64,) + tuple(info.image_shape))
  real = pool_lib.fixed_set(images.astype(np.uint8), c.batch_size, seed=0)
  data_pool = state_lib.put_pool(real, len(real), 0, mesh)
  out = {}
  for unroll in (False, True):
    state = state_lib.init_state(d, c, info, t, jax.random.key(0))
    assert state.pool is None                     # no synthetic pool for the baselines
    state, metrics = d.jit_kd_steps(state, 2, unroll, data_pool)(
        state, t, jax.random.key(2), data_pool)
    out[unroll] = (state.student.params, float(metrics["kd_loss"]), int(state.student.step))
  assert out[False][2] == out[True][2] == 2
  assert out[False][1] == pytest.approx(out[True][1], rel=1e-5)
  chex.assert_trees_all_close(out[False][0], out[True][0], rtol=1e-4, atol=1e-6)
