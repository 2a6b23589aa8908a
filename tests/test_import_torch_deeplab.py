"""DeepLabV3 (`deeplabv3_resnet50` / `deeplabv3_mobilenet`) against the release's structure.

The PyTorch modules below rebuild the release's module tree
(`datafree/models/deeplab/`: torchvision's ResNet-50 with
`replace_stride_with_dilation`, the release's MobileNetV2 with its input
padding, `_segm_mobilenet`'s low/high-level split, `DeepLabHead`, `ASPP`,
`_SimpleSegmentationModel`'s bilinear upsampling), written here so the test
needs neither torchvision nor the release. Their parameter counts must equal
the Flax zoo's (and the table in test_deeplab.py), and with random weights and
random BN running statistics, `torch_import.convert_state_dict` must give Flax
logits equal to PyTorch's to 1e-4.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import jax  # noqa: E402

from fastdfkd_jax.teacher import torch_import  # noqa: E402
from fastdfkd_jax.models import get_model  # noqa: E402
from fastdfkd_jax.models.util import count_params, init_variables  # noqa: E402
from test_deeplab import PARAMS  # noqa: E402
from torch_testlib import assert_close, flax_logits, randomize, torch_logits  # noqa: E402

torch.set_num_threads(2)


def cbr(cin, cout, k, stride=1, dilation=1, padding=None, groups=1, act=nn.ReLU):
  padding = dilation * (k - 1) // 2 if padding is None else padding
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False),
                       nn.BatchNorm2d(cout), act())


class Bottleneck(nn.Module):
  def __init__(self, cin, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision ResNet-50 children up to layer4 (what IntermediateLayerGetter keeps)."""

  def __init__(self, dilate):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin, dilation = 64, 1
    for s, (n, planes, d) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512),
                                           (False,) + dilate), start=1):
      stride, previous = (1 if s == 1 else 2), dilation
      if d:
        dilation, stride = dilation * stride, 1
      down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                           nn.BatchNorm2d(planes * 4))
      blocks = [Bottleneck(cin, planes, stride, previous, down)]
      blocks += [Bottleneck(planes * 4, planes, 1, dilation, None) for _ in range(n - 1)]
      setattr(self, f"layer{s}", nn.Sequential(*blocks))
      cin = planes * 4

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, dilation, t):
    super().__init__()
    hidden = int(round(cin * t))
    layers = [cbr(cin, hidden, 1, act=nn.ReLU6)] if t != 1 else []
    layers += [cbr(hidden, hidden, 3, stride, dilation, 0, hidden, nn.ReLU6),
               nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers)
    self.pad, self.res = dilation, stride == 1 and cin == cout

  def forward(self, x):
    y = self.conv(F.pad(x, (self.pad,) * 4))
    return x + y if self.res else y


class MobileNetV2(nn.Module):
  """The release's MobileNetV2 features 0-17, split as `_segm_mobilenet`."""

  def __init__(self, output_stride):
    super().__init__()
    features = [cbr(3, 32, 3, 2, padding=0, act=nn.ReLU6)]
    cin, current, dilation = 32, 2, 1
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
      previous = dilation
      if current == output_stride:
        stride, dilation = 1, dilation * s
      else:
        stride, current = s, current * s
      for i in range(n):
        features.append(InvertedResidual(cin, c, stride if i == 0 else 1,
                                         previous if i == 0 else dilation, t))
        cin = c
    self.low_level_features = nn.Sequential(*features[:4])
    self.high_level_features = nn.Sequential(*features[4:])

  def forward(self, x):
    return self.high_level_features(self.low_level_features(x))


class ASPPPooling(nn.Sequential):
  def __init__(self, cin):
    super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 256, 1, bias=False),
                     nn.BatchNorm2d(256), nn.ReLU())

  def forward(self, x):
    return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear",
                         align_corners=False)


class ASPP(nn.Module):
  def __init__(self, cin, rates):
    super().__init__()
    self.convs = nn.ModuleList([cbr(cin, 256, 1)] + [cbr(cin, 256, 3, dilation=r)
                                                     for r in rates] + [ASPPPooling(cin)])
    self.project = nn.Sequential(nn.Conv2d(1280, 256, 1, bias=False), nn.BatchNorm2d(256),
                                 nn.ReLU(), nn.Dropout(0.1))

  def forward(self, x):
    return self.project(torch.cat([c(x) for c in self.convs], 1))


class DeepLabHead(nn.Module):
  def __init__(self, cin, num_classes, rates):
    super().__init__()
    self.classifier = nn.Sequential(ASPP(cin, rates), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, num_classes, 1))

  def forward(self, x):
    return self.classifier(x)


class DeepLabV3(nn.Module):
  def __init__(self, backbone, num_classes, output_stride=8):
    super().__init__()
    rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
    if backbone == "resnet50":
      dilate = (True, True) if output_stride == 8 else (False, True)
      self.backbone, cin = ResNet50((False,) + dilate), 2048
    else:
      self.backbone, cin = MobileNetV2(output_stride), 320
    self.classifier = DeepLabHead(cin, num_classes, rates)

  def forward(self, x):
    y = self.classifier(self.backbone(x))
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2"])
@pytest.mark.parametrize("num_classes", [13, 21])
def test_param_count_equals_release_structure(backbone, num_classes):
  arch = "deeplabv3_resnet50" if backbone == "resnet50" else "deeplabv3_mobilenet"
  net = DeepLabV3(backbone, num_classes)
  torch_count = sum(p.numel() for p in net.parameters())
  model = get_model(arch, num_classes)
  abstract = jax.eval_shape(lambda k: init_variables(model, k, (64, 64, 3)), jax.random.key(0))
  assert count_params(abstract["params"]) == torch_count == PARAMS[arch][num_classes]
  layout = torch_import.torch_layout(arch, num_classes, (64, 64, 3))
  want = {k: tuple(v.shape) for k, v in net.state_dict().items()
          if not k.endswith("num_batches_tracked")}
  assert layout == want


@pytest.mark.parametrize("arch,output_stride,size", [
    ("deeplabv3_resnet50", 8, 64), ("deeplabv3_mobilenet", 8, 64),
    ("deeplabv3_mobilenet", 16, 61)])
def test_logits_match_release_structure(arch, output_stride, size):
  backbone = "resnet50" if arch == "deeplabv3_resnet50" else "mobilenetv2"
  net = randomize(DeepLabV3(backbone, 13, output_stride), seed=size)
  x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
  want = torch_logits(net, x).transpose(0, 2, 3, 1)
  variables = torch_import.convert_state_dict(net.state_dict(), arch, 13, (size, size, 3),
                                              output_stride=output_stride)
  got = flax_logits(arch, 13, variables, x, output_stride=output_stride)
  assert got.shape == (1, size, size, 13)
  assert_close(got, want)
