"""FastDFKD (`fast_meta`) and its sequential-reuse ablation (`fast`).

fast_meta: every call copies the meta-generator theta into fast params theta',
runs the k inner Adam steps (betas 0.5/0.999, lr_g on theta', lr_z on z; see
`inversion`), then takes a meta step with g = theta - theta'_k ('param_diff',
Eq. 10) or the sum of the inner gradients ('sum_inner_grads', the release),
fed to Adam(lr_g * k, betas 0.5/0.999).
fast: sequential reuse, as the release's `fast.py`; the generator itself is
optimised (theta <- theta'_k), no copy and no meta step, with a fresh inner
Adam every call (the release builds its optimizer inside `synthesize`), and no
`reset_l0` (the release's FastSynthesizer defines it but never calls it).
"""

import jax
import jax.numpy as jnp
import optax

from fastdfkd_jax.models import generator as generator_lib
from fastdfkd_jax.synthesis import base, inversion


@base.register("fast_meta")
class FastMetaSynthesizer(inversion.InversionSynthesizer):
  """Meta-learned generator initialisation (Reptile-style meta step per call)."""

  def meta_tx(self) -> optax.GradientTransformation:
    return self.gen_tx(self.hp.lr_g * self.hp.k)

  def state_tx(self) -> optax.GradientTransformation:
    return self.meta_tx()

  def _begin_gen_opt(self, state: inversion.SynthState):
    return self.gen_tx(self.hp.lr_g).init(state.gen_params)

  def _next_generator(self, state: inversion.SynthState, carry: inversion.InnerCarry):
    params = state.gen_params
    meta_grad = (jax.tree.map(jnp.subtract, params, carry.fast)
                 if self.hp.meta_grad == "param_diff" else carry.grad_sum)
    updates, opt_state = self.meta_tx().update(meta_grad, state.opt_state, params)
    return optax.apply_updates(params, updates), opt_state

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
