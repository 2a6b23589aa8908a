"""Exporting a run's pool (transfer.export, `python -m fastdfkd_jax.export`) and distilling
from the export (kd.source=dataset): a tiny digits distillation with a wrapping pool,
exported in every format."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from fastdfkd_jax.config import checks as config_checks, files, schema
from fastdfkd_jax import data, errors, models
from fastdfkd_jax.transfer import export
from fastdfkd_jax.run import reporting
from fastdfkd_jax.transfer import formats
from fastdfkd_jax.distill import steps
from fastdfkd_jax.teacher import loader

from absl import flags

from conftest import run, tiny_distill
# 10 epochs of 16 images, a pool of 8 slots: the ring wraps, calls 2..9 stay. The suite's
# tiny run otherwise (conftest.tiny_distill): its programs are the other runs'.
EPOCHS, BATCH, SLOTS = 10, 16, 8


def tiny_config(teacher_dir):
  return tiny_distill(teacher_dir, **{
      "epochs": EPOCHS, "pool.capacity": SLOTS * BATCH, "eval_every": 3,
      "checkpoint_every": 3, "sample_every": 5, "log_every": 1000,
      "transfer.diversity_images": 100})


@pytest.fixture(scope="module")
def tiny_run(digits_teacher, tmp_path_factory):
  """(config, workdir, summary) of a tiny FastDFKD run on the session teacher."""
  config = tiny_config(digits_teacher[0])
  workdir = str(tmp_path_factory.mktemp("export_run"))
  return config, workdir, run(config, workdir)


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
  """{format: (out dir, summary)} of the tiny run exported in every format."""
  _, workdir, _ = tiny_run
  out = {}
  for fmt in formats.FORMATS:
    directory = str(tmp_path_factory.mktemp(f"export_{fmt}"))
    out[fmt] = directory, export.export(workdir, directory, fmt,
                                        files.saved_config(workdir))
  return out


def test_mean_pairwise_distance_matches_brute_force():
  f = np.random.default_rng(0).normal(size=(7, 5))
  brute = np.mean([np.linalg.norm(f[i] - f[j]) for i in range(7) for j in range(i + 1, 7)])
  assert export.mean_pairwise_distance(f) == pytest.approx(brute, rel=1e-9)
  assert export.mean_pairwise_distance(f[:1]) == 0.0


@pytest.mark.integration
def test_export_round_trip_is_byte_identical_in_every_format(tiny_run, exports):
  _, workdir, _ = tiny_run
  images, calls, meta = export.restore_pool(workdir)
  assert images.shape == (SLOTS * BATCH, 8, 8, 1) and meta["epoch"] == EPOCHS - 1
  # The ring kept the newest calls, oldest first.
  np.testing.assert_array_equal(calls, np.repeat(np.arange(EPOCHS - SLOTS, EPOCHS), BATCH))
  for fmt, (directory, _) in exports.items():
    back = formats.load(directory)
    assert back.images.tobytes() == images.tobytes(), fmt
    np.testing.assert_array_equal(back.synthesis_call, calls)
  # Independently of the checkpoint reader: the last call's images are the run's
  # last sample grid (samples/epoch_0005.png, nearest-upscaled by 4).
  grid = np.asarray(Image.open(os.path.join(workdir, "samples",
                                            f"epoch_{EPOCHS - 1:04d}.png")))[::4, ::4]
  np.testing.assert_array_equal(grid, reporting.image_grid(images[-BATCH:], ncol=8))


@pytest.mark.integration
def test_export_labels_are_the_teachers_predictions(digits_teacher, exports):
  back = formats.load(exports["npz"][0])
  variables, meta = loader.load(digits_teacher[0])
  info = data.get_info("digits")
  x = (back.images.astype(np.float32) / 255.0 - np.float32(info.mean)) / np.float32(info.std)
  logits = models.get_model(meta["arch"], 10).apply(variables, x, train=False)
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_array_equal(back.labels, probs.argmax(1))
  np.testing.assert_allclose(back.confidence, probs.max(1), rtol=1e-5)


@pytest.mark.integration
def test_summary_histogram_and_grids(exports):
  directory, summary = exports["image_folder"]
  back = formats.load(directory)
  with open(os.path.join(directory, "summary.json")) as f:
    on_disk = json.load(f)
  counts = np.bincount(back.labels, minlength=10)
  assert on_disk["per_class_count"] == counts.tolist() == summary["per_class_count"]
  assert sum(on_disk["per_class_count"]) == on_disk["num_images"] == SLOTS * BATCH
  uniform = SLOTS * BATCH / 10
  assert on_disk["count_over_uniform"] == dict(min=counts.min() / uniform,
                                               max=counts.max() / uniform)
  assert on_disk["mean_confidence"] == pytest.approx(float(back.confidence.mean()))
  diversity = on_disk["diversity"]
  assert diversity["synthetic"] > 0 and diversity["real"] > 0   # digits: real data offline
  assert diversity["images"] == 100
  assert on_disk["synthesis_calls"] == SLOTS and on_disk["run_mode"] == "distill"
  grids = sorted(os.listdir(os.path.join(directory, "grids")))
  assert grids == sorted(f"class_{c}.png" for c in np.flatnonzero(counts))


@pytest.mark.integration
def test_cli_writes_and_user_errors_exit_2(tiny_run, tmp_path, capsys):
  from fastdfkd_jax import export as export_cli
  fv = flags.FlagValues()
  export_cli.define_flags(fv)
  argv = fv(["export", tiny_run[1], str(tmp_path / "o"), "--format=array_record"])
  summary = export_cli.main(argv, fv)
  assert formats.detect_format(str(tmp_path / "o")) == "array_record"
  assert f"wrote {summary['num_images']} images (array_record)" in capsys.readouterr().out
  for args in ([str(tmp_path / "none"), str(tmp_path / "p")], [str(tmp_path / "none")]):
    with pytest.raises(SystemExit) as e:
      export_cli.main(["export", *args], fv)
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "no config.json" in line or line.startswith(
        "usage: python -m fastdfkd_jax.export WORKDIR OUT"), line


def test_dataset_source_needs_a_directory():
  c = schema.default_config()
  c.kd.source = "dataset"
  with pytest.raises(errors.UserError, match="kd.dataset_dir"):
    config_checks.validate(c)
  c.kd.dataset_dir, c.transfer.format = "/x", "tfrecord"
  with pytest.raises(errors.UserError, match="transfer.format"):
    config_checks.validate(c)


@pytest.mark.integration
def test_kd_source_dataset_distills_from_the_export(tiny_run, exports, tmp_path):
  """KD on the exported set: the same schedule, no synthesis, a student above chance."""
  config, _, produced = tiny_run
  c = ml_collections.ConfigDict(config.to_dict())
  c.kd.source, c.kd.dataset_dir = "dataset", exports["image_folder"][0]
  # Enough KD on the 128 exported images to learn: measured 38.9 %.
  c.kd.steps, c.kd.lr, c.kd.cosine_epochs = 40, 0.1, EPOCHS - 1
  with pytest.MonkeyPatch.context() as mp:
    def no_synthesis(*args, **kwargs):
      raise AssertionError("kd.source=dataset must not synthesize")
    mp.setattr(steps.Distiller, "compile_synth", no_synthesis)
    summary = run(c, tmp_path)
  assert summary["kd_source"] == "dataset" and summary["synth_seconds"] == 0.0
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["epoch"] for r in rows] == list(range(c.warmup, c.epochs))
  assert rows[-1]["step"] == (c.epochs - c.warmup) * c.kd.steps
  assert summary["student_acc"] > 20.0, (summary, produced)   # chance: 10%


def test_kd_source_dataset_with_a_missing_set_is_a_user_error(tmp_path):
  from fastdfkd_jax.modes import distill as distill_mode
  c = schema.default_config()
  c.kd.source, c.kd.dataset_dir = "dataset", str(tmp_path)
  with pytest.raises(errors.UserError, match="no exported transfer set"):
    distill_mode.kd_images(c, None, data.get_info("digits"))


def test_out_must_be_a_directory_and_an_earlier_export_is_named(tmp_path, caplog):
  (tmp_path / "file").write_text("x")
  with pytest.raises(errors.UserError, match="is a file; pass a directory"):
    export.check_out(str(tmp_path / "file"))
  export.check_out(str(tmp_path / "new"))          # not there yet: fine
  (tmp_path / "old").mkdir()
  np.savez(tmp_path / "old" / formats.NPZ_FILE, images=np.zeros((1, 8, 8, 1), np.uint8))
  caplog.set_level("WARNING")
  export.check_out(str(tmp_path / "old"))
  assert "holds an earlier export (npz): it is replaced" in caplog.text
