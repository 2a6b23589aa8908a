"""LeNet-5 and LeNet-5-half for MNIST-like inputs, NHWC, no BatchNorm.

conv 5x5 (VALID) -> relu -> maxpool 2 -> conv 5x5 (VALID) -> relu -> maxpool 2
-> flatten -> fc -> relu -> fc -> relu -> fc. Channels/units: lenet5 6, 16, 120,
84 (61,706 params at 32x32x1, 10 classes); lenet5_half 3, 8, 60, 42 (15,738).
The first fc takes whatever the flattened size is, so any input of at least
16x16 works (smaller ones raise errors.UserError: the second conv would be empty or its pooled map).
Input (N, H, W, C); logits (N, num_classes) float32.

Flax name <-> PyTorch key: conv1, conv2, fc1, fc2, fc3 (same names).
Conv kernels are HWIO here (OIHW in PyTorch); Dense kernel = Linear weight.T.
The flatten order is NHWC here; a torch (C, H, W) flatten needs fc1's rows
permuted when importing.
"""

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax import errors
from fastdfkd_jax.models import register
from fastdfkd_jax.models.cpu_bf16 import relu
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.layers import conv_init, sow_features


class LeNet5(nn.Module):
  """LeNet-5 with `width` scaling. (N, H, W, C) -> (N, num_classes) float32."""

  num_classes: int
  width: float = 1.0
  dtype: Any = jnp.float32
  axis_name: str | None = None  # Unused (no BN); kept for a uniform interface.

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No BN, no dropout.
    if min(x.shape[1], x.shape[2]) < 16:
      raise errors.UserError(
          f"LeNet5 needs inputs of at least 16x16, got {x.shape[1:3]}")
    c1, c2, f1, f2 = (int(round(c * self.width)) for c in (6, 16, 120, 84))
    x = x.astype(self.dtype)
    x = Conv(c1, (5, 5), padding="VALID", kernel_init=conv_init,
             dtype=self.dtype, name="conv1")(x)
    x = nn.max_pool(relu(x), (2, 2), strides=(2, 2))
    x = Conv(c2, (5, 5), padding="VALID", kernel_init=conv_init,
             dtype=self.dtype, name="conv2")(x)
    x = nn.max_pool(relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = sow_features(self, relu(nn.Dense(f1, dtype=self.dtype, name="fc1")(x)))
    x = relu(nn.Dense(f2, dtype=self.dtype, name="fc2")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc3")(x)
    return x.astype(jnp.float32)


@register("lenet5")
def lenet5(num_classes: int = 10, **kw) -> LeNet5:
  return LeNet5(num_classes=num_classes, width=1.0, **kw)


@register("lenet5_half")
def lenet5_half(num_classes: int = 10, **kw) -> LeNet5:
  return LeNet5(num_classes=num_classes, width=0.5, **kw)
