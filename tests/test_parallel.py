"""Data parallelism in process: 8 CPU devices equal 1 device, step by step and run by run.

The suite's process has 8 forced CPU devices (conftest.py); each check builds the same
programs on a mesh of 1 and of 8 devices from the same teacher and keys. Two processes
of 4 devices each are test_e2e.py's (the process boundary is the point there).
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_METHODS, make_mesh, rows, run, tiny_distill
from fastdfkd_jax import data, models, synthesis
from fastdfkd_jax.config import checks, schema
from fastdfkd_jax.distill import sources, state as state_lib, steps
from fastdfkd_jax.models import util
from fastdfkd_jax.run import parallel
from fastdfkd_jax.teacher import train as teacher_train
from fastdfkd_jax.training import optim


def _flat(prefix, tree) -> dict:
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def teacher_vars():
  info = data.get_info("digits")
  return util.init_variables(models.get_model("resnet8", 10), jax.random.key(1),
                             info.image_shape)


def build(c, teacher_vars, devices: int):
  """(Distiller, teacher on the mesh, fresh state) on the first `devices` devices."""
  info, mesh = data.get_info("digits"), make_mesh(devices)
  kind = sources.kind(c, synthesis.get(c.method).uses_pool)
  d = steps.build(c, info, "resnet8", mesh, kind, "float32")
  t = parallel.put_replicated(teacher_vars, mesh)
  return d, t, state_lib.init_state(d, c, info, t, jax.random.key(0))


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))


def assert_equal_runs(one: dict, eight: dict, rel: float = 1e-4, student_rel: float = 2e-2):
  assert one.keys() == eight.keys() and len(one) > 10
  for k in one:
    a, b = one[k], eight[k]
    assert a.shape == b.shape, k
    if a.dtype == np.uint8:
      # Images are quantised: a float32 rounding difference may flip one level.
      assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, k
    elif ".student" in k or k.startswith("student"):
      # The student after KD on 8x8 digits (2 images per device): one ReLU whose input
      # sits within float32 rounding of 0 moves a BN-bias gradient by ~1/64 (measured
      # per-leaf relative L2 error up to 7.6e-3); misaligned randomness or a missing
      # all-reduce gives O(1).
      assert _rel(a, b) < student_rel, (k, _rel(a, b))
    else:
      assert _rel(a, b) < rel, (k, _rel(a, b))


def test_synthesis_kd_and_fused_epoch_on_8_devices_equal_1_device(teacher_vars):
  c = tiny_distill("")
  results = {}
  for n in (1, 8):
    d, t, st = build(c, teacher_vars, n)
    synth = d.compile_synth(st, t, jax.random.key(10), jnp.float32(1.1), host_inner=True)
    st, images, m_synth = synth(st, t, jax.random.key(10), jnp.float32(1.1))
    st, m_kd = d.jit_kd_steps(st, 1, unroll=True)(st, t, jax.random.key(11))
    st, m_epoch = d.jit_epoch(st, 2)(st, t, jax.random.key(12), jax.random.key(13),
                                     jnp.float32(1.1))
    results[n] = {"images": np.asarray(images), "pool": np.asarray(st.pool.images),
                  **_flat("synth", st.synth), **_flat("student", st.student),
                  **_flat("metrics", (m_synth, m_kd, m_epoch))}
  assert_equal_runs(results[1], results[8], rel=2e-4)


@pytest.mark.parametrize("method", ["cmi", "deepinversion", "fast_meta:imagenet",
                                    "generative", "nayer"])
def test_methods_on_8_devices_equal_1_device(teacher_vars, method):
  """Two calls (CMI's second reads the bank the first wrote): host-dispatched on 1 device
  (CPU's structure: begin, k dispatches of one inner step, end) equals one program of the k
  steps on 8 devices, so device count and loop structure change nothing at once. (Host
  dispatch on 8 devices: test_a_run_on_8_devices_steps_like_one_on_1, a whole run; the
  lax.scan form of TPU/GPU against host steps: test_synthesis_fast_meta.py, for the
  inversion engine.)"""
  name, _, variant = method.partition(":")
  c = tiny_distill("", **TINY_METHODS.get(name, {"method": name}))
  if variant == "imagenet":
    c.synth.meta_latent, c.synth.reinit_every, c.synth.meta_lr_g = True, 2, 1e-4
    c.synth.augment, c.synth.keep = "resized_crop", "last"
  if name == "generative":
    c.synth.adv, c.synth.bn, c.synth.oh, c.synth.act, c.synth.balance = 1, 1, 1, 0.1, 5.0
    c.synth.lr_g, c.synth.kd_steps, c.kd.steps = 1e-3, 2, 4
  checks.validate(c)
  results = {}
  for n in (1, 8):
    d, t, st = build(c, teacher_vars, n)
    synth = (d.jit_synth(st) if n == 8 else
             d.compile_synth(st, t, jax.random.key(10), jnp.float32(1.1), host_inner=True))
    results[n] = {}
    for call in range(2):
      st, images, metrics = synth(st, t, jax.random.key(10 + call), jnp.float32(1.1))
      results[n].update({f"call{call}/images": np.asarray(images),
                         **_flat(f"call{call}/synth", (st.synth, metrics))})
  assert_equal_runs(results[1], results[8])


def test_teacher_training_steps_on_8_devices_equal_1_device():
  c = schema.base_config()
  c.model, steps_, batch = "resnet8", 3, 32
  ds = data.load_dataset("digits")
  tx = optim.teacher_optimizer(c.optim, steps_, 1)
  model = models.get_model("resnet8", 10, axis_name=parallel.AXIS)
  state0 = jax.device_get(teacher_train.init_state(c, ds.info, tx, jax.random.key(0)))
  idx = np.arange(steps_ * batch).reshape(steps_, 1, batch)
  results = {}
  for n in (1, 8):
    mesh = make_mesh(n)
    step = teacher_train.make_train_chunk(model, tx, ds.info, mesh, unroll=True)
    state, flat = parallel.put_replicated(state0, mesh), {}
    for i in range(steps_):
      images, labels = parallel.put_batch((ds.train_images[idx[i]], ds.train_labels[idx[i]]),
                                          mesh, axis=1)
      state, metrics = step(state, images, labels, jax.random.key(100 + i))
      flat.update({f"step{i}/{k}": np.asarray(v) for k, v in metrics.items()})
    results[n] = {**flat, **_flat("tree", state.variables)}
  for k in results[1]:
    np.testing.assert_allclose(results[1][k], results[8][k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.fixture(scope="module")
def eight_device_run(teacher, tmp_path_factory):
  """The tiny run on 8 devices (tiny_distill's pool has 8 slots, so longer runs keep its
  shape)."""
  work = tmp_path_factory.mktemp("run8")
  c = tiny_distill(teacher, allow_config_change=True)
  return work, c, run(c, work, devices=8)


@pytest.mark.integration
def test_a_run_on_8_devices_steps_like_one_on_1(eight_device_run, teacher, tmp_path):
  work8, c, s8 = eight_device_run
  s1 = run(c, tmp_path, devices=1)
  assert (s8["num_devices"], s1["num_devices"]) == (8, 1)
  assert [r["step"] for r in rows(work8)] == [r["step"] for r in rows(tmp_path)]
  for a, b in zip(rows(work8), rows(tmp_path)):
    assert a["kd_loss" if "kd_loss" in a else "best_loss"] == pytest.approx(
        b["kd_loss" if "kd_loss" in b else "best_loss"], rel=2e-2)


@pytest.mark.integration
def test_a_checkpoint_saved_on_8_devices_resumes_on_1(eight_device_run, tmp_path):
  work8, c, _ = eight_device_run
  resumed = tmp_path / "resumed"
  shutil.copytree(work8, resumed)
  c = c.copy_and_resolve_references()
  c.epochs, c.kd.cosine_epochs = 4, 3
  s = run(c, resumed, devices=1)
  r = rows(resumed)
  assert [x["epoch"] for x in r] == [0, 1, 2, 3] and r[:3] == rows(work8)
  assert s["num_devices"] == 1 and s["student_acc"] == r[-1]["student_acc"]


@pytest.mark.integration
def test_a_checkpoint_saved_on_1_device_resumes_on_8(teacher, tmp_path):
  c = tiny_distill(teacher, allow_config_change=True, epochs=2)
  run(c, tmp_path, devices=1)
  c.epochs = 3
  s = run(c, tmp_path, devices=8)
  assert [x["epoch"] for x in rows(tmp_path)] == [0, 1, 2] and s["num_devices"] == 8
