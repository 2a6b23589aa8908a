"""The release's `DeepGenerator` (its ImageNet generator), NHWC.

A spatial latent z (N, s, s, nz), s = img_size // 16 (the release draws it as
(N, nz, H/16, W/16)) -> conv3x3 `conv0` (no bias) -> BN `bn0` -> LeakyReLU(0.2),
then four times: nearest upsample x2 -> conv3x3 `conv{k}` (no bias) -> BN
`bn{k}` -> LeakyReLU(0.2) (widths 2ngf, ngf, ngf, ngf after conv0's 2ngf), then
conv3x3 `conv5` (bias) -> sigmoid -> images (N, 16s, 16s, channels) float32 in
[0, 1]. BN uses batch statistics when train=True.

The release's module also holds a Linear `l1` (nz -> ngf * (img_size // 32)^2)
that its forward pass never calls; it is kept here as parameters only, so the
parameter count and state_dict match the release's: nz 256, ngf 64, img_size
224, channels 3 gives 1,398,403 parameters (805,952 of them `l1`'s).

Flax name <-> PyTorch key of the release (`l1` is a Sequential, the rest is
`conv_blocks`):
  l1    <-> l1.0
  conv0 <-> conv_blocks.0     bn0 <-> conv_blocks.1
  conv1 <-> conv_blocks.4     bn1 <-> conv_blocks.5
  conv2 <-> conv_blocks.8     bn2 <-> conv_blocks.9
  conv3 <-> conv_blocks.12    bn3 <-> conv_blocks.13
  conv4 <-> conv_blocks.16    bn4 <-> conv_blocks.17
  conv5 <-> conv_blocks.19
Conv kernels are HWIO here.
"""

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.generator import (
    torch_bias_init, torch_conv3x3, torch_kernel_init, upsample_conv_bn)

# Spatial size of the output over that of the latent (four x2 upsamplings).
UPSCALE = 16


class DeepGenerator(nn.Module):
  """z (N, img_size // 16, img_size // 16, nz) -> images (N, H, W, channels)."""

  nz: int = 256
  ngf: int = 64
  img_size: int = 224
  channels: int = 3
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """Shape of one latent, (s, s, nz) with s = img_size // 16."""
    s = self.img_size // UPSCALE
    return (s, s, self.nz)

  @nn.compact
  def __call__(self, z, train: bool = True):
    # The unused `l1`: applied to an empty batch, which creates its parameters
    # and computes nothing.
    l1_units = self.ngf * (self.img_size // 32) ** 2
    nn.Dense(l1_units, kernel_init=torch_kernel_init, bias_init=torch_bias_init(self.nz),
             name="l1")(jnp.zeros((0, self.nz), self.dtype))
    widths = (2 * self.ngf, 2 * self.ngf, self.ngf, self.ngf, self.ngf)
    x = z.astype(self.dtype)
    for k, feats in enumerate(widths):
      x = upsample_conv_bn(self, x, feats, train, k, upsample=k > 0)
    x = torch_conv3x3(self, x, self.channels, True, f"conv{len(widths)}")
    return nn.sigmoid(x.astype(jnp.float32))


@register("deep_generator")
def deep_generator(num_classes: int | None = None, **kw) -> DeepGenerator:
  """Factory; `num_classes` is accepted for the registry and ignored."""
  del num_classes
  return DeepGenerator(**kw)
