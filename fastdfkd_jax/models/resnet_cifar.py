"""Tiny CIFAR ResNets (resnet8/20/32/56): depth 6n+2, widths 16/32/64, NHWC.

Post-activation BasicBlocks; a 1x1 conv + BN downsample branch where the shape
changes; global average pool; `fc`. Input (N, H, W, C) with any C and H, W >= 4
(two stride-2 stages), logits (N, num_classes) float32.

Flax name <-> PyTorch key (release layout, reference doc section 7):
  conv1                      <-> conv1
  bn1                        <-> bn1
  layer{s}_{i}/conv1, bn1    <-> layer{s}.{i}.conv1, .bn1      (s = 1..3)
  layer{s}_{i}/conv2, bn2    <-> layer{s}.{i}.conv2, .bn2
  layer{s}_{i}/downsample_0  <-> layer{s}.{i}.downsample.0     (1x1 conv)
  layer{s}_{i}/downsample_1  <-> layer{s}.{i}.downsample.1     (BN)
  fc                         <-> fc
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


class BasicBlock(nn.Module):
  """Post-activation residual block: relu(bn2(conv2(relu(bn1(conv1 x)))) + short(x)).

  `shortcut_name` is the PyTorch name of the projection branch ('downsample' for
  the tiny ResNets, 'shortcut' for resnet18/34). (N, H, W, Cin) ->
  (N, H/stride, W/stride, features).
  """

  features: int
  stride: int = 1
  shortcut_name: str = "downsample"
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda feats, k, s, p, name: Conv(
        feats, (k, k), strides=(s, s), padding=((p, p), (p, p)), use_bias=False,
        kernel_init=conv_init, dtype=self.dtype, name=name)
    y = conv(self.features, 3, self.stride, 1, "conv1")(x)
    y = relu(batch_norm(self, train, "bn1")(y))
    y = conv(self.features, 3, 1, 1, "conv2")(y)
    y = batch_norm(self, train, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.stride, 0, f"{self.shortcut_name}_0")(x)
      x = batch_norm(self, train, f"{self.shortcut_name}_1")(x)
    return relu(y + x)


class CifarResNet(nn.Module):
  """Tiny CIFAR ResNet of depth 6n+2. (N, H, W, C) -> (N, num_classes) float32."""

  depth: int
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f"depth must be 6n+2, got {self.depth}")
    n = (self.depth - 2) // 6
    x = x.astype(self.dtype)
    x = Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
             kernel_init=conv_init, dtype=self.dtype, name="conv1")(x)
    x = batch_norm(self, train, "bn1")(x)
    x = relu(x)
    for s, width in enumerate((16, 32, 64), start=1):
      for i in range(n):
        stride = 2 if (s > 1 and i == 0) else 1
        x = BasicBlock(width, stride, "downsample", dtype=self.dtype,
                       axis_name=self.axis_name, name=f"layer{s}_{i}")(x, train)
    x = sow_features(self, x.mean(axis=(1, 2)))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


@register("resnet8")
def resnet8(num_classes: int = 10, **kw) -> CifarResNet:
  return CifarResNet(depth=8, num_classes=num_classes, **kw)


@register("resnet20")
def resnet20(num_classes: int = 10, **kw) -> CifarResNet:
  return CifarResNet(depth=20, num_classes=num_classes, **kw)


@register("resnet32")
def resnet32(num_classes: int = 10, **kw) -> CifarResNet:
  return CifarResNet(depth=32, num_classes=num_classes, **kw)


@register("resnet56")
def resnet56(num_classes: int = 10, **kw) -> CifarResNet:
  return CifarResNet(depth=56, num_classes=num_classes, **kw)
