"""models/conv.py: the forward-form input gradient equals XLA's, and oneDNN takes it."""

import os
import platform
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fastdfkd_jax.models import conv

DN = ("NHWC", "HWIO", "NHWC")


def _loss(fn, pads, strides=(1, 1)):
  def f(x, w):
    y = fn(x, w, strides, pads, dimension_numbers=DN).astype(jnp.float32)
    return (y * jnp.arange(y.shape[-1], dtype=jnp.float32)).sum()
  return f


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 2)), "VALID"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_value_and_gradients_equal_xla(pads, dtype):
  x = jax.random.normal(jax.random.key(0), (3, 9, 7, 5)).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (3, 3, 5, 6)).astype(dtype)
  ours = jax.value_and_grad(_loss(conv.conv_general_dilated, pads), (0, 1))(x, w)
  xla = jax.value_and_grad(_loss(lax.conv_general_dilated, pads), (0, 1))(x, w)
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-6
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol * float(np.abs(np.asarray(b, np.float32)).max()))


@pytest.mark.parametrize("shape,kernel,strides,pads", [
    ((3, 9, 7, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 8, 8, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 8, 8, 5), (1, 1), (2, 2), ((0, 0), (0, 0))),
    ((2, 11, 10, 4), (3, 2), (3, 2), ((2, 0), (1, 3))),
    ((2, 10, 9, 4), (5, 5), (2, 3), "SAME"),
    ((2, 10, 9, 4), (3, 3), (2, 2), "VALID")])
def test_strided_polyphase_gradients_equal_xla(shape, kernel, strides, pads):
  x = jax.random.normal(jax.random.key(0), shape).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (*kernel, shape[-1], 6)).astype(jnp.bfloat16)
  ours = jax.value_and_grad(_loss(conv.conv_general_dilated, pads, strides), (0, 1))(x, w)
  xla = jax.value_and_grad(_loss(lax.conv_general_dilated, pads, strides), (0, 1))(x, w)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
    assert a.dtype == b.dtype and a.shape == b.shape
    b32 = np.asarray(b, np.float32)
    np.testing.assert_allclose(np.asarray(a, np.float32), b32, rtol=2e-2,
                               atol=2e-2 * float(np.abs(b32).max()))


def test_strided_phases_cover_every_tap_once():
  for kernel, strides in [((3, 3), (2, 2)), ((1, 1), (2, 2)), ((5, 2), (2, 3)), ((3, 3), (3, 3))]:
    taps = [(p + strides[0] * i, q + strides[1] * j)
            for p, q, start, limit in conv._phases((1, 20, 20, 1), kernel, strides)
            for i in range(len(range(p, kernel[0], strides[0])))
            for j in range(len(range(q, kernel[1], strides[1])))]
    assert sorted(taps) == [(a, b) for a in range(kernel[0]) for b in range(kernel[1])]


def test_only_bfloat16_stride_1_convolutions_take_the_custom_gradient():
  def jaxpr(dtype, strides):
    x, w = jnp.ones((2, 8, 8, 4), dtype), jnp.ones((3, 3, 4, 4), dtype)
    return str(jax.make_jaxpr(jax.grad(_loss(conv.conv_general_dilated, ((1, 1), (1, 1)),
                                             strides)))(x, w))
  assert "optimization_barrier" in jaxpr(jnp.bfloat16, (1, 1))
  assert "optimization_barrier" not in jaxpr(jnp.float32, (1, 1))
  assert "optimization_barrier" not in jaxpr(jnp.float32, (2, 2))
  assert "optimization_barrier" in jaxpr(jnp.bfloat16, (2, 2))   # the polyphase gradient


def test_conv_module_has_nn_conv_parameters_and_outputs():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  kw = dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  ours, ref = conv.Conv(**kw), nn.Conv(**kw)
  v = ref.init(jax.random.key(1), x)
  assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(v)
  np.testing.assert_array_equal(ours.apply(v, x), ref.apply(v, x))


_HLO_SCRIPT = """
import jax, jax.numpy as jnp, re
from fastdfkd_jax.models import get_model
m = get_model("wrn16_1", 10, dtype=jnp.bfloat16)
x = jnp.ones((4, 32, 32, 3))
v = m.init(jax.random.key(0), x, train=False)
g = jax.jit(jax.grad(lambda v, x: m.apply(v, x, train=False).sum(), (0, 1)))
txt = g.lower(v, x).compile().as_text()
plain = [l for l in txt.splitlines() if re.search(r"= \\S+ convolution\\(", l)]
strided = [l for l in plain if "stride=" in l or "lhs_dilate" in l]
print(txt.count("__onednn$convolution"), len(plain), len(strided))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN: x86 CPUs")
def test_bfloat16_input_gradient_convolutions_run_on_onednn():
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_experimental_onednn_custom_call=true",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _HLO_SCRIPT], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  onednn, plain, strided = map(int, out)
  if onednn == 0:
    pytest.skip("this jaxlib's XLA:CPU has no oneDNN convolutions")
  # wrn16_1: 8 stride-1 3x3 convs, 2 strided 3x3 + 2 strided 1x1, 1 stride-1 1x1 shortcut,
  # the stem: the forward, input gradient and weight gradient of each on oneDNN (the
  # strided ones' gradients as stride-1 polyphase convolutions).
  assert plain == 0, f"{plain} convolutions ({strided} strided or dilated) left to XLA"
