"""Wide ResNets wrn{16,40}_{1,2}: pre-activation (BN-ReLU-conv), NHWC, no dropout.

Widths 16 / 16k / 32k / 64k, n = (depth - 4) / 6 blocks per group, stride 2 at
the first block of groups 2 and 3. Where the shape changes a 1x1 `convShortcut`
is applied to the *activated* input relu(bn1(x)) (as the release does). Final
bn1-relu-global avg pool-fc. Input (N, H, W, C) with any C; logits
(N, num_classes) float32.

Flax name <-> PyTorch key (release layout, reference doc section 7):
  conv1                               <-> conv1
  block{g}_layer_{i}/bn1, conv1       <-> block{g}.layer.{i}.bn1, .conv1   (g = 1..3)
  block{g}_layer_{i}/bn2, conv2       <-> block{g}.layer.{i}.bn2, .conv2
  block{g}_layer_{i}/convShortcut     <-> block{g}.layer.{i}.convShortcut
  bn1                                 <-> bn1
  fc                                  <-> fc
Conv kernels are HWIO here (OIHW in PyTorch); BN scale/bias <-> weight/bias,
batch_stats mean/var <-> running_mean/running_var; Dense kernel = Linear weight.T.
"""

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.layers import batch_norm, conv_init, sow_features


def _conv(feats: int, k: int, s: int, p: int, dtype: Any, name: str) -> Conv:
  return Conv(feats, (k, k), strides=(s, s), padding=((p, p), (p, p)),
              use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


class WideBlock(nn.Module):
  """Pre-activation block. (N, H, W, Cin) -> (N, H/stride, W/stride, features)."""

  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    o = relu(batch_norm(self, train, "bn1")(x))
    y = _conv(self.features, 3, self.stride, 1, self.dtype, "conv1")(o)
    y = relu(batch_norm(self, train, "bn2")(y))
    y = _conv(self.features, 3, 1, 1, self.dtype, "conv2")(y)
    if x.shape[-1] == self.features and self.stride == 1:
      return x + y
    return _conv(self.features, 1, self.stride, 0, self.dtype, "convShortcut")(o) + y


class WideResNet(nn.Module):
  """WRN-depth-width. (N, H, W, C) -> (N, num_classes) float32."""

  depth: int
  width: int
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"depth must be 6n+4, got {self.depth}")
    n = (self.depth - 4) // 6
    x = x.astype(self.dtype)
    x = _conv(16, 3, 1, 1, self.dtype, "conv1")(x)
    for g, (width, stride) in enumerate(
        zip((16 * self.width, 32 * self.width, 64 * self.width), (1, 2, 2)),
        start=1):
      for i in range(n):
        x = WideBlock(width, stride if i == 0 else 1, dtype=self.dtype,
                      axis_name=self.axis_name,
                      name=f"block{g}_layer_{i}")(x, train)
    x = batch_norm(self, train, "bn1")(x)
    x = sow_features(self, relu(x).mean(axis=(1, 2)))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


@register("wrn16_1")
def wrn16_1(num_classes: int = 10, **kw) -> WideResNet:
  return WideResNet(depth=16, width=1, num_classes=num_classes, **kw)


@register("wrn16_2")
def wrn16_2(num_classes: int = 10, **kw) -> WideResNet:
  return WideResNet(depth=16, width=2, num_classes=num_classes, **kw)


@register("wrn40_1")
def wrn40_1(num_classes: int = 10, **kw) -> WideResNet:
  return WideResNet(depth=40, width=1, num_classes=num_classes, **kw)


@register("wrn40_2")
def wrn40_2(num_classes: int = 10, **kw) -> WideResNet:
  return WideResNet(depth=40, width=2, num_classes=num_classes, **kw)
