"""ImageNet-scale FastDFKD at CPU size: configs/fastdfkd_imagenet.py on a procedural
ImageNet-layout folder (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`, images of varying
size through the eval transform), end to end: a teacher trained first, the release's
ImageNet synthesis (DeepGenerator, meta latent, reinit, several calls per epoch) with
a memory-mapped host pool, a preemption and the resume.
"""

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from fastdfkd_jax import data, modes
from fastdfkd_jax.run import workdir as workdir_lib
from fastdfkd_jax.data import info as info_lib, procedural_folder
from fastdfkd_jax.modes import distill as distill_mode

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "fastdfkd_imagenet.py")


def imagenet_config(arg):
  spec = importlib.util.spec_from_file_location("fastdfkd_imagenet", CONFIGS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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


@pytest.mark.slow
def test_cpu_variant_trains_distills_and_resumes(tiny_imagenet, tmp_path, monkeypatch):
  c = imagenet_config("cpu")
  c.dataset.name, c.dataset.data_dir = "imagenet_test", tiny_imagenet
  c.dataset.cache_dir = str(tmp_path / "cache")
  c.teacher.epochs, c.teacher.batch_size = 3, 16
  c.k, c.batch_size, c.synth.nz, c.synth.ngf = 2, 16, 8, 8
  c.epochs, c.kd.steps, c.kd.cosine_epochs, c.synth.reinit_every = 3, 4, 3, 3
  c.eval_every, c.checkpoint_every, c.sample_every, c.log_every = 1, 1, 2, 1000
  assert c.synth.calls_per_epoch == 2 and c.pool.memmap and not c.pool.on_device
  workdir = str(tmp_path / "run")
  preempt_after_first = {"on": False}
  count_epoch = distill_mode.count_epoch

  def count_and_preempt(run, epoch, counters):
    count_epoch(run, epoch, counters)
    preempt_after_first["on"] = epoch == 0

  monkeypatch.setattr(loop, "count_epoch", count_and_preempt)
  monkeypatch.setattr(workdir_lib.Preemption, "requested",
                      property(lambda self: preempt_after_first["on"]))
  first = modes.run(c, workdir)
  assert first.get("preempted"), first
  assert os.path.isfile(os.path.join(workdir, "pool.npy"))
  monkeypatch.setattr(loop, "count_epoch", count_epoch)
  preempt_after_first["on"] = False
  summary = modes.run(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["epoch"] for r in rows] == [0, 1, 2]
  assert summary["synth_images"] == 3 * 2 * 16           # epochs x calls x batch
  assert summary["kd_images"] == 3 * 4 * 16
  assert summary["teacher_acc"] > 60.0, summary          # 4 classes: chance 25 %
  assert np.isfinite(summary["student_acc"])
  pool = np.load(os.path.join(workdir, "pool.npy"), mmap_mode="r")
  assert pool.shape == (6, 16, 64, 64, 3) and pool[5].any()   # every call's batch kept
  from fastdfkd_jax.transfer import export
  images, calls, _ = export.restore_pool(workdir, c.synth.calls_per_epoch)
  assert images.shape == (6 * 16, 64, 64, 3)
  np.testing.assert_array_equal(calls, np.repeat(np.arange(6), 16))
  np.testing.assert_array_equal(images[-16:], pool[5])


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
      os.path.join(os.path.dirname(__file__), "..", "tools", "make_imagenet_folder.py"))
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
