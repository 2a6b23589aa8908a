"""The FastDFKD synthesizer: pure functions over an explicit state pytree.

`Synthesizer.synthesize(state, teacher_vars, student_vars, key, adv_weight)`
is per-device code (run inside `shard_map` over the data axis) that:
  1. draws z ~ N(0, I) (B, nz) and targets y ~ U[0, C) for the global batch
     and keeps this device's stripe;
  2. copies the meta-generator theta into fast params theta' and runs k inner
     Adam steps (betas 0.5/0.999, lr_g on theta', lr_z on z) as a `lax.scan`
     (fully unrolled where `unroll`): generator -> augmentation -> frozen
     teacher & student (eval-mode BN) -> bn*L_BN + oh*CE + adv*L_adv;
  3. keeps the lowest-loss batch inside the scan (no host sync);
  4. meta update: g = theta - theta'_k ('param_diff', Eq. 10) or the sum of
     the inner gradients ('sum_inner_grads', the release), fed to
     Adam(lr_g * k, betas 0.5/0.999); then updates the BN momentum buffers
     with the last inner step's statistics.
Only theta' and z (or pixels) are differentiated: teacher and student
variables are constants (`stop_gradient`), so no weight gradient is computed.

Methods: 'fast_meta' (above), 'fast' (sequential reuse: the generator itself is
optimised, its Adam state persists across calls, no copy, no meta step) and
'deepinv' (no reuse: fresh pixels from noise, sigmoid-parameterised, k Adam steps).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from fastdfkd_jax import loops, losses, parallel
from fastdfkd_jax.data import augment
from fastdfkd_jax.models import generator as generator_lib
from fastdfkd_jax.models import util as model_util


@struct.dataclass
class SynthState:
  """Everything synthesis carries across calls (replicated over devices)."""
  gen_params: Any          # meta-generator theta
  gen_batch_stats: Any     # generator BN running stats (unused in train mode)
  opt_state: Any           # meta Adam ('fast_meta'); persistent generator Adam ('fast')
  bn_momentum: Any         # [{'mean', 'var'}] per teacher BN layer
  has_momentum: jax.Array  # bool: buffers valid (False before the first call)
  calls: jax.Array         # int32: synthesis calls so far


@struct.dataclass
class InnerCarry:
  """What the k inner steps carry (fields marked * are per-device)."""
  fast: Any                # theta' (fast generator params)
  latent: jax.Array        # * z (B_local, nz), or pixel logits for deepinv
  gen_opt: Any             # inner Adam state of theta'
  latent_opt: Any          # * inner Adam state of z
  gen_bs: Any              # generator BN running stats
  best_loss: jax.Array     # lowest loss so far
  best_x: jax.Array        # * images of the lowest-loss step (B_local, H, W, C)
  grad_sum: Any            # sum of inner gradients (the release's meta-gradient)
  last: Any                # teacher BN input stats of the latest step
  metrics: Any             # loss terms of the latest step
  targets: jax.Array       # * drawn labels (B_local,)


@dataclasses.dataclass(frozen=True)
class SynthesisHParams:
  """Static hyper-parameters of one synthesizer (from the config)."""
  method: str = "fast_meta"
  k: int = 5
  batch_size: int = 256          # global synthesis batch
  nz: int = 256
  lr_g: float = 3e-3
  lr_z: float = 1e-2
  adv: float = 1.1
  bn: float = 10.0
  oh: float = 0.4
  bn_mmt: float = 0.9
  betas: tuple[float, float] = (0.5, 0.999)
  meta_grad: str = "param_diff"
  deepinv_lr: float = 0.1
  deepinv_betas: tuple[float, float] = (0.5, 0.99)
  unroll: bool = False           # fully unroll the k-step scan (XLA:CPU)


@dataclasses.dataclass(frozen=True)
class Synthesizer:
  """Generator + frozen teacher/student + hyper-parameters; methods are pure."""
  generator: nn.Module
  teacher: nn.Module
  student: nn.Module
  hp: SynthesisHParams
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  padding: int
  axis_name: str | None = parallel.AXIS

  # ---------------------------------------------------------------- init
  def gen_tx(self, lr: float) -> optax.GradientTransformation:
    b1, b2 = self.hp.betas
    return optax.adam(lr, b1=b1, b2=b2)

  def meta_tx(self) -> optax.GradientTransformation:
    return self.gen_tx(self.hp.lr_g * self.hp.k)

  def init(self, key: jax.Array, teacher_vars) -> SynthState:
    """Fresh state: generator init, optimizer state, zero momentum buffers.

    Host-side (outside shard_map): the teacher's BN layout is read with eval_shape.
    """
    gen_vars = model_util.init_variables(self.generator.clone(axis_name=None), key,
                                         (self.hp.nz,))
    params = gen_vars["params"]
    opt = self.gen_tx(self.hp.lr_g).init(params) if self.hp.method == "fast" \
        else self.meta_tx().init(params)
    teacher = self.teacher.clone(axis_name=None)
    stats = jax.eval_shape(lambda: teacher.apply(
        teacher_vars, jnp.zeros((2,) + self.image_shape), train=False,
        mutable=[losses.BN_STATS_COLLECTION])[1])
    momentum = losses.init_momentum(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats))
    return SynthState(gen_params=params, gen_batch_stats=gen_vars.get("batch_stats", {}),
                      opt_state=opt, bn_momentum=momentum,
                      has_momentum=jnp.array(False), calls=jnp.int32(0))

  # ----------------------------------------------------------- per step
  def _augment(self, key, x):
    return augment_stripe(key, x, self.mean, self.std, self.padding, self.axis_name)

  def _devices(self):
    return 1 if self.axis_name is None else jax.lax.axis_size(self.axis_name)

  def _stripe(self, x):
    return x if self.axis_name is None else parallel.local_stripe(x, self.axis_name)

  def loss_terms(self, x, targets, key, teacher_vars, student_vars, momentum,
                 has_momentum, adv_weight):
    """Synthesis loss of a batch of images x in [0,1] (this device's stripe).

    Returns (loss, (this call's BN input stats, metrics dict)).
    """
    teacher_vars, student_vars = jax.lax.stop_gradient((teacher_vars, student_vars))
    xa = self._augment(key, x)
    t_logits, aux = self.teacher.apply(teacher_vars, xa, train=False,
                                       mutable=[losses.BN_STATS_COLLECTION])
    s_logits = self.student.apply(student_vars, xa, train=False)
    l_bn, last = losses.bn_prior_loss(aux[losses.BN_STATS_COLLECTION], momentum,
                                      has_momentum, self.hp.bn_mmt)
    l_oh = losses.one_hot_loss(t_logits, targets, self.axis_name)
    l_adv = losses.adversarial_loss(s_logits, t_logits, self.axis_name)
    loss = self.hp.bn * l_bn + self.hp.oh * l_oh + adv_weight * l_adv
    t_acc = parallel.pmean(jnp.mean(t_logits.argmax(-1) == targets), self.axis_name)
    return loss, (last, dict(loss_bn=l_bn, loss_oh=l_oh, loss_adv=l_adv,
                             teacher_target_acc=t_acc))

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
    carry, step_keys = self.begin(state, key)

    def body(carry, step_key):
      return self.inner_step(carry, step_key, state, teacher_vars, student_vars,
                             adv_weight), None

    carry, _ = loops.scan(body, carry, step_keys, self.hp.unroll)
    return self.end(state, carry)

  # The three pieces of a call, also dispatched one by one from the host on
  # XLA:CPU (`Distiller.compile_synth`): one compiled inner step instead of k
  # unrolled copies (compile time) and no XLA while loop (run time).
  def _latent_tx(self) -> optax.GradientTransformation:
    if self.hp.method == "deepinv":
      b1, b2 = self.hp.deepinv_betas
      return optax.adam(self.hp.deepinv_lr, b1=b1, b2=b2)
    b1, b2 = self.hp.betas
    return optax.adam(self.hp.lr_z, b1=b1, b2=b2)

  def _inner_gen_tx(self):
    return None if self.hp.method == "deepinv" else self.gen_tx(self.hp.lr_g)

  def begin(self, state: SynthState, key: jax.Array):
    """Draws z (or pixels) and targets, copies theta: (InnerCarry, step keys (k,))."""
    hp = self.hp
    k_z, k_y, k_steps = jax.random.split(key, 3)
    b_global = hp.batch_size
    targets = self._stripe(jax.random.randint(k_y, (b_global,), 0, self.num_classes))
    latent_shape = self.image_shape if hp.method == "deepinv" else (hp.nz,)
    latent = self._stripe(jax.random.normal(k_z, (b_global,) + tuple(latent_shape)))
    gen_tx = self._inner_gen_tx()
    if gen_tx is None:
      gen_opt = None
    else:
      gen_opt = state.opt_state if hp.method == "fast" else gen_tx.init(state.gen_params)
    x_shape = (latent.shape[0],) + self.image_shape
    metric_zero = dict(loss=0.0, loss_bn=0.0, loss_oh=0.0, loss_adv=0.0,
                       teacher_target_acc=0.0)
    carry = InnerCarry(
        fast=state.gen_params, latent=latent, gen_opt=gen_opt,
        latent_opt=self._latent_tx().init(latent), gen_bs=state.gen_batch_stats,
        best_loss=jnp.float32(jnp.inf),
        best_x=parallel.to_varying(jnp.zeros(x_shape, jnp.float32), self.axis_name),
        grad_sum=jax.tree.map(jnp.zeros_like, state.gen_params),
        last=jax.tree.map(jnp.zeros_like, state.bn_momentum),
        metrics=jax.tree.map(jnp.float32, metric_zero), targets=targets)
    return carry, jax.random.split(k_steps, hp.k)

  def inner_step(self, carry: "InnerCarry", step_key: jax.Array, state: SynthState,
                 teacher_vars, student_vars, adv_weight) -> "InnerCarry":
    """One inner Adam step on (theta', z); keeps the lowest-loss batch."""
    hp = self.hp

    def objective(trainable):
      fast, z = trainable
      if hp.method == "deepinv":
        x, gen_bs = jax.nn.sigmoid(z), carry.gen_bs
      else:
        x, upd = self.generator.apply({"params": fast, "batch_stats": carry.gen_bs}, z,
                                      train=True, mutable=["batch_stats"])
        gen_bs = upd["batch_stats"]
      x = x.astype(jnp.float32)
      loss, (last, metrics) = self.loss_terms(
          x, carry.targets, step_key, teacher_vars, student_vars, state.bn_momentum,
          state.has_momentum, adv_weight)
      return loss, (x, gen_bs, last, metrics)

    (loss, (x, gen_bs, last, metrics)), (g_fast, g_z) = jax.value_and_grad(
        objective, has_aux=True)((carry.fast, carry.latent))
    better = loss < carry.best_loss
    upd_z, latent_opt = self._latent_tx().update(g_z, carry.latent_opt, carry.latent)
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

  def end(self, state: SynthState, carry: "InnerCarry"):
    """Meta update and BN momentum update: (state, images uint8, metrics)."""
    hp = self.hp
    params, opt_state = state.gen_params, state.opt_state
    if hp.method == "fast_meta":
      meta_grad = (jax.tree.map(jnp.subtract, params, carry.fast)
                   if hp.meta_grad == "param_diff" else carry.grad_sum)
      updates, opt_state = self.meta_tx().update(meta_grad, opt_state, params)
      params = optax.apply_updates(params, updates)
    elif hp.method == "fast":
      params, opt_state = carry.fast, carry.gen_opt
    momentum = losses.update_momentum(state.bn_momentum, carry.last, state.has_momentum,
                                      hp.bn_mmt)
    new_state = SynthState(gen_params=params, gen_batch_stats=carry.gen_bs,
                           opt_state=opt_state, bn_momentum=momentum,
                           has_momentum=jnp.array(True), calls=state.calls + 1)
    metrics = dict(carry.metrics, best_loss=carry.best_loss)
    return new_state, augment.to_uint8(carry.best_x), metrics

  def carry_specs(self, state: SynthState):
    """shard_map specs of InnerCarry: per-device batch fields sharded, rest replicated."""
    from jax.sharding import PartitionSpec as P
    axis = self.axis_name
    latent_shape = self.image_shape if self.hp.method == "deepinv" else (self.hp.nz,)
    opt = jax.eval_shape(self._latent_tx().init,
                         jax.ShapeDtypeStruct((2,) + tuple(latent_shape), jnp.float32))
    return InnerCarry(
        fast=P(), latent=P(axis), gen_opt=P(),
        latent_opt=jax.tree.map(lambda a: P(axis) if a.ndim else P(), opt),
        gen_bs=P(), best_loss=P(), best_x=P(axis), grad_sum=P(), last=P(), metrics=P(),
        targets=P(axis))

  def reset_first_layer(self, state: SynthState, key: jax.Array) -> SynthState:
    """The release's `reset_l0`: re-initialise the generator's first linear layer."""
    return state.replace(gen_params=generator_lib.reset_first_layer(state.gen_params, key))


def augment_stripe(key: jax.Array, x: jax.Array, mean, std, padding: int,
                   axis_name: str | None) -> jax.Array:
  """The release's augmentation with randomness drawn for the *global* batch.

  Crop offsets and flip decisions are drawn for all B_global images and each
  device applies its stripe, so the result does not depend on the device count.
  x: (B_local, H, W, C) float in [0, 1] -> normalised float, same shape.
  """
  n = x.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  k_crop, k_flip = jax.random.split(key)
  stripe = (lambda a: a) if axis_name is None else (
      lambda a: parallel.local_stripe(a, axis_name))
  _, h, w, c = x.shape
  if padding:
    offsets = stripe(augment.crop_offsets(k_crop, n, padding))
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
  flip = stripe(augment.flip_mask(k_flip, n))
  x = jnp.where(flip[:, None, None, None], jnp.flip(x, axis=2), x)
  return augment.normalize(x, mean, std)


def hparams_from_config(config, unroll: bool) -> SynthesisHParams:
  s = config.synth
  return SynthesisHParams(
      method=config.method, k=config.k, batch_size=config.batch_size, nz=s.nz,
      lr_g=s.lr_g, lr_z=s.lr_z, adv=s.adv, bn=s.bn, oh=s.oh, bn_mmt=s.bn_mmt,
      betas=tuple(s.betas), meta_grad=s.meta_grad, deepinv_lr=s.deepinv_lr,
      deepinv_betas=tuple(s.deepinv_betas), unroll=unroll)
