"""Memory of one ImageNet synthesis inner step, from XLA's buffer assignment (compile only).

  PYTHONPATH=$PWD python tools/imagenet_memory.py resnet50-resnet18 [float32|bfloat16]

Builds the synthesizer of configs/fastdfkd_imagenet.py:<setting> on one device
(batch 100, 224 px), compiles its inner step (DeepGenerator + teacher + student,
forward and backward) for the local backend without running it, and prints the
compiled program's argument, output and temporary buffer sizes. On a CPU host this
is XLA:CPU's assignment, a projection of a GPU's or TPU's (their fusion and layouts
differ); run it on the accelerator for its own figure.
"""

import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp

from fastdfkd_jax import data, models, synthesis
from fastdfkd_jax.models import util as model_util

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "fastdfkd_imagenet.py")


def main(argv) -> int:
  setting, dtype = argv[1], (argv[2] if len(argv) > 2 else "float32")
  spec = importlib.util.spec_from_file_location("fastdfkd_imagenet", CONFIGS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(setting)
  c.dtype = dtype
  info = data.get_info(c.dataset.name)
  act = model_util.activation_dtype(dtype)
  teacher = models.get_model(c.teacher.arch, info.num_classes, dtype=act, axis_name=None)
  student = models.get_model(c.student.arch, info.num_classes, dtype=act, axis_name=None)
  synth = synthesis.build(c, teacher=teacher, student=student, info=info, axis_name=None)
  key = jax.random.key(0)
  tv = model_util.init_variables(teacher.clone(dtype=jnp.float32), key, info.image_shape)
  sv = model_util.init_variables(student.clone(dtype=jnp.float32), key, info.image_shape)
  state = synth.init(key, tv)
  carry, keys = jax.eval_shape(synth.begin, state, key)
  step_key = jax.ShapeDtypeStruct(keys.shape[1:], keys.dtype)
  t0 = time.time()
  compiled = jax.jit(synth.inner_step).lower(carry, step_key, state, tv, sv,
                                             jnp.float32(1.0)).compile()
  memory = compiled.memory_analysis()
  print(f"{setting} {dtype} batch {c.batch_size} on {jax.default_backend()}: compiled in "
        f"{time.time() - t0:.1f} s")
  for name in ("argument", "output", "temp"):
    print(f"  {name}: {getattr(memory, f'{name}_size_in_bytes') / 2**30:.2f} GiB")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
