"""models/conv.py: the forward-form input gradient equals XLA's, and oneDNN takes it.

Values and gradients of ours and XLA's are computed in one compiled program per case
(compiled unoptimised: op by op they cost seconds of compiles each).
"""

import platform
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fastdfkd_jax.models import conv
from fastdfkd_jax.models import get_model
from fastdfkd_jax.run import xla_env

from conftest import compile_unoptimized

DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed, shape, dtype):
  """Standard-normal test input from NumPy (no XLA RNG program to compile)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32).astype(dtype)


def _ours_and_xla(pads, strides, x, w):
  """(value, (dx, dw)) of the loss through conv.conv_general_dilated and through XLA's."""
  def both(x, w):
    return tuple(jax.value_and_grad(_loss(fn, pads, strides), (0, 1))(x, w)
                 for fn in (conv.conv_general_dilated, lax.conv_general_dilated))
  return compile_unoptimized(both, x, w)(x, w)


def _loss(fn, pads, strides=(1, 1)):
  def f(x, w):
    y = fn(x, w, strides, pads, dimension_numbers=DN).astype(jnp.float32)
    return (y * jnp.arange(y.shape[-1], dtype=jnp.float32)).sum()
  return f


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 2)), "VALID"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_value_and_gradients_equal_xla(pads, dtype):
  x = _normal(0, (3, 9, 7, 5), dtype)
  w = _normal(1, (3, 3, 5, 6), dtype)
  ours, xla = _ours_and_xla(pads, (1, 1), x, w)
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
  x = _normal(0, shape, jnp.bfloat16)
  w = _normal(1, (*kernel, shape[-1], 6), jnp.bfloat16)
  ours, xla = _ours_and_xla(pads, strides, x, w)
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
  x = _normal(0, (2, 6, 6, 3), jnp.float32)
  kw = dict(features=4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  ours, ref = conv.Conv(**kw), nn.Conv(**kw)
  v = jax.eval_shape(ref.init, jax.random.key(1), x)
  assert jax.eval_shape(ours.init, jax.random.key(1), x) == v   # same names and shapes
  v = jax.tree.map(lambda s: _normal(2, s.shape, s.dtype), v)
  # One program: both applied to the same variables, bit for bit the same.
  a, b = jax.jit(lambda v, x: (ours.apply(v, x), ref.apply(v, x)))(v, x)
  np.testing.assert_array_equal(a, b)


def _onednn_skip_reason() -> str | None:
  """Why the oneDNN count cannot be checked on this machine (None: it can)."""
  if platform.machine() not in ("x86_64", "AMD64"):
    return "oneDNN convolutions: x86 CPUs only"
  if not xla_env.cpu_has_native_bf16():
    # XLA:CPU gives oneDNN bfloat16 work only on CPUs with AVX-512, AVX-NE-CONVERT or
    # AMX-BF16 (`IsSupportedType` in XLA's onednn_util.h). On an AVX2-only AMD EPYC the
    # bfloat16 convolutions were converted to float32 and 36 of wrn16_1's were left to
    # XLA, all float32 convolutions inside XLA fusions. The project turns the flag on for
    # dtype=auto only where the CPU runs bfloat16 natively (xla_env.cpu_has_native_bf16).
    return ("this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 in "
            "/proc/cpuinfo): XLA:CPU does not give bfloat16 convolutions to oneDNN here")
  return None


def test_bfloat16_input_gradient_convolutions_run_on_onednn():
  """The compiled bfloat16 wrn16_1 forward + input and weight gradients has no
  convolution outside oneDNN, with the flag the project sets (here as a compile option
  of this one program, in process)."""
  reason = _onednn_skip_reason()
  if reason:
    pytest.skip(reason)
  m = get_model("wrn16_1", 10, dtype=jnp.bfloat16)
  x = jnp.ones((4, 32, 32, 3))
  v = jax.eval_shape(lambda k: m.init(k, x, train=False), jax.random.key(0))
  g = jax.jit(jax.grad(lambda v, x: m.apply(v, x, train=False).sum(), (0, 1)))
  txt = g.lower(v, x).compile({"xla_cpu_experimental_onednn_custom_call": True}).as_text()
  onednn = txt.count("__onednn$convolution")
  if onednn == 0:
    pytest.skip("this jaxlib's XLA:CPU has no oneDNN convolutions")
  plain = [l for l in txt.splitlines() if re.search(r"= \S+ convolution\(", l)]
  strided = [l for l in plain if "stride=" in l or "lhs_dilate" in l]
  # wrn16_1: 8 stride-1 3x3 convs, 2 strided 3x3 + 2 strided 1x1, 1 stride-1 1x1 shortcut,
  # the stem: the forward, input gradient and weight gradient of each on oneDNN (the
  # strided ones' gradients as stride-1 polyphase convolutions).
  assert not plain, f"{len(plain)} convolutions ({len(strided)} strided or dilated) left to XLA"
