"""Helpers for the model zoo: initialisation and parameter counts.

All helpers work with concrete arrays and under `jax.eval_shape` (abstract
`ShapeDtypeStruct` leaves), e.g.

    shapes = jax.eval_shape(lambda k: init_variables(model, k, (32, 32, 3)), key)
    count_params(shapes['params'])
"""

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from fastdfkd_jax.models.deep_generator import DeepGenerator
from fastdfkd_jax.models.generator import Generator


def _is_generator(model: nn.Module) -> bool:
  return isinstance(model, (Generator, DeepGenerator))


# An init program runs once, so XLA's backend (LLVM) optimisation is wasted on
# it: at level 0 a ResNet init compiles ~5x faster on CPU.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(model: nn.Module, key: jax.Array,
                   input_shape: Sequence[int]) -> dict[str, Any]:
  """Initialises `model` on zeros of shape (2,) + input_shape.

  Classifiers: input_shape (H, W, C), init with train=False. Generator:
  input_shape (nz,); DeepGenerator: its `latent_shape`; both init with
  train=True. Returns {'params': ...} plus 'batch_stats' where the model has
  BN; the 'bn_stats' collection is dropped. Called with a concrete key it
  jits the init and compiles it unoptimised (it runs once); under a trace
  (jit, eval_shape) it just traces `model.init`.
  """
  x = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
  variables = run_init(functools.partial(model.init, train=_is_generator(model)), key, x)
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def run_init(init: Callable, key: jax.Array, *args) -> Any:
  """`init(key, *args)`: traced as it is under a trace (jit, eval_shape); with a concrete
  key jitted and compiled unoptimised, one program that runs once (run eagerly, every
  operation of the model would compile a program of its own: about a hundred)."""
  if isinstance(key, jax.core.Tracer):
    return init(key, *args)
  lowered = jax.jit(init).lower(key, *args)
  try:
    compiled = lowered.compile(_INIT_COMPILER_OPTIONS)
  except Exception:  # pylint: disable=broad-except  # Option unknown here.
    compiled = lowered.compile()
  return compiled(key, *args)


def activation_dtype(name: str):
  """The jnp dtype of a resolved activation dtype name, 'float32' or 'bfloat16' (a run
  resolves `config.dtype`, 'auto' included, once: `run.xla_env.resolve_dtype`)."""
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if name not in dtypes:
    raise ValueError(f"activation dtype {name!r} is not resolved; "
                     "use run.xla_env.resolve_dtype first")
  return dtypes[name]


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
