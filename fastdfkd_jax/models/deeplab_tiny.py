"""Tiny DeepLab-style segmentation nets for CPU runs: `deeplab_tiny`, `deeplab_tiny_half`.

A DeepLabV3 in miniature (the paper-size models are in `deeplab.py`; one of their
steps takes seconds at 32 px on a CPU), NHWC:

  conv3x3 w -> BN -> ReLU -> conv3x3 2w stride 2 -> BN -> ReLU
  -> conv3x3 2w dilation 2 -> BN -> ReLU                    (output stride 2)
  -> ASPP: 1x1, 3x3 rate 2, 3x3 rate 4, image pooling (2w channels each, BN, ReLU),
     concatenated, 1x1 projection to 2w -> BN -> ReLU      (its output is sown as
     the penultimate features, `layers.sow_features`: DAFL's activation term)
  -> 1x1 conv with bias to the classes -> bilinear upsampling to the input size.

`deeplab_tiny` has w = 16 (the CPU teacher), `deeplab_tiny_half` w = 8 (the
student). Every BN is `layers.BatchNorm`, so the synthesis BN prior sees all of
them. Input (N, H, W, C), H and W even; logits (N, H, W, classes) float32.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fastdfkd_jax.models import register
from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.deeplab import upsample_bilinear
from fastdfkd_jax.models.deeplab_backbones import conv
from fastdfkd_jax.models.layers import BatchNorm, conv_init, sow_features

ASPP_RATES = (2, 4)


class DeepLabTiny(nn.Module):
  """The tiny DeepLab of the module docstring. (N,H,W,C) -> (N,H,W,classes)."""

  num_classes: int
  width: int = 16
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    def conv_bn(y, feats, k, name, stride=1, dilation=1):
      y = conv(feats, k, f"{name}_conv", self.dtype, stride=stride, dilation=dilation,
               init=conv_init)(y)
      return relu(BatchNorm(use_running_average=not train, dtype=self.dtype,
                               axis_name=self.axis_name, name=f"{name}_bn")(y))

    size, w2 = x.shape[1:3], 2 * self.width
    x = conv_bn(x.astype(self.dtype), self.width, 3, "stem")
    x = conv_bn(x, w2, 3, "down", stride=2)
    x = conv_bn(x, w2, 3, "dilated", dilation=2)
    branches = [conv_bn(x, w2, 1, "aspp_0")]
    branches += [conv_bn(x, w2, 3, f"aspp_{i}", dilation=r)
                 for i, r in enumerate(ASPP_RATES, start=1)]
    pooled = conv_bn(x.mean(axis=(1, 2), keepdims=True), w2, 1, "aspp_pool")
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (w2,)))
    x = conv_bn(jnp.concatenate(branches, -1), w2, 1, "project")
    x = sow_features(self, x)
    logits = conv(self.num_classes, 1, "classifier", self.dtype, bias=True,
                  init=conv_init)(x)
    return upsample_bilinear(logits.astype(jnp.float32), size)


@register("deeplab_tiny")
def deeplab_tiny(num_classes: int = 5, **kw) -> DeepLabTiny:
  return DeepLabTiny(num_classes=num_classes, width=16, **kw)


@register("deeplab_tiny_half")
def deeplab_tiny_half(num_classes: int = 5, **kw) -> DeepLabTiny:
  return DeepLabTiny(num_classes=num_classes, width=8, **kw)
