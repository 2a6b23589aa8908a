"""The Distiller: per-device synthesis / KD / fused-epoch code and its jitted maps.

Steps are per-device code mapped over the data mesh with `shard_map` and jitted
with donated state buffers:
  - `jit_synth`:     one synthesis call + pool append;
  - `jit_kd_steps`:  n KD updates (a `lax.scan`, or traced straight-line);
  - `jit_kd_batch`:  one KD update on a given global batch (host pool);
  - `jit_epoch`:     synthesis + n scanned KD updates in one program.
For a generator-vs-student method (`uses_pool` False) the synthesis call is one
round's generator updates (no pool append) and the KD updates draw fresh,
unaugmented generator batches (`sample`), as the release does.
Which of them a run uses is decided in `builder`. The KD learning rate lives in
the student's optimizer (`optim.kd_optimizer`), so no step takes one.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import data, models, synthesis
from fastdfkd_jax.run import loops, parallel
from fastdfkd_jax.training import objectives, optim, train_state
from fastdfkd_jax.data import augment
from fastdfkd_jax.distill import pool as pool_lib
from fastdfkd_jax.distill.state import DistillState
from fastdfkd_jax.models import util as model_util

AXIS = parallel.AXIS


@dataclasses.dataclass(frozen=True)
class Distiller:
  """Builds the jitted steps for one (teacher, student, data set, mesh)."""
  synth: synthesis.Synthesizer
  student_model: Any
  tx: optax.GradientTransformation
  kd_batch: int
  temperature: float
  mesh: Any
  kd_kind: str = "pool"          # where KD batches come from: `sources.kind`
  kd_loss: str = "kl"            # config.kd.loss
  kd_augment: str = "crop"       # config.kd.augment
  kd_crop: tuple | None = None   # (config.kd.crop_scale, crop_ratio) for resized_crop

  @property
  def from_generator(self) -> bool:
    """KD batches are fresh generator samples (a generator-vs-student method)."""
    return self.kd_kind == "generator"

  @property
  def on_device_pool(self) -> bool:
    """Synthesis calls append to the state's on-device pool."""
    return self.kd_kind == "pool"

  @property
  def axis(self):
    return self.synth.axis_name

  # ------------------------------------------------------ per-device code
  def _synth(self, state: DistillState, teacher_vars, key, adv_weight):
    synth_state, images, metrics = self.synth.synthesize(
        state.synth, teacher_vars, state.student.variables, key, adv_weight)
    new_pool = pool_lib.add(state.pool, images) if self.on_device_pool else None
    return state.replace(synth=synth_state, pool=new_pool), images, metrics

  def _kd_update(self, student: train_state.TrainState, teacher_vars, images_u8, key):
    x, synth = augment.to_float(images_u8), self.synth
    if self.from_generator:   # the release feeds generator samples as they are
      x = augment.normalize(x, synth.mean, synth.std)
    elif self.kd_augment == "resized_crop":
      x = augment.resized_crop_stripe(key, x, *self.kd_crop, self.axis)
      x = augment.normalize(x, synth.mean, synth.std)
    else:
      x = augment.augment_stripe(key, x, synth.mean, synth.std, synth.padding, self.axis)
    teacher_vars = jax.lax.stop_gradient(teacher_vars)
    t_logits = self.synth.teacher.apply(teacher_vars, x, train=False)

    def loss_fn(params):
      s_logits, upd = self.student_model.apply(
          {"params": params, "batch_stats": student.batch_stats}, x, train=True,
          mutable=["batch_stats"])
      return objectives.kd_objective(s_logits, t_logits, self.kd_loss, self.temperature,
                                 self.axis), \
          upd.get("batch_stats", student.batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(student.params)
    updates, opt_state = self.tx.update(grads, student.opt_state, student.params)
    return student.replace(params=optax.apply_updates(student.params, updates),
                           batch_stats=batch_stats, opt_state=opt_state,
                           step=student.step + 1), loss

  def _kd_inputs(self, pool: pool_lib.Pool | None, key, synth_state=None) -> jax.Array:
    """This device's stripe (B_local, H, W, C) uint8 of a global KD batch (from the
    generator in `synth_state` for a generator-vs-student method)."""
    if self.from_generator:
      return self.synth.sample(synth_state, key, self.kd_batch)
    if self.kd_kind == "noise":
      shape = (self.kd_batch,) + tuple(self.synth.image_shape)
      noise = jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8)
      return noise if self.axis is None else parallel.local_stripe(noise, self.axis)
    return pool_lib.sample(pool, key, self.kd_batch, self.axis)

  def _kd_steps(self, state: DistillState, teacher_vars, key, n_steps: int, unroll: bool,
                data_pool: pool_lib.Pool | None = None):
    """n_steps KD updates; batches from `data_pool` when given (kd.source='real'),
    else from the synthetic pool in the state (or noise)."""
    pool = state.pool if data_pool is None else data_pool

    def body(student, step_key):
      k_sample, k_aug = jax.random.split(step_key)
      images = self._kd_inputs(pool, k_sample, state.synth)
      return self._kd_update(student, teacher_vars, images, k_aug)

    keys = jax.random.split(key, n_steps)
    student, kd_loss = loops.scan(body, state.student, keys, unroll)
    return state.replace(student=student), dict(kd_loss=kd_loss.mean())

  def _epoch(self, state, teacher_vars, k_synth, k_kd, adv_weight, n_steps):
    state, _, metrics = self._synth(state, teacher_vars, k_synth, adv_weight)
    state, kd_metrics = self._kd_steps(state, teacher_vars, k_kd, n_steps, unroll=False)
    return state, dict(metrics, **kd_metrics)

  # ---------------------------------------------------------- jitted maps
  @staticmethod
  def pool_specs(pool: pool_lib.Pool | None):
    return None if pool is None else pool_lib.Pool(images=P(None, AXIS), filled=P(), cursor=P())

  def state_specs(self, state: DistillState):
    return DistillState(synth=P(), student=P(), pool=self.pool_specs(state.pool))

  def jit_synth(self, state):
    """f(state, teacher_vars, key, adv) -> (state, images, metrics) in one program."""
    specs = self.state_specs(state)
    fn = parallel.shard(self._synth, self.mesh, in_specs=(specs, P(), P(), P()),
                        out_specs=(specs, P(AXIS), P()))
    return jax.jit(fn, donate_argnums=(0,))

  def compile_synth(self, state, teacher_vars, key, adv, host_inner: bool) -> Callable:
    """Compiled synthesis call f(state, teacher_vars, key, adv) -> (state, images, metrics).

    One executable (scan/unrolled inner loop), or with `host_inner` three
    executables (begin, inner step, end + pool append) dispatched from the host
    without any sync: the k inner steps reuse one compiled step. `state` must be
    concrete (the host form runs `begin` once to lower the rest).
    """
    if not host_inner:
      return self.jit_synth(state).lower(state, teacher_vars, key, adv).compile()
    specs = self.state_specs(state)
    synth = self.synth
    carry_specs = synth.carry_specs(state.synth)
    begin = parallel.shard(lambda s, k: synth.begin(s.synth, k), self.mesh,
                           in_specs=(specs, P()), out_specs=(carry_specs, P()))
    begin = jax.jit(begin).lower(state, key).compile()
    carry, keys = begin(state, key)  # cheap; concrete shardings for lowering the rest
    n_steps = keys.shape[0]

    def inner(carry, step_key, s, t, adv):
      return synth.inner_step(carry, step_key, s.synth, t, s.student.variables, adv)

    inner = parallel.shard(inner, self.mesh, in_specs=(carry_specs, P(), specs, P(), P()),
                           out_specs=carry_specs)
    inner = jax.jit(inner, donate_argnums=(0,)).lower(
        carry, keys[0], state, teacher_vars, adv).compile()

    def end(s, carry):
      synth_state, images, metrics = synth.end(s.synth, carry)
      new_pool = pool_lib.add(s.pool, images) if self.on_device_pool else None
      return s.replace(synth=synth_state, pool=new_pool), images, metrics

    end = parallel.shard(end, self.mesh, in_specs=(specs, carry_specs),
                         out_specs=(specs, P(AXIS), P()))
    end = jax.jit(end, donate_argnums=(0,)).lower(state, carry).compile()

    def call(state, teacher_vars, key, adv):
      carry, keys = begin(state, key)
      for i in range(n_steps):
        carry = inner(carry, keys[i], state, teacher_vars, adv)
      return end(state, carry)

    return call

  def jit_kd_steps(self, state, n_steps: int, unroll: bool, data_pool=None):
    """f(state, teacher_vars, key[, data_pool]) -> (state, metrics): n_steps KD
    updates; the extra `data_pool` argument exists when one is given here."""
    specs = self.state_specs(state)
    if data_pool is None:
      fn = lambda s, t, k: self._kd_steps(s, t, k, n_steps, unroll)
      in_specs = (specs, P(), P())
    else:
      fn = lambda s, t, k, d: self._kd_steps(s, t, k, n_steps, unroll, d)
      in_specs = (specs, P(), P(), self.pool_specs(data_pool))
    fn = parallel.shard(fn, self.mesh, in_specs=in_specs, out_specs=(specs, P()))
    return jax.jit(fn, donate_argnums=(0,))

  def jit_kd_batch(self):
    """f(student, teacher_vars, images, key) -> (student, metrics): one KD update on a
    given global batch (host pool path)."""
    def fn(student, teacher_vars, images, key):
      student, loss = self._kd_update(student, teacher_vars, images, key)
      return student, dict(kd_loss=loss)
    fn = parallel.shard(fn, self.mesh, in_specs=(P(), P(), P(AXIS), P()),
                        out_specs=(P(), P()))
    return jax.jit(fn, donate_argnums=(0,))

  def jit_epoch(self, state, n_steps: int):
    """f(state, teacher_vars, synthesis key, KD key, adv) -> (state, metrics): synthesis +
    n_steps scanned KD updates in one program (the keys of the split form)."""
    specs = self.state_specs(state)
    fn = lambda s, t, ks, kk, a: self._epoch(s, t, ks, kk, a, n_steps)
    fn = parallel.shard(fn, self.mesh, in_specs=(specs, P(), P(), P(), P()),
                        out_specs=(specs, P()))
    return jax.jit(fn, donate_argnums=(0,))


def build(config: ml_collections.ConfigDict, info: data.DatasetInfo, teacher_arch: str,
          mesh, kd_kind: str, dtype_name: str) -> Distiller:
  """The Distiller for a config: models, synthesizer, optimizer, batch checks.
  `kd_kind`: `sources.kind`; `dtype_name`: the run's resolved activation dtype."""
  dtype = model_util.activation_dtype(dtype_name)
  parallel.local_batch_size(config.batch_size, mesh)
  teacher = models.get_model(teacher_arch, info.num_classes, dtype=dtype, axis_name=AXIS)
  student = models.get_model(config.student.arch, info.num_classes, dtype=dtype,
                             axis_name=AXIS if config.student.sync_bn else None)
  synth = synthesis.build(config, teacher=teacher, student=student, info=info,
                          axis_name=AXIS, unroll=loops.inner_unroll(config), dtype=dtype)
  return Distiller(synth=synth, student_model=student, tx=optim.kd_optimizer(config.kd),
                   kd_batch=config.batch_size, temperature=config.kd.temperature, mesh=mesh,
                   kd_kind=kd_kind, kd_loss=config.kd.loss,
                   kd_augment=config.kd.augment,
                   kd_crop=(tuple(config.kd.crop_scale), tuple(config.kd.crop_ratio)))
