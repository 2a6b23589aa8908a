"""FastDFKD (`fast_meta`) and its sequential-reuse ablation (`fast`).

fast_meta: every call copies the meta-generator theta into fast params theta',
runs the k inner Adam steps (betas 0.5/0.999, lr_g on theta', lr_z on z; see
`inversion`), then takes a meta step with g = theta - theta'_k ('param_diff',
Eq. 10) or the sum of the inner gradients ('sum_inner_grads', the release),
fed to Adam(meta lr, betas 0.5/0.999): meta lr = synth.meta_lr_g, or lr_g * k
when that is 0 (the CIFAR release).
The ImageNet release (`fast_meta_imagenet.py`) adds, as options here:
  meta_latent: the latent z is meta-learned too: kept in the state across calls
    (the global batch, replicated), each call starts its inner loop from it and
    a Reptile step g = z - z'_k with its own Adam(synth.meta_lr_z) updates it;
  reinit_every: at every reinit_every-th call (1-based, the release's `reinit`)
    the meta latent is drawn afresh and the meta optimizer states restart; the
    generator is kept.
fast: sequential reuse, as the release's `fast.py`; the generator itself is
optimised (theta <- theta'_k), no copy and no meta step, with a fresh inner
Adam every call (the release builds its optimizer inside `synthesize`), and no
`reset_l0` (the release's FastSynthesizer defines it but never calls it).
"""

import jax
import jax.numpy as jnp
import optax

from fastdfkd_jax.run import parallel
from fastdfkd_jax.models import generator as generator_lib
from fastdfkd_jax.synthesis import base, inversion


@base.register("fast_meta")
class FastMetaSynthesizer(inversion.InversionSynthesizer):
  """Meta-learned generator initialisation (Reptile-style meta step per call)."""

  def meta_tx(self) -> optax.GradientTransformation:
    return self.gen_tx(self.hp.meta_lr_g or self.hp.lr_g * self.hp.k)

  def meta_latent_tx(self) -> optax.GradientTransformation:
    return self.gen_tx(self.hp.meta_lr_z)

  def state_tx(self) -> optax.GradientTransformation:
    return self.meta_tx()

  def reinit(self, calls: jax.Array) -> jax.Array:
    """bool: whether the call after `calls` calls starts afresh (hp.reinit_every)."""
    return (calls + 1) % self.hp.reinit_every == 0

  def _restart(self, calls, fresh, kept):
    """`fresh` at a reinit call, else `kept` (pytrees of equal structure)."""
    if not self.hp.reinit_every:
      return kept
    again = self.reinit(calls)
    return jax.tree.map(lambda a, b: jnp.where(again, a, b), fresh, kept)

  def _begin_gen_opt(self, state: inversion.SynthState):
    return self.gen_tx(self.hp.lr_g).init(state.gen_params)

  def _next_generator(self, state: inversion.SynthState, carry: inversion.InnerCarry):
    params = state.gen_params
    meta_grad = (jax.tree.map(jnp.subtract, params, carry.fast)
                 if self.hp.meta_grad == "param_diff" else carry.grad_sum)
    opt_state = self._restart(state.calls, self.meta_tx().init(params), state.opt_state)
    updates, opt_state = self.meta_tx().update(meta_grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def _init_latent(self, key: jax.Array):
    if not self.hp.meta_latent:
      return super()._init_latent(key)
    z = jax.random.normal(key, (self.hp.batch_size,) + tuple(self.latent_shape))
    return z, self.meta_latent_tx().init(z)

  def _start_latent(self, state: inversion.SynthState, key: jax.Array,
                    targets: jax.Array) -> jax.Array:
    fresh = super()._start_latent(state, key, targets)
    return self._restart(state.calls, fresh, state.latent) if self.hp.meta_latent else fresh

  def _next_latent(self, state: inversion.SynthState, carry: inversion.InnerCarry):
    """The meta latent's Reptile step from the call's start (fresh after a reinit)."""
    if not self.hp.meta_latent:
      return super()._next_latent(state, carry)
    z = carry.start
    z_fast = parallel.gather_stripes(carry.latent, self.axis_name)
    opt = self._restart(state.calls, self.meta_latent_tx().init(z), state.latent_opt)
    updates, opt = self.meta_latent_tx().update(z - z_fast, opt, z)
    return optax.apply_updates(z, updates), opt

  def reset_first_layer(self, state: inversion.SynthState,
                        key: jax.Array) -> inversion.SynthState:
    """The release's `reset_l0`: re-initialise the generator's `l1` and first BN."""
    return state.replace(gen_params=generator_lib.reset_first_layer(state.gen_params, key))


@base.register("fast")
class FastSynthesizer(inversion.InversionSynthesizer):
  """Sequential reuse: the generator keeps training from call to call."""

  def state_tx(self) -> optax.GradientTransformation:
    return optax.identity()   # nothing but the generator carries across calls

  def _begin_gen_opt(self, state: inversion.SynthState):
    return self.gen_tx(self.hp.lr_g).init(state.gen_params)

  def _next_generator(self, state: inversion.SynthState, carry: inversion.InnerCarry):
    return carry.fast, state.opt_state
