"""DeepLabV3 segmentation models: `deeplabv3_resnet50`, `deeplabv3_mobilenet`, NHWC.

As the release's builders (`datafree/models/deeplab/modeling.py`, defaults
output_stride=8): a dilated backbone (ResNet-50 with strides 2 of stages 3-4
replaced by dilation 2 and 4; MobileNetV2, `deeplab_backbones.py`, without its
last 1x1 conv), then `DeepLabHead` = ASPP (1x1, three 3x3 atrous convs, image
pooling; 256 channels each, projected to 256, dropout 0.1) -> 3x3 conv 256 -> BN
-> ReLU (sown as the penultimate features, `layers.sow_features`) -> 1x1 conv with
bias to the classes; logits bilinearly upsampled
(half-pixel centres, PyTorch's align_corners=False) to the input size. Output
stride 8 uses atrous rates (12, 24, 36), 16 uses (6, 12, 18) (and ResNet
dilation only in stage 4). No ImageNet weights are loaded (the release's
`pretrained_backbone` is a download): import a `.pth` with `import_torch`.

Input (N, H, W, C) with any C; logits (N, H, W, num_classes) float32. The ASPP
dropout acts only with train=True *and* a 'dropout' rng passed to `apply`
(`rngs={'dropout': key}`); the package's generic train steps pass none, so they
train without it.

Flax name <-> PyTorch key (the release's state_dict):
  backbone/conv1, bn1                     <-> backbone.conv1, .bn1         (ResNet-50)
  backbone/layer{s}_{i}/conv{1,2,3}, bn{1,2,3}, downsample_{0,1}
                                          <-> backbone.layer{s}.{i}.conv1, ..., .downsample.0/1
  backbone/low_level_features, high_level_features/...  (MobileNetV2, deeplab_backbones)
  classifier/classifier_0/convs_{b}_{0,1} <-> classifier.classifier.0.convs.{b}.0/1  (b = 0..3)
  classifier/classifier_0/convs_4_{1,2}   <-> classifier.classifier.0.convs.4.1/2    (pooling)
  classifier/classifier_0/project_{0,1}   <-> classifier.classifier.0.project.0/1
  classifier/classifier_{1,2,4}           <-> classifier.classifier.1/2/4
Conv kernels are HWIO here (OIHW in PyTorch); BN scale/bias <-> weight/bias,
batch_stats mean/var <-> running_mean/running_var.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.deeplab_backbones import MobileNetV2Backbone, ResNet50Backbone, conv
from fastdfkd_jax.models.layers import batch_norm, sow_features

ASPP_CHANNELS = 256
ASPP_DROPOUT = 0.1
# output stride -> (ResNet stages 2-4 dilated instead of strided, ASPP atrous rates).
_OUTPUT_STRIDES = {8: ((False, True, True), (12, 24, 36)),
                   16: ((False, False, True), (6, 12, 18))}
# Kaiming-normal (fan_in), the release's DeepLab head initialisation.
head_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def check_output_stride(output_stride: int) -> None:
  """Raises ValueError unless the release supports `output_stride` (8 or 16)."""
  if output_stride not in _OUTPUT_STRIDES:
    raise ValueError(f"output_stride must be one of {sorted(_OUTPUT_STRIDES)}, "
                     f"got {output_stride}")


class DeepLabHead(nn.Module):
  """ASPP + 3x3 conv + BN + ReLU + 1x1 classifier. (N, h, w, C) -> (N, h, w, classes)."""

  num_classes: int
  rates: Sequence[int]
  dropout_rate: float = ASPP_DROPOUT
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = ASPP_CHANNELS
    x = ASPP(self.rates, self.dropout_rate, self.dtype, self.axis_name,
             name="classifier_0")(x, train)
    x = conv(c, 3, "classifier_1", self.dtype, init=head_init)(x)
    x = sow_features(self, relu(batch_norm(self, train, "classifier_2")(x)))
    return conv(self.num_classes, 1, "classifier_4", self.dtype, bias=True,
                init=head_init)(x)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: five 256-channel branches, concatenated, projected."""

  rates: Sequence[int]
  dropout_rate: float = ASPP_DROPOUT
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = ASPP_CHANNELS
    y = conv(c, 1, "convs_0_0", self.dtype, init=head_init)(x)
    branches = [relu(batch_norm(self, train, "convs_0_1")(y))]
    for b, rate in enumerate(self.rates, start=1):
      y = conv(c, 3, f"convs_{b}_0", self.dtype, dilation=rate, init=head_init)(x)
      branches.append(relu(batch_norm(self, train, f"convs_{b}_1")(y)))
    pooled = x.mean(axis=(1, 2), keepdims=True)
    pooled = conv(c, 1, "convs_4_1", self.dtype, init=head_init)(pooled)
    pooled = relu(batch_norm(self, train, "convs_4_2")(pooled))
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (c,)))
    y = conv(c, 1, "project_0", self.dtype, init=head_init)(jnp.concatenate(branches, -1))
    y = relu(batch_norm(self, train, "project_1")(y))
    deterministic = not (train and self.has_rng("dropout"))
    return nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)


def upsample_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """(N, h, w, C) -> (N, H, W, C), bilinear with half-pixel centres (align_corners=False)."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, size[0], size[1], c), "bilinear", antialias=False)


class DeepLabV3(nn.Module):
  """Backbone + DeepLabHead, logits upsampled to the input. (N,H,W,C) -> (N,H,W,classes)."""

  backbone: str
  num_classes: int
  output_stride: int = 8
  dropout_rate: float = ASPP_DROPOUT
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_output_stride(self.output_stride)
    dilated, rates = _OUTPUT_STRIDES[self.output_stride]
    size = x.shape[1:3]
    x = x.astype(self.dtype)
    if self.backbone == "resnet50":
      feats = ResNet50Backbone(dilated, self.dtype, self.axis_name, name="backbone")(x, train)
    elif self.backbone != "mobilenetv2":
      raise ValueError(f"backbone must be 'resnet50' or 'mobilenetv2', got {self.backbone!r}")
    else:
      feats = MobileNetV2Backbone(self.output_stride, self.dtype, self.axis_name,
                                  name="backbone")(x, train)
    logits = DeepLabHead(self.num_classes, rates, self.dropout_rate, self.dtype,
                         self.axis_name, name="classifier")(feats, train)
    return upsample_bilinear(logits.astype(jnp.float32), size)


@register("deeplabv3_resnet50")
def deeplabv3_resnet50(num_classes: int = 21, **kw) -> DeepLabV3:
  return DeepLabV3(backbone="resnet50", num_classes=num_classes, **kw)


@register("deeplabv3_mobilenet")
def deeplabv3_mobilenet(num_classes: int = 21, **kw) -> DeepLabV3:
  return DeepLabV3(backbone="mobilenetv2", num_classes=num_classes, **kw)
