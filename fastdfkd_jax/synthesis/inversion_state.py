"""The inversion engine's state pytrees and static hyper-parameters (`inversion`).

`SynthState` is what a synthesis method keeps across calls (checkpointed with the run),
`InnerCarry` what its k inner steps carry, `SynthesisHParams` its static settings.
"""

import dataclasses
from typing import Any

import jax
from flax import struct


@struct.dataclass
class SynthState:
  """Everything synthesis carries across calls (replicated over devices)."""
  gen_params: Any          # generator theta (the meta-generator for fast_meta)
  gen_batch_stats: Any     # generator BN running stats (unused in train mode)
  opt_state: Any           # the generator optimizer state kept across calls (`state_tx`)
  bn_momentum: Any         # [{'mean', 'var'}] per teacher BN layer
  has_momentum: jax.Array  # bool: buffers valid (False before the first call)
  calls: jax.Array         # int32: synthesis calls so far
  latent: Any = None       # fast_meta with synth.meta_latent: the meta-learned latent
                           # of the global batch (B,) + latent_shape, else None
  latent_opt: Any = None   # its meta optimizer state (None without a meta latent)


@struct.dataclass
class InnerCarry:
  """What the k inner steps carry (fields marked * are per-device)."""
  fast: Any                # theta' (fast generator params)
  latent: jax.Array        # * z (B_local, nz), or pixel logits for deepinv
  gen_opt: Any             # inner Adam state of theta' (None: theta' is not trained)
  latent_opt: Any          # * inner Adam state of the latents
  gen_bs: Any              # generator BN running stats
  best_loss: jax.Array     # lowest loss so far
  best_x: jax.Array        # * images of the lowest-loss step (B_local, H, W, C)
  grad_sum: Any            # sum of inner gradients (the release's meta-gradient)
  last: Any                # teacher BN input stats of the latest step
  metrics: Any             # loss terms of the latest step
  targets: jax.Array       # * drawn labels (B_local,)
  start: Any = None        # the global latent the call started from (meta latent only)


@dataclasses.dataclass(frozen=True)
class SynthesisHParams:
  """Static hyper-parameters of one synthesizer (from the config)."""
  k: int = 5
  batch_size: int = 256          # global synthesis batch
  nz: int = 256
  lr_g: float = 3e-3
  lr_z: float = 1e-2
  bn: float = 10.0
  oh: float = 0.4
  balance: float = 0.0           # DAFL's class-balance term (losses.balance_loss); the
                                 # paper's FastDFKD has none
  bn_mmt: float = 0.9
  betas: tuple[float, float] = (0.5, 0.999)
  meta_grad: str = "param_diff"
  deepinv_lr: float = 0.1
  deepinv_betas: tuple[float, float] = (0.5, 0.99)
  unroll: bool = False           # fully unroll the k-step scan (XLA:CPU)
  meta_lr_g: float = 0.0         # fast_meta's meta Adam lr; 0: lr_g * k (the CIFAR release)
  meta_latent: bool = False      # fast_meta: a meta-learned latent kept across calls
  meta_lr_z: float = 5e-3        # its meta Adam lr
  reinit_every: int = 0          # fast_meta: fresh meta latent and meta optimizer states
                                 # at every reinit_every-th call (0: never)
  augment: str = "crop"          # 'crop' (pad + crop + flip) | 'resized_crop'
  crop_scale: tuple[float, float] = (0.75, 1.0)    # resized_crop: area fraction
  crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # and aspect ratio
  keep: str = "best"             # pool images: the lowest-loss step's or the last step's
  segmentation: bool = False     # config.task: per-pixel logits, no class targets


def hparams_from_config(config, unroll: bool) -> SynthesisHParams:
  """The hyper-parameters of `config` (k, batch_size and the `synth.*` fields)."""
  s = config.synth
  return SynthesisHParams(
      k=config.k, batch_size=config.batch_size, nz=s.nz, lr_g=s.lr_g, lr_z=s.lr_z,
      bn=s.bn, oh=s.oh, balance=s.balance, bn_mmt=s.bn_mmt, betas=tuple(s.betas),
      meta_grad=s.meta_grad,
      deepinv_lr=s.deepinv_lr, deepinv_betas=tuple(s.deepinv_betas), unroll=unroll,
      meta_lr_g=s.meta_lr_g, meta_latent=s.meta_latent, meta_lr_z=s.meta_lr_z,
      reinit_every=s.reinit_every, augment=s.augment, crop_scale=tuple(s.crop_scale),
      crop_ratio=tuple(s.crop_ratio), keep=s.keep,
      segmentation=config.task == "segmentation")
