"""models/cpu_bf16.py: the bfloat16 CPU paths of relu and train-mode BatchNorm agree
with jax.nn / flax (relu bit for bit, BatchNorm to bfloat16 rounding), and only
bfloat16 on one CPU device takes them.

Each comparison runs ours and the reference in one compiled program (op by op, each
costs a compile per operation)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.run import parallel
from fastdfkd_jax.models import cpu_bf16, layers

from conftest import compile_unoptimized

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU paths")


def _bits(a):
  return np.asarray(jax.lax.bitcast_convert_type(a, jnp.uint16))


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_relu_value_and_gradient_are_bit_identical_to_jax_nn():
  x = _normal(0, (4, 6, 6, 16))
  x[0, 0, 0, :3] = 0.0                    # the kink: gradient 0, as jax.nn.relu
  x, g = jnp.asarray(x, jnp.bfloat16), jnp.asarray(_normal(1, x.shape), jnp.bfloat16)

  def both(x, g):
    out = []
    for fn in (cpu_bf16.relu, jax.nn.relu):
      y, vjp = jax.vjp(fn, x)
      out.append((y, vjp(g)[0]))
    return out

  (ours, d_ours), (ref, d_ref) = jax.jit(both)(x, g)
  np.testing.assert_array_equal(_bits(ours), _bits(ref))
  np.testing.assert_array_equal(_bits(d_ours), _bits(d_ref))


def test_only_bfloat16_takes_the_fast_paths():
  assert cpu_bf16.fast_batch_norm(jnp.zeros((2, 4), jnp.bfloat16), None)
  assert not cpu_bf16.fast_batch_norm(jnp.zeros((2, 4), jnp.float32), None)
  x = jnp.ones((3,), jnp.float32)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda t: cpu_bf16.relu(t).sum()))(x))
  assert "custom_vjp" not in jaxpr


def _bn_apply(x, variables, use_flax):
  bn = (nn.BatchNorm(use_running_average=False, momentum=layers.BN_MOMENTUM,
                     epsilon=layers.BN_EPSILON, dtype=jnp.bfloat16) if use_flax
        else layers.BatchNorm(use_running_average=False, dtype=jnp.bfloat16))

  def f(params, x):
    y, new = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    w = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) % 7 - 3
    return (y.astype(jnp.float32) * w).sum(), (y, new["batch_stats"])
  def run(params, x):
    (_, (y, stats)), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(params, x)
    return y, stats, grads
  return compile_unoptimized(run, variables["params"], x)(variables["params"], x)


@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_batch_norm_train_matches_flax(shift):
  x = jnp.asarray(_normal(2, (8, 5, 5, 16)) * 2 + shift, jnp.bfloat16)
  variables = jax.eval_shape(layers.BatchNorm(use_running_average=False).init,
                             jax.random.key(3), x)
  rng = np.random.default_rng(4)   # scale and var near 1, bias and mean near 0
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray((p[-1].key in ("scale", "var")) + 0.1 * rng.normal(size=v.shape),
                               v.dtype), variables)
  ours = _bn_apply(x, variables, use_flax=False)
  ref = _bn_apply(x, variables, use_flax=True)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * np.abs(b).max())
  # the running statistics are float32 and agree to float32 rounding
  for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batch_norm_gradient_against_numpy_formula():
  """The hand-written backward against the textbook formula in float64."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 3, 3, 4)).astype(np.float32)
  xb = jnp.asarray(x, jnp.bfloat16)
  xd = np.asarray(xb, np.float64)
  scale, bias = rng.normal(size=4), rng.normal(size=4)
  g = rng.normal(size=x.shape)
  def grads(x, scale, bias, g):
    _, vjp = jax.vjp(lambda t, s, b: cpu_bf16.batch_norm_train(t, s, b, 1e-5)[0], x, scale,
                     bias)
    return vjp(g)

  dx, dscale, dbias = jax.jit(grads)(xb, jnp.asarray(scale, jnp.float32),
                                     jnp.asarray(bias, jnp.float32), jnp.asarray(g, jnp.bfloat16))
  gd = np.asarray(jnp.asarray(g, jnp.bfloat16), np.float64)
  n = xd.size // 4
  mean, var = xd.mean((0, 1, 2)), xd.var((0, 1, 2))
  xhat = (xd - mean) / np.sqrt(var + 1e-5)
  ref_dscale, ref_dbias = (gd * xhat).sum((0, 1, 2)), gd.sum((0, 1, 2))
  ref_dx = scale / np.sqrt(var + 1e-5) * (gd - ref_dbias / n - xhat * ref_dscale / n)
  np.testing.assert_allclose(dscale, ref_dscale, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dbias, ref_dbias, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx, np.float32), ref_dx, rtol=2e-2,
                             atol=2e-2 * np.abs(ref_dx).max())


def test_one_device_mesh_takes_the_fast_batch_norm():
  """Inside shard_map on a 1-device mesh (how the training steps run) the fast path
  serves the BN; the jaxpr shows its custom VJP."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (parallel.AXIS,))
  spec = jax.sharding.PartitionSpec(parallel.AXIS)
  bn = layers.BatchNorm(use_running_average=False, dtype=jnp.bfloat16, axis_name=parallel.AXIS)
  x = jnp.ones((4, 3, 3, 8), jnp.bfloat16)
  variables = jax.jit(layers.BatchNorm(use_running_average=False).init)(jax.random.key(0), x)

  def loss(params, x):
    y, new = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jax.lax.psum(y.astype(jnp.float32).sum(), parallel.AXIS), new

  def step(params, x):
    (_, new), grads = jax.value_and_grad(loss, has_aux=True)(params, x)
    return grads, new   # replicated, as the training steps' out_specs require
  rep = jax.sharding.PartitionSpec()
  forward = jax.shard_map(loss, mesh=mesh, in_specs=(rep, spec), out_specs=(rep, rep))
  assert "custom_vjp_call" in str(jax.make_jaxpr(forward)(variables["params"], x))
  step = jax.shard_map(step, mesh=mesh, in_specs=(rep, spec), out_specs=(rep, rep))
  grads, _ = jax.jit(step)(variables["params"], x)
  assert np.isfinite(np.asarray(grads["scale"])).all()
