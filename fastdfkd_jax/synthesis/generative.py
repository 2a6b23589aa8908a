"""Generator-vs-student baselines: `generative` and the release's DAFL, ZSKT, DFQ, DFAD.

The release's `GenerativeSynthesizer` (datafree/synthesis/generative.py): one
generator G (models.generator) trained by Adam (synth.lr_g, synth.betas) against
the frozen teacher and student on, for x = G(z), z ~ N(0, I), normalised and not
augmented,
  bn * L_bn + oh * L_oh + adv * L_adv + balance * L_balance + act * L_act
  L_bn: the DeepInversion prior of the teacher's BN inputs (no momentum buffers);
  L_oh: cross-entropy of the teacher's logits against their own argmax;
  L_act: -mean |f|, f the teacher's penultimate features (DAFL's activation term);
  L_balance: sum_c p_c log p_c, p the batch-mean teacher softmax (its entropy is
    maximised: classes balanced);
  L_adv: -criterion(student, teacher) with the KD criterion `kd.loss` at T = 1:
    'kl' (batch-mean KL) or 'l1' (mean absolute logit difference, DFAD), as the
    release uses one criterion for both.
Every batch mean is a global-batch mean (pmean over the data axis), so any
device count gives the same value. The student and teacher are constants.
With segmentation models (logits per pixel) every term is taken per pixel: L_oh
against the teacher's per-pixel argmax, L_balance over the batch's pixels, L_adv
the pixel-wise criterion, L_act on the features the model sows (the map before
its classifier).

A round (the release's `datafree_kd.py`) is `g_steps` = config.k generator
updates (`synthesize`), then `kd_steps` = synth.kd_steps student updates each on
a fresh `sample` (no pool); the run loop makes kd.steps // kd_steps rounds an
epoch. `generative` takes the weights from synth.*; `dafl`, `zskt`, `dfq` and
`dfad` are the same synthesizer whose weights and criterion `config_checks.validate`
holds to the release's scripts (config_lib.GENERATIVE_PRESETS).
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from fastdfkd_jax.training import objectives as kd_losses
from fastdfkd_jax import models
from fastdfkd_jax.run import parallel
from fastdfkd_jax.data import augment
from fastdfkd_jax.models import layers, util as model_util
from fastdfkd_jax.synthesis import base, losses


@struct.dataclass
class GenState:
  """The generator and its Adam state (replicated, checkpointed with the run)."""
  gen_params: Any
  gen_batch_stats: Any     # BN running stats (the generator always runs in train mode)
  opt_state: Any
  calls: jax.Array         # int32: generator updates so far


@struct.dataclass
class GenCarry:
  """What the g_steps generator updates of one call carry (* per-device)."""
  state: GenState
  images: jax.Array        # * uint8 batch of the latest update (B_local, H, W, C)
  metrics: Any


@dataclasses.dataclass(frozen=True)
class GenerativeHParams:
  """Static hyper-parameters (from the config)."""
  g_steps: int = 1
  kd_steps: int = 5
  batch_size: int = 256          # global batch of generator updates
  nz: int = 256
  lr_g: float = 1e-3
  betas: tuple[float, float] = (0.5, 0.999)
  adv: float = 0.0
  bn: float = 0.0
  oh: float = 0.0
  act: float = 0.0
  balance: float = 0.0
  criterion: str = "kl"          # 'kl' | 'l1': adversarial criterion (= kd.loss)
  unroll: bool = False           # trace the g_steps straight-line (XLA:CPU)


def activation_loss(features: jax.Array, axis_name: str | None = None) -> jax.Array:
  """-mean |features| over the global batch (DAFL's activation term)."""
  return -parallel.pmean(jnp.abs(features.astype(jnp.float32)).mean(), axis_name)


balance_loss = losses.balance_loss   # DAFL's class-balance term (synthesis/losses.py)


def adversarial_loss(student_logits, teacher_logits, criterion: str,
                     axis_name: str | None = None) -> jax.Array:
  """-criterion(student, teacher) at T = 1 ('kl' or 'l1'), global-batch mean."""
  return -kd_losses.kd_objective(student_logits, teacher_logits, criterion, 1.0, axis_name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerativeSynthesizer(base.Members):
  """Generator + frozen teacher/student + hyper-parameters; methods are pure."""
  uses_pool: ClassVar[bool] = False
  generator: nn.Module
  hp: GenerativeHParams

  @property
  def g_steps(self) -> int:
    return self.hp.g_steps

  @property
  def kd_steps(self) -> int:
    return self.hp.kd_steps

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name: str | None,
                  unroll: bool, dtype) -> "GenerativeSynthesizer":
    """The synthesizer of `config` (base.Synthesizer.from_config)."""
    s = config.synth
    h, _, c = info.image_shape
    generator = models.get_model("generator", nz=s.nz, ngf=s.ngf, img_size=h, channels=c,
                                 axis_name=axis_name,
                                 dtype=dtype)
    hp = GenerativeHParams(
        g_steps=config.k, kd_steps=s.kd_steps, batch_size=config.batch_size, nz=s.nz,
        lr_g=s.lr_g, betas=tuple(s.betas), adv=s.adv, bn=s.bn, oh=s.oh, act=s.act,
        balance=s.balance, criterion=config.kd.loss, unroll=unroll)
    return cls(generator=generator, hp=hp,
               **base.members(info, teacher=teacher, student=student, axis_name=axis_name))

  def tx(self) -> optax.GradientTransformation:
    b1, b2 = self.hp.betas
    return optax.adam(self.hp.lr_g, b1=b1, b2=b2)

  def init(self, key: jax.Array, teacher_vars) -> GenState:
    """Fresh generator and Adam state (host-side, outside shard_map)."""
    del teacher_vars  # no teacher-shaped state
    gen_vars = model_util.init_variables(self.generator.clone(axis_name=None), key,
                                         (self.hp.nz,))
    params = gen_vars["params"]
    return GenState(gen_params=params, gen_batch_stats=gen_vars.get("batch_stats", {}),
                    opt_state=self.tx().init(params), calls=jnp.int32(0))

  # ------------------------------------------------------------ per step
  def _render(self, params, batch_stats, key, n: int):
    """This device's stripe of G(z) for a global batch of n: (images in [0, 1], BN stats)."""
    z = self._stripe(jax.random.normal(key, (n, self.hp.nz)))
    x, upd = self.generator.apply({"params": params, "batch_stats": batch_stats}, z,
                                  train=True, mutable=["batch_stats"])
    return x.astype(jnp.float32), upd["batch_stats"]

  def loss_terms(self, x, teacher_vars, student_vars, adv_weight):
    """The weighted loss of images x in [0, 1] (this device's stripe) and its terms."""
    teacher_vars, student_vars = jax.lax.stop_gradient((teacher_vars, student_vars))
    xn = augment.normalize(x, self.mean, self.std)
    t_logits, aux = self.teacher.apply(teacher_vars, xn, train=False,
                                       mutable=[losses.BN_STATS_COLLECTION, layers.FEATURES])
    stats = aux[losses.BN_STATS_COLLECTION]
    l_bn, _ = losses.bn_prior_loss(stats, losses.init_momentum(stats), jnp.array(False), 0.0)
    l_oh = losses.one_hot_loss(t_logits, t_logits.argmax(-1), self.axis_name)
    l_act = activation_loss(layers.penultimate(aux), self.axis_name)
    l_balance = balance_loss(t_logits, self.axis_name)
    l_adv = jnp.float32(0.0)
    if self.hp.adv > 0:  # the release runs the student only then
      s_logits = self.student.apply(student_vars, xn, train=False)
      l_adv = adversarial_loss(s_logits, t_logits, self.hp.criterion, self.axis_name)
    hp = self.hp
    loss = (hp.bn * l_bn + hp.oh * l_oh + adv_weight * l_adv + hp.balance * l_balance
            + hp.act * l_act)
    return loss, dict(loss=loss, loss_bn=l_bn, loss_oh=l_oh, loss_adv=l_adv,
                      loss_act=l_act, loss_balance=l_balance)

  def _update(self, state: GenState, teacher_vars, student_vars, key, adv_weight):
    """One Adam step on the generator -> (state, images uint8, metrics)."""

    def objective(params):
      x, batch_stats = self._render(params, state.gen_batch_stats, key, self.hp.batch_size)
      loss, metrics = self.loss_terms(x, teacher_vars, student_vars, adv_weight)
      return loss, (x, batch_stats, metrics)

    (_, (x, batch_stats, metrics)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.gen_params)
    updates, opt_state = self.tx().update(grads, state.opt_state, state.gen_params)
    new = GenState(gen_params=optax.apply_updates(state.gen_params, updates),
                   gen_batch_stats=batch_stats, opt_state=opt_state, calls=state.calls + 1)
    return new, augment.to_uint8(x), metrics

  def generator_step(self, state: GenState, teacher_vars, student_vars, key: jax.Array,
                     adv_weight: jax.Array):
    """One generator update against the frozen student -> (state, metrics)."""
    state, _, metrics = self._update(state, teacher_vars, student_vars, key, adv_weight)
    return state, metrics

  def sample(self, state: GenState, key: jax.Array, n: int) -> jax.Array:
    """This device's stripe of n fresh generator images, uint8 (no update)."""
    x, _ = self._render(state.gen_params, state.gen_batch_stats, key, n)
    return augment.to_uint8(x)

  # ------------------------------------------------------- synthesize
  def synthesize(self, state: GenState, teacher_vars, student_vars, key: jax.Array,
                 adv_weight: jax.Array):
    """g_steps generator updates -> (state, the last update's images uint8, metrics)."""
    return base.scan_host_steps(self, state, teacher_vars, student_vars, key, adv_weight)

  # The pieces of a call, dispatched one by one from the host on XLA:CPU.
  def begin(self, state: GenState, key: jax.Array):
    """(GenCarry, step keys (g_steps,))."""
    b_local = self.hp.batch_size
    if self.axis_name is not None:
      b_local //= jax.lax.axis_size(self.axis_name)
    images = jnp.zeros((b_local,) + self.image_shape, jnp.uint8)
    zero = jnp.float32(0.0)
    metrics = dict(loss=zero, loss_bn=zero, loss_oh=zero, loss_adv=zero, loss_act=zero,
                   loss_balance=zero)
    carry = GenCarry(state=state, images=parallel.to_varying(images, self.axis_name),
                     metrics=metrics)
    return carry, jax.random.split(key, self.hp.g_steps)

  def inner_step(self, carry: GenCarry, step_key: jax.Array, state: GenState, teacher_vars,
                 student_vars, adv_weight) -> GenCarry:
    """One generator update."""
    del state  # the carry holds the state being updated
    new, images, metrics = self._update(carry.state, teacher_vars, student_vars, step_key,
                                        adv_weight)
    return GenCarry(state=new, images=images, metrics=metrics)

  def end(self, state: GenState, carry: GenCarry):
    """(state, images, metrics) of the finished updates."""
    del state
    return carry.state, carry.images, carry.metrics

  def carry_specs(self, state: GenState):
    """shard_map specs of GenCarry: the images sharded, the rest replicated."""
    del state
    return GenCarry(state=P(), images=P(self.axis_name), metrics=P())


for _name in ("generative", "dafl", "zskt", "dfq", "dfad"):
  base.register(_name)(GenerativeSynthesizer)
