"""Dilated backbones of the DeepLabV3 models (`deeplab.py`), NHWC, as the release's.

`ResNet50Backbone`: torchvision's ResNet-50 (7x7/2 stem, 3x3/2 max-pool,
`resnet_imagenet.Bottleneck` 3-4-6-3, stride and dilation on the 3x3 conv) up to layer4 (2048
channels), with `replace_stride_with_dilation`.

`MobileNetV2Backbone`: the release's MobileNetV2 (`backbone/mobilenetv2.py`)
split as its `_segm_mobilenet` does into `low_level_features` (features 0-3)
and `high_level_features` (features 4-17; the last 1x1 conv to 1280 is
dropped), 320 channels out. Its convs have no padding of their own: the stem
3x3/2 conv is unpadded, and each inverted residual zero-pads its *input* by the
dilation before the whole block (so the 1x1 expansion also sees the padding),
then runs the depthwise 3x3 conv unpadded. Once the stride reaches
`output_stride`, later strides become dilation (the first block of a stage
keeps the previous dilation).

Flax name <-> PyTorch key, under `backbone`:
  conv1, bn1, layer{s}_{i}/conv{1,2,3}, bn{1,2,3}, downsample_{0,1}
      <-> conv1, bn1, layer{s}.{i}.conv1, ..., downsample.0/1
  low_level_features/0_0, 0_1              <-> low_level_features.0.0/1 (stem conv, BN)
  {low,high}_level_features/{j}/conv_{k}_{0,1}, conv_{k}
      <-> {low,high}_level_features.{j}.conv.{k}.0/1, .conv.{k}
"""

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.layers import batch_norm
from fastdfkd_jax.models.resnet_imagenet import Bottleneck

# Kaiming-normal (fan_out), the release's backbone initialisation.
backbone_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# MobileNetV2 inverted residual settings: expansion t, channels c, repeats n, stride s.
MOBILENET_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_STEM = 32
MOBILENET_LOW_LEVEL = 4  # features[0:4] are the low-level stage


def conv(feats: int, k: int, name: str, dtype: Any, stride: int = 1, dilation: int = 1,
         padding: int | None = None, groups: int = 1, bias: bool = False,
         init=backbone_init) -> Conv:
  """PyTorch-style Conv2d: symmetric padding (default dilation * (k - 1) // 2)."""
  p = dilation * (k - 1) // 2 if padding is None else padding
  return Conv(feats, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
              kernel_dilation=(dilation, dilation), feature_group_count=groups,
              use_bias=bias, kernel_init=init, dtype=dtype, name=name)


class ResNet50Backbone(nn.Module):
  """torchvision ResNet-50 up to layer4. (N, H, W, C) -> (N, H/os, W/os, 2048)."""

  replace_stride_with_dilation: Sequence[bool] = (False, True, True)
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv(64, 7, "conv1", self.dtype, stride=2)(x)
    x = batch_norm(self, train, "bn1")(x)
    x = nn.max_pool(relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    dilation = 1
    dilate = (False,) + tuple(self.replace_stride_with_dilation)
    for s, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
      stride, previous = (1 if s == 1 else 2), dilation
      if dilate[s - 1]:
        dilation, stride = dilation * stride, 1
      for i in range(n):
        x = Bottleneck(planes, stride if i == 0 else 1, previous if i == 0 else dilation,
                       dtype=self.dtype, axis_name=self.axis_name,
                       name=f"layer{s}_{i}")(x, train)
    return x


class InvertedResidual(nn.Module):
  """MobileNetV2 block on its zero-padded input: [1x1 expand] -> 3x3 depthwise -> 1x1."""

  features: int
  stride: int
  dilation: int
  expand_ratio: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = self.dilation
    y = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    k = 0
    if self.expand_ratio != 1:
      y = conv(hidden, 1, "conv_0_0", self.dtype)(y)
      y = nn.relu6(batch_norm(self, train, "conv_0_1")(y))
      k = 1
    y = conv(hidden, 3, f"conv_{k}_0", self.dtype, self.stride, d, padding=0,
             groups=hidden)(y)
    y = nn.relu6(batch_norm(self, train, f"conv_{k}_1")(y))
    y = conv(self.features, 1, f"conv_{k + 1}", self.dtype)(y)
    y = batch_norm(self, train, f"conv_{k + 2}")(y)
    if self.stride == 1 and x.shape[-1] == self.features:
      return x + y
    return y


def mobilenet_blocks(output_stride: int) -> list[tuple[int, int, int, int]]:
  """(channels, stride, dilation, expansion) of the 17 inverted residuals, as the release."""
  blocks, current, dilation = [], 2, 1
  for t, c, n, s in MOBILENET_SETTINGS:
    previous = dilation
    if current == output_stride:
      stride, dilation = 1, dilation * s
    else:
      stride, current = s, current * s
    for i in range(n):
      blocks.append((c, stride, previous, t) if i == 0 else (c, 1, dilation, t))
  return blocks


class _Stage(nn.Module):
  """A run of the release's `features`, numbered from 0 as its Sequential slice."""

  blocks: Sequence[tuple[int, int, int, int]]
  stem: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    j = 0
    if self.stem:
      x = conv(MOBILENET_STEM, 3, "0_0", self.dtype, stride=2, padding=0)(x)
      x = nn.relu6(batch_norm(self, train, "0_1")(x))
      j = 1
    for c, stride, dilation, t in self.blocks:
      x = InvertedResidual(c, stride, dilation, t, self.dtype, self.axis_name,
                           name=str(j))(x, train)
      j += 1
    return x


class MobileNetV2Backbone(nn.Module):
  """The release's MobileNetV2 features 0-17. (N, H, W, C) -> (N, ~H/os, ~W/os, 320)."""

  output_stride: int = 8
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = mobilenet_blocks(self.output_stride)
    low = MOBILENET_LOW_LEVEL - 1  # the stem is features[0]
    x = _Stage(blocks[:low], True, self.dtype, self.axis_name,
               name="low_level_features")(x, train)
    return _Stage(blocks[low:], False, self.dtype, self.axis_name,
                  name="high_level_features")(x, train)
