"""ResNet-18/34 with the CIFAR stem (3x3 conv 64, stride 1, no max-pool), NHWC.

Post-activation BasicBlocks (widths 64/128/256/512, stride 2 at the first block
of stages 2-4), 1x1 conv + BN shortcut where the shape changes, global average
pool, `linear`. Input (N, H, W, C) with any C; logits (N, num_classes) float32.

Flax name <-> PyTorch key (release layout, reference doc section 7):
  conv1                    <-> conv1
  bn1                      <-> bn1
  layer{s}_{i}/conv1, bn1  <-> layer{s}.{i}.conv1, .bn1      (s = 1..4)
  layer{s}_{i}/conv2, bn2  <-> layer{s}.{i}.conv2, .bn2
  layer{s}_{i}/shortcut_0  <-> layer{s}.{i}.shortcut.0       (1x1 conv)
  layer{s}_{i}/shortcut_1  <-> layer{s}.{i}.shortcut.1       (BN)
  linear                   <-> linear
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
from fastdfkd_jax.models.resnet_cifar import BasicBlock


class ResNet(nn.Module):
  """CIFAR-stem ResNet with BasicBlocks. (N, H, W, C) -> (N, num_classes) float32."""

  num_blocks: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
             kernel_init=conv_init, dtype=self.dtype, name="conv1")(x)
    x = batch_norm(self, train, "bn1")(x)
    x = relu(x)
    for s, (n, width) in enumerate(zip(self.num_blocks, (64, 128, 256, 512)),
                                   start=1):
      for i in range(n):
        stride = 2 if (s > 1 and i == 0) else 1
        x = BasicBlock(width, stride, "shortcut", dtype=self.dtype,
                       axis_name=self.axis_name, name=f"layer{s}_{i}")(x, train)
    x = sow_features(self, x.mean(axis=(1, 2)))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(x)
    return x.astype(jnp.float32)


@register("resnet18")
def resnet18(num_classes: int = 10, **kw) -> ResNet:
  return ResNet(num_blocks=(2, 2, 2, 2), num_classes=num_classes, **kw)


@register("resnet34")
def resnet34(num_classes: int = 10, **kw) -> ResNet:
  return ResNet(num_blocks=(3, 4, 6, 3), num_classes=num_classes, **kw)
