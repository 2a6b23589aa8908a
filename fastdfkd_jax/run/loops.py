"""Where the loop structure is chosen, in one place.

XLA:CPU runs convolution *gradients* inside `lax.scan`/`fori_loop` about 50x
slower than the same steps unrolled (jax-ml/jax#12868; measured here: 3 student
param-grad steps 0.32 s unrolled vs 17.5 s scanned). So on CPU long loops are
driven from the host (one jitted step per call) and short loops (the k inner
synthesis steps) are unrolled; on TPU/GPU both are `lax.scan`.
"""

import jax
import ml_collections


def backend() -> str:
  return jax.default_backend()


def use_scan(config: ml_collections.ConfigDict) -> bool:
  """True: whole epochs/step chains as one jitted `lax.scan`; False: host loop.

  'fused' scans too; where epochs are fused see `fuse_epochs`.
  """
  if config.loop == "auto":
    return backend() != "cpu"
  return config.loop in ("scan", "fused")


def fuse_epochs(config: ml_collections.ConfigDict) -> bool:
  """Whether a distillation epoch is one program (synthesis + all KD steps) where the
  method allows: `loop=fused`, or `loop=auto` on TPU/GPU (one dispatch per epoch)."""
  return config.loop == "fused" or (config.loop == "auto" and backend() != "cpu")


def inner_structure(config: ml_collections.ConfigDict) -> str:
  """How the k inner synthesis steps run.

  'scan': one jitted call holding a `lax.scan` (TPU/GPU default);
  'unroll': one jitted call with the k steps traced straight-line;
  'host': k dispatches of one compiled inner step from the host (CPU default):
    no XLA while loop, and one step to compile instead of k copies.
  """
  if config.inner_unroll == "auto":
    return "host" if backend() == "cpu" else "scan"
  return config.inner_unroll


def inner_unroll(config: ml_collections.ConfigDict) -> bool:
  """Whether a single-call synthesis traces the k steps straight-line."""
  return inner_structure(config) != "scan"


def describe(config: ml_collections.ConfigDict) -> str:
  """One line for logs/benchmarks: which structure ran."""
  return (f"backend={backend()} epoch_loop={'scan' if use_scan(config) else 'host'} "
          f"inner_loop={inner_structure(config)}")


def scan(body, carry, xs, unroll: bool = False):
  """`jax.lax.scan(body, carry, xs)`, or the same steps as a Python loop.

  `lax.scan(..., unroll=True)` still lowers to an XLA while loop (of one trip),
  and XLA:CPU runs conv gradients inside any while loop ~10-50x slower (measured
  here: a resnet8 step 10 ms straight-line vs 91 ms inside a 1-trip scan). So
  `unroll=True` traces the body once per step into straight-line code instead.
  Outputs are stacked like `lax.scan`'s.
  """
  if not unroll:
    return jax.lax.scan(body, carry, xs)
  length = jax.tree.leaves(xs)[0].shape[0]
  outs = []
  for i in range(length):
    carry, out = body(carry, jax.tree.map(lambda x: x[i], xs))
    outs.append(out)
  if outs and outs[0] is not None:
    stacked = jax.tree.map(lambda *a: jax.numpy.stack(a), *outs)
  else:
    stacked = None
  return carry, stacked
