"""`Conv`: `flax.linen.Conv` whose bfloat16 input gradient runs on oneDNN on CPU.

Synthesis differentiates the frozen teacher and student with respect to their
*input*, so on CPU its time goes to input-gradient convolutions. XLA writes
the input gradient of a stride-1 convolution as a convolution with the kernel
`reverse`d, and XLA:CPU's oneDNN rewriter
(`--xla_cpu_experimental_onednn_custom_call`, which the project sets for
bfloat16 runs on CPU: `fastdfkd_jax.backend`) refuses a convolution whose kernel
is a `reverse` (`OneDnnConvolutionRewriter::ShouldRewrite`); those convolutions
fall back to float32 Eigen/YNN code, and the bfloat16 speed-up of the forward
pass never reaches the gradient (docs/BENCHMARKS.md, "CPU speed work").

Here the input gradient of a bfloat16, stride-1, undilated, ungrouped
convolution on CPU is the *forward* convolution of the output gradient with
the spatially flipped, in/out-transposed kernel, the flip hidden from XLA's
algebraic simplifier by an `optimization_barrier` so the rewriter accepts it.
The weight gradient is XLA's own. Mathematically this is the same gradient;
float32 convolutions and every other backend keep `lax.conv_general_dilated`
untouched (bit-identical to `nn.Conv`).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
import flax.linen as nn

from fastdfkd_jax.models import cpu_bf16

_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def _pads(padding, kernel: Sequence[int]):
  if isinstance(padding, str):
    return None if padding != "VALID" else [(0, 0)] * len(kernel)
  pads = [tuple(p) for p in padding]
  ok = all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(pads, kernel))
  return pads if ok else None


def _strided_pads(padding, spatial, kernel, strides):
  """Explicit non-negative pads of a strided convolution ('SAME' resolved), else None."""
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      return None
    padding = lax.padtype_to_pads(spatial, kernel, strides, padding)
  pads = tuple(tuple(p) for p in padding)
  return pads if all(lo >= 0 and hi >= 0 for lo, hi in pads) else None


def _plain(x, w, pads):
  return lax.conv_general_dilated(x, w, (1,) * (x.ndim - 2), pads,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_fwd(x, w, pads):
  return _plain(x, w, pads), (x, w)


def _conv_bwd(pads, res, g):
  x, w = res
  kernel = w.shape[:-2]
  spatial = tuple(range(len(kernel)))
  flipped = jnp.swapaxes(jnp.flip(w, spatial), -1, -2)
  flipped = lax.optimization_barrier(flipped)   # keeps the flip out of the conv's operand
  back = [(k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, kernel)]
  dx = _plain(g.astype(x.dtype), flipped, back)
  _, weight_vjp = jax.vjp(lambda w_: _plain(x, w_, pads), w)
  return dx, weight_vjp(g)[0]


_conv_fwd_grad = jax.custom_vjp(_plain, nondiff_argnums=(2,))
_conv_fwd_grad.defvjp(_conv_fwd, _conv_bwd)


def _strided(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _phases(xp_shape, kernel, strides):
  """The (p, q) input phases of a strided VALID convolution of the padded input xp:
  y = sum over (p, q) of the stride-1 VALID convolution of xp[p::sh, q::sw] (cut to the
  rows and columns the output uses) with w[p::sh, q::sw] (y[i] = sum_a w[a] xp[s i + a];
  take a = s t + p). Yields (p, q, start, limit) of each phase's strided slice."""
  (kh, kw), (sh, sw) = kernel, strides
  ho, wo = (xp_shape[1] - kh) // sh + 1, (xp_shape[2] - kw) // sw + 1
  for p in range(min(sh, kh)):
    tp = -(-(kh - p) // sh)
    for q in range(min(sw, kw)):
      tq = -(-(kw - q) // sw)
      yield p, q, (0, p, q, 0), (xp_shape[0], p + sh * (ho + tp - 2) + 1,
                                 q + sw * (wo + tq - 2) + 1, xp_shape[3])


def _strided_fwd(x, w, strides, pads):
  return _strided(x, w, strides, pads), (x, w)


def _strided_bwd(strides, pads, res, g):
  """Polyphase gradients: every convolution in them is a stride-1 one (oneDNN takes
  them); XLA's own input gradient of a strided convolution convolves the zero-dilated
  output gradient outside oneDNN, in float32 (13x slower than a stride-1 convolution
  of equal FLOPs, docs/BENCHMARKS.md)."""
  x, w = res
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  g = g.astype(x.dtype)
  dw = jnp.zeros(w.shape, jnp.float32)
  d_phases = {}
  sh, sw = strides
  for p, q, start, limit in _phases(xp.shape, w.shape[:2], strides):
    phase, wp = lax.slice(xp, start, limit, (1, sh, sw, 1)), w[p::sh, q::sw]
    _, vjp = jax.vjp(lambda a, b: _conv_fwd_grad(a, b, ((0, 0), (0, 0))), phase, wp)
    d_phases[p, q], d_wp = vjp(g)
    dw = dw.at[p::sh, q::sw].set(d_wp.astype(jnp.float32))
  dxp = _interleave(d_phases, xp.shape, strides, x.dtype)
  (lo_h, _), (lo_w, _) = pads
  dx = dxp[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2]]
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _interleave(d_phases, xp_shape, strides, dtype):
  """The padded input's gradient from its phases' gradients: phase (p, q) holds rows
  p::sh and columns q::sw, so the phases never overlap and interleaving them (a copy)
  replaces a scatter-add into a float32 zero tensor (about 15 ms for its zeros alone at
  256 x 32 x 32 x 16)."""
  (n, hp, wp, c), (sh, sw) = xp_shape, strides
  rows, cols = -(-hp // sh), -(-wp // sw)
  grid = [[jnp.zeros((n, rows, cols, c), dtype)] * sw for _ in range(sh)]
  for (p, q), d in d_phases.items():
    grid[p][q] = jnp.pad(d.astype(dtype), ((0, 0), (0, rows - d.shape[1]),
                                           (0, cols - d.shape[2]), (0, 0)))
  full = jnp.stack([jnp.stack(grid[p], axis=3) for p in range(sh)], axis=2)
  return full.reshape(n, rows * sh, cols * sw, c)[:, :hp, :wp]


_strided_conv = jax.custom_vjp(_strided, nondiff_argnums=(2, 3))
_strided_conv.defvjp(_strided_fwd, _strided_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, with the forward-form input gradient where it pays."""
  kernel = rhs.shape[:-2]
  ones = (1,) * len(kernel)
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  pads = _pads(padding, kernel)
  if (cpu_bf16.bf16_on_cpu(lhs, rhs) and len(kernel) == 2 and dims == _NHWC
      and tuple(lhs_dilation or ones) == ones
      and tuple(rhs_dilation or ones) == ones and feature_group_count == 1
      and batch_group_count == 1 and precision is None
      and preferred_element_type is None):
    if tuple(window_strides) == ones and pads is not None:
      return _conv_fwd_grad(lhs, rhs, tuple(pads))
    strided = _strided_pads(padding, lhs.shape[1:3], kernel, window_strides)
    if tuple(window_strides) != ones and strided is not None:
      return _strided_conv(lhs, rhs, tuple(window_strides), strided)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  batch_group_count, precision, preferred_element_type)


class Conv(nn.Conv):
  """`nn.Conv` (same parameters and names) using `conv_general_dilated` above."""

  conv_general_dilated: object = conv_general_dilated
