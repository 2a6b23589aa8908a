"""The original DeepInversion (`deepinversion`), as the release's synthesis/deepinversion.py.

Every call optimises a fresh batch of pixels x ~ N(0, I) in the normalised
space, drawn with the targets for the global batch (this device keeps its
stripe), with k (the release's g_steps) Adam steps (synth.lr_g,
synth.deepinv_betas) on

  bn*(L_BN(teacher) - student_bn*L_BN(student)) + oh*CE - adv*JS_T(s, t)
      + tv*TV_l1(x) + tv_l2*TV_l2(x) + l2*||x||_2,

where the teacher and student see x rolled by a random (dy, dx) up to
deepinversion.jitter of the image size and flipped (one draw for the whole
batch); the BN priors use no momentum; JS is the clamped Jensen-Shannon
divergence at T = deepinversion.js_T (the adaptive competition term). After
each step x is clipped to the valid pixel range [-mean/std, (1-mean)/std]. The
lowest-loss step's images, mapped back to [0, 1], go to the pool. Nothing but a
call counter carries across calls. For segmentation (`hp.segmentation`) there is
no CE term (an image has no class target) and JS is taken per pixel. The simplified
`deepinv` (sigmoid pixels, the FastDFKD loss) stays for equal-loss ablations.
"""

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from fastdfkd_jax.data import augment
from fastdfkd_jax.synthesis import base, losses


@struct.dataclass
class DeepInversionState:
  calls: jax.Array         # int32: synthesis calls so far


@struct.dataclass
class DeepInversionCarry:
  """What the k steps of a call carry (fields marked * are per-device)."""
  x: jax.Array             # * (B_local, H, W, C) normalised pixels
  opt: Any                 # * Adam state of x
  best_loss: jax.Array
  best_x: jax.Array        # * normalised pixels of the lowest-loss step
  metrics: Any
  targets: jax.Array       # * (B_local,)


@dataclasses.dataclass(frozen=True)
class DeepInversionHParams:
  """Static hyper-parameters (config.k, batch_size, synth.* and deepinversion.*)."""
  k: int
  batch_size: int
  lr: float
  betas: tuple[float, float]
  bn: float
  oh: float
  tv: float
  tv_l2: float
  l2: float
  jitter: float
  flip: bool
  js_T: float
  student_bn: float
  unroll: bool = False
  segmentation: bool = False     # config.task: per-pixel logits, no class targets


@base.register("deepinversion")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DeepInversionSynthesizer(base.Members):
  """Per-batch pixel inversion with the original DeepInversion loss."""
  uses_pool: ClassVar[bool] = True
  hp: DeepInversionHParams

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name: str | None,
                  unroll: bool, dtype) -> "DeepInversionSynthesizer":
    """The synthesizer of `config` (base.Synthesizer.from_config)."""
    s, d = config.synth, config.deepinversion
    hp = DeepInversionHParams(
        k=config.k, batch_size=config.batch_size, lr=s.lr_g, betas=tuple(s.deepinv_betas),
        bn=s.bn, oh=s.oh, tv=d.tv, tv_l2=d.tv_l2, l2=d.l2, jitter=d.jitter, flip=d.flip,
        js_T=d.js_T, student_bn=d.student_bn, unroll=unroll,
        segmentation=config.task == "segmentation")
    return cls(hp=hp,
               **base.members(info, teacher=teacher, student=student, axis_name=axis_name))

  def tx(self) -> optax.GradientTransformation:
    return optax.adam(self.hp.lr, b1=self.hp.betas[0], b2=self.hp.betas[1])

  def init(self, key: jax.Array, teacher_vars) -> DeepInversionState:
    del key, teacher_vars  # nothing but the counter persists
    return DeepInversionState(calls=jnp.int32(0))

  def synthesize(self, state: DeepInversionState, teacher_vars, student_vars,
                 key: jax.Array, adv_weight: jax.Array):
    """One call: end(k x inner_step(begin)) (see the module docstring)."""
    return base.scan_host_steps(self, state, teacher_vars, student_vars, key, adv_weight)

  def begin(self, state: DeepInversionState, key: jax.Array):
    """Fresh pixels and targets: (DeepInversionCarry, step keys (k,))."""
    del state
    k_x, k_y, k_steps = jax.random.split(key, 3)
    x = self._stripe(jax.random.normal(k_x, (self.hp.batch_size,) + self.image_shape))
    targets = self._stripe(
        jax.random.randint(k_y, (self.hp.batch_size,), 0, self.num_classes))
    names = ("loss", "loss_bn", "loss_adv", "loss_tv") + (
        () if self.hp.segmentation else losses.TARGET_METRICS)
    metric_zero = dict.fromkeys(names, 0.0)
    carry = DeepInversionCarry(x=x, opt=self.tx().init(x), best_loss=jnp.float32(jnp.inf),
                               best_x=x, metrics=jax.tree.map(jnp.float32, metric_zero),
                               targets=targets)
    return carry, jax.random.split(k_steps, self.hp.k)

  def jitter_flip(self, key: jax.Array, x: jax.Array) -> jax.Array:
    """The release's `jitter_and_flip`: one roll and one flip for the whole batch."""
    k_h, k_w, k_f = jax.random.split(key, 3)
    lim_h, lim_w = int(x.shape[1] * self.hp.jitter), int(x.shape[2] * self.hp.jitter)
    dy = jax.random.randint(k_h, (), -lim_h, lim_h + 1)
    dx = jax.random.randint(k_w, (), -lim_w, lim_w + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
    if self.hp.flip:
      x = jnp.where(jax.random.uniform(k_f) > 0.5, jnp.flip(x, axis=2), x)
    return x

  def loss_terms(self, x, targets, key, teacher_vars, student_vars, adv_weight):
    """The loss of normalised pixels x (this device's stripe) -> (loss, metrics)."""
    hp, axis = self.hp, self.axis_name
    teacher_vars, student_vars = jax.lax.stop_gradient((teacher_vars, student_vars))
    xa = self.jitter_flip(key, x)
    t_logits, t_aux = self.teacher.apply(teacher_vars, xa, train=False,
                                         mutable=[losses.BN_STATS_COLLECTION])
    s_logits, s_aux = self.student.apply(student_vars, xa, train=False,
                                         mutable=[losses.BN_STATS_COLLECTION])
    l_bn = (losses.bn_prior_plain(t_aux[losses.BN_STATS_COLLECTION])
            - hp.student_bn * losses.bn_prior_plain(s_aux[losses.BN_STATS_COLLECTION]))
    l_oh, target_metrics = losses.target_terms(t_logits, targets, hp.segmentation, axis)
    l_adv = -losses.js_divergence(s_logits, t_logits, hp.js_T, axis)
    l_tv = hp.tv * losses.tv_l1(x, axis) + hp.tv_l2 * losses.tv_l2(x, axis)
    loss = (hp.bn * l_bn + hp.oh * l_oh + adv_weight * l_adv + l_tv
            + hp.l2 * losses.l2_norm(x, axis))
    return loss, dict(loss_bn=l_bn, loss_adv=l_adv, loss_tv=l_tv, **target_metrics)

  def _clip(self, x):
    mean, std = jnp.asarray(self.mean), jnp.asarray(self.std)
    return jnp.clip(x, -mean / std, (1 - mean) / std)

  def inner_step(self, carry: DeepInversionCarry, step_key: jax.Array, state,
                 teacher_vars, student_vars, adv_weight) -> DeepInversionCarry:
    """One Adam step on the pixels, then the clip; keeps the lowest-loss batch."""
    del state
    (loss, metrics), g = jax.value_and_grad(self.loss_terms, has_aux=True)(
        carry.x, carry.targets, step_key, teacher_vars, student_vars, adv_weight)
    better = loss < carry.best_loss
    updates, opt = self.tx().update(g, carry.opt, carry.x)
    return carry.replace(
        x=self._clip(optax.apply_updates(carry.x, updates)), opt=opt,
        best_loss=jnp.where(better, loss, carry.best_loss),
        best_x=jnp.where(better, carry.x, carry.best_x), metrics=dict(metrics, loss=loss))

  def end(self, state: DeepInversionState, carry: DeepInversionCarry):
    """The best pixels back to [0, 1]: (state, images uint8, metrics)."""
    images = carry.best_x * jnp.asarray(self.std) + jnp.asarray(self.mean)
    metrics = dict(carry.metrics, best_loss=carry.best_loss)
    return state.replace(calls=state.calls + 1), augment.to_uint8(images), metrics

  def carry_specs(self, state: DeepInversionState):
    """shard_map specs of DeepInversionCarry: batch fields sharded, rest replicated."""
    del state
    axis = self.axis_name
    opt = jax.eval_shape(self.tx().init,
                         jax.ShapeDtypeStruct((2,) + self.image_shape, jnp.float32))
    return DeepInversionCarry(
        x=P(axis), opt=jax.tree.map(lambda a: P(axis) if a.ndim else P(), opt),
        best_loss=P(), best_x=P(axis), metrics=P(), targets=P(axis))
