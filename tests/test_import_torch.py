"""Tests for fastdfkd_jax.import_torch: release-layout PyTorch checkpoints -> Flax.

The PyTorch modules below are written here with the release's exact key layouts
(reference doc, section 7) and the same computation as the Flax zoo (padding,
strides, shortcut placement, VGG pooling). They get random weights AND random
BatchNorm running statistics, so the eval-mode BN conversion is exercised, and
the converted Flax logits must match PyTorch's to 1e-4.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import jax  # noqa: E402

from fastdfkd_jax.run import checkpoint  # noqa: E402
from fastdfkd_jax import errors
from fastdfkd_jax.teacher import torch_import
from fastdfkd_jax.models import get_model  # noqa: E402
from fastdfkd_jax.teacher import loader  # noqa: E402
from torch_testlib import (  # noqa: E402
    BasicBlock, assert_close, flax_logits, randomize, torch_logits)

torch.set_num_threads(2)
from conftest import REPO


# ------------------------------------------------------------ release-layout torch models
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


def make_torch(arch, num_classes, input_shape):
  h, w, c = input_shape
  if arch.startswith("resnet") and arch not in ("resnet18", "resnet34"):
    return TinyResNet(int(arch[6:]), num_classes, c)
  if arch in ("resnet18", "resnet34"):
    return ResNet18((2, 2, 2, 2) if arch == "resnet18" else (3, 4, 6, 3), num_classes, c)
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


def wrap(sd, how):
  if how == "plain":
    return sd
  if how == "state_dict":
    return {"state_dict": sd, "epoch": 199, "best_acc": 95.5}
  if how == "module":  # DataParallel prefix, under 'model'
    return {"model": {f"module.{k}": v for k, v in sd.items()}}
  raise ValueError(how)


CASES = [
    # arch, num_classes, (H, W, C), checkpoint wrapping
    ("resnet8", 10, (32, 32, 3), "state_dict"),
    ("resnet8", 7, (28, 28, 1), "module"),
    ("resnet18", 10, (16, 16, 3), "state_dict"),
    ("resnet18", 5, (8, 8, 1), "plain"),
    ("wrn16_1", 10, (32, 32, 3), "state_dict"),
    ("wrn16_1", 10, (28, 28, 1), "plain"),
    ("vgg8", 10, (32, 32, 3), "module"),
    ("vgg8", 10, (28, 28, 1), "state_dict"),
    ("lenet5", 10, (32, 32, 1), "state_dict"),
    ("lenet5", 10, (28, 28, 1), "plain"),
    ("lenet5_half", 10, (28, 28, 3), "module"),
]


@pytest.mark.parametrize("arch,num_classes,input_shape,how", CASES,
                         ids=[f"{a}-{'x'.join(map(str, s))}-{h}" for a, _, s, h in CASES])
def test_logits_match_torch(tmp_path, arch, num_classes, input_shape, how):
  net = randomize(make_torch(arch, num_classes, input_shape), seed=len(arch) + input_shape[0])
  path = str(tmp_path / f"{arch}.pth")
  torch.save(wrap(net.state_dict(), how), path)
  variables = torch_import.load_pth(path, arch, num_classes, input_shape)
  expected_cols = {"params", "batch_stats"} if not arch.startswith("lenet") else {"params"}
  assert set(variables) == expected_cols
  assert all(isinstance(x, np.ndarray) and x.dtype == np.float32
             for x in jax.tree_util.tree_leaves(variables))
  x = np.random.default_rng(0).normal(size=(3,) + input_shape).astype(np.float32)
  assert_close(flax_logits(arch, num_classes, variables, x), torch_logits(net, x))


@pytest.mark.parametrize("channels", [3, 1])
def test_generator_matches_torch(channels):
  nz, ngf, img = 8, 4, 16
  net = randomize(Generator(nz, ngf, img, channels), seed=channels)
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  variables = torch_import.convert_state_dict(sd, "generator", 0, (img, img, channels))
  model = get_model("generator", nz=nz, ngf=ngf, img_size=img, channels=channels)
  z = np.random.default_rng(1).normal(size=(4, nz)).astype(np.float32)
  # Eval mode (running statistics) and train mode (batch statistics).
  got = np.asarray(model.apply(variables, z, train=False))
  with torch.no_grad():
    want = net(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  got_train, _ = model.apply(variables, z, train=True, mutable=["batch_stats"])
  with torch.no_grad():
    want_train = net.train()(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-5)
  assert want.std() > 1e-3 and want_train.std() > 1e-3


# ------------------------------------------------------------ errors
def _resnet8_sd(num_classes=10, cin=3):
  net = randomize(make_torch("resnet8", num_classes, (32, 32, cin)), seed=0)
  return {k: v.numpy() for k, v in net.state_dict().items()}


def test_missing_keys_listed():
  sd = _resnet8_sd()
  del sd["fc.weight"], sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(errors.UserError) as e:
    torch_import.convert_state_dict(sd, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "2 missing keys" in msg
  assert "fc.weight (expected shape (10, 64))" in msg
  assert "layer2.0.downsample.1.running_var" in msg
  assert "unexpected" not in msg and "mis-shaped" not in msg


def test_unexpected_keys_listed():
  sd = _resnet8_sd()
  sd["layer4.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  sd["head.bias"] = np.zeros((3,), np.float32)
  with pytest.raises(errors.UserError) as e:
    torch_import.convert_state_dict({"state_dict": sd}, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "2 unexpected keys" in msg
  assert "layer4.0.conv1.weight" in msg and "head.bias" in msg
  assert "missing" not in msg


def test_mis_shaped_keys_listed_with_shapes():
  sd = _resnet8_sd(num_classes=10, cin=3)
  with pytest.raises(errors.UserError) as e:  # wrong class count and wrong input channels
    torch_import.convert_state_dict(sd, "resnet8", 100, (32, 32, 1))
  msg = str(e.value)
  assert "3 mis-shaped keys" in msg
  assert "fc.weight: expected (100, 64), got (10, 64)" in msg
  assert "fc.bias: expected (100,), got (10,)" in msg
  assert "conv1.weight: expected (16, 1, 3, 3), got (16, 3, 3, 3)" in msg


def test_all_problems_in_one_error_and_wrong_arch():
  sd = _resnet8_sd()
  del sd["bn1.weight"]
  sd["extra.weight"] = np.zeros(2, np.float32)
  sd["fc.bias"] = np.zeros(11, np.float32)
  with pytest.raises(errors.UserError) as e:
    torch_import.convert_state_dict(sd, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "bn1.weight" in msg and "extra.weight" in msg and "fc.bias: expected (10,), got (11,)" in msg
  with pytest.raises(errors.UserError, match="block1.layer.0.bn1.weight"):
    torch_import.convert_state_dict(sd, "wrn16_1", 10, (32, 32, 3))
  with pytest.raises(errors.UserError, match="unknown arch"):
    torch_import.convert_state_dict(sd, "resnet9", 10, (32, 32, 3))


def test_missing_torch_is_a_user_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  with pytest.raises(errors.UserError, match=r"pip install -e \.\[torch\]"):
    torch_import.load_pth(str(tmp_path / "x.pth"), "resnet8", 10, (32, 32, 3))


# ------------------------------------------------------------ CLI + teacher.loader
def test_cli_writes_loadable_teacher_checkpoint(tmp_path):
  net = randomize(make_torch("resnet8", 10, (32, 32, 3)), seed=3)
  pth = str(tmp_path / "resnet8_cifar10.pth")
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, pth)
  out = str(tmp_path / "teacher")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, "-m", "fastdfkd_jax.import_torch", "--arch=resnet8",
         "--num_classes=10", "--dataset=cifar10", pth, out]
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  assert os.path.isdir(os.path.join(out, "checkpoints"))

  # As mode=distill --config.teacher.checkpoint=OUT does it.
  expect = dict(arch="resnet8", num_classes=10, input_shape=[32, 32, 3])
  variables, meta = loader.load(out, **expect)
  model = get_model(meta["arch"], meta["num_classes"])
  assert meta["arch"] == "resnet8" and meta["num_classes"] == 10
  assert meta["input_shape"] == [32, 32, 3] and meta["dataset"] == "cifar10"
  assert meta["mode"] == "import" and meta["source"] == os.path.abspath(pth)
  x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
  got = np.asarray(model.apply(variables, x, train=False))
  assert_close(got, torch_logits(net, x))

  # The .pth route of the loader gives the same variables.
  direct, _ = loader.load(pth, **expect)
  jax.tree.map(np.testing.assert_array_equal, direct, variables)

  # A second import into the same directory needs --overwrite.
  with pytest.raises(errors.UserError, match="--overwrite"):
    torch_import.import_to_checkpoint(pth, out, "resnet8", "cifar10")
  torch_import.import_to_checkpoint(pth, out, "resnet8", "cifar10", overwrite=True)
  assert loader.load(out, **expect)[1]["mode"] == "import"
  with pytest.raises(checkpoint.CheckpointError, match="num_classes"):
    loader.load(out, **dict(expect, num_classes=100))


def test_import_to_checkpoint_errors(tmp_path):
  net = randomize(make_torch("lenet5", 10, (28, 28, 1)), seed=4)
  pth = str(tmp_path / "lenet.pth")
  torch.save(net.state_dict(), pth)
  with pytest.raises(errors.UserError, match="--num_classes=100"):
    torch_import.import_to_checkpoint(pth, str(tmp_path / "a"), "lenet5", "mnist", 100)
  # A 1-channel net on 3-channel data.
  with pytest.raises(errors.UserError, match="conv1.weight: expected"):
    torch_import.import_to_checkpoint(pth, str(tmp_path / "b"), "lenet5", "cifar10")
  meta = torch_import.import_to_checkpoint(pth, str(tmp_path / "c"), "lenet5", "mnist")
  assert meta["input_shape"] == [28, 28, 1]
  variables, meta = loader.load(str(tmp_path / "c"))
  model = get_model(meta["arch"], meta["num_classes"])
  x = np.random.default_rng(3).normal(size=(2, 28, 28, 1)).astype(np.float32)
  assert_close(np.asarray(model.apply(variables, x)), torch_logits(net, x))
