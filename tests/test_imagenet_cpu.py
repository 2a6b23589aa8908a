"""ImageNet-scale FastDFKD at CPU size: configs/fastdfkd_imagenet.py on a procedural
ImageNet-layout folder (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`, images of varying
size through the eval transform), end to end: a teacher trained first, the release's
ImageNet synthesis (DeepGenerator, meta latent, reinit, several calls per epoch) with
a memory-mapped host pool, a preemption and the resume.
"""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest

from conftest import REPO, load_config_file, rows, run
from fastdfkd_jax import data
from fastdfkd_jax.data import info as info_lib, procedural_folder
from fastdfkd_jax.distill import epochs
from fastdfkd_jax.run import signals
from fastdfkd_jax.transfer import export


def imagenet_config(arg):
  return load_config_file("fastdfkd_imagenet.py", arg)


@pytest.mark.parametrize("arg", ["resnet50-resnet50", "resnet50-resnet18",
                                 "resnet50-mobilenetv2", "cpu"])
def test_imagenet_configs_validate(arg):
  from fastdfkd_jax.config import checks as config_checks
  c = imagenet_config(arg)
  config_checks.validate(c)
  assert c.synth.meta_latent and c.method == "fast_meta"
  if arg != "cpu":
    assert (c.k, c.batch_size, c.kd.steps, c.synth.calls_per_epoch) == (50, 100, 1000, 10)
    assert c.synth.adv == (1.0 if arg.endswith("resnet18") else 0.1)


def test_unknown_imagenet_setting():
  with pytest.raises(ValueError, match="resnet50-resnet18"):
    imagenet_config("resnet50-vgg11")


@pytest.fixture
def tiny_imagenet(tmp_path, monkeypatch):
  """imagenet_mini's settings (64 px) with 4 classes, and its procedural folder of
  images around 72 px (the eval transform resizes and centre-crops them)."""
  info = dataclasses.replace(data.get_info("imagenet_mini"), name="imagenet_test",
                             num_classes=4)
  assert info.image_shape == (64, 64, 3)
  monkeypatch.setitem(info_lib.DATASETS, "imagenet_test", info)
  root = tmp_path / "imagenet"
  procedural_folder.write(str(root), 4, 24, 8, size=72)
  return str(root)


@pytest.mark.integration
def test_cpu_variant_trains_distills_and_resumes(tiny_imagenet, tmp_path, monkeypatch):
  """The teacher trained first, then a preemption after epoch 0 (the checkpoint and the
  memory-mapped pool written) and the resume to the end."""
  c = imagenet_config("cpu")
  c.dataset.name, c.dataset.data_dir = "imagenet_test", tiny_imagenet
  c.dataset.cache_dir = str(tmp_path / "cache")
  c.teacher.epochs, c.teacher.batch_size = 2, 16
  c.k, c.batch_size, c.synth.nz, c.synth.ngf = 2, 16, 8, 8
  # 2 epochs of 2 calls: the 3rd call (after the resume) starts a fresh meta latent.
  c.epochs, c.kd.steps, c.kd.cosine_epochs, c.synth.reinit_every = 2, 2, 2, 3
  c.eval_every, c.checkpoint_every, c.sample_every, c.log_every = 1, 1, 2, 1000
  c.eval_batch_size = 32   # the whole validation split in one batch (the config's 200 pads)
  assert c.synth.calls_per_epoch == 2 and c.pool.memmap and not c.pool.on_device
  workdir = str(tmp_path / "run")
  preempt = {"on": False}
  real = epochs.run_epoch

  def run_epoch(ep, state, counters, epoch):
    out = real(ep, state, counters, epoch)
    preempt["on"] = epoch == 0
    return out

  monkeypatch.setattr(epochs, "run_epoch", run_epoch)
  monkeypatch.setattr(signals.Preemption, "requested", property(lambda self: preempt["on"]))
  first = run(c, workdir)
  assert first.get("preempted") and "after epoch 0" in first["message"], first
  assert os.path.isfile(os.path.join(workdir, "teacher", "summary.json"))
  assert os.path.isfile(os.path.join(workdir, "pool.npy"))
  first_rows = rows(workdir)
  assert [r["epoch"] for r in first_rows] == [0]
  preempt["on"] = False
  summary = run(c, workdir)
  r = rows(workdir)
  assert [x["epoch"] for x in r] == [0, 1] and r[0] == first_rows[0]
  assert summary["synth_images"] == 2 * 2 * 16           # epochs x calls x batch
  assert summary["kd_images"] == 2 * 2 * 16
  assert r[-1]["step"] == 2 * 2
  assert summary["teacher_acc"] > 60.0, summary          # 4 classes: chance 25 %
  # Scored on the 32 validation images (the eval transform's resize and crop): a count.
  assert summary["student_acc"] == r[-1]["student_acc"]
  correct = summary["student_acc"] * 32 / 100
  assert correct == pytest.approx(round(correct), abs=1e-6)
  assert summary["best_student_acc"] == max(x["student_acc"] for x in r)
  pool = np.load(os.path.join(workdir, "pool.npy"), mmap_mode="r")
  assert pool.shape == (4, 16, 64, 64, 3) and pool[3].any()   # every call's batch kept
  images, calls, _ = export.restore_pool(workdir, c.synth.calls_per_epoch)
  assert images.shape == (4 * 16, 64, 64, 3)
  np.testing.assert_array_equal(calls, np.repeat(np.arange(4), 16))
  np.testing.assert_array_equal(images[-16:], pool[3])


def test_imagenet_options_need_their_method():
  from fastdfkd_jax.config import checks as config_checks, schema
  from fastdfkd_jax import errors
  c = schema.default_config()
  c.method, c.synth.meta_latent = "fast", True
  with pytest.raises(errors.UserError, match="fast_meta only"):
    config_checks.validate(c)
  c = schema.default_config()
  c.method, c.synth.generator = "cmi", "deep_generator"
  with pytest.raises(errors.UserError, match="builds its own generator"):
    config_checks.validate(c)
  c = schema.default_config()
  c.synth.calls_per_epoch = 7   # kd.steps 30
  with pytest.raises(errors.UserError, match="multiple of"):
    config_checks.validate(c)


def test_make_imagenet_folder_tool(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location(
      "make_imagenet_folder",
      os.path.join(REPO, "experiments", "make_imagenet_folder.py"))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  assert tool.main([str(tmp_path), "--classes", "2", "--train", "3", "--val", "1",
                    "--size", "16"]) == 0
  assert "wrote 6 train and 2 val images" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / "train")) == ["n00000000", "n00000001"]
  assert sorted(os.listdir(tmp_path / "val" / "n00000001")) == ["ILSVRC2012_val_00000002.JPEG"]
  again = tmp_path / "again"
  tool.main([str(again), "--classes", "2", "--train", "3", "--val", "1", "--size", "16"])
  first = (tmp_path / "train" / "n00000001" / "n00000001_2.JPEG").read_bytes()
  assert (again / "train" / "n00000001" / "n00000001_2.JPEG").read_bytes() == first
