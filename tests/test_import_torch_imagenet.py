"""Importing torchvision-layout ImageNet classifiers and the release's DeepGenerator.

No torch here (see tests/test_import_torch.py): PyTorch rebuilt torchvision's resnet18,
resnet50 and mobilenet_v2 under torchvision's module names (tests/data/torch_golden/
make_golden.py; torchvision itself was not needed), and their layouts and parameter counts at
1000 classes, which are torchvision's published ones, pin what `torch_import` expects. With
the NumPy weights of `torch_testlib.state_dict` (random BN running statistics included) the
converted Flax logits must match PyTorch's to 1e-4. Forwards run at 32x32, batch 2.
"""

import jax
import numpy as np
import pytest

from fastdfkd_jax import errors
from fastdfkd_jax.models import get_model
from fastdfkd_jax.teacher import torch_import

import torch_testlib as lib
from torch_testlib import assert_close, flax_logits

# torchvision's parameter counts (1000 classes).
TORCHVISION_PARAMS = {"resnet18_imagenet": 11_689_512, "resnet50_imagenet": 25_557_032,
                      "mobilenetv2_imagenet": 3_504_872}


@pytest.mark.parametrize("arch", lib.IMAGENET)
def test_layout_is_torchvisions(arch):
  """import_torch expects at 224x224 exactly the state_dict of PyTorch's rebuild, which has
  torchvision's parameter count."""
  want, torch_params = lib.golden_layout(f"{arch}-1000")
  assert torch_params == TORCHVISION_PARAMS[arch] == lib.param_count(want)
  assert torch_import.torch_layout(arch, 1000, (224, 224, 3)) == want


@pytest.mark.parametrize("arch", lib.IMAGENET)
def test_logits_match_torchvision_layout(arch):
  name = lib.classifier_name(arch, 10, lib.IMAGENET_SHAPE)
  layout, torch_params = lib.golden_layout(name)
  sd = lib.with_bn_steps(lib.state_dict(layout, name))
  wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
  variables = torch_import.convert_state_dict(wrapped, arch, 10, lib.IMAGENET_SHAPE)
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == torch_params
  x = lib.inputs((lib.IMAGENET_BATCH,) + lib.IMAGENET_SHAPE, name)
  assert_close(flax_logits(arch, 10, variables, x), lib.golden(name))


def test_wrong_imagenet_arch_lists_the_keys():
  name = lib.classifier_name("resnet18_imagenet", 10, lib.IMAGENET_SHAPE)
  sd = lib.state_dict(lib.golden_layout(name)[0], name)
  with pytest.raises(errors.UserError, match="missing keys") as e:
    torch_import.convert_state_dict(sd, "resnet50_imagenet", 10, (32, 32, 3))
  assert "layer1.0.conv3.weight" in str(e.value)


@pytest.mark.parametrize("img_size,channels", [(32, 3), (64, 1)])
def test_deep_generator_matches_release(img_size, channels):
  nz, ngf = lib.GENERATOR_NZ, lib.GENERATOR_NGF
  name = lib.generator_name("deep_generator", img_size, channels)
  layout, torch_params = lib.golden_layout(name)
  variables = torch_import.convert_state_dict(lib.state_dict(layout, name), "deep_generator",
                                              0, (img_size, img_size, channels))
  model = get_model("deep_generator", nz=nz, ngf=ngf, img_size=img_size, channels=channels)
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == torch_params
  s = img_size // 16
  z = lib.inputs((lib.GENERATOR_BATCH, s, s, nz), name)
  got = lib.flax_apply(model, variables, z)
  want = lib.golden(f"{name}/eval")
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  got_train = lib.flax_apply(model, variables, z, train=True)
  want_train = lib.golden(f"{name}/train")
  np.testing.assert_allclose(got_train, want_train, rtol=1e-4, atol=1e-5)
  assert want.shape == (lib.GENERATOR_BATCH, img_size, img_size, channels)
  assert want.std() > 1e-3 and want_train.std() > 1e-3


def test_cli_refuses_deep_generator(tmp_path):
  with pytest.raises(errors.UserError, match="classifiers"):
    torch_import.import_to_checkpoint(str(tmp_path / "g.pth"), str(tmp_path / "out"),
                                      "deep_generator")
