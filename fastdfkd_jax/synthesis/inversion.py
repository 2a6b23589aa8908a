"""Model inversion with k inner Adam steps: the engine of fast_meta, fast and deepinv.

`InversionSynthesizer.synthesize(state, teacher_vars, student_vars, key, adv_weight)`
is per-device code (run inside `shard_map` over the data axis) that:
  1. draws the latents (z ~ N(0, I), or pixel logits) and targets y ~ U[0, C)
     for the global batch and keeps this device's stripe;
  2. runs k inner Adam steps on the trainables (the fast generator params theta'
     and the latents) as a `lax.scan` (fully unrolled where `hp.unroll`): render
     -> augmentation (`hp.augment`: pad-crop-flip, or RandomResizedCrop-flip) ->
     frozen teacher & student (eval-mode BN) ->
     bn*L_BN + oh*CE + adv*L_adv (for segmentation, `hp.segmentation`, no CE:
     bn*L_BN + adv*L_adv with L_adv per pixel);
  3. keeps the lowest-loss batch inside the scan (no host sync; `hp.keep='last'`:
     the last step's, as the ImageNet release);
  4. lets the method update its generator from the inner loop (`_next_generator`)
     and updates the BN momentum buffers with the last inner step's statistics.
Only theta' and the latents are differentiated: teacher and student variables are
constants (`stop_gradient`), so no weight gradient is computed.

A method subclasses it and says how its generator enters and leaves the inner
loop (`state_tx`, `_begin_gen_opt`, `_next_generator`), and, to optimise
something other than a generator's latents, how images are rendered
(`latent_shape`, `latent_tx`, `_inner_gen_tx`, `render`), and, to keep its latent
across calls, where a call's latent starts and how it is updated (`_init_latent`,
`_start_latent`, `_next_latent`: fast_meta's meta latent).
"""

import abc
import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import models
from fastdfkd_jax.run import parallel
from fastdfkd_jax.data import augment
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.synthesis import base, inversion_state, losses


# The state, the inner carry and the hyper-parameters live in `inversion_state`.
SynthState, InnerCarry = inversion_state.SynthState, inversion_state.InnerCarry
SynthesisHParams = inversion_state.SynthesisHParams
hparams_from_config = inversion_state.hparams_from_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class InversionSynthesizer(base.Members, abc.ABC):
  """Generator + frozen teacher/student + hyper-parameters; methods are pure."""
  uses_pool: ClassVar[bool] = True
  generator: nn.Module
  hp: SynthesisHParams

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name: str | None,
                  unroll: bool, dtype) -> "InversionSynthesizer":
    """The synthesizer of `config` (base.Synthesizer.from_config)."""
    h, _, c = info.image_shape
    generator = models.get_model(config.synth.generator, nz=config.synth.nz,
                                 ngf=config.synth.ngf, img_size=h, channels=c,
                                 axis_name=axis_name,
                                 dtype=dtype)
    return cls(generator=generator, hp=hparams_from_config(config, unroll),
               **base.members(info, teacher=teacher, student=student, axis_name=axis_name))

  # ------------------------------------------------------- method hooks
  def gen_tx(self, lr: float) -> optax.GradientTransformation:
    b1, b2 = self.hp.betas
    return optax.adam(lr, b1=b1, b2=b2)

  @abc.abstractmethod
  def state_tx(self) -> optax.GradientTransformation:
    """The generator optimizer whose state `SynthState.opt_state` keeps across calls."""

  @abc.abstractmethod
  def _begin_gen_opt(self, state: SynthState):
    """The inner optimizer state of theta' at the first inner step (None: untrained)."""

  @abc.abstractmethod
  def _next_generator(self, state: SynthState, carry: InnerCarry):
    """(gen_params, opt_state) of the new state, from the finished inner loop."""

  def _init_latent(self, key: jax.Array) -> tuple[Any, Any]:
    """(latent, latent_opt) of a fresh state: none kept across calls."""
    del key
    return None, None

  def _next_latent(self, state: SynthState, carry: InnerCarry) -> tuple[Any, Any]:
    """(latent, latent_opt) of the new state, from the finished inner loop."""
    del carry
    return state.latent, state.latent_opt

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return tuple(self.generator.latent_shape)

  def _latent_example(self):
    """Shapes of a latent batch (two rows): the layout of its optimizer state."""
    return jax.ShapeDtypeStruct((2,) + tuple(self.latent_shape), jnp.float32)

  def latent_tx(self) -> optax.GradientTransformation:
    b1, b2 = self.hp.betas
    return optax.adam(self.hp.lr_z, b1=b1, b2=b2)

  def _inner_gen_tx(self) -> optax.GradientTransformation | None:
    return self.gen_tx(self.hp.lr_g)

  def render(self, fast, latent, gen_bs):
    """Images in [0, 1] of the trainables, and the generator's new BN stats."""
    x, upd = self.generator.apply({"params": fast, "batch_stats": gen_bs}, latent,
                                  train=True, mutable=["batch_stats"])
    return x, upd["batch_stats"]

  # ---------------------------------------------------------------- init
  def init(self, key: jax.Array, teacher_vars) -> SynthState:
    """Fresh state: generator init, optimizer state, zero momentum buffers.

    Host-side (outside shard_map): the teacher's BN layout is read with eval_shape.
    """
    gen_vars = self._init_generator(key)
    params = gen_vars["params"]
    teacher = self.teacher.clone(axis_name=None)
    stats = jax.eval_shape(lambda: teacher.apply(
        teacher_vars, jnp.zeros((2,) + self.image_shape), train=False,
        mutable=[losses.BN_STATS_COLLECTION])[1])
    momentum = losses.init_momentum(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats))
    latent, latent_opt = self._init_latent(jax.random.fold_in(key, 1))
    return SynthState(gen_params=params, gen_batch_stats=gen_vars.get("batch_stats", {}),
                      opt_state=self.state_tx().init(params), bn_momentum=momentum,
                      has_momentum=jnp.array(False), calls=jnp.int32(0), latent=latent,
                      latent_opt=latent_opt)

  def _init_generator(self, key: jax.Array) -> dict:
    """{'params', 'batch_stats'} of a fresh generator."""
    return model_util.init_variables(self.generator.clone(axis_name=None), key,
                                     tuple(self.generator.latent_shape))

  # ----------------------------------------------------------- per step
  def loss_terms(self, x, targets, key, teacher_vars, student_vars, momentum,
                 has_momentum, adv_weight):
    """Synthesis loss of a batch of images x in [0,1] (this device's stripe).

    Returns (loss, (this call's BN input stats, metrics dict)).
    """
    teacher_vars, student_vars = jax.lax.stop_gradient((teacher_vars, student_vars))
    xa = self.augment(key, x)
    t_logits, aux = self.teacher.apply(teacher_vars, xa, train=False,
                                       mutable=[losses.BN_STATS_COLLECTION])
    s_logits = self.student.apply(student_vars, xa, train=False)
    l_bn, last = losses.bn_prior_loss(aux[losses.BN_STATS_COLLECTION], momentum,
                                      has_momentum, self.hp.bn_mmt)
    l_oh, target_metrics = losses.target_terms(t_logits, targets, self.hp.segmentation,
                                               self.axis_name)
    l_adv = losses.adversarial_loss(s_logits, t_logits, self.axis_name)
    loss = self.hp.bn * l_bn + self.hp.oh * l_oh + adv_weight * l_adv
    metrics = dict(loss_bn=l_bn, loss_adv=l_adv, **target_metrics)
    if self.hp.balance:
      metrics["loss_balance"] = losses.balance_loss(t_logits, self.axis_name)
      loss = loss + self.hp.balance * metrics["loss_balance"]
    return loss, (last, metrics)

  def augment(self, key, x):
    """The synthesis augmentation of `hp.augment`, normalised (this device's stripe)."""
    if self.hp.augment == "resized_crop":
      x = augment.resized_crop_stripe(key, x, self.hp.crop_scale, self.hp.crop_ratio,
                                      self.axis_name)
      return augment.normalize(x, self.mean, self.std)
    return augment.augment_stripe(key, x, self.mean, self.std, self.padding, self.axis_name)

  def draw_targets(self, key: jax.Array) -> jax.Array:
    """The class targets of the global batch (B,): uniform draws."""
    return jax.random.randint(key, (self.hp.batch_size,), 0, self.num_classes)

  def _start_latent(self, state: SynthState, key: jax.Array, targets: jax.Array):
    """The latents of the global batch a call starts from (fresh N(0, I) draws), given
    the global batch's targets."""
    del state, targets
    return jax.random.normal(key, (self.hp.batch_size,) + tuple(self.latent_shape))

  # --------------------------------------------------------- synthesize
  def synthesize(self, state: SynthState, teacher_vars, student_vars, key: jax.Array,
                 adv_weight: jax.Array):
    """One synthesis call (per-device code). See the module docstring.

    Args:
      state: SynthState (replicated).
      teacher_vars, student_vars: frozen variables (replicated).
      key: PRNG key (replicated); all randomness is drawn for the global batch.
      adv_weight: scalar adversarial weight (0 during warmup), traced.

    Returns:
      (new state, best images uint8 (B_local, H, W, C), metrics dict of scalars).
    """
    return base.scan_host_steps(self, state, teacher_vars, student_vars, key, adv_weight)

  # The three pieces of a call, also dispatched one by one from the host on
  # XLA:CPU (`Distiller.compile_synth`): one compiled inner step instead of k
  # unrolled copies (compile time) and no XLA while loop (run time).
  def begin(self, state: SynthState, key: jax.Array):
    """Draws the latents and targets, copies theta: (InnerCarry, step keys (k,))."""
    hp = self.hp
    k_z, k_y, k_steps = jax.random.split(key, 3)
    global_targets = self.draw_targets(k_y)
    targets = self._stripe(global_targets)
    start = self._start_latent(state, k_z, global_targets)
    latent = jax.tree.map(self._stripe, start)
    gen_opt = self._begin_gen_opt(state)
    x_shape = (targets.shape[0],) + self.image_shape
    names = ("loss", "loss_bn", "loss_adv") + (
        () if hp.segmentation else losses.TARGET_METRICS) + (
        ("loss_balance",) if hp.balance else ())
    metric_zero = dict.fromkeys(names, 0.0)
    carry = InnerCarry(
        fast=state.gen_params, latent=latent, gen_opt=gen_opt,
        latent_opt=self.latent_tx().init(latent), gen_bs=state.gen_batch_stats,
        best_loss=jnp.float32(jnp.inf),
        best_x=parallel.to_varying(jnp.zeros(x_shape, jnp.float32), self.axis_name),
        grad_sum=jax.tree.map(jnp.zeros_like, state.gen_params),
        last=jax.tree.map(jnp.zeros_like, state.bn_momentum),
        metrics=jax.tree.map(jnp.float32, metric_zero), targets=targets,
        start=start if self.hp.meta_latent else None)
    return carry, jax.random.split(k_steps, hp.k)

  def inner_step(self, carry: InnerCarry, step_key: jax.Array, state: SynthState,
                 teacher_vars, student_vars, adv_weight) -> InnerCarry:
    """One inner Adam step on (theta', latents); keeps the lowest-loss batch."""

    def objective(trainable):
      fast, z = trainable
      x, gen_bs = self.render(fast, z, carry.gen_bs)
      x = x.astype(jnp.float32)
      loss, (last, metrics) = self.loss_terms(
          x, carry.targets, step_key, teacher_vars, student_vars, state.bn_momentum,
          state.has_momentum, adv_weight)
      return loss, (x, gen_bs, last, metrics)

    (loss, (x, gen_bs, last, metrics)), (g_fast, g_z) = jax.value_and_grad(
        objective, has_aux=True)((carry.fast, carry.latent))
    better = (loss < carry.best_loss) | (self.hp.keep == "last")
    upd_z, latent_opt = self.latent_tx().update(g_z, carry.latent_opt, carry.latent)
    fast, gen_opt, grad_sum = carry.fast, carry.gen_opt, carry.grad_sum
    gen_tx = self._inner_gen_tx()
    if gen_tx is not None:
      grad_sum = jax.tree.map(jnp.add, grad_sum, g_fast)
      upd_g, gen_opt = gen_tx.update(g_fast, gen_opt, fast)
      fast = optax.apply_updates(fast, upd_g)
    return carry.replace(
        fast=fast, latent=optax.apply_updates(carry.latent, upd_z), gen_opt=gen_opt,
        latent_opt=latent_opt, gen_bs=gen_bs, best_loss=jnp.where(better, loss, carry.best_loss),
        best_x=jnp.where(better, x, carry.best_x), grad_sum=grad_sum, last=last,
        metrics=dict(metrics, loss=loss))

  def end(self, state: SynthState, carry: InnerCarry):
    """Generator update and BN momentum update: (state, images uint8, metrics)."""
    params, opt_state = self._next_generator(state, carry)
    latent, latent_opt = self._next_latent(state, carry)
    momentum = losses.update_momentum(state.bn_momentum, carry.last, state.has_momentum,
                                      self.hp.bn_mmt)
    new_state = SynthState(gen_params=params, gen_batch_stats=carry.gen_bs,
                           opt_state=opt_state, bn_momentum=momentum,
                           has_momentum=jnp.array(True), calls=state.calls + 1,
                           latent=latent, latent_opt=latent_opt)
    metrics = dict(carry.metrics, best_loss=carry.best_loss)
    return new_state, augment.to_uint8(carry.best_x), metrics

  def carry_specs(self, state: SynthState):
    """shard_map specs of InnerCarry: per-device batch fields sharded, rest replicated."""
    del state  # the carry's layout depends only on the hyper-parameters
    axis = self.axis_name
    opt = jax.eval_shape(self.latent_tx().init, self._latent_example())
    return InnerCarry(
        fast=P(), latent=P(axis), gen_opt=P(),
        latent_opt=jax.tree.map(lambda a: P(axis) if a.ndim else P(), opt),
        gen_bs=P(), best_loss=P(), best_x=P(axis), grad_sum=P(), last=P(), metrics=P(),
        targets=P(axis), start=P() if self.hp.meta_latent else None)
