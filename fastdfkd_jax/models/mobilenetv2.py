"""torchvision's MobileNetV2 (width 1.0) as `mobilenetv2_imagenet`, NHWC.

features_0: 3x3 conv 32 stride 2 + BN + ReLU6; features_1..17: inverted
residual blocks (1x1 expansion conv + BN + ReLU6 where the expansion ratio is
not 1, 3x3 depthwise conv + BN + ReLU6 carrying the stride, 1x1 linear
projection + BN, identity shortcut where stride 1 and the width is kept);
features_18: 1x1 conv 1280 + BN + ReLU6; global average pool; `classifier_1`.
With 1000 classes: 3,504,872 parameters, as torchvision. torchvision's
Dropout(0.2) before the classifier is left out (a classifier here is a pure
function of params and input; the KD and synthesis steps draw no dropout key).
Input (N, H, W, C) with any C and H, W >= 32; logits (N, num_classes) float32.

Flax name <-> PyTorch key (torchvision layout; every '_' is a '.'):
  features_0_0, features_0_1           <-> features.0.0 (conv), features.0.1 (BN)
  features_{b}/conv_0_0, conv_0_1      <-> features.{b}.conv.0.0, .conv.0.1
  features_{b}/conv_1[_0, _1], conv_2  <-> features.{b}.conv.1[.0, .1], .conv.2
  features_{b}/conv_3                  <-> features.{b}.conv.3
  features_18_0, features_18_1         <-> features.18.0, features.18.1
  classifier_1                         <-> classifier.1
Block 1 (expansion 1) has conv_0_* (depthwise), conv_1 (projection), conv_2 (BN);
the others conv_0_* (expansion), conv_1_* (depthwise), conv_2, conv_3. Depthwise
kernels are (3, 3, 1, C) here, (C, 1, 3, 3) in PyTorch.
"""

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.layers import batch_norm, conv_init, sow_features

# torchvision's inverted residual setting: expansion t, width c, repeats n, stride s.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM, LAST = 32, 1280


class _Layers:
  """Conv and conv-BN-ReLU6 of one MobileNetV2 module (its dtype, axis_name, train)."""

  def __init__(self, module: nn.Module, train: bool):
    self.module, self.train = module, train

  def conv(self, feats, k, stride, name, groups=1):
    p = (k - 1) // 2
    return Conv(feats, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                feature_group_count=groups, use_bias=False, kernel_init=conv_init,
                dtype=self.module.dtype, name=name)

  def conv_bn_relu6(self, x, feats, k, stride, name, groups=1):
    """torchvision's Conv2dNormActivation: modules `{name}_0` (conv), `{name}_1` (BN)."""
    x = self.conv(feats, k, stride, f"{name}_0", groups)(x)
    return nn.relu6(batch_norm(self.module, self.train, f"{name}_1")(x))


class InvertedResidual(nn.Module):
  """torchvision InvertedResidual. (N, H, W, Cin) -> (N, H/stride, W/stride, features)."""

  features: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers = _Layers(self, train)
    cin = x.shape[-1]
    hidden = cin * self.expand_ratio
    y, i = x, 0
    if self.expand_ratio != 1:
      y, i = layers.conv_bn_relu6(y, hidden, 1, 1, "conv_0"), 1
    y = layers.conv_bn_relu6(y, hidden, 3, self.stride, f"conv_{i}", groups=hidden)
    y = layers.conv(self.features, 1, 1, f"conv_{i + 1}")(y)
    y = batch_norm(self, train, f"conv_{i + 2}")(y)
    if self.stride == 1 and cin == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """torchvision MobileNetV2, width 1.0. (N, H, W, C) -> (N, num_classes) float32."""

  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers = _Layers(self, train)
    x = layers.conv_bn_relu6(x.astype(self.dtype), STEM, 3, 2, "features_0")
    b = 1
    for t, c, n, s in SETTINGS:
      for i in range(n):
        x = InvertedResidual(c, s if i == 0 else 1, t, dtype=self.dtype,
                             axis_name=self.axis_name, name=f"features_{b}")(x, train)
        b += 1
    x = layers.conv_bn_relu6(x, LAST, 1, 1, f"features_{b}")
    x = sow_features(self, x.mean(axis=(1, 2)))
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=nn.initializers.normal(0.01), name="classifier_1")(x)
    return x.astype(jnp.float32)


@register("mobilenetv2_imagenet")
def mobilenetv2_imagenet(num_classes: int = 1000, **kw) -> MobileNetV2:
  return MobileNetV2(num_classes=num_classes, **kw)
