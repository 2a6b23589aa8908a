"""Shared pieces of the PyTorch-import tests (import only after `pytest.importorskip("torch")`).

A post-activation BasicBlock in the key layouts the zoo imports, random weights and BN
statistics for a torch module, and the logits comparison of a torch module with the Flax
model its converted state_dict builds.
"""

import jax
import numpy as np
import torch

from fastdfkd_jax.models import get_model

nn = torch.nn
F = torch.nn.functional


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


def randomize(module, seed):
  """Random weights (default init) and random BN affine + running statistics; eval mode."""
  torch.manual_seed(seed)
  for m in module.modules():
    if hasattr(m, "reset_parameters") and not isinstance(m, nn.BatchNorm2d):
      m.reset_parameters()
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(123)
  return module.eval()


def nchw(x_nhwc):
  return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def torch_logits(module, x_nhwc):
  with torch.no_grad():
    return module(nchw(x_nhwc)).numpy()


def flax_logits(arch, num_classes, variables, x_nhwc, **kw):
  model = get_model(arch, num_classes, **kw)
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc))


def assert_close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(want).max() > 1e-2  # a non-trivial comparison
