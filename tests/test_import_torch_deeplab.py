"""DeepLabV3 (`deeplabv3_resnet50` / `deeplabv3_mobilenet`) against the release's structure.

No torch here (see tests/test_import_torch.py): tests/data/torch_golden/make_golden.py
rebuilt the release's module tree in PyTorch (`datafree/models/deeplab/`: torchvision's
ResNet-50 with `replace_stride_with_dilation`, the release's MobileNetV2 with its input
padding, `_segm_mobilenet`'s low/high-level split, `DeepLabHead`, `ASPP`,
`_SimpleSegmentationModel`'s bilinear upsampling), needing neither torchvision nor the
release. Its parameter counts must equal the Flax zoo's (and the table in test_deeplab.py),
its layouts `torch_import`'s, and with the NumPy weights of `torch_testlib.state_dict`
(random BN running statistics included) the converted Flax logits must equal PyTorch's to
1e-4.
"""

import pytest

from fastdfkd_jax.teacher import torch_import

import torch_testlib as lib
from test_deeplab import PARAMS
from torch_testlib import assert_close, flax_logits

ARCHS = ["deeplabv3_resnet50", "deeplabv3_mobilenet"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [13, 21])
def test_param_count_equals_release_structure(arch, num_classes):
  """The Flax model's parameters (those of its PyTorch layout: every one has its key, BN
  running statistics aside) number as the release's, and their keys and shapes are its."""
  want, torch_count = lib.golden_layout(lib.deeplab_layout_name(arch, num_classes))
  layout = torch_import.torch_layout(arch, num_classes, (64, 64, 3))
  assert lib.param_count(layout) == torch_count == PARAMS[arch][num_classes]
  assert layout == want


@pytest.mark.parametrize("arch,output_stride,size", lib.DEEPLAB)
def test_logits_match_release_structure(arch, output_stride, size):
  name = lib.deeplab_name(arch, output_stride, size)
  sd = lib.with_bn_steps(lib.state_dict(lib.golden_layout(lib.deeplab_layout_name(arch))[0],
                                        name))
  variables = torch_import.convert_state_dict(sd, arch, lib.DEEPLAB_CLASSES, (size, size, 3),
                                              output_stride=output_stride)
  x = lib.inputs((1, size, size, 3), name)
  got = flax_logits(arch, lib.DEEPLAB_CLASSES, variables, x, output_stride=output_stride)
  assert got.shape == (1, size, size, lib.DEEPLAB_CLASSES)
  assert_close(got, lib.golden(name))
