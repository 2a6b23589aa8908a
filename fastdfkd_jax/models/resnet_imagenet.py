"""torchvision's ImageNet ResNets (resnet18_imagenet, resnet50_imagenet), NHWC.

Stem: 7x7 conv 64 stride 2 (padding 3, no bias), BN, ReLU, 3x3 max-pool stride 2
(padding 1). Stages of widths 64/128/256/512 with stride 2 at the first block of
stages 2-4; post-activation BasicBlocks (resnet18) or Bottlenecks (resnet50:
1x1 -> 3x3 (the strided one, torchvision's "v1.5") -> 1x1 x4), a 1x1 conv + BN
`downsample` where the shape changes; global average pool; `fc`. With 1000
classes: resnet18 11,689,512 and resnet50 25,557,032 parameters, as torchvision.
Input (N, H, W, C) with any C and H, W >= 32 (five stride-2 steps); logits
(N, num_classes) float32. The release builds these from `resnet_in.py`, a copy
of torchvision's, so its checkpoints and torchvision's share one layout.

Flax name <-> PyTorch key (torchvision layout):
  conv1, bn1                       <-> conv1, bn1
  layer{s}_{i}/conv{k}, bn{k}      <-> layer{s}.{i}.conv{k}, .bn{k}   (k = 1..2 or 1..3)
  layer{s}_{i}/downsample_{0,1}    <-> layer{s}.{i}.downsample.{0,1}
  fc                               <-> fc
Conv kernels are HWIO here (OIHW in PyTorch); BN scale/bias <-> weight/bias,
batch_stats mean/var <-> running_mean/running_var; Dense kernel = Linear weight.T.
"""

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.generator import torch_bias_init, torch_kernel_init
from fastdfkd_jax.models.layers import batch_norm, conv_init, sow_features
from fastdfkd_jax.models.resnet_cifar import BasicBlock

WIDTHS = (64, 128, 256, 512)


class Bottleneck(nn.Module):
  """torchvision Bottleneck: relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x))))))) + down(x)).

  conv1 1x1 to `features`, conv2 3x3 with the stride and dilation (padding = dilation;
  DeepLabV3's dilated backbone), conv3 1x1 to 4 * features.
  (N, H, W, Cin) -> (N, H/stride, W/stride, 4 * features).
  """

  features: int
  stride: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda feats, k, s, p, name, d=1: Conv(
        feats, (k, k), strides=(s, s), padding=((p, p), (p, p)), kernel_dilation=(d, d),
        use_bias=False, kernel_init=conv_init, dtype=self.dtype, name=name)
    out, d = 4 * self.features, self.dilation
    y = conv(self.features, 1, 1, 0, "conv1")(x)
    y = relu(batch_norm(self, train, "bn1")(y))
    y = conv(self.features, 3, self.stride, d, "conv2", d)(y)
    y = relu(batch_norm(self, train, "bn2")(y))
    y = batch_norm(self, train, "bn3")(conv(out, 1, 1, 0, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = conv(out, 1, self.stride, 0, "downsample_0")(x)
      x = batch_norm(self, train, "downsample_1")(x)
    return relu(y + x)


class ImageNetResNet(nn.Module):
  """torchvision ResNet. (N, H, W, C) -> (N, num_classes) float32."""

  num_blocks: Sequence[int]
  bottleneck: bool
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
             kernel_init=conv_init, dtype=self.dtype, name="conv1")(x)
    x = batch_norm(self, train, "bn1")(x)
    x = nn.max_pool(relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, (n, width) in enumerate(zip(self.num_blocks, WIDTHS), start=1):
      for i in range(n):
        stride = 2 if (s > 1 and i == 0) else 1
        name = f"layer{s}_{i}"
        if self.bottleneck:
          block = Bottleneck(width, stride, dtype=self.dtype, axis_name=self.axis_name,
                             name=name)
        else:
          block = BasicBlock(width, stride, "downsample", dtype=self.dtype,
                             axis_name=self.axis_name, name=name)
        x = block(x, train)
    x = sow_features(self, x.mean(axis=(1, 2)))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_kernel_init,
                 bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)
    return x.astype(jnp.float32)


@register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int = 1000, **kw) -> ImageNetResNet:
  return ImageNetResNet(num_blocks=(2, 2, 2, 2), bottleneck=False,
                        num_classes=num_classes, **kw)


@register("resnet50_imagenet")
def resnet50_imagenet(num_classes: int = 1000, **kw) -> ImageNetResNet:
  return ImageNetResNet(num_blocks=(3, 4, 6, 3), bottleneck=True,
                        num_classes=num_classes, **kw)
