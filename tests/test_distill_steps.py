"""The Distiller's per-device code and jitted steps (fastdfkd_jax.distill.steps): the KD
update, KD inputs (noise, data pool), bfloat16 activations.

The teacher is a randomly initialised resnet8 (what is checked does not depend on its
accuracy); shapes are the suite's tiny digits run (`conftest.tiny_distill`).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax import data, models
from fastdfkd_jax.config import schema
from fastdfkd_jax.distill import sources, state as state_lib, steps
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.run import parallel
from fastdfkd_jax.synthesis import fast_meta, inversion
from fastdfkd_jax.training import optim, train_state

from conftest import COMPILE_OPTIONS, TEACHER_ARCH, compile_unoptimized, tiny_distill

INFO = data.get_info("digits")


@pytest.fixture(scope="module")
def teacher_vars(mesh1):
  """A random resnet8 digits teacher, replicated on one device."""
  variables = model_util.init_variables(models.get_model(TEACHER_ARCH, INFO.num_classes),
                                        jax.random.key(1), INFO.image_shape)
  return parallel.put_replicated(variables, mesh1)


O0 = COMPILE_OPTIONS   # unoptimised: programs these tests run once or twice


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


def test_bfloat16_activations_synthesis_and_kd_run(teacher_vars, mesh1):
  """dtype_name='bfloat16': the models compute in bfloat16 (their convolutions take
  bfloat16 operands), while params, BN statistics, metrics and losses stay float32."""
  c = tiny_distill("", k=1)   # one inner step: what runs in bfloat16 is the same
  d = steps.build(c, INFO, TEACHER_ARCH, mesh1, "pool", "bfloat16")
  assert d.student_model.dtype == d.synth.teacher.dtype == d.synth.generator.dtype \
      == jnp.bfloat16
  t = teacher_vars
  state = state_lib.init_state(d, c, INFO, t, jax.random.key(0))
  key, adv = jax.random.key(1), jnp.float32(1.0)
  kd = d.jit_kd_steps(state, 1, unroll=True).lower(state, t, key)
  assert "bf16" in kd.as_text()                        # bfloat16 activations
  synth = d.jit_synth(state).lower(state, t, key, adv).compile(O0)
  state, images, metrics = synth(state, t, key, adv)
  state, kd_metrics = kd.compile(O0)(state, t, jax.random.key(2))
  assert images.dtype == jnp.uint8 and int(state.pool.filled) == 1
  assert int(state.student.step) == 1
  for name, value in dict(metrics, **kd_metrics).items():
    value = np.asarray(value)
    assert np.isfinite(value).all() and value.dtype == np.float32, name
  for leaf in jax.tree.leaves((state.student.params, state.student.batch_stats,
                               state.synth.gen_params, state.synth.bn_momentum)):
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
                           kd_batch=256, temperature=20.0, mesh=None, kd_kind="noise")

  key = jax.random.key(0)
  x = np.asarray(jax.jit(lambda k: distiller(None)._kd_inputs(None, k))(key))
  assert x.shape == (256, 8, 8, 1) and x.dtype == np.uint8
  assert x.min() < 10 and x.max() > 245 and abs(x.mean() - 127.5) < 4
  # Two "devices" (a vmapped named axis) draw the two halves of the same global batch.
  d2 = distiller("data")
  stripes = jax.jit(jax.vmap(lambda _: d2._kd_inputs(None, key), axis_name="data"))(
      jnp.zeros(2))
  np.testing.assert_array_equal(np.concatenate(np.asarray(stripes)), x)


def test_kd_steps_on_a_data_pool_scan_equals_unrolled(teacher_vars, mesh1, tmp_path):
  """kd.source='real': the data pool is an argument of the jitted KD steps (sharded like the
  synthetic pool); the scanned form (TPU/GPU) and the unrolled one (CPU) agree."""
  c = tiny_distill("", **{"kd.source": "real"})
  kind = sources.kind(c, uses_pool=True)
  assert kind == "data"
  d = steps.build(c, INFO, TEACHER_ARCH, mesh1, kind, "float32")
  images = np.random.default_rng(0).integers(0, 256, (64,) + tuple(INFO.image_shape))
  source = sources.build(kind, c, INFO.image_shape, mesh1, str(tmp_path),
                         images.astype(np.uint8))
  data_pool = source.data_pool
  assert data_pool.images.shape == (4, 16) + tuple(INFO.image_shape)
  assert int(data_pool.filled) == 4 and source.host_pool is None
  t, key = teacher_vars, jax.random.key(2)
  initial = jax.device_get(state_lib.init_state(d, c, INFO, t, jax.random.key(0)))
  assert initial.pool is None                     # no synthetic pool for the baselines
  out = {}
  for unroll in (False, True):
    state = parallel.put_replicated(initial, mesh1)   # each run donates its state
    fn = d.jit_kd_steps(state, 2, unroll, data_pool).lower(state, t, key, data_pool).compile(O0)
    state, metrics = fn(state, t, key, data_pool)
    out[unroll] = (state.student.params, float(metrics["kd_loss"]), int(state.student.step))
  assert out[False][2] == out[True][2] == 2
  assert out[False][1] == pytest.approx(out[True][1], rel=1e-4)
  chex.assert_trees_all_close(out[False][0], out[True][0], rtol=1e-4, atol=1e-6)
