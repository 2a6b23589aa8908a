"""Tests of fastdfkd_jax.synthesis.base: the registry and the protocol.

A test-only generator-vs-student method (`DummyAdversarialGenerator`, ZSKT-like:
the generator maximises KL(teacher || student) on its own samples) shows that
the protocol carries the coming methods that train a generator against the
student and feed KD straight from it: registered, built from a config, one
round of `g_steps` generator updates, then KD updates on `sample` batches.
"""

import dataclasses
import types
from typing import Any, ClassVar
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from fastdfkd_jax.data import augment
from fastdfkd_jax.config import schema
from fastdfkd_jax.run import loops, parallel
from fastdfkd_jax import models
from fastdfkd_jax.training import optim, train_state
from fastdfkd_jax.training import objectives as kd_losses
from fastdfkd_jax.distill import steps
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.synthesis import base

from synthesis_testlib import IMAGE_SHAPE, MEAN, PADDING, STD, compiled, init

POOL_METHODS = ["cmi", "deepinv", "deepinversion", "fast", "fast_meta", "nayer"]
METHODS = sorted(POOL_METHODS + ["dafl", "dfad", "dfq", "generative", "zskt"])
INFO = types.SimpleNamespace(num_classes=10, image_shape=IMAGE_SHAPE, mean=MEAN, std=STD,
                             crop_padding=PADDING)


def tiny_config(method):
  c = schema.base_config()
  c.method, c.batch_size, c.k = method, 8, 2
  c.synth.nz, c.synth.ngf = 16, 8
  return c


def build(nets, method):
  teacher, student, _, _, _ = nets
  return base.build(tiny_config(method), teacher=teacher, student=student, info=INFO,
                    axis_name=None, unroll=True)


# ----------------------------------------------------------- registry
def test_available_names():
  assert base.available() == METHODS


def test_unknown_method_lists_the_valid_names(tiny_nets):
  for call in (lambda: base.get("nope"), lambda: build(tiny_nets, "nope")):
    with pytest.raises(ValueError) as e:
      call()
    msg = str(e.value)
    assert "'nope'" in msg and all(name in msg for name in METHODS), msg


def test_every_registered_method_satisfies_the_protocol(tiny_nets):
  for name in base.available():
    synth = build(tiny_nets, name)
    assert isinstance(synth, base.get(name))
    assert isinstance(synth, base.Synthesizer), name
    assert synth.uses_pool != isinstance(synth, base.GeneratorVsStudent), name
    assert synth.axis_name is None and synth.image_shape == IMAGE_SHAPE, name
    if name in POOL_METHODS:   # pool methods with host-dispatchable inner steps
      assert synth.uses_pool and base.host_steppable(synth), name
      assert synth.hp.unroll and synth.hp.k == 2, name


def test_register_twice_is_an_error():
  with pytest.raises(ValueError, match="registered twice"):
    base.register("fast_meta")(base.get("fast"))


def test_register_names_the_missing_hooks():
  class NoSample:
    uses_pool = False
    from_config = init = synthesize = generator_step = lambda *a: None

  class HalfHostSteps:
    uses_pool = True
    from_config = init = synthesize = begin = lambda *a: None

  with mock.patch.dict(base._REGISTRY):
    with pytest.raises(TypeError, match=r"'gan' \(NoSample\) lacks sample$"):
      base.register("gan")(NoSample)
    with pytest.raises(TypeError, match="lacks inner_step, end, carry_specs"):
      base.register("half")(HalfHostSteps)
    with pytest.raises(TypeError, match="lacks uses_pool, from_config, init, synthesize"):
      base.register("empty")(type("Empty", (), {}))
    assert base.available() == METHODS


# --------------------------------------- a generator-vs-student method
@struct.dataclass
class GanState:
  gen_params: Any
  gen_batch_stats: Any
  opt_state: Any
  steps: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class DummyAdversarialGenerator:
  """The generator maximises KL(teacher || student) on its samples; no pool."""
  uses_pool: ClassVar[bool] = False
  generator: Any
  teacher: Any
  student: Any
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  padding: int
  axis_name: str | None
  nz: int
  batch_size: int
  lr: float
  unroll: bool
  g_steps: int = 2
  kd_steps: int = 3

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name, unroll, dtype):
    h, _, c = info.image_shape
    generator = models.get_model("generator", nz=config.synth.nz, ngf=config.synth.ngf,
                                 img_size=h, channels=c, axis_name=axis_name, dtype=dtype)
    return cls(generator=generator, teacher=teacher, student=student,
               image_shape=tuple(info.image_shape), mean=tuple(info.mean),
               std=tuple(info.std), padding=info.crop_padding, axis_name=axis_name,
               nz=config.synth.nz, batch_size=config.batch_size, lr=config.synth.lr_g,
               unroll=unroll)

  def init(self, key, teacher_vars):
    del teacher_vars
    v = model_util.init_variables(self.generator.clone(axis_name=None), key, (self.nz,))
    return GanState(gen_params=v["params"], gen_batch_stats=v["batch_stats"],
                    opt_state=optax.adam(self.lr).init(v["params"]), steps=jnp.int32(0))

  def _render(self, params, batch_stats, key, n):
    z = jax.random.normal(key, (n, self.nz))
    z = z if self.axis_name is None else parallel.local_stripe(z, self.axis_name)
    x, upd = self.generator.apply({"params": params, "batch_stats": batch_stats}, z,
                                  train=True, mutable=["batch_stats"])
    return x.astype(jnp.float32), upd["batch_stats"]

  def generator_step(self, state, teacher_vars, student_vars, key, adv_weight):
    del adv_weight  # the generator's loss is adversarial by construction
    teacher_vars, student_vars = jax.lax.stop_gradient((teacher_vars, student_vars))

    def loss_fn(params):
      x, batch_stats = self._render(params, state.gen_batch_stats, key, self.batch_size)
      x = augment.normalize(x, self.mean, self.std)
      t = self.teacher.apply(teacher_vars, x, train=False)
      s = self.student.apply(student_vars, x, train=False)
      return -parallel.pmean(kd_losses.kl_per_sample(s, t).mean(), self.axis_name), \
          batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.gen_params)
    updates, opt_state = optax.adam(self.lr).update(grads, state.opt_state)
    return state.replace(gen_params=optax.apply_updates(state.gen_params, updates),
                         gen_batch_stats=batch_stats, opt_state=opt_state,
                         steps=state.steps + 1), dict(loss_gen=loss)

  def synthesize(self, state, teacher_vars, student_vars, key, adv_weight):
    k_steps, k_sample = jax.random.split(key)

    def body(state, step_key):
      return self.generator_step(state, teacher_vars, student_vars, step_key, adv_weight)

    state, metrics = loops.scan(body, state, jax.random.split(k_steps, self.g_steps),
                                self.unroll)
    images = self.sample(state, k_sample, self.batch_size)
    return state, images, jax.tree.map(lambda m: m[-1], metrics)

  def sample(self, state, key, n):
    return augment.to_uint8(self._render(state.gen_params, state.gen_batch_stats, key, n)[0])


@pytest.fixture(scope="module")
def dummy(tiny_nets):
  """The dummy method registered for the test only, built through the registry."""
  with mock.patch.dict(base._REGISTRY):
    base.register("dummy_gan")(DummyAdversarialGenerator)
    assert "dummy_gan" in base.available()
    synth = build(tiny_nets, "dummy_gan")
  assert "dummy_gan" not in base.available()
  return synth


def test_generator_vs_student_method_fits_the_protocol(dummy):
  assert isinstance(dummy, base.Synthesizer) and isinstance(dummy, base.GeneratorVsStudent)
  assert not dummy.uses_pool and not base.host_steppable(dummy)


def test_generator_vs_student_round_then_kd_on_fresh_samples(tiny_nets, dummy):
  """One round as the run loop drives it: g_steps generator updates, then kd_steps
  student updates on `sample` batches, with the KD step of `distill.steps`."""
  teacher, student, _, tv, sv = tiny_nets
  s0 = init(dummy, tiny_nets, jax.random.key(0))
  adv = jnp.float32(0.0)
  synth_fn = compiled(dummy.synthesize, s0, tv, sv, jax.random.key(1), adv)
  s1, images, metrics = synth_fn(s0, tv, sv, jax.random.key(1), adv)
  assert int(s1.steps) == dummy.g_steps and np.isfinite(float(metrics["loss_gen"]))
  chex.assert_shape(images, (8,) + IMAGE_SHAPE)
  assert images.dtype == jnp.uint8
  moved = sum(float(jnp.abs(a - b).sum()) for a, b in
              zip(jax.tree.leaves(s0.gen_params), jax.tree.leaves(s1.gen_params)))
  assert moved > 0
  # The state is a pytree of arrays: it checkpoints with the run.
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(s1))

  d = steps.Distiller(synth=dummy, student_model=student,
                      tx=optim.kd_optimizer(schema.base_config().kd), kd_batch=8,
                      temperature=20.0, mesh=None, kd_kind="generator")
  st = train_state.TrainState.create(sv, d.tx)
  sample = compiled(lambda s, k: dummy.sample(s, k, 8), s1, jax.random.key(2))  # n static
  kd = compiled(d._kd_update, st, tv, images, jax.random.key(3))
  batches = []
  for i in range(dummy.kd_steps):
    batch = sample(s1, jax.random.key(10 + i))
    batches.append(np.asarray(batch))
    st, loss = kd(st, tv, batch, jax.random.key(20 + i))
    assert np.isfinite(float(loss))
  assert int(st.step) == dummy.kd_steps
  assert not np.array_equal(batches[0], batches[1])   # fresh generator batches
  np.testing.assert_array_equal(np.asarray(sample(s1, jax.random.key(10))), batches[0])
