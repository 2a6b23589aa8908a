"""FastDFKD generator (reference doc section 6), NHWC.

z (N, nz) -> Linear `l1` -> reshape (N, init, init, 2ngf), init = img_size // 4
-> BN `bn0` -> nearest upsample x2 -> conv3x3 `conv1` (no bias) -> BN `bn1`
-> LeakyReLU(0.2) -> nearest upsample x2 -> conv3x3 `conv2` (no bias) -> BN `bn2`
-> LeakyReLU(0.2) -> conv3x3 `conv3` (bias) -> sigmoid
-> images (N, img_size, img_size, channels) float32 in [0, 1].
nz 256, ngf 64, img_size 32, channels 3: 2,328,899 parameters. BN uses batch
statistics when train=True (the release always runs it in training mode).

Flax name <-> PyTorch key of the release (`l1` is a Sequential, the rest is
`conv_blocks`):
  l1    <-> l1.0              bn0   <-> conv_blocks.0
  conv1 <-> conv_blocks.2     bn1   <-> conv_blocks.3
  conv2 <-> conv_blocks.6     bn2   <-> conv_blocks.7
  conv3 <-> conv_blocks.9
The release reshapes l1's output NCHW (view(N, 2ngf, init, init)); here it is
reshaped NHWC (N, init, init, 2ngf), so importing l1 needs its output units
permuted from (c, h, w) to (h, w, c) order. Conv kernels are HWIO here.
"""

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models import register
from fastdfkd_jax.models.conv import Conv
from fastdfkd_jax.models.layers import batch_norm

# PyTorch's default Linear/Conv init: kaiming_uniform(a=sqrt(5)) on the weight,
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on the bias.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                      "uniform")


def torch_bias_init(fan_in: int):
  bound = 1.0 / fan_in ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling, (N, H, W, C) -> (N, 2H, 2W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def torch_conv3x3(module: nn.Module, x: jax.Array, feats: int, bias: bool,
                  name: str) -> jax.Array:
  """The release generators' 3x3 conv (padding 1, PyTorch's default init) `name`
  inside `module`, in its dtype, applied to x."""
  return Conv(feats, (3, 3), padding=((1, 1), (1, 1)), use_bias=bias,
              kernel_init=torch_kernel_init, bias_init=torch_bias_init(9 * x.shape[-1]),
              dtype=module.dtype, name=name)(x)


def upsample_conv_bn(module: nn.Module, x: jax.Array, feats: int, train: bool, k: int,
                     upsample: bool = True) -> jax.Array:
  """One block of the release's generators inside `module`: [nearest upsample x2 ->]
  conv3x3 `conv{k}` (no bias) -> BN `bn{k}` -> LeakyReLU(0.2)."""
  if upsample:
    x = upsample2(x)
  x = torch_conv3x3(module, x, feats, False, f"conv{k}")
  return nn.leaky_relu(batch_norm(module, train, f"bn{k}")(x), 0.2)


class Generator(nn.Module):
  """FastDFKD generator. z (N, nz) -> images (N, img_size, img_size, channels)."""

  nz: int = 256
  ngf: int = 64
  img_size: int = 32
  channels: int = 3
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @property
  def latent_shape(self) -> tuple[int]:
    """Shape of one latent, (nz,)."""
    return (self.nz,)

  @nn.compact
  def __call__(self, z, train: bool = True):
    init, c2 = self.img_size // 4, 2 * self.ngf
    x = nn.Dense(c2 * init * init, dtype=self.dtype,
                 kernel_init=torch_kernel_init,
                 bias_init=torch_bias_init(self.nz), name="l1")(
                     z.astype(self.dtype))
    x = x.reshape(z.shape[0], init, init, c2)
    x = batch_norm(self, train, "bn0")(x)
    x = upsample_conv_bn(self, x, c2, train, 1)
    x = upsample_conv_bn(self, x, self.ngf, train, 2)
    x = torch_conv3x3(self, x, self.channels, True, "conv3")
    return nn.sigmoid(x.astype(jnp.float32))


def reset_first_layer(params: dict, key: jax.Array) -> dict:
  """The release's `reset_l0` (fast_meta.py): `l1` kernel ~ N(0, 0.02) and bias 0, and
  the first BN `bn0` (its 'conv_blocks.0') scale ~ N(0, 0.02) and bias 0. Pure.

  Args:
    params: the generator's 'params' collection (a dict with 'l1'), or a full
      variables dict holding it under 'params' (then returned the same way).
    key: PRNG key for the new kernel and scale.
  """
  if "params" in params and "l1" not in params:
    return {**params, "params": reset_first_layer(params["params"], key)}
  k1, k2 = jax.random.split(key)
  l1, bn0 = params["l1"], params["bn0"]
  return {**params,
          "l1": {**l1, "kernel": 0.02 * jax.random.normal(k1, l1["kernel"].shape,
                                                          l1["kernel"].dtype),
                 "bias": jnp.zeros_like(l1["bias"])},
          "bn0": {**bn0, "scale": 0.02 * jax.random.normal(k2, bn0["scale"].shape,
                                                           bn0["scale"].dtype),
                  "bias": jnp.zeros_like(bn0["bias"])}}


def reinitialize(params: dict, key: jax.Array, std: float) -> dict:
  """The release's `reset_model` (CMI): every Dense/Conv kernel ~ N(0, std) and bias 0,
  every BN scale ~ N(1, std) and bias 0. Pure; `params` is the 'params' collection
  (arrays, or shape/dtype structs: only the layout is read)."""
  keys = dict(zip(sorted(params), jax.random.split(key, len(params))))
  new = {}
  for name, layer in params.items():
    centre = 1.0 if name.startswith("bn") else 0.0
    weight = "scale" if name.startswith("bn") else "kernel"
    w = layer[weight]
    new[name] = {**{k: jnp.zeros(v.shape, v.dtype) for k, v in layer.items()},
                 weight: centre + std * jax.random.normal(keys[name], w.shape, w.dtype)}
  return new


@register("generator")
def generator(num_classes: int | None = None, **kw) -> Generator:
  """Factory; `num_classes` is accepted for the registry and ignored."""
  del num_classes
  return Generator(**kw)
