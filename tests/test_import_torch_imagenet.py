"""Tests for importing torchvision-layout ImageNet classifiers and the release's DeepGenerator.

torchvision itself is not a test dependency (its PyPI wheel is built against
the CUDA torch, not the CPU one the `torch` extra installs), so torchvision's
resnet18, resnet50 and mobilenet_v2 are rebuilt below in plain torch with
torchvision's module names; their parameter counts at 1000 classes are
torchvision's published ones, which pins the layouts. The models get random
weights and random BN running statistics; the converted Flax logits must match
to 1e-4. Forwards run at 32x32, batch 2.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn

import jax  # noqa: E402

from fastdfkd_jax import errors  # noqa: E402
from fastdfkd_jax.teacher import torch_import
from fastdfkd_jax.models import get_model  # noqa: E402
from torch_testlib import (  # noqa: E402
    BasicBlock, assert_close, flax_logits, nchw, projection, randomize, torch_logits)

torch.set_num_threads(2)

# torchvision's parameter counts (1000 classes).
TORCHVISION_PARAMS = {"resnet18_imagenet": 11_689_512, "resnet50_imagenet": 25_557_032,
                      "mobilenetv2_imagenet": 3_504_872}


# ------------------------------------------------------------ torchvision-layout torch models
class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.relu = nn.ReLU()
    self.downsample = projection(cin, 4 * planes, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  def __init__(self, block, layers, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for s, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
      blocks = []
      for i in range(n):
        blocks.append(block(cin, planes, 2 if (s > 1 and i == 0) else 1))
        cin = planes * block.expansion
      setattr(self, f"layer{s}", nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(x.mean((2, 3)))


def _conv_bn_relu6(cin, cout, k, stride, groups=1):
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                 bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = cin * t
    self.use_res = stride == 1 and cin == cout
    layers = [_conv_bn_relu6(cin, hidden, 1, 1)] if t != 1 else []
    layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
               nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
  def __init__(self, num_classes):
    super().__init__()
    features, cin = [_conv_bn_relu6(3, 32, 3, 2)], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
      for i in range(n):
        features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    features.append(_conv_bn_relu6(cin, 1280, 1, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

  def forward(self, x):
    return self.classifier(self.features(x).mean((2, 3)))


class DeepGenerator(nn.Module):
  """The release's DeepGenerator (datafree/models/generator.py), its key layout."""

  def __init__(self, nz, ngf, img_size, nc):
    super().__init__()
    self.l1 = nn.Sequential(nn.Linear(nz, ngf * (img_size // 32) ** 2))  # never called
    layers, cin = [], nz
    for k, feats in enumerate((2 * ngf, 2 * ngf, ngf, ngf, ngf)):
      layers += [nn.Upsample(scale_factor=2)] if k else []
      layers += [nn.Conv2d(cin, feats, 3, 1, 1, bias=False), nn.BatchNorm2d(feats),
                 nn.LeakyReLU(0.2)]
      cin = feats
    self.conv_blocks = nn.Sequential(*layers, nn.Conv2d(cin, nc, 3, 1, 1), nn.Sigmoid())

  def forward(self, z):
    return self.conv_blocks(z)


def make_torch(arch, num_classes):
  if arch == "resnet18_imagenet":
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)
  if arch == "resnet50_imagenet":
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
  if arch == "mobilenetv2_imagenet":
    return MobileNetV2(num_classes)
  raise ValueError(arch)


# ------------------------------------------------------------ tests
@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_torch_reference_has_torchvision_layout(arch):
  """The torch rebuild has torchvision's parameter count, and its state_dict is
  exactly what import_torch expects at 224x224."""
  net = make_torch(arch, 1000)
  assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[arch]
  want = {k: tuple(v.shape) for k, v in net.state_dict().items()
          if not k.endswith("num_batches_tracked")}
  assert torch_import.torch_layout(arch, 1000, (224, 224, 3)) == want


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_logits_match_torchvision_layout(arch):
  net = randomize(make_torch(arch, 10), seed=len(arch))
  sd = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
  variables = torch_import.convert_state_dict(sd, arch, 10, (32, 32, 3))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  assert_close(flax_logits(arch, 10, variables, x), torch_logits(net, x))


def test_wrong_imagenet_arch_lists_the_keys():
  sd = randomize(make_torch("resnet18_imagenet", 10), seed=0).state_dict()
  with pytest.raises(errors.UserError, match="missing keys") as e:
    torch_import.convert_state_dict(sd, "resnet50_imagenet", 10, (32, 32, 3))
  assert "layer1.0.conv3.weight" in str(e.value)


@pytest.mark.parametrize("img_size,channels", [(32, 3), (64, 1)])
def test_deep_generator_matches_release(img_size, channels):
  nz, ngf = 8, 4
  net = randomize(DeepGenerator(nz, ngf, img_size, channels), seed=img_size)
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  variables = torch_import.convert_state_dict(sd, "deep_generator", 0,
                                              (img_size, img_size, channels))
  model = get_model("deep_generator", nz=nz, ngf=ngf, img_size=img_size, channels=channels)
  assert (sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
          == sum(p.numel() for p in net.parameters()))
  s = img_size // 16
  z = np.random.default_rng(1).normal(size=(2, s, s, nz)).astype(np.float32)
  got = np.asarray(model.apply(variables, z, train=False))
  with torch.no_grad():
    want = net(nchw(z)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  got_train, _ = model.apply(variables, z, train=True, mutable=["batch_stats"])
  with torch.no_grad():
    want_train = net.train()(nchw(z)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-5)
  assert want.shape == (2, img_size, img_size, channels) and want_train.std() > 1e-3


def test_cli_refuses_deep_generator(tmp_path):
  with pytest.raises(errors.UserError, match="classifiers"):
    torch_import.import_to_checkpoint(str(tmp_path / "g.pth"), str(tmp_path / "out"),
                                      "deep_generator")
