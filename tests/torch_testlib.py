"""Shared pieces of the PyTorch-import tests: golden outputs of PyTorch, without PyTorch.

Every test model's weights are a function of its case name and the release layout (PyTorch
key -> shape) alone (`state_dict`), and so are its inputs (`inputs`): the tests rebuild
both with NumPy, and `tests/data/torch_golden/make_golden.py` (run once with torch, see the
README there) built the same state_dicts into PyTorch modules of the release's structure and
stored their outputs (`outputs.npz`) and their layouts and parameter counts
(`layouts.json`). `write_wrapped` writes a release-style checkpoint at test time.

This module imports NumPy only (JAX where a function needs it): the generator script
imports it under the torch venv.
"""

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping

import numpy as np

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "torch_golden")

# Release-layout classifiers: (arch, num_classes, (H, W, C), checkpoint wrapping).
CLASSIFIERS = [
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
CLASSIFIER_BATCH = 3
# The release's generator (nz 8, ngf 4, 16x16) and DeepGenerator (nz 8, ngf 4): (arch, H, C).
GENERATOR_NZ, GENERATOR_NGF, GENERATOR_BATCH = 8, 4, 4
GENERATORS = [("generator", 16, 3), ("generator", 16, 1),
              ("deep_generator", 32, 3), ("deep_generator", 64, 1)]
# torchvision-layout ImageNet classifiers: 10 classes at 32x32x3, batch 2.
IMAGENET = ["mobilenetv2_imagenet", "resnet18_imagenet", "resnet50_imagenet"]
IMAGENET_SHAPE, IMAGENET_BATCH = (32, 32, 3), 2
# DeepLabV3, 13 classes, batch 1: (arch, output_stride, size).
DEEPLAB = [("deeplabv3_resnet50", 8, 64), ("deeplabv3_mobilenet", 8, 64),
           ("deeplabv3_mobilenet", 16, 61)]
DEEPLAB_CLASSES = 13
# The CLI's checkpoint (`write_wrapped`): resnet8 for cifar10, {"state_dict": {"module." +
# key: ...}, "epoch": 199, "best_acc": 95.5}; its weights are `state_dict(layout, PTH_NAME)`.
PTH_NAME = "resnet8_cifar10"
PTH_BATCH = 2
BN_STEPS = 123  # every BN's num_batches_tracked


def classifier_name(arch: str, num_classes: int, shape) -> str:
  return f"{arch}-{num_classes}-{'x'.join(map(str, shape))}"


def generator_name(arch: str, size: int, channels: int) -> str:
  return f"{arch}-{size}x{size}x{channels}"


def deeplab_name(arch: str, output_stride: int, size: int) -> str:
  return f"{arch}-os{output_stride}-{size}"


def deeplab_layout_name(arch: str, num_classes: int = DEEPLAB_CLASSES) -> str:
  """The layouts.json entry of a DeepLab (the same at output strides 8 and 16)."""
  return f"{arch}-{num_classes}"


def _seed(text: str) -> int:
  return zlib.crc32(text.encode())


def state_dict(layout: Mapping[str, tuple], name: str) -> dict[str, np.ndarray]:
  """The float32 weights of case `name` for a layout of PyTorch key -> shape.

  Each tensor is uniform from its own generator, seeded by (name, key): BN weight in
  [0.5, 1.5], bias, running_mean in [-0.2, 0.2], running_var in [0.5, 2]; other weights and
  biases in +-1/sqrt(fan_in) of their weight (PyTorch's default bounds). A BN is a prefix
  with a running_mean.
  """
  bn = {k[:-len(".running_mean")] for k in layout if k.endswith(".running_mean")}
  bn_ranges = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2), "running_mean": (-0.2, 0.2),
               "running_var": (0.5, 2.0)}
  out = {}
  for key, shape in layout.items():
    prefix, leaf = key.rsplit(".", 1)
    if prefix in bn:
      lo, hi = bn_ranges[leaf]
    else:
      bound = 1.0 / math.sqrt(math.prod(layout[f"{prefix}.weight"][1:]))
      lo, hi = -bound, bound
    u = np.asarray(np.random.default_rng([_seed(name), _seed(key)]).random(
        tuple(shape), dtype=np.float32))
    out[key] = u * np.float32(hi - lo) + np.float32(lo)
  return out


def with_bn_steps(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`sd` with each BN's int64 `num_batches_tracked` (= BN_STEPS), as torch saves it."""
  out = dict(sd)
  for key in sd:
    if key.endswith(".running_mean"):
      out[key[:-len("running_mean")] + "num_batches_tracked"] = np.array(BN_STEPS, np.int64)
  return out


def write_wrapped(path: str, sd: Mapping[str, np.ndarray], epoch: int = 199,
                  best_acc: float = 95.5) -> None:
  """`torch.save({"state_dict": DataParallel(net).state_dict(), "epoch": .., "best_acc": ..})`:
  `teacher.pth.write`'s zip of `module.`-prefixed tensors, its pickle nested in that dict.
  (The formats torch.save itself writes are tests/data/pth's goldens.)"""
  import zipfile   # pylint: disable=import-outside-toplevel
  from fastdfkd_jax.teacher import pth   # pylint: disable=import-outside-toplevel
  pth.write(path, {f"module.{k}": v for k, v in sd.items()})
  with zipfile.ZipFile(path) as zf:
    records = [(info, zf.read(info)) for info in zf.infolist()]
  key = lambda s: b"X" + struct.pack("<I", len(s)) + s.encode()   # noqa: E731 BINUNICODE
  for i, (info, data) in enumerate(records):
    if info.filename.endswith("/data.pkl"):   # PROTO 2 ... STOP: nest it, then 2 more items
      records[i] = (info, b"\x80\x02}(" + key("state_dict") + data[2:-1] + key("epoch")
                    + b"J" + struct.pack("<i", epoch) + key("best_acc") + b"G"
                    + struct.pack(">d", best_acc) + b"u.")
  with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
    for info, data in records:
      zf.writestr(info, data)


def inputs(shape, name: str) -> np.ndarray:
  """The float32 inputs (uniform in [-2, 2]) of case `name`."""
  u = np.random.default_rng([_seed(name), 0]).random(tuple(shape), dtype=np.float32)
  return u * np.float32(4.0) - np.float32(2.0)


def golden(name: str) -> np.ndarray:
  """PyTorch's output of case `name` (NHWC for images), from outputs.npz."""
  with np.load(os.path.join(GOLDEN, "outputs.npz")) as npz:
    return npz[name]


def golden_layout(name: str) -> tuple[dict[str, tuple], int]:
  """(PyTorch key -> shape, num_batches_tracked aside; PyTorch's parameter count) of the
  layouts.json entry `name`: a case, `deeplab_layout_name(arch, 13 or 21)` or
  f"{arch}-1000" of a torchvision model."""
  with open(os.path.join(GOLDEN, "layouts.json")) as f:
    entry = json.load(f)[name]
  return {k: tuple(v) for k, v in entry["layout"].items()}, entry["params"]


def param_count(layout: Mapping[str, tuple]) -> int:
  """The parameters of a PyTorch layout: its tensors but BN running statistics."""
  return sum(math.prod(shape) for key, shape in layout.items()
             if not key.endswith(("running_mean", "running_var")))


def flax_apply(model, variables, x, train: bool = False) -> np.ndarray:
  """`model`'s output on x, compiled without optimisations; with train=True in train mode
  (BatchNorm on batch statistics, the updated statistics dropped)."""
  import jax  # pylint: disable=import-outside-toplevel  # make_golden.py runs without JAX
  from conftest import compile_unoptimized  # pylint: disable=import-outside-toplevel

  def forward(v, x):
    if train:
      return model.apply(v, x, train=True, mutable=["batch_stats"])[0]
    return model.apply(v, x, train=False)

  variables = jax.tree.map(np.asarray, variables)
  return np.asarray(compile_unoptimized(forward, variables, x)(variables, x))


def flax_logits(arch, num_classes, variables, x_nhwc, **kw) -> np.ndarray:
  """The eval-mode output of the zoo's `arch` (`get_model(arch, num_classes, **kw)`)."""
  from fastdfkd_jax.models import get_model  # pylint: disable=import-outside-toplevel
  return flax_apply(get_model(arch, num_classes, **kw), variables, x_nhwc)


def assert_close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(want).max() > 1e-2  # a non-trivial comparison
