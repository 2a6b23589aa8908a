"""ReLU and train-mode BatchNorm with gradients XLA:CPU runs fast in bfloat16.

A bfloat16 KD step on CPU spent most of its student backward outside the
convolutions (docs/BENCHMARKS.md, "KD backward"; the probe `tools/cpu_kd_probe.py ops` of commit b07663a,
at wrn16_1's first-stage shape, 256 x 32 x 32 x 16, one core):
- jax.nn.relu's gradient, `select(x > 0, g, 0)` in bfloat16, compiles to a loop
  that does not vectorise: 20.6 ms, against 3.9 ms with the comparison and the
  selection in float32. `relu` below does that; bfloat16 -> float32 -> bfloat16 is
  exact, so its gradient is bit-identical to jax.nn.relu's.
- flax's BatchNorm in train mode: XLA materialises a float32 copy of the bfloat16
  input and of the output gradient for its library reductions (17 ms each) and
  broadcasts the batch mean to a full float32 tensor: 25 ms forward + backward.
  `batch_norm_train` computes the same statistics with the same formulas (float32,
  flax's fast variance) and a hand-written backward whose reductions read the
  bfloat16 tensors directly: 5.7 ms. Values agree with flax's to bfloat16 rounding.
Together with the interleaved strided-conv gradient (models/conv.py), a bf16 wrn16_1
train-mode forward + backward went from 0.82 s to 0.58 s of CPU time.

Only bfloat16 on the CPU backend takes these paths (and BatchNorm only on one device:
a sharded batch keeps flax's autodiff through its collectives); every other dtype
and backend runs jax.nn / flax unchanged.
"""

import functools

import jax
import jax.numpy as jnp


def bf16_on_cpu(*arrays) -> bool:
  """Whether every array is bfloat16 and the default backend is the CPU: the one case
  the project's hand-written CPU gradients (here and models/conv.py) serve."""
  return (all(a.dtype == jnp.bfloat16 for a in arrays)
          and jax.default_backend() == "cpu")


@jax.custom_vjp
def _relu_bf16(x):
  return jax.nn.relu(x)


def _relu_fwd(x):
  return jax.nn.relu(x), x


def _relu_bwd(x, g):
  f32 = jnp.float32
  return (jnp.where(x.astype(f32) > 0, g.astype(f32), 0.0).astype(g.dtype),)


_relu_bf16.defvjp(_relu_fwd, _relu_bwd)


def relu(x: jax.Array) -> jax.Array:
  """jax.nn.relu; bfloat16 on CPU gets the float32 select in its gradient."""
  return _relu_bf16(x) if bf16_on_cpu(x) else jax.nn.relu(x)


def fast_batch_norm(x: jax.Array, axis_name: str | None) -> bool:
  """Whether `batch_norm_train` serves a train-mode BN of `x`: bfloat16 on CPU, one
  device (a sharded batch keeps flax's autodiff through its collectives)."""
  return bf16_on_cpu(x) and (axis_name is None or jax.lax.axis_size(axis_name) == 1)


def batch_norm_train(x, scale, bias, epsilon, axis_name=None):
  """flax.linen.BatchNorm's train-mode output and batch (mean, biased var), same
  formulas (float32 statistics, fast variance), with a hand-written backward: two
  float32 reductions and one elementwise pass instead of XLA's materialised float32
  copies of x and the gradient. `axis_name`: the (one-device) mesh axis, over which the
  statistics are averaged and the parameter gradients summed as flax's autodiff does."""
  vma = getattr(jax.typeof(scale), "vma", frozenset())
  sum_params = axis_name is not None and axis_name not in vma
  return _bn_train(x, scale, bias, epsilon, axis_name, sum_params)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _bn_train(x, scale, bias, epsilon, axis_name, sum_params):
  return _bn_forward(x, scale, bias, epsilon, axis_name, sum_params)[0]


def _copies(x, n: int):
  """n handles on x that XLA cannot prove equal, so each consumer fuses its own float32
  conversion instead of sharing one materialised float32 copy of x (for a
  (256, 32, 32, 16) input that copy took 17 ms, a fused reduction about 1 ms)."""
  return jax.lax.optimization_barrier((x,) * n)


def _bn_forward(x, scale, bias, epsilon, axis_name, sum_params):
  del sum_params
  f32 = jnp.float32
  axes = tuple(range(x.ndim - 1))
  x1, x2, x3 = _copies(x, 3)
  mean, mean2 = x1.astype(f32).mean(axes), jnp.square(x2.astype(f32)).mean(axes)
  if axis_name is not None:
    mean, mean2 = jax.lax.pmean((mean, mean2), axis_name)
  xf = x3.astype(f32)
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (rstd * scale) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, rstd, scale)


def _bn_bwd(epsilon, axis_name, sum_params, res, grads):
  del epsilon
  x, mean, rstd, scale = res
  gy, gmean, gvar = grads
  f32 = jnp.float32
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  (x1, x2), (g1, g2, g3) = _copies(x, 2), _copies(gy, 3)
  # Plain products inside the reductions: XLA:CPU's library reductions take a
  # broadcast (x - mean) only as a materialised float32 tensor.
  dbias = g1.astype(f32).sum(axes)
  dscale = ((g2.astype(f32) * x1.astype(f32)).sum(axes) - mean * dbias) * rstd
  centred = x2.astype(f32) - mean
  g = g3.astype(f32)
  dx = (scale * rstd) * (g - dbias / n - centred * (rstd * dscale / n))
  dx = dx + (gmean + 2.0 * gvar * centred) / n
  if sum_params:   # the transpose of a replicated parameter's implicit broadcast
    dscale, dbias = jax.lax.psum((dscale, dbias), axis_name)
  return dx.astype(x.dtype), dscale, dbias


_bn_train.defvjp(_bn_forward, _bn_bwd)
