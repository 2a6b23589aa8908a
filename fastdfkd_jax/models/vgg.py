"""VGG-8 / VGG-11 with BatchNorm for CIFAR (RepDistiller `vgg8_bn`/`vgg11_bn`), NHWC.

Five blocks of conv3x3(bias)-BN-ReLU (cfg vgg8 [[64],[128],[256],[512],[512]],
vgg11 [[64],[128],[256,256],[512,512],[512,512]]), 2x2 max-pools after blocks
0, 1, 2 (and after block 3 only when the input height is 64, exactly as the
release's forward does), global average pool (the release's
AdaptiveAvgPool2d(1)), `classifier` Linear(512, num_classes). Input (N, H, W, C)
with any C; logits (N, num_classes) float32.

Flax name <-> PyTorch key (release layout, reference doc section 7): the torch
blocks are nn.Sequential [conv, BN, ReLU, conv, BN, ReLU, ..., conv, BN] (the
trailing ReLU is dropped and applied in forward), so per block b
  block{b}_{3k}     <-> block{b}.{3k}       (k-th conv, with bias)
  block{b}_{3k+1}   <-> block{b}.{3k+1}     (k-th BN)
i.e. indices 0, 1, 3, 4, ...;  classifier <-> classifier.
Conv kernels are HWIO here (OIHW in PyTorch); BN scale/bias <-> weight/bias,
batch_stats mean/var <-> running_mean/running_var; Dense kernel = Linear weight.T.
"""

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.layers import batch_norm, conv_init, sow_features

CFG = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
}


class VGG(nn.Module):
  """VGG-BN for CIFAR. (N, H, W, C) -> (N, num_classes) float32."""

  cfg: Sequence[Sequence[int]]
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.shape[1]
    x = x.astype(self.dtype)
    for b, block in enumerate(self.cfg):
      for k, feats in enumerate(block):
        x = Conv(feats, (3, 3), padding=((1, 1), (1, 1)), use_bias=True,
                 kernel_init=conv_init, dtype=self.dtype,
                 name=f"block{b}_{3 * k}")(x)
        x = batch_norm(self, train, f"block{b}_{3 * k + 1}")(x)
        x = relu(x)
      if b < 3 or (b == 3 and h == 64):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = sow_features(self, x.mean(axis=(1, 2)))
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=nn.initializers.normal(0.01), name="classifier")(x)
    return x.astype(jnp.float32)


@register("vgg8")
def vgg8(num_classes: int = 10, **kw) -> VGG:
  return VGG(cfg=CFG["vgg8"], num_classes=num_classes, **kw)


@register("vgg11")
def vgg11(num_classes: int = 10, **kw) -> VGG:
  return VGG(cfg=CFG["vgg11"], num_classes=num_classes, **kw)
