"""mode=distill in process on digits with the session teacher: the tiny run's files and
traces, resume after a crash (FastDFKD and CMI), the fused epoch, KD baselines, the
methods that learn, and the errors a user can act on.

A crash is provoked inside an epoch (`distill.epochs.run_epoch` raising), which loses
everything the process held, as a SIGKILL would; test_e2e.py kills a real process.
"""

import glob
import json
import os

import jax
import pytest

from conftest import TINY_METHODS, crash_at_epoch, load_config_file, rows, run, tiny_distill
from fastdfkd_jax import errors
from fastdfkd_jax.distill import epochs, steps
from fastdfkd_jax.modes import distill as distill_mode
from fastdfkd_jax.run import checkpoint
from fastdfkd_jax.synthesis import inversion

pytestmark = pytest.mark.integration


def test_kd_learning_rate_is_the_optimizers_cosine():
  import math
  from fastdfkd_jax.config import schema
  c = schema.default_config()
  c.warmup, c.kd.lr, c.kd.lr_min, c.kd.cosine_epochs = 5, 0.2, 2e-4, 200
  lr = lambda e: distill_mode.kd_learning_rate(c, e)   # noqa: E731
  assert lr(0) == pytest.approx(0.2) and lr(c.warmup) == pytest.approx(0.2)
  assert lr(c.warmup + 100) == pytest.approx((0.2 + 2e-4) / 2)
  assert lr(c.warmup + 37) == pytest.approx(
      2e-4 + (0.2 - 2e-4) * (1 + math.cos(math.pi * 37 / 200)) / 2)
  lrs = [lr(e) for e in range(c.warmup, c.warmup + 201)]
  assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lr(c.warmup + 250) == lrs[-1]


@pytest.fixture(scope="module")
def tiny_run(teacher, tmp_path_factory):
  """The tiny run once (sample grids on), counting the traces of the per-device steps."""
  config = tiny_distill(teacher, sample_every=2, epochs=4)
  counts = {}

  def counting(name, fn):
    def wrapper(*args, **kwargs):
      counts[name] = counts.get(name, 0) + 1   # once per trace, not per call
      return fn(*args, **kwargs)
    return wrapper

  workdir = str(tmp_path_factory.mktemp("tiny"))
  with pytest.MonkeyPatch.context() as mp:
    for name in ("_synth", "_kd_steps", "_kd_update", "_epoch"):
      mp.setattr(steps.Distiller, name, counting(name, getattr(steps.Distiller, name)))
    for name in ("begin", "inner_step", "end"):
      mp.setattr(inversion.InversionSynthesizer, name,
                 counting(name, getattr(inversion.InversionSynthesizer, name)))
    summary = run(config, workdir)
  return config, workdir, summary, counts


def test_each_jitted_step_is_traced_once(tiny_run):
  # Host-driven on CPU: the synthesis pieces (begin, one inner step dispatched k times,
  # end) and a single-step KD program, each traced once for all epochs and steps.
  assert tiny_run[3] == {"begin": 1, "inner_step": 1, "end": 1, "_kd_steps": 1,
                         "_kd_update": 1}


def test_the_run_files_count_images_and_seconds(tiny_run, digits_teacher):
  config, workdir, summary, _ = tiny_run
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk == json.loads(json.dumps(summary))
  assert (on_disk["method"], on_disk["k"], on_disk["epochs"]) == ("fast_meta", 2, 4)
  assert on_disk["teacher_acc"] == pytest.approx(digits_teacher[1]["test_accuracy"])
  assert on_disk["num_devices"] == 1 and on_disk["dtype"] == "float32"
  assert on_disk["synth_images"] == 4 * 16 and on_disk["kd_images"] == 3 * 2 * 16
  assert 0 < on_disk["warmup_synth_seconds"] < on_disk["synth_seconds"] < on_disk[
      "wall_seconds"]
  assert on_disk["best_student_acc"] >= on_disk["student_acc"] > 0
  r = rows(workdir)
  assert [x["epoch"] for x in r] == [0, 1, 2, 3] and r[-1]["step"] == 3 * 2
  assert r[0]["kd_seconds"] == 0.0 < r[-1]["kd_seconds"]        # no KD during warmup
  synth = [x["synth_seconds"] for x in r]
  assert synth == sorted(synth) and synth[0] > 0
  assert r[-1]["student_acc"] == summary["student_acc"]
  assert r[-1]["kd_lr"] == pytest.approx(distill_mode.kd_learning_rate(config, 3))
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, "samples", "*"))
                ) == ["epoch_0000.png", "epoch_0002.png", "epoch_0003.png"]
  best = checkpoint.manager(os.path.join(workdir, "checkpoints", "best"), create=False)
  assert checkpoint.restore_meta(best)["student_acc"] == summary["best_student_acc"]


@pytest.mark.parametrize("method", ["fast_meta", "cmi"])
def test_a_crash_resumes_to_identical_metrics(teacher, tmp_path, monkeypatch, method):
  # CMI keeps a memory bank, an MLP head and its Adam state across calls: all of it must
  # come back from the checkpoint for the losses after the resume to repeat.
  changes = dict(TINY_METHODS.get(method, {}), epochs=4)
  full = run(tiny_distill(teacher, **changes), tmp_path / "full")
  with monkeypatch.context() as m:
    crash_at_epoch(m, 2)
    with pytest.raises(RuntimeError, match="killed"):
      run(tiny_distill(teacher, **changes), tmp_path / "cut")
  assert len(rows(tmp_path / "cut")) == 2
  resumed = run(tiny_distill(teacher, **changes), tmp_path / "cut")
  keys = ("epoch", "student_acc", "best_loss", "kd_loss", "loss_cr", "loss_bn", "step")
  assert [[x.get(k) for k in keys] for x in rows(tmp_path / "cut")] == [
      [x.get(k) for k in keys] for x in rows(tmp_path / "full")]
  for key in ("student_acc", "best_student_acc", "synth_images", "kd_images"):
    assert resumed[key] == full[key], key
  if method == "cmi":
    assert all(x["loss_cr"] > 0 for x in rows(tmp_path / "cut"))


def test_loop_fused_computes_the_split_steps_and_times_its_synthesis_every_tenth_epoch(
    teacher, tmp_path, monkeypatch):
  """loop=fused: the warmup and every TIMED_EVERY-th KD epoch run split and measure the
  synthesis call; the fused epochs between add the mean of the measured calls. Its losses
  are loop=scan's, epoch by epoch (the split epochs after a fused one included)."""
  monkeypatch.setattr(epochs, "TIMED_EVERY", 2)
  c = tiny_distill(teacher, loop="fused", epochs=5)
  summary = run(c, tmp_path / "fused")
  assert "fused_epoch=True" in summary["loop"]
  r = rows(tmp_path / "fused")
  synth = [x["synth_seconds"] for x in r]
  per_epoch = [b - a for a, b in zip([0.0] + synth, synth)]
  timed = [per_epoch[0], per_epoch[1], per_epoch[3]]      # epochs 0 (warmup), 1, 3
  mean = lambda xs: sum(xs) / len(xs)                      # noqa: E731
  assert per_epoch[2] == pytest.approx(mean(timed[:2]))    # epoch 2 fused: mean of 0, 1
  assert per_epoch[4] == pytest.approx(mean(timed))        # epoch 4 fused: mean of 0, 1, 3
  assert r[-1]["step"] == 4 * c.kd.steps and r[-1]["kd_seconds"] > 0
  split = run(tiny_distill(teacher, loop="scan", epochs=5), tmp_path / "split")
  assert "fused_epoch=False" in split["loop"]
  assert len(rows(tmp_path / "split")) == len(r) == 5
  for a, b in zip(r, rows(tmp_path / "split")):
    assert a["kd_loss" if "kd_loss" in a else "best_loss"] == pytest.approx(
        b["kd_loss" if "kd_loss" in b else "best_loss"], rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def baselines(teacher, tmp_path_factory):
  """The same short KD schedule on the real training set and on uniform noise."""
  out = {}
  for source in ("real", "noise"):
    c = tiny_distill(teacher, **{"kd.source": source, "epochs": 8, "warmup": 2,
                                 "kd.steps": 25, "batch_size": 64, "kd.lr": 0.1,
                                 "kd.cosine_epochs": 6, "eval_every": 2})
    workdir = str(tmp_path_factory.mktemp(f"kd_{source}"))
    with pytest.MonkeyPatch.context() as mp:
      def no_synthesis(*args, **kwargs):
        raise AssertionError("a KD baseline must not synthesize")
      mp.setattr(steps.Distiller, "compile_synth", no_synthesis)
      out[source] = (c, workdir, run(c, workdir))
  return out


def test_kd_baselines_bracket_the_student(baselines):
  real, noise = baselines["real"][2], baselines["noise"][2]
  assert (real["kd_source"], noise["kd_source"]) == ("real", "noise")
  assert real["synth_seconds"] == 0.0 and noise["synth_seconds"] == 0.0
  # 150 KD steps on real digits: far above chance (10%); noise inputs teach little.
  assert real["student_acc"] >= 80.0, real
  assert noise["student_acc"] < real["student_acc"] - 20.0, (noise, real)


def test_kd_baselines_skip_warmup_and_synthesis_outputs(baselines):
  for source, (c, workdir, summary) in baselines.items():
    r = rows(workdir)
    assert [x["epoch"] for x in r] == list(range(c.warmup, c.epochs)), source
    assert r[-1]["step"] == (c.epochs - c.warmup) * c.kd.steps
    assert not os.path.exists(os.path.join(workdir, "samples")), source
    assert summary["synth_images"] == 0 and summary["warmup_synth_seconds"] == 0.0
    assert summary["kd_images"] == r[-1]["step"] * c.batch_size


def test_fast_meta_learns_above_chance(teacher, tmp_path):
  """FastDFKD on digits with the session teacher: 12 epochs of 20 KD steps at batch 64
  (chance: 10%)."""
  c = tiny_distill(teacher, **{"epochs": 12, "warmup": 2, "batch_size": 64, "kd.steps": 20,
                               "kd.lr": 0.1, "kd.cosine_epochs": 10, "synth.nz": 32,
                               "synth.ngf": 16, "eval_every": 4, "checkpoint_every": 12})
  summary = run(c, tmp_path)
  assert summary["student_acc"] >= 40.0, summary


# Each generator-vs-student baseline with the release script's settings: measured
# (teacher 95.8%) dafl 29.2%, zskt 34.4%, dfq 36.7% after 8 epochs of 20 KD steps at batch
# 64; dfad 15.8% after 8 and 37.5% after 16 (its L1 KD gradient is ~1/C of a sample's).
GENERATIVE_EPOCHS = dict(dafl=8, zskt=8, dfq=8, dfad=16)


@pytest.mark.parametrize("method", sorted(GENERATIVE_EPOCHS))
def test_generative_baselines_learn_above_chance(method, teacher, tmp_path):
  c = load_config_file("baselines_cpu.py", f"{method}-digits")
  c.teacher.checkpoint, c.teacher.arch, c.student.arch = teacher, "resnet8", "resnet8"
  c.epochs = c.kd.cosine_epochs = c.eval_every = c.sample_every = GENERATIVE_EPOCHS[method]
  c.checkpoint_every, c.log_every = c.epochs, 1000
  c.kd.steps, c.batch_size, c.kd.lr = 20, 64, 0.1
  c.synth.nz, c.synth.ngf = (64 if method == "dafl" else 32), 16
  summary = run(c, tmp_path)
  assert summary["method"] == method and summary["synth_seconds"] > 0
  assert summary["student_acc"] >= 20.0, summary
  assert rows(tmp_path)[-1]["step"] == c.epochs * c.kd.steps
  assert (tmp_path / "samples" / "epoch_0000.png").exists()


def test_deepinversion_runs_with_its_priors(teacher, tmp_path):
  summary = run(tiny_distill(teacher, **TINY_METHODS["deepinversion"]), tmp_path)
  assert summary["method"] == "deepinversion" and summary["kd_images"] == 2 * 2 * 16
  r = rows(tmp_path)
  assert len(r) == 3 and all(x["loss_adv"] <= 0 and x["loss_tv"] > 0 for x in r[1:])


def test_a_diverging_run_stops_with_the_epoch_and_the_term(teacher, tmp_path):
  with pytest.raises(errors.UserError, match="became .* at epoch"):
    run(tiny_distill(teacher, **{"synth.lr_g": 1e30, "synth.lr_z": 1e30, "kd.lr": 1e30}),
        tmp_path)


def test_a_teacher_of_another_architecture_names_the_field(teacher, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="arch='resnet8'.*resnet20"):
    run(tiny_distill(teacher, **{"teacher.arch": "resnet20"}), tmp_path)


def test_a_teacher_with_nan_weights_is_refused_before_training(teacher, tmp_path):
  import numpy as np
  from fastdfkd_jax.teacher import loader
  variables, meta = loader.load(teacher)
  leaves, tree = jax.tree.flatten(variables)
  leaves[0] = np.full_like(leaves[0], np.nan)
  mngr = checkpoint.manager(str(tmp_path / "bad" / "checkpoints"))
  checkpoint.save(mngr, 0, meta, jax.tree.unflatten(tree, leaves))
  mngr.close()
  with pytest.raises(checkpoint.CheckpointError, match="NaN or Inf"):
    run(tiny_distill(str(tmp_path / "bad")), tmp_path / "w")
  assert not (tmp_path / "w" / "metrics.jsonl").exists()
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_no_teacher_says_how_to_get_one(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="train_if_missing=True"):
    run(tiny_distill(""), tmp_path)
  assert not (tmp_path / "config.json").exists()   # nothing binds the corrected command


def test_data_parallel_batch_error_names_the_teacher_field(tmp_path):
  """A teacher trained first on 3 devices: its batch is teacher.batch_size."""
  c = tiny_distill("", **{"teacher.train_if_missing": True, "teacher.batch_size": 64,
                          "batch_size": 48})
  with pytest.raises(errors.UserError, match=r"config.teacher.batch_size=64 .* 3 devices"):
    run(c, tmp_path, devices=3)
  assert jax.device_count() >= 3
