"""FastDFKD (`fast_meta`) and its sequential-reuse ablation (`fast`).

fast_meta: every call copies the meta-generator theta into fast params theta',
runs the k inner Adam steps (betas 0.5/0.999, lr_g on theta', lr_z on z; see
`inversion`), then takes a meta step with g = theta - theta'_k ('param_diff',
Eq. 10) or the sum of the inner gradients ('sum_inner_grads', the release),
fed to Adam(lr_g * k, betas 0.5/0.999).
fast: sequential reuse; the generator itself is optimised, its Adam state
persists across calls, no copy and no meta step (theta <- theta'_k).
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
    """The release's `reset_l0`: re-initialise the generator's first linear layer."""
    return state.replace(gen_params=generator_lib.reset_first_layer(state.gen_params, key))


@base.register("fast")
class FastSynthesizer(FastMetaSynthesizer):
  """Sequential reuse: the generator keeps training from call to call."""

  def state_tx(self) -> optax.GradientTransformation:
    return self.gen_tx(self.hp.lr_g)

  def _begin_gen_opt(self, state: inversion.SynthState):
    return state.opt_state

  def _next_generator(self, state: inversion.SynthState, carry: inversion.InnerCarry):
    return carry.fast, carry.gen_opt
