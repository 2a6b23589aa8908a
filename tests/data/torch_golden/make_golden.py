"""Makes tests/data/torch_golden/ with PyTorch, once: the tests read it without torch.

    /tmp/torchvenv/bin/python tests/data/torch_golden/make_golden.py   # torch 2.13.0+cpu

The PyTorch modules below rebuild the release's models with its exact key layouts and
computation (reference doc, section 7): the CIFAR zoo (tiny ResNets, resnet18/34, WRN, VGG-BN,
LeNet-5, the generator), torchvision's resnet18/resnet50/mobilenet_v2 under torchvision's
module names (torchvision itself is not needed; their parameter counts at 1000 classes are
torchvision's published ones, which pins the layouts), the release's DeepGenerator and its
DeepLabV3 (`datafree/models/deeplab/`: torchvision's ResNet-50 with
`replace_stride_with_dilation`, the release's MobileNetV2 with its input padding,
`_segm_mobilenet`'s low/high-level split, `DeepLabHead`, `ASPP`, bilinear upsampling).
Each gets the weights `torch_testlib.state_dict` makes from its case name (random BN running
statistics too, so eval-mode BN is exercised), on the inputs `torch_testlib.inputs` makes;
the cases are torch_testlib's tables. Written here:

  outputs.npz          PyTorch's outputs per case (NHWC for images; generators: eval and
                       train mode)
  layouts.json         {name: {"layout": {key: shape}, "params": count}}: PyTorch's
                       state_dict layout (num_batches_tracked aside) and parameter count of
                       every case (DeepLab's under `deeplab_layout_name`), and of
                       torchvision's models at 1000 classes, DeepLab's at 21

(A torch.save'd resnet8 checkpoint is no longer kept: tests/torch_testlib.py
`write_wrapped` writes the same wrapper at test time, and tests/data/pth/ holds the few-KB
files torch.save wrote, the formats' goldens.)
"""

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # tests/
import torch_testlib as lib  # noqa: E402

nn = torch.nn
F = torch.nn.functional
torch.set_num_threads(2)

# torchvision's parameter counts (1000 classes).
TORCHVISION_PARAMS = {"resnet18_imagenet": 11_689_512, "resnet50_imagenet": 25_557_032,
                      "mobilenetv2_imagenet": 3_504_872}


# ------------------------------------------------------------------ the CIFAR zoo
class BasicBlock(nn.Module):
  """Post-activation block: conv1, bn1, conv2, bn2 and, where the shape changes, a 1x1
  conv + BN projection `{shortcut}.{0,1}` ('downsample' in the tiny ResNets and
  torchvision, 'shortcut' in the release's resnet18/34)."""

  expansion = 1

  def __init__(self, cin, cout, stride, shortcut="downsample"):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut_name = shortcut
    setattr(self, shortcut, projection(cin, cout, stride))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    short = getattr(self, self.shortcut_name)
    return F.relu(y + (x if short is None else short(x)))


def projection(cin, cout, stride):
  """The 1x1 conv + BN shortcut where the shape changes, else None."""
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class TinyResNet(nn.Module):
  def __init__(self, depth, num_classes, cin):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    c = 16
    for s, width in enumerate((16, 32, 64), start=1):
      blocks = []
      for i in range(n):
        blocks.append(BasicBlock(c, width, 2 if (s > 1 and i == 0) else 1))
        c = width
      setattr(self, f"layer{s}", nn.Sequential(*blocks))
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean((2, 3)))


class ResNet18(nn.Module):
  def __init__(self, num_blocks, num_classes, cin):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    c = 64
    for s, (n, width) in enumerate(zip(num_blocks, (64, 128, 256, 512)), start=1):
      blocks = []
      for i in range(n):
        blocks.append(BasicBlock(c, width, 2 if (s > 1 and i == 0) else 1, "shortcut"))
        c = width
      setattr(self, f"layer{s}", nn.Sequential(*blocks))
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WideBlock(nn.Module):
  """WRN block (release): bn1, relu1, conv1, bn2, relu2, conv2, convShortcut."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.relu1 = nn.ReLU()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.relu2 = nn.ReLU()
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.equal = cin == cout
    self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

  def forward(self, x):
    if not self.equal:
      x = self.relu1(self.bn1(x))
      out = x
    else:
      out = self.relu1(self.bn1(x))
    out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
    return (x if self.equal else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
  def __init__(self, n, cin, cout, stride):
    super().__init__()
    self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout,
                                           stride if i == 0 else 1) for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth, width, num_classes, cin):
    super().__init__()
    n = (depth - 4) // 6
    ch = (16, 16 * width, 32 * width, 64 * width)
    self.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
    self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
    self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
    self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.relu = nn.ReLU()
    self.fc = nn.Linear(ch[3], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    return self.fc(self.relu(self.bn1(x)).mean((2, 3)))


class VGG(nn.Module):
  """RepDistiller vgg*_bn: block{0..4} Sequentials [conv, BN, ReLU, ..., conv, BN], classifier."""

  def __init__(self, cfg, num_classes, cin):
    super().__init__()
    c = cin
    for b, block in enumerate(cfg):
      layers = []
      for feats in block:
        layers += [nn.Conv2d(c, feats, 3, padding=1), nn.BatchNorm2d(feats), nn.ReLU(True)]
        c = feats
      setattr(self, f"block{b}", nn.Sequential(*layers[:-1]))
    self.pool = nn.MaxPool2d(2, 2)
    self.classifier = nn.Linear(512, num_classes)

  def forward(self, x):
    h = x.shape[2]
    for b in range(5):
      x = F.relu(getattr(self, f"block{b}")(x))
      if b < 3 or (b == 3 and h == 64):
        x = self.pool(x)
    return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LeNet5(nn.Module):
  def __init__(self, num_classes, cin, hw, width=1.0):
    super().__init__()
    c1, c2, f1, f2 = (int(round(c * width)) for c in (6, 16, 120, 84))
    h, w = hw
    for _ in range(2):
      h, w = (h - 4) // 2, (w - 4) // 2
    self.conv1 = nn.Conv2d(cin, c1, 5)
    self.conv2 = nn.Conv2d(c1, c2, 5)
    self.fc1 = nn.Linear(c2 * h * w, f1)
    self.fc2 = nn.Linear(f1, f2)
    self.fc3 = nn.Linear(f2, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = F.relu(self.fc1(x.flatten(1)))
    return self.fc3(F.relu(self.fc2(x)))


class Generator(nn.Module):
  """The release's generator: l1 = Sequential(Linear), conv_blocks = Sequential(...)."""

  def __init__(self, nz, ngf, img_size, nc):
    super().__init__()
    self.init_size = img_size // 4
    self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size ** 2))
    self.conv_blocks = nn.Sequential(
        nn.BatchNorm2d(ngf * 2), nn.Upsample(scale_factor=2),
        nn.Conv2d(ngf * 2, ngf * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf * 2),
        nn.LeakyReLU(0.2, inplace=True), nn.Upsample(scale_factor=2),
        nn.Conv2d(ngf * 2, ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ngf, nc, 3, 1, 1), nn.Sigmoid())

  def forward(self, z):
    out = self.l1(z)
    return self.conv_blocks(out.view(out.shape[0], -1, self.init_size, self.init_size))


# ------------------------------------------------- torchvision and the DeepGenerator
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


# ------------------------------------------------------------------ DeepLabV3
def cbr(cin, cout, k, stride=1, dilation=1, padding=None, groups=1, act=nn.ReLU):
  padding = dilation * (k - 1) // 2 if padding is None else padding
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False),
                       nn.BatchNorm2d(cout), act())


class DeepLabBottleneck(nn.Module):
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
      blocks = [DeepLabBottleneck(cin, planes, stride, previous, down)]
      blocks += [DeepLabBottleneck(planes * 4, planes, 1, dilation, None) for _ in range(n - 1)]
      setattr(self, f"layer{s}", nn.Sequential(*blocks))
      cin = planes * 4

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DeepLabInvertedResidual(nn.Module):
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


class DeepLabMobileNetV2(nn.Module):
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
        features.append(DeepLabInvertedResidual(cin, c, stride if i == 0 else 1,
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
      self.backbone, cin = DeepLabMobileNetV2(output_stride), 320
    self.classifier = DeepLabHead(cin, num_classes, rates)

  def forward(self, x):
    y = self.classifier(self.backbone(x))
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def make_classifier(arch, num_classes, input_shape):
  h, w, c = input_shape
  if arch in ("resnet18", "resnet34"):
    return ResNet18((2, 2, 2, 2) if arch == "resnet18" else (3, 4, 6, 3), num_classes, c)
  if arch.startswith("resnet"):
    return TinyResNet(int(arch[6:]), num_classes, c)
  if arch.startswith("wrn"):
    depth, width = arch[3:].split("_")
    return WideResNet(int(depth), int(width), num_classes, c)
  if arch == "vgg8":
    return VGG(((64,), (128,), (256,), (512,), (512,)), num_classes, c)
  if arch == "vgg11":
    return VGG(((64,), (128,), (256, 256), (512, 512), (512, 512)), num_classes, c)
  if arch.startswith("lenet5"):
    return LeNet5(num_classes, c, (h, w), 0.5 if arch == "lenet5_half" else 1.0)
  raise ValueError(arch)


def make_imagenet(arch, num_classes):
  if arch == "resnet18_imagenet":
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)
  if arch == "resnet50_imagenet":
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
  if arch == "mobilenetv2_imagenet":
    return MobileNetV2(num_classes)
  raise ValueError(arch)


def make_deeplab(arch, num_classes, output_stride=8):
  backbone = "resnet50" if arch == "deeplabv3_resnet50" else "mobilenetv2"
  return DeepLabV3(backbone, num_classes, output_stride)


# ------------------------------------------------------------------ outputs
def layout(net):
  return {k: tuple(v.shape) for k, v in net.state_dict().items()
          if not k.endswith("num_batches_tracked")}


def with_weights(net, name):
  """`net` in eval mode with the weights of case `name` (strict: every key set); None:
  as it is."""
  if name is None:
    return net
  sd = lib.with_bn_steps(lib.state_dict(layout(net), name))
  net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  return net.eval()


def run(net, x, nhwc=True):
  """`net`'s output on x (NHWC in, NHWC out for images), in its current mode."""
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nhwc else x))
    out = net(x).numpy()
  return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


def main():
  out, layouts = {}, {}

  def weighted(net, name, layout_name=None):
    """`net` with the weights of case `name`; its layout recorded (under `layout_name`)."""
    entry = dict(layout=layout(net), params=sum(p.numel() for p in net.parameters()))
    assert layouts.setdefault(layout_name or name, entry) == entry, name
    return with_weights(net, name)

  for arch, num_classes, shape, _ in lib.CLASSIFIERS:
    name = lib.classifier_name(arch, num_classes, shape)
    net = weighted(make_classifier(arch, num_classes, shape), name)
    out[name] = run(net, lib.inputs((lib.CLASSIFIER_BATCH,) + shape, name))
  for arch, size, channels in lib.GENERATORS:
    name = lib.generator_name(arch, size, channels)
    cls = Generator if arch == "generator" else DeepGenerator
    net = weighted(cls(lib.GENERATOR_NZ, lib.GENERATOR_NGF, size, channels), name)
    if arch == "generator":
      z, nhwc = lib.inputs((lib.GENERATOR_BATCH, lib.GENERATOR_NZ), name), False
    else:
      s = size // 16
      z, nhwc = lib.inputs((lib.GENERATOR_BATCH, s, s, lib.GENERATOR_NZ), name), True
    out[f"{name}/eval"] = run(net, z, nhwc)
    out[f"{name}/train"] = run(net.train(), z, nhwc)  # batch statistics
  for arch in lib.IMAGENET:
    weighted(make_imagenet(arch, 1000), None, f"{arch}-1000")
    assert layouts[f"{arch}-1000"]["params"] == TORCHVISION_PARAMS[arch], arch
    name = lib.classifier_name(arch, 10, lib.IMAGENET_SHAPE)
    net = weighted(make_imagenet(arch, 10), name)
    out[name] = run(net, lib.inputs((lib.IMAGENET_BATCH,) + lib.IMAGENET_SHAPE, name))
  for arch in ("deeplabv3_resnet50", "deeplabv3_mobilenet"):
    weighted(make_deeplab(arch, 21), None, f"{arch}-21")
  for arch, output_stride, size in lib.DEEPLAB:
    name = lib.deeplab_name(arch, output_stride, size)
    net = weighted(make_deeplab(arch, lib.DEEPLAB_CLASSES, output_stride), name,
                   lib.deeplab_layout_name(arch))
    out[name] = run(net, lib.inputs((1, size, size, 3), name))
  net = weighted(make_classifier("resnet8", 10, (32, 32, 3)), lib.PTH_NAME)
  out[lib.PTH_NAME] = run(net, lib.inputs((lib.PTH_BATCH, 32, 32, 3), lib.PTH_NAME))

  np.savez_compressed(os.path.join(HERE, "outputs.npz"),
                      **{k: v.astype(np.float32) for k, v in sorted(out.items())})
  with open(os.path.join(HERE, "layouts.json"), "w") as f:
    f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}"
                               for k, v in sorted(layouts.items())) + "\n}\n")
  print(f"torch {torch.__version__}: {len(out)} outputs, {len(layouts)} layouts")


if __name__ == "__main__":
  main()
