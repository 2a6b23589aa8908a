"""Contrastive Model Inversion (`cmi`), as the release's datafree/synthesis/contrastive.py.

Every call (per-device code inside `shard_map`; randomness drawn for the global batch):
  1. re-initialises the generator (`generator.reinitialize`: Dense/Conv kernels
     N(0, cmi.init_std), BN scales N(1, cmi.init_std), biases 0) and draws
     z ~ N(0, I) and targets y ~ U[0, C); this device keeps its stripe;
  2. runs k (the release's g_steps) steps of one Adam (synth.lr_g, synth.betas) on
     the generator and z together, and of the MLP head's Adam (synth.lr_g,
     cmi.head_betas), on bn*L_BN + oh*CE + adv*L_adv + cr*L_cr:
       - the global view (the shared crop-with-padding + flip + normalise) goes
         through the frozen teacher (L_BN without momentum, CE against y) and
         student (the masked-KL adversarial term);
       - the local view (`augment.resized_crop_stripe`) through the teacher
         again; a view's feature is the concatenation of the per-image spatial
         means of the inputs of all teacher BN layers (the release's
         `InstanceMeanHook`s);
       - L_cr (`losses.contrastive_loss`): the head's projections of the local
         features (the batch's and cmi.n_neg rows drawn from the memory bank)
         against the global ones at temperature cmi.cr_T;
  3. keeps the lowest-loss step's images (to the pool) and features (the global
     batch's [local | global] rows into the bank, a ring).
The state keeps the head, its Adam state and the bank (fixed-size arrays with a
ring cursor, replicated and checkpointed). Teacher and student are constants.
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from fastdfkd_jax import errors, models
from fastdfkd_jax.run import parallel
from fastdfkd_jax.data import augment
from fastdfkd_jax.models import generator as generator_lib
from fastdfkd_jax.models import layers
from fastdfkd_jax.synthesis import base, losses


@struct.dataclass
class CMIState:
  """What CMI carries across calls (replicated)."""
  head_params: Any
  head_opt: Any
  bank: jax.Array          # (bank_size, 2 D) float32 rows [local | global] feature
  bank_cursor: jax.Array   # int32: the next row written
  bank_filled: jax.Array   # int32: rows holding features
  calls: jax.Array         # int32


@struct.dataclass
class CMICarry:
  """What the k steps of a call carry (fields marked * are per-device)."""
  gen_params: Any
  gen_bs: Any
  gen_opt: Any
  z: jax.Array             # * (B_local, nz)
  z_opt: Any               # *
  head_params: Any
  head_opt: Any
  best_loss: jax.Array
  best_x: jax.Array        # * (B_local, H, W, C) in [0, 1]
  best_feat: jax.Array     # * (B_local, 2 D)
  metrics: Any
  targets: jax.Array       # * (B_local,)


class MLPHead(nn.Module):
  """The release's MLPHead: Linear(D, D) -> ReLU -> Linear(D, dim) -> L2-normalise."""
  dim: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dense = lambda n, fan_in: nn.Dense(n, kernel_init=generator_lib.torch_kernel_init,
                                       bias_init=generator_lib.torch_bias_init(fan_in))
    x = dense(self.dim, d)(nn.relu(dense(d, d)(x)))
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class CMIHParams:
  """Static hyper-parameters (config.k, batch_size, synth.* and cmi.*)."""
  k: int
  batch_size: int
  nz: int
  lr_g: float
  betas: tuple[float, float]
  bn: float
  oh: float
  cr: float
  cr_T: float
  bank_size: int
  n_neg: int
  head_betas: tuple[float, float]
  local_scale: tuple[float, float]
  local_ratio: tuple[float, float]
  init_std: float
  unroll: bool = False


@base.register("cmi")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CMISynthesizer(base.Members):
  """Re-initialised generator + latents per call, contrastive memory across calls."""
  uses_pool: ClassVar[bool] = True
  generator: nn.Module
  head: MLPHead
  hp: CMIHParams

  @classmethod
  def from_config(cls, config, *, teacher, student, info, axis_name: str | None,
                  unroll: bool, dtype) -> "CMISynthesizer":
    """The synthesizer of `config` (base.Synthesizer.from_config)."""
    s, m = config.synth, config.cmi
    if not config.batch_size <= m.bank_size or not 0 < m.n_neg <= m.bank_size:
      raise errors.UserError(
          f"method=cmi needs batch_size ({config.batch_size}) <= cmi.bank_size "
          f"({m.bank_size}) and 0 < cmi.n_neg ({m.n_neg}) <= cmi.bank_size")
    h, _, c = info.image_shape
    generator = models.get_model("generator", nz=s.nz, ngf=s.ngf, img_size=h, channels=c,
                                 axis_name=axis_name,
                                 dtype=dtype)
    hp = CMIHParams(
        k=config.k, batch_size=config.batch_size, nz=s.nz, lr_g=s.lr_g,
        betas=tuple(s.betas), bn=s.bn, oh=s.oh, cr=m.cr, cr_T=m.cr_T,
        bank_size=m.bank_size, n_neg=m.n_neg, head_betas=tuple(m.head_betas),
        local_scale=tuple(m.local_scale), local_ratio=tuple(m.local_ratio),
        init_std=m.init_std, unroll=unroll)
    return cls(generator=generator, head=MLPHead(m.head_dim), hp=hp,
               **base.members(info, teacher=teacher, student=student, axis_name=axis_name))

  def gen_tx(self) -> optax.GradientTransformation:
    return optax.adam(self.hp.lr_g, b1=self.hp.betas[0], b2=self.hp.betas[1])

  def head_tx(self) -> optax.GradientTransformation:
    return optax.adam(self.hp.lr_g, b1=self.hp.head_betas[0], b2=self.hp.head_betas[1])

  # ---------------------------------------------------------------- init
  def init(self, key: jax.Array, teacher_vars) -> CMIState:
    """Fresh head (PyTorch's Linear init), its Adam state and an empty bank. Host-side."""
    teacher = self.teacher.clone(axis_name=None)
    means = jax.eval_shape(lambda: teacher.apply(
        teacher_vars, jnp.zeros((2,) + self.image_shape), train=False,
        mutable=[layers.INSTANCE_MEANS])[1])
    dim = sum(a.shape[-1] for a in jax.tree.leaves(means))
    head_params = self.head.init(key, jnp.zeros((1, dim)))["params"]
    return CMIState(head_params=head_params, head_opt=self.head_tx().init(head_params),
                    bank=jnp.zeros((self.hp.bank_size, 2 * dim), jnp.float32),
                    bank_cursor=jnp.int32(0), bank_filled=jnp.int32(0), calls=jnp.int32(0))

  # ----------------------------------------------------------- a call
  def synthesize(self, state: CMIState, teacher_vars, student_vars, key: jax.Array,
                 adv_weight: jax.Array):
    """One call: end(k x inner_step(begin)) (see the module docstring)."""
    return base.scan_host_steps(self, state, teacher_vars, student_vars, key, adv_weight)

  def begin(self, state: CMIState, key: jax.Array):
    """Re-initialised generator, latents and targets: (CMICarry, step keys (k,))."""
    hp = self.hp
    k_gen, k_z, k_y, k_steps = jax.random.split(key, 4)
    gen = self.generator.clone(axis_name=None)
    layout = jax.eval_shape(lambda: gen.init(k_gen, jnp.zeros((2, hp.nz))))
    gen_params = generator_lib.reinitialize(layout["params"], k_gen, hp.init_std)
    gen_bs = {name: dict(mean=jnp.zeros(v["mean"].shape), var=jnp.ones(v["var"].shape))
              for name, v in layout["batch_stats"].items()}
    z = self._stripe(jax.random.normal(k_z, (hp.batch_size, hp.nz)))
    targets = self._stripe(jax.random.randint(k_y, (hp.batch_size,), 0, self.num_classes))
    b_local = z.shape[0]
    varying = lambda a: parallel.to_varying(a, self.axis_name)
    metric_zero = dict(loss=0.0, loss_bn=0.0, loss_oh=0.0, loss_adv=0.0, loss_cr=0.0,
                       teacher_target_acc=0.0)
    carry = CMICarry(
        gen_params=gen_params, gen_bs=gen_bs, gen_opt=self.gen_tx().init(gen_params),
        z=z, z_opt=self.gen_tx().init(z), head_params=state.head_params,
        head_opt=state.head_opt, best_loss=jnp.float32(jnp.inf),
        best_x=varying(jnp.zeros((b_local,) + self.image_shape, jnp.float32)),
        best_feat=varying(jnp.zeros((b_local, state.bank.shape[1]), jnp.float32)),
        metrics=jax.tree.map(jnp.float32, metric_zero), targets=targets)
    return carry, jax.random.split(k_steps, hp.k)

  def _negatives(self, key, state: CMIState):
    """n_neg distinct filled bank rows at random: (rows (n_neg, 2 D), valid (n_neg,))."""
    slots = jnp.arange(self.hp.bank_size)
    scores = jnp.where(slots < state.bank_filled, jax.random.uniform(key, slots.shape), 2.0)
    _, idx = jax.lax.top_k(-scores, self.hp.n_neg)
    return state.bank[idx], jnp.arange(self.hp.n_neg) < state.bank_filled

  def _gather(self, x):
    """The global batch of a per-device stripe, replicated (an exact psum of zeros)."""
    if self.axis_name is None:
      return x
    n, i = jax.lax.axis_size(self.axis_name), jax.lax.axis_index(self.axis_name)
    full = jnp.zeros((n * x.shape[0],) + x.shape[1:], x.dtype)
    return jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(full, x, i * x.shape[0], 0),
                        self.axis_name)

  def _features(self, aux) -> jax.Array:
    return jnp.concatenate(jax.tree.leaves(aux[layers.INSTANCE_MEANS]), axis=1)

  def loss_terms(self, x, head_params, targets, step_key, cached, teacher_vars,
                 student_vars, adv_weight):
    """The call's loss of images x in [0, 1] -> (loss, (features, metrics))."""
    hp, axis = self.hp, self.axis_name
    teacher_vars, student_vars = jax.lax.stop_gradient((teacher_vars, student_vars))
    k_global, k_local = jax.random.split(step_key)
    xg = augment.augment_stripe(k_global, x, self.mean, self.std, self.padding, axis)
    t_logits, aux = self.teacher.apply(
        teacher_vars, xg, train=False,
        mutable=[losses.BN_STATS_COLLECTION, layers.INSTANCE_MEANS])
    s_logits = self.student.apply(student_vars, xg, train=False)
    l_bn = losses.bn_prior_plain(aux[losses.BN_STATS_COLLECTION])
    l_oh = losses.one_hot_loss(t_logits, targets, axis)
    l_adv = losses.adversarial_loss(s_logits, t_logits, axis)
    xl = augment.normalize(augment.resized_crop_stripe(
        k_local, x, hp.local_scale, hp.local_ratio, axis), self.mean, self.std)
    _, aux_local = self.teacher.apply(teacher_vars, xl, train=False,
                                      mutable=[layers.INSTANCE_MEANS])
    f_global, f_local = self._features(aux), self._features(aux_local)
    l_cr = jnp.float32(0.0)
    if hp.cr:
      rows, valid = cached
      proj = lambda f: self.head.apply({"params": head_params}, f)
      cached_local, cached_global = jnp.split(rows, 2, axis=1)
      l_cr = losses.contrastive_loss(
          proj(f_local), self._gather(jax.lax.stop_gradient(proj(f_global))),
          proj(cached_local), proj(cached_global), valid, hp.cr_T, axis)
    loss = hp.bn * l_bn + hp.oh * l_oh + adv_weight * l_adv + hp.cr * l_cr
    t_acc = parallel.pmean(jnp.mean(t_logits.argmax(-1) == targets), axis)
    feats = jnp.concatenate([f_local, f_global], axis=1)
    return loss, (feats, dict(loss_bn=l_bn, loss_oh=l_oh, loss_adv=l_adv, loss_cr=l_cr,
                              teacher_target_acc=t_acc))

  def inner_step(self, carry: CMICarry, step_key: jax.Array, state: CMIState,
                 teacher_vars, student_vars, adv_weight) -> CMICarry:
    """One Adam step on (generator, z) and on the head; keeps the lowest-loss batch."""
    k_loss, k_neg = jax.random.split(step_key)
    cached = self._negatives(k_neg, state)

    def objective(trainable):
      gen_params, z, head_params = trainable
      x, upd = self.generator.apply({"params": gen_params, "batch_stats": carry.gen_bs}, z,
                                    train=True, mutable=["batch_stats"])
      x = x.astype(jnp.float32)
      loss, (feats, metrics) = self.loss_terms(x, head_params, carry.targets, k_loss, cached,
                                               teacher_vars, student_vars, adv_weight)
      return loss, (x, upd["batch_stats"], feats, metrics)

    (loss, (x, gen_bs, feats, metrics)), (g_gen, g_z, g_head) = jax.value_and_grad(
        objective, has_aux=True)((carry.gen_params, carry.z, carry.head_params))
    better = loss < carry.best_loss
    upd_gen, gen_opt = self.gen_tx().update(g_gen, carry.gen_opt, carry.gen_params)
    upd_z, z_opt = self.gen_tx().update(g_z, carry.z_opt, carry.z)
    upd_head, head_opt = self.head_tx().update(g_head, carry.head_opt, carry.head_params)
    return carry.replace(
        gen_params=optax.apply_updates(carry.gen_params, upd_gen), gen_bs=gen_bs,
        gen_opt=gen_opt, z=optax.apply_updates(carry.z, upd_z), z_opt=z_opt,
        head_params=optax.apply_updates(carry.head_params, upd_head), head_opt=head_opt,
        best_loss=jnp.where(better, loss, carry.best_loss),
        best_x=jnp.where(better, x, carry.best_x),
        best_feat=jnp.where(better, feats, carry.best_feat), metrics=dict(metrics, loss=loss))

  def end(self, state: CMIState, carry: CMICarry):
    """The best batch's features into the bank: (state, images uint8, metrics)."""
    feats = self._gather(carry.best_feat)
    size = self.hp.bank_size
    rows = (state.bank_cursor + jnp.arange(feats.shape[0])) % size
    new_state = CMIState(
        head_params=carry.head_params, head_opt=carry.head_opt,
        bank=state.bank.at[rows].set(feats),
        bank_cursor=(state.bank_cursor + feats.shape[0]) % size,
        bank_filled=jnp.minimum(state.bank_filled + feats.shape[0], size),
        calls=state.calls + 1)
    metrics = dict(carry.metrics, best_loss=carry.best_loss)
    return new_state, augment.to_uint8(carry.best_x), metrics

  def carry_specs(self, state: CMIState):
    """shard_map specs of CMICarry: per-device batch fields sharded, rest replicated."""
    del state  # the layout depends only on the hyper-parameters
    axis = self.axis_name
    z_opt = jax.eval_shape(self.gen_tx().init,
                           jax.ShapeDtypeStruct((2, self.hp.nz), jnp.float32))
    return CMICarry(
        gen_params=P(), gen_bs=P(), gen_opt=P(), z=P(axis),
        z_opt=jax.tree.map(lambda a: P(axis) if a.ndim else P(), z_opt),
        head_params=P(), head_opt=P(), best_loss=P(), best_x=P(axis), best_feat=P(axis),
        metrics=P(), targets=P(axis))
