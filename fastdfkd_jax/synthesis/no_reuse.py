"""Simplified DeepInversion (`deepinv`): no reuse, fresh pixels per call.

Each call optimises a new batch of pixel logits from N(0, I) (images =
sigmoid(logits)) with k Adam steps (lr synth.deepinv_lr, betas
synth.deepinv_betas) on the same BN-prior, one-hot and adversarial loss as
FastDFKD (`inversion`). The generator in the state is never trained: it keeps
the state's layout shared with the generator methods.
"""

import jax
import optax

from fastdfkd_jax.synthesis import base, inversion


@base.register("deepinv")
class DeepInvSynthesizer(inversion.InversionSynthesizer):
  """Per-batch inversion of pixels: nothing carries over but the BN momentum."""

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return tuple(self.image_shape)

  def latent_tx(self) -> optax.GradientTransformation:
    b1, b2 = self.hp.deepinv_betas
    return optax.adam(self.hp.deepinv_lr, b1=b1, b2=b2)

  def _inner_gen_tx(self) -> None:
    return None

  def render(self, fast, latent, gen_bs):
    del fast  # no generator: the latents are the pixel logits
    return jax.nn.sigmoid(latent), gen_bs

  def state_tx(self) -> optax.GradientTransformation:
    return self.gen_tx(self.hp.lr_g)

  def _begin_gen_opt(self, state: inversion.SynthState) -> None:
    return None

  def _next_generator(self, state: inversion.SynthState, carry: inversion.InnerCarry):
    return state.gen_params, state.opt_state
