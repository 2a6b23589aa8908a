"""The run loop (fastdfkd_jax.modes.distill): an
end-to-end digits run through `modes.run` that also checks every jitted step
is traced once.

The end-to-end run distills the session teacher (conftest.py `digits_teacher`,
resnet8, ~97%) into a resnet8 student with FastDFKD (k=2) in well under a minute
on a free 2-core CPU.
"""

import glob
import json
import math
import os

import jax
import pytest

from fastdfkd_jax.config import schema
from fastdfkd_jax.run import loops
from fastdfkd_jax.modes import distill as distill_mode
from fastdfkd_jax.distill import steps
from fastdfkd_jax.synthesis import inversion

# ------------------------------------------------------- kd_learning_rate


def test_kd_learning_rate_cosine():
  c = schema.default_config()
  c.warmup, c.kd.lr, c.kd.lr_min, c.kd.cosine_epochs = 5, 0.2, 2e-4, 200
  assert distill_mode.kd_learning_rate(c, 0) == pytest.approx(0.2)            # during warmup
  assert distill_mode.kd_learning_rate(c, c.warmup) == pytest.approx(0.2)     # first KD epoch
  assert distill_mode.kd_learning_rate(c, c.warmup + 200) == pytest.approx(2e-4)  # after T_max
  assert distill_mode.kd_learning_rate(c, c.warmup + 100) == pytest.approx((0.2 + 2e-4) / 2)
  e = 37
  expected = 2e-4 + (0.2 - 2e-4) * (1 + math.cos(math.pi * e / 200)) / 2
  assert distill_mode.kd_learning_rate(c, c.warmup + e) == pytest.approx(expected)
  lrs = [distill_mode.kd_learning_rate(c, epoch) for epoch in range(c.warmup, c.warmup + 201)]
  assert all(a >= b for a, b in zip(lrs, lrs[1:]))
  assert distill_mode.kd_learning_rate(c, c.warmup + 250) == lrs[-1]   # constant after T_max


# ----------------------------------------------------------- end to end

# Measured on digits with the session teacher (96.9%): see E2E_MIN_ACC.
E2E = dict(epochs=40, warmup=2, kd_steps=25, batch=64, k=2, nz=32, ngf=16, kd_lr=0.1)
E2E_MIN_ACC = 65.0


def e2e_config(teacher_dir):
  c = schema.default_config()
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
  """modes.run(distill) once, counting the traces of the per-device steps."""
  from fastdfkd_jax import modes
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
      mp.setattr(steps.Distiller, name, counting(name, getattr(steps.Distiller, name)))
    for name in ("begin", "inner_step", "end"):
      mp.setattr(inversion.InversionSynthesizer, name,
                 counting(name, getattr(inversion.InversionSynthesizer, name)))
    summary = modes.run(config, workdir)
  return config, workdir, summary, counts, teacher_summary


@pytest.mark.slow
def test_e2e_each_jitted_step_traced_once(e2e_run):
  config, _, _, counts, _ = e2e_run
  if loops.use_scan(config):
    # The synthesis program and the scanned KD program (loop=auto: no fused epoch).
    assert {k: counts.get(k, 0) for k in ("_synth", "_epoch", "_kd_steps", "_kd_update")} == \
        {"_synth": 1, "_epoch": 0, "_kd_steps": 1, "_kd_update": 1}, counts
  else:
    # Host-driven: the synthesis pieces (begin, one inner step dispatched k
    # times, end) and a single-step KD program, each traced once for all
    # epochs and steps.
    assert counts == {"begin": 1, "inner_step": 1, "end": 1, "_kd_steps": 1,
                      "_kd_update": 1}, counts


@pytest.mark.slow
def test_e2e_student_accuracy(e2e_run):
  config, _, summary, _, teacher_summary = e2e_run
  assert summary["teacher_acc"] == pytest.approx(teacher_summary["test_accuracy"])
  # Chance is 10%.
  assert summary["student_acc"] >= E2E_MIN_ACC, summary
  assert summary["best_student_acc"] >= summary["student_acc"]


@pytest.mark.slow
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
  assert on_disk["dtype"] == config.dtype == "float32"   # the activation dtype it ran in
  assert 0 < on_disk["synth_seconds"] < on_disk["wall_seconds"]
  # Images produced (one batch per synthesis call) and seen by the student (KD batches),
  # and the synthesis seconds of the synthesis-only epochs apart from all of them.
  assert on_disk["synth_images"] == config.epochs * config.batch_size
  assert on_disk["kd_images"] == (config.epochs - config.warmup) * config.kd.steps * \
      config.batch_size
  assert 0 < on_disk["warmup_synth_seconds"] < on_disk["synth_seconds"]

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


# ------------------------------------------------ KD baselines (kd.source)


@pytest.fixture(scope="module")
def baseline_runs(digits_teacher, tmp_path_factory):
  """The same short KD schedule on the real training set and on uniform noise."""
  from fastdfkd_jax import modes
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
      mp.setattr(steps.Distiller, "compile_synth", no_synthesis)
      out[source] = (c, workdir, modes.run(c, workdir))
  return out


@pytest.mark.slow
def test_kd_baselines_bracket_the_student(baseline_runs):
  real, noise = baseline_runs["real"][2], baseline_runs["noise"][2]
  assert real["kd_source"] == "real" and noise["kd_source"] == "noise"
  assert real["synth_seconds"] == 0.0 and noise["synth_seconds"] == 0.0
  # 150 KD steps on real digits: far above chance (10%); noise inputs teach little.
  assert real["student_acc"] >= 80.0, real
  assert noise["student_acc"] < real["student_acc"] - 20.0, (noise, real)


@pytest.mark.slow
def test_kd_baselines_skip_warmup_and_synthesis_outputs(baseline_runs):
  for source, (config, workdir, summary) in baseline_runs.items():
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    assert [r["epoch"] for r in rows] == list(range(config.warmup, config.epochs)), source
    assert rows[-1]["step"] == (config.epochs - config.warmup) * config.kd.steps
    assert not os.path.exists(os.path.join(workdir, "samples")), source
    assert summary["synth_images"] == 0 and summary["warmup_synth_seconds"] == 0.0
    assert summary["kd_images"] == rows[-1]["step"] * config.batch_size




@pytest.mark.slow
def test_loop_fused_runs_and_estimates_synthesis_time(digits_teacher, tmp_path):
  """loop=fused: warmup synthesis calls are timed, KD epochs are one dispatch each and
  their synthesis share is the mean timed call."""
  from fastdfkd_jax import modes
  c = e2e_config(digits_teacher[0])
  c.loop = "fused"
  c.epochs, c.warmup, c.kd.steps, c.batch_size, c.k = 3, 1, 2, 16, 2
  c.kd.cosine_epochs, c.eval_every, c.sample_every = 2, 1, 0
  summary = modes.run(c, str(tmp_path))
  assert "fused_epoch=True" in summary["loop"]
  with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  first = rows[0]["synth_seconds"]
  assert first > 0 and rows[0]["kd_seconds"] == 0.0
  assert [r["synth_seconds"] for r in rows] == pytest.approx([first, 2 * first, 3 * first])
  assert rows[-1]["kd_seconds"] > 0 and rows[-1]["step"] == 2 * c.kd.steps
  assert rows[-1]["kd_lr"] == pytest.approx(distill_mode.kd_learning_rate(c, 2))
