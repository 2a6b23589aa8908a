"""CPU ablations behind docs/BENCHMARKS.md ("The profile's fractions mislead"): where a
bfloat16 KD step's backward goes on XLA:CPU with oneDNN. CPU time (process_time), so
ratios stay meaningful on a shared core.

  python tools/cpu_kd_probe.py model [--no_bn] [--arch=wrn16_1]   # student fwd, fwd+bwd
  python tools/cpu_kd_probe.py model --eval --arch=wrn40_2          # the teacher's eval fwd
  python tools/cpu_kd_probe.py conv                                 # 3x3 conv fwd / dx / dW
  python tools/cpu_kd_probe.py dw                                   # weight-gradient rewrites
  python tools/cpu_kd_probe.py dwparts    # XLA's weight gradient: its transposes, its conv
  python tools/cpu_kd_probe.py ops         # relu / BN gradients: jax.nn, flax vs cpu_bf16
  EXTRA_XLA_FLAGS=--xla_cpu_use_xnnpack=true python tools/cpu_kd_probe.py model
"""

import argparse
import os
import time

os.environ["XLA_FLAGS"] = ("--xla_cpu_experimental_onednn_custom_call=true "
                           + os.environ.get("EXTRA_XLA_FLAGS", ""))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fastdfkd_jax import models  # noqa: E402
from fastdfkd_jax.models import conv as conv_lib  # noqa: E402
from fastdfkd_jax.models import cpu_bf16  # noqa: E402
from fastdfkd_jax.models import layers  # noqa: E402

SHAPES = ((32, 16), (16, 32), (8, 64))   # wrn16_1's three stages: (H = W, C)
BATCH = 256


def cpu_ms(fn, *args, repeats=5) -> float:
  """Best CPU time of `repeats` calls after one compile call, in ms."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.process_time()
    jax.block_until_ready(fn(*args))
    times.append(time.process_time() - t)
  return 1e3 * min(times)


class _NoBN(nn.Module):
  """BatchNorm's stand-in: the identity, keeping a `scale` so the tree stays alike."""
  use_running_average: bool = False
  dtype: object = None
  axis_name: object = None

  @nn.compact
  def __call__(self, x, use_running_average=None, **kwargs):
    self.param("scale", nn.initializers.ones, (x.shape[-1],))
    return x


def probe_model(arch: str, no_bn: bool, eval_only: bool) -> None:
  if no_bn:
    layers.BatchNorm = _NoBN   # batch_norm() looks the class up at call time
  model = models.get_model(arch, num_classes=10, dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.RandomState(0).randn(BATCH, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)

  def loss(params, x):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(out.astype(jnp.float32))[:, 0])
  if eval_only:
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    print(f"{arch} eval fwd: {cpu_ms(fwd, variables, x):.1f} ms CPU", flush=True)
    return
  for name, fn in (("fwd", loss), ("fwd+bwd", jax.grad(loss)),
                   ("fwd+bwd, input gradient only", jax.grad(loss, argnums=1))):
    print(f"{arch} {'no BN' if no_bn else 'BN'} {name}: "
          f"{cpu_ms(jax.jit(fn), variables['params'], x):.1f} ms CPU", flush=True)


def probe_conv() -> None:
  for h, c in SHAPES:
    conv = conv_lib.Conv(c, (3, 3), padding=1, use_bias=False, dtype=jnp.bfloat16)
    x, dy = (jnp.asarray(np.random.RandomState(s).randn(BATCH, h, h, c), jnp.bfloat16)
             for s in (0, 1))
    p = conv.init(jax.random.PRNGKey(0), x)
    fns = {"fwd": lambda p, x, dy: conv.apply(p, x),
           "dx": lambda p, x, dy: jax.vjp(lambda x: conv.apply(p, x), x)[1](dy)[0],
           "dW": lambda p, x, dy: jax.vjp(lambda p: conv.apply(p, x), p)[1](dy)[0]}
    print(f"{h}x{h}x{c}: " + ", ".join(f"{k} {cpu_ms(jax.jit(f), p, x, dy):.1f} ms"
                                       for k, f in fns.items()), flush=True)


def _dw_rewrites(h: int, c: int) -> dict:
  f32 = jnp.float32

  def shifts(x):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + h, j:j + h, :] for i in range(3) for j in range(3)]

  def conv_form(out_dtype):
    return lambda x, dy: jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1),
        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=out_dtype).transpose(1, 2, 0, 3)
  def weight_vjp(x, dy):
    conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=(
        "NHWC", "HWIO", "NHWC"))
    return jax.vjp(conv, jnp.zeros((3, 3, c, c), x.dtype))[1](dy)[0]

  def dot_2d(out_dtype):   # (N H W, 9 C)^T (N H W, C): the patches built, one dot
    return lambda x, dy: jax.lax.dot_general(
        jnp.concatenate(shifts(x), -1).reshape(-1, 9 * c), dy.reshape(-1, c),
        (((0,), (0,)), ((), ())), preferred_element_type=out_dtype)

  def chunks(x, dy, n=8):   # the batch in n chunks, partial weight gradients summed
    parts = [weight_vjp(a, b).astype(f32) for a, b in zip(jnp.split(x, n), jnp.split(dy, n))]
    return sum(parts)
  return {
      "XLA's (jax.vjp)": weight_vjp,
      "8 batch chunks": chunks,
      "conv bf16 out": conv_form(jnp.bfloat16),
      "conv f32 out": conv_form(f32),
      "im2col dot": lambda x, dy: jnp.einsum("nhwkc,nhwo->kco", jnp.stack(shifts(x), 3), dy,
                                             preferred_element_type=f32),
      "9 dots": lambda x, dy: jnp.stack([jnp.einsum("nhwc,nhwo->co", s, dy,
                                                    preferred_element_type=f32)
                                         for s in shifts(x)]),
      "2-D dot": dot_2d(f32),
      "9 dots bf16 out": lambda x, dy: jnp.stack([jax.lax.dot_general(
          s.reshape(-1, c), dy.reshape(-1, c), (((0,), (0,)), ((), ()))) for s in shifts(x)]),
      "2-D dot bf16 out": dot_2d(None),
      "patches alone": lambda x, dy: jnp.concatenate(shifts(x), -1),
  }


def probe_dw() -> None:
  for h, c in SHAPES:
    x, dy = (jnp.asarray(np.random.RandomState(s).randn(BATCH, h, h, c), jnp.bfloat16)
             for s in (0, 1))
    rewrites = _dw_rewrites(h, c)
    ref = np.asarray(rewrites["conv f32 out"](x, dy)).reshape(-1)
    for name, fn in rewrites.items():
      out = np.asarray(fn(x, dy), np.float32).reshape(-1)
      err = (f" (rel. err {np.abs(out - ref).max() / np.abs(ref).max():.1e})"
             if out.size == ref.size else "")
      print(f"{h}x{h}x{c} {name}: {cpu_ms(jax.jit(fn), x, dy):.1f} ms{err}", flush=True)


def probe_dw_parts() -> None:
  """XLA's weight gradient is two transposes and a oneDNN conv with a HxW window: each
  part alone, and the patches' matmul with the patches already built (and transposed)."""
  for h, c in SHAPES:
    x, dy = (jnp.asarray(np.random.RandomState(s).randn(BATCH, h, h, c), jnp.bfloat16)
             for s in (0, 1))
    whole = _dw_rewrites(h, c)["XLA's (jax.vjp)"]
    transposes = lambda x, dy: (jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))  # noqa: E731
                                        ).transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3))
    conv = lambda a, b: jax.lax.conv_general_dilated(  # noqa: E731
        a, b, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patches_t = jnp.ones((9 * c, BATCH * h * h), jnp.bfloat16)
    line = [f"whole {cpu_ms(jax.jit(whole), x, dy):.1f}",
            f"transposes {cpu_ms(jax.jit(transposes), x, dy):.1f}",
            f"conv {cpu_ms(jax.jit(conv), *transposes(x, dy)):.1f}",
            f"patches @ dy {cpu_ms(jax.jit(jnp.matmul), patches_t, dy.reshape(-1, c)):.1f}"]
    print(f"{h}x{h}x{c} dW ms: " + ", ".join(line), flush=True)


def probe_ops() -> None:
  for h, c in SHAPES:
    x, g = (jnp.asarray(np.random.RandomState(s).randn(BATCH, h, h, c), jnp.bfloat16)
            for s in (0, 1))
    relu = {name: jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])
            for name, f in (("jax.nn.relu", jax.nn.relu), ("cpu_bf16.relu", cpu_bf16.relu))}
    line = [f"relu grad: {k} {cpu_ms(f, x, g):.2f} ms" for k, f in relu.items()]
    for name, bn in (("flax BN", nn.BatchNorm(use_running_average=False, momentum=0.9,
                                              epsilon=1e-5, dtype=jnp.bfloat16)),
                     ("cpu_bf16 BN", layers.BatchNorm(use_running_average=False,
                                                      dtype=jnp.bfloat16))):
      v = bn.init(jax.random.PRNGKey(0), x)

      def f(p, x, bn=bn, v=v):
        return bn.apply({**v, "params": p}, x, mutable=["batch_stats"])[0]
      step = jax.jit(lambda p, x, g, f=f: jax.vjp(f, p, x)[1](g))
      line.append(f"{name} fwd+bwd {cpu_ms(step, v['params'], x, g):.2f} ms")
    print(f"{h}x{h}x{c}: " + ", ".join(line), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("what", choices=("model", "conv", "dw", "dwparts", "ops"))
  parser.add_argument("--arch", default="wrn16_1")
  parser.add_argument("--no_bn", action="store_true")
  parser.add_argument("--eval", action="store_true", help="model: the eval-mode forward only")
  args = parser.parse_args()
  if args.what == "model":
    probe_model(args.arch, args.no_bn, args.eval)
  else:
    {"conv": probe_conv, "dw": probe_dw, "dwparts": probe_dw_parts, "ops": probe_ops}[args.what]()


if __name__ == "__main__":
  main()
