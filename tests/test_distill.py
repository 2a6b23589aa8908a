"""Data-free distillation (fastdfkd_jax.distill): KD schedule, KD update, and an
end-to-end digits run through `runner.run` that also checks every jitted step
is traced once.

The end-to-end run distills the session teacher (conftest.py `digits_teacher`,
resnet8, ~97%) into a resnet8 student with FastDFKD (k=2) in well under a minute
on a free 2-core CPU.
"""

import glob
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax import config_lib, distill, loops
from fastdfkd_jax.synthesis import fast_meta, inversion

from conftest import compile_unoptimized

# ---------------------------------------------------------------- kd_lr


def test_kd_lr_cosine():
  c = config_lib.default_config()
  c.warmup, c.kd.lr, c.kd.lr_min, c.kd.cosine_epochs = 5, 0.2, 2e-4, 200
  assert distill.kd_lr(c, 0) == pytest.approx(0.2)            # during warmup
  assert distill.kd_lr(c, c.warmup) == pytest.approx(0.2)     # first KD epoch
  assert distill.kd_lr(c, c.warmup + 200) == pytest.approx(2e-4)  # after T_max
  assert distill.kd_lr(c, c.warmup + 100) == pytest.approx((0.2 + 2e-4) / 2)
  e = 37
  expected = 2e-4 + (0.2 - 2e-4) * (1 + math.cos(math.pi * e / 200)) / 2
  assert distill.kd_lr(c, c.warmup + e) == pytest.approx(expected)
  lrs = [distill.kd_lr(c, epoch) for epoch in range(c.warmup, c.warmup + 201)]
  assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# ------------------------------------------------------------ KD update


def test_one_kd_update_reduces_kd_loss(tiny_nets):
  teacher, student_model, generator, tv, sv = tiny_nets
  shape = (8, 8, 1)
  synth = fast_meta.FastMetaSynthesizer(
      generator=generator, teacher=teacher, student=student_model,
      hp=inversion.SynthesisHParams(k=2, batch_size=16, nz=16), num_classes=10,
      image_shape=shape, mean=(0.3054,), std=(0.3757,), padding=1, axis_name=None)
  c = config_lib.default_config()
  d = distill.Distiller(synth=synth, student_model=student_model, tx=distill.kd_tx(c),
                        kd_batch=16, temperature=20.0, mesh=None)
  student = distill.StudentState(params=sv["params"], batch_stats=sv["batch_stats"],
                                 opt_state=d.tx.init(sv["params"]), step=jnp.int32(0))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16,) + shape), jnp.uint8)
  key, lr = jax.random.key(3), jnp.float32(0.1)
  update = compile_unoptimized(d._kd_update, student, tv, images, key, lr)
  new, loss0 = update(student, tv, images, key, lr)
  _, loss1 = update(new, tv, images, key, lr)   # the loss at the updated params
  assert int(new.step) == 1
  assert np.isfinite(float(loss0)) and float(loss0) > 0
  assert float(loss1) < float(loss0), (float(loss0), float(loss1))


# ----------------------------------------------------------- end to end

# Measured on digits with the session teacher (96.9%): see E2E_MIN_ACC.
E2E = dict(epochs=40, warmup=2, kd_steps=25, batch=64, k=2, nz=32, ngf=16, kd_lr=0.1)
E2E_MIN_ACC = 65.0


def e2e_config(teacher_dir):
  c = config_lib.default_config()
  c.teacher.arch, c.student.arch = "resnet8", "resnet8"
  c.teacher.checkpoint, c.teacher.train_if_missing = teacher_dir, False
  c.method, c.k = "fast_meta", E2E["k"]
  c.epochs, c.warmup, c.batch_size = E2E["epochs"], E2E["warmup"], E2E["batch"]
  c.kd.steps, c.kd.lr = E2E["kd_steps"], E2E["kd_lr"]
  c.kd.cosine_epochs = c.epochs - c.warmup
  c.synth.nz, c.synth.ngf = E2E["nz"], E2E["ngf"]
  c.eval_every = 5
  c.sample_every = 20
  c.checkpoint_every = 20
  c.log_every = 1000
  return c


@pytest.fixture(scope="module")
def e2e_run(digits_teacher, tmp_path_factory):
  """runner.run(distill) once, counting the traces of the per-device steps."""
  from fastdfkd_jax import runner
  teacher_dir, teacher_summary = digits_teacher
  config = e2e_config(teacher_dir)
  counts = {}

  def counting(name, fn):
    def wrapper(*args, **kwargs):
      counts[name] = counts.get(name, 0) + 1   # runs once per trace, not per call
      return fn(*args, **kwargs)
    return wrapper

  workdir = str(tmp_path_factory.mktemp("distill_e2e"))
  with pytest.MonkeyPatch.context() as mp:
    for name in ("_synth", "_kd_steps", "_kd_update", "_epoch"):
      mp.setattr(distill.Distiller, name, counting(name, getattr(distill.Distiller, name)))
    for name in ("begin", "inner_step", "end"):
      mp.setattr(inversion.InversionSynthesizer, name,
                 counting(name, getattr(inversion.InversionSynthesizer, name)))
    summary = runner.run(config, workdir)
  return config, workdir, summary, counts, teacher_summary


def test_e2e_each_jitted_step_traced_once(e2e_run):
  config, _, _, counts, _ = e2e_run
  if loops.use_scan(config):
    # synth_step (warmup) and epoch_step (synthesis + scanned KD) are two programs.
    assert {k: counts[k] for k in ("_synth", "_epoch", "_kd_steps", "_kd_update")} == \
        {"_synth": 2, "_epoch": 1, "_kd_steps": 1, "_kd_update": 1}, counts
  else:
    # Host-driven: the synthesis pieces (begin, one inner step dispatched k
    # times, end) and a single-step KD program, each traced once for all
    # epochs and steps.
    assert counts == {"begin": 1, "inner_step": 1, "end": 1, "_kd_steps": 1,
                      "_kd_update": 1}, counts


def test_e2e_student_accuracy(e2e_run):
  config, _, summary, _, teacher_summary = e2e_run
  assert summary["teacher_acc"] == pytest.approx(teacher_summary["test_accuracy"])
  # Chance is 10%.
  assert summary["student_acc"] >= E2E_MIN_ACC, summary
  assert summary["best_student_acc"] >= summary["student_acc"]


def test_e2e_workdir_files(e2e_run):
  config, workdir, summary, _, _ = e2e_run
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["k"] == config.k

  with open(os.path.join(workdir, "summary.json")) as f:
    on_disk = json.load(f)
  for key in ("teacher_acc", "student_acc", "best_student_acc", "synth_seconds",
              "wall_seconds", "method", "k", "epochs", "num_devices"):
    assert key in on_disk, key
  assert (on_disk["method"], on_disk["k"], on_disk["epochs"]) == ("fast_meta", config.k,
                                                                  config.epochs)
  assert on_disk["num_devices"] == jax.device_count()
  assert 0 < on_disk["synth_seconds"] < on_disk["wall_seconds"]

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  assert [r["epoch"] for r in rows] == list(range(config.epochs))
  for r in rows:
    for key in ("epoch", "student_acc", "synth_seconds", "kd_seconds", "wall_seconds"):
      assert key in r, (key, r)
  evaluated = [r for r in rows if (r["epoch"] + 1) % config.eval_every == 0]
  assert evaluated and all(isinstance(r["student_acc"], float) for r in evaluated)
  assert rows[-1]["student_acc"] == pytest.approx(summary["student_acc"])
  synth = [r["synth_seconds"] for r in rows]
  assert synth == sorted(synth) and synth[0] > 0
  assert rows[config.warmup - 1]["kd_seconds"] == 0.0    # no KD during warmup
  assert rows[-1]["kd_seconds"] > 0
  assert rows[-1]["step"] == (config.epochs - config.warmup) * config.kd.steps

  pngs = glob.glob(os.path.join(workdir, "samples", "*.png"))
  assert pngs and os.path.join(workdir, "samples", "epoch_0000.png") in pngs
  ckpt = os.path.join(workdir, "checkpoints")
  assert os.path.isdir(ckpt)
  assert any(d.isdigit() for d in os.listdir(ckpt))           # resumable steps
  assert os.path.isdir(os.path.join(ckpt, "best"))


def test_bfloat16_activations_synthesis_and_kd_run(digits_teacher):
  """config.dtype='bfloat16': activations in bf16, params/BN stats/losses stay float32."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from fastdfkd_jax import data, parallel
  from fastdfkd_jax.teacher import loader
  teacher_dir = digits_teacher[0] if isinstance(digits_teacher, tuple) else digits_teacher
  c = e2e_config(teacher_dir)
  c.dtype = "bfloat16"
  c.batch_size, c.k, c.synth.nz, c.synth.ngf = 16, 2, 16, 8
  info = data.get_info("digits")
  teacher_vars, meta = loader.load(teacher_dir)
  mesh = parallel.make_mesh()
  d = distill.build(c, info, meta["arch"], mesh)
  t = parallel.put_replicated(teacher_vars, mesh)
  state = distill.init_state(d, c, info, t, jax.random.key(0))
  synth = d.compile_synth(state, t, jax.random.key(1), jnp.float32(1.0))
  state, images, metrics = synth(state, t, jax.random.key(1), jnp.float32(1.0))
  state, kd_metrics = d.jit_kd_steps(state, 1, unroll=True)(state, t, jax.random.key(2),
                                                            jnp.float32(0.05))
  assert images.dtype == jnp.uint8
  for value in list(metrics.values()) + list(kd_metrics.values()):
    assert np.isfinite(np.asarray(value)) and np.asarray(value).dtype == np.float32
  for leaf in jax.tree.leaves((state.student.params, state.synth.gen_params)):
    assert leaf.dtype == jnp.float32


# ------------------------------------------------ KD baselines (kd.source)


@pytest.fixture(scope="module")
def baseline_runs(digits_teacher, tmp_path_factory):
  """The same short KD schedule on the real training set and on uniform noise."""
  from fastdfkd_jax import runner
  teacher_dir, _ = digits_teacher
  out = {}
  for source in ("real", "noise"):
    c = e2e_config(teacher_dir)
    c.kd.source = source
    c.epochs, c.warmup, c.kd.steps = 8, 2, 25
    c.kd.cosine_epochs = c.epochs - c.warmup
    c.eval_every = 2
    workdir = str(tmp_path_factory.mktemp(f"kd_{source}"))
    with pytest.MonkeyPatch.context() as mp:
      def no_synthesis(*args, **kwargs):
        raise AssertionError("a KD baseline must not synthesize")
      mp.setattr(distill.Distiller, "compile_synth", no_synthesis)
      out[source] = (c, workdir, runner.run(c, workdir))
  return out


def test_kd_baselines_bracket_the_student(baseline_runs):
  real, noise = baseline_runs["real"][2], baseline_runs["noise"][2]
  assert real["kd_source"] == "real" and noise["kd_source"] == "noise"
  assert real["synth_seconds"] == 0.0 and noise["synth_seconds"] == 0.0
  # 150 KD steps on real digits: far above chance (10%); noise inputs teach little.
  assert real["student_acc"] >= 80.0, real
  assert noise["student_acc"] < real["student_acc"] - 20.0, (noise, real)


def test_kd_baselines_skip_warmup_and_synthesis_outputs(baseline_runs):
  for source, (config, workdir, summary) in baseline_runs.items():
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    assert [r["epoch"] for r in rows] == list(range(config.warmup, config.epochs)), source
    assert rows[-1]["step"] == (config.epochs - config.warmup) * config.kd.steps
    assert not os.path.exists(os.path.join(workdir, "samples")), source


def test_kd_noise_inputs_are_uniform_uint8_and_device_invariant(tiny_nets):
  teacher, student_model, generator, _, _ = tiny_nets

  def distiller(axis_name):
    synth = fast_meta.FastMetaSynthesizer(
        generator=generator, teacher=teacher, student=student_model,
        hp=inversion.SynthesisHParams(k=2, batch_size=256, nz=16), num_classes=10,
        image_shape=(8, 8, 1), mean=(0.3054,), std=(0.3757,), padding=1,
        axis_name=axis_name)
    return distill.Distiller(synth=synth, student_model=student_model, tx=None,
                             kd_batch=256, temperature=20.0, mesh=None, kd_source="noise")

  key = jax.random.key(0)
  x = np.asarray(distiller(None)._kd_inputs(None, key))
  assert x.shape == (256, 8, 8, 1) and x.dtype == np.uint8
  assert x.min() < 10 and x.max() > 245 and abs(x.mean() - 127.5) < 4
  # Two "devices" (a vmapped named axis) draw the two halves of the same global batch.
  d2 = distiller("data")
  stripes = jax.vmap(lambda _: d2._kd_inputs(None, key), axis_name="data")(jnp.zeros(2))
  np.testing.assert_array_equal(np.concatenate(np.asarray(stripes)), x)


def test_kd_steps_on_a_data_pool_scan_equals_unrolled(digits_teacher):
  """kd.source='real': the data pool is an argument of the jitted KD steps (sharded like the
  synthetic pool); the scanned form (TPU/GPU) and the unrolled one (CPU) agree."""
  from fastdfkd_jax import data, parallel, pool as pool_lib
  from fastdfkd_jax.teacher import loader
  teacher_dir, _ = digits_teacher
  c = e2e_config(teacher_dir)
  c.kd.source, c.batch_size = "real", 16
  info = data.get_info("digits")
  teacher_vars, meta = loader.load(teacher_dir)
  mesh = parallel.make_mesh()
  d = distill.build(c, info, meta["arch"], mesh)
  t = parallel.put_replicated(teacher_vars, mesh)
  images = np.random.default_rng(0).integers(0, 256, (64,) + tuple(info.image_shape))
  real = pool_lib.fixed_set(images.astype(np.uint8), c.batch_size, seed=0)
  data_pool = distill.put_pool(real, len(real), 0, mesh)
  out = {}
  for unroll in (False, True):
    state = distill.init_state(d, c, info, t, jax.random.key(0))
    assert state.pool is None                     # no synthetic pool for the baselines
    state, metrics = d.jit_kd_steps(state, 2, unroll, data_pool)(
        state, t, jax.random.key(2), jnp.float32(0.05), data_pool)
    out[unroll] = (state.student.params, float(metrics["kd_loss"]), int(state.student.step))
  assert out[False][2] == out[True][2] == 2
  assert out[False][1] == pytest.approx(out[True][1], rel=1e-5)
  chex.assert_trees_all_close(out[False][0], out[True][0], rtol=1e-4, atol=1e-6)
