"""How fast 1 and 8 devices part in teacher training: the relative parameter difference
per step, from the same initial state and the same batches (docs/RESULTS.md, "One device
or eight").

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      PYTHONPATH=$PWD python tools/device_divergence.py [--steps=22] [--arch=resnet20]

The embedded default's teacher recipe (digits, batch 64, its optimizer), one jitted step
per call on a 1-device and an 8-device mesh. Prints, per step, ||p1 - p8|| / ||p1 - p0||
(p0 the initial parameters) and both steps' losses, and, as the control, the same for
two 1-device runs whose initial parameters differ by float32 rounding (each multiplied by
1 + 1e-7 * N(0, 1)): where the control parts as fast, the parting is the training's own
sensitivity to rounding, not the device count.
"""

import argparse
import sys

import jax
import numpy as np

from fastdfkd_jax import config_lib, data, models, optim, parallel
from fastdfkd_jax.teacher import train as teacher_train


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=22)
  ap.add_argument("--arch", default="resnet20")
  ap.add_argument("--batch", type=int, default=64)
  a = ap.parse_args(argv)
  if jax.device_count() < 8:
    print("error: needs 8 devices; set XLA_FLAGS=--xla_force_host_platform_device_count=8",
          file=sys.stderr)
    raise SystemExit(2)
  c = config_lib.default_config()
  c.model = a.arch
  ds = data.load_dataset("digits")
  tx = optim.teacher_optimizer(c.optim, a.steps, 1)
  model = models.get_model(a.arch, 10, axis_name=parallel.AXIS)
  state0 = jax.device_get(teacher_train.init_state(c, ds.info, tx, jax.random.key(0)))
  idx = np.random.default_rng(0).integers(0, len(ds.train_images), (a.steps, 1, a.batch))
  noise = np.random.default_rng(1)
  perturbed = state0.replace(params=jax.tree.map(
      lambda x: x * (1 + 1e-7 * noise.standard_normal(x.shape)).astype(x.dtype),
      state0.params))
  params, losses = {}, {}
  for n, start in ((1, state0), (8, state0), ("control", perturbed)):
    mesh = parallel.make_mesh(jax.devices()[:8 if n == 8 else 1])
    step = teacher_train.make_train_chunk(model, tx, ds.info, mesh, unroll=True)
    state = parallel.put_replicated(start, mesh)
    params[n], losses[n] = [], []
    for i in range(a.steps):
      batch = parallel.put_batch((ds.train_images[idx[i]], ds.train_labels[idx[i]]), mesh,
                                 axis=1)
      state, metrics = step(state, *batch, jax.random.key(100 + i))
      params[n].append(_flat(state.variables["params"]))
      losses[n].append(float(np.ravel(metrics["loss"])[0]))
  p0 = _flat(state0.variables["params"])
  rel = lambda i, n: (np.linalg.norm(params[1][i] - params[n][i])   # noqa: E731
                      / np.linalg.norm(params[1][i] - p0))
  print("step  1-vs-8 rel_diff  control rel_diff  loss_1dev  loss_8dev")
  for i in range(a.steps):
    print(f"{i + 1:4d}  {rel(i, 8):15.3e}  {rel(i, 'control'):16.3e}  {losses[1][i]:9.4f}"
          f"  {losses[8][i]:9.4f}")


if __name__ == "__main__":
  main()
