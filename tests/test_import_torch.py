"""fastdfkd_jax.teacher.torch_import and the import CLI: release PyTorch checkpoints -> Flax.

No torch here: each case's state_dict is rebuilt with NumPy from PyTorch's own layout of the
release-layout module (`torch_testlib.state_dict`, random weights AND random BatchNorm
running statistics, so the eval-mode BN conversion is exercised), written as a `.pth` with
`teacher.pth.write`, and the converted Flax logits must match those PyTorch computed from the
same weights and inputs (tests/data/torch_golden/, made once with torch 2.13.0 by its
make_golden.py) to 1e-4. The CLI imports a release-style wrapped checkpoint
(`torch_testlib.write_wrapped`: DataParallel's `module.` prefixes, epoch and best_acc); the
files torch.save itself wrote are test_pth.py's goldens (tests/data/pth).
"""

import os
import sys

import jax
import numpy as np
import pytest
from absl import flags

from fastdfkd_jax import errors, import_torch
from fastdfkd_jax.models import get_model
from fastdfkd_jax.run import checkpoint
from fastdfkd_jax.teacher import loader, pth, torch_import

import torch_testlib as lib
from torch_testlib import assert_close, flax_logits

PTH_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pth")


def case_state_dict(name: str) -> dict[str, np.ndarray]:
  """Case `name`'s weights in PyTorch's layout, with its int64 num_batches_tracked."""
  return lib.with_bn_steps(lib.state_dict(lib.golden_layout(name)[0], name))


def wrap_and_load(tmp_path, sd, how, arch, num_classes, input_shape):
  """`sd` through a .pth file as a release checkpoint holds it (`how`), converted."""
  path = str(tmp_path / f"{arch}.pth")
  if how == "module":  # DataParallel's prefix
    sd = {f"module.{k}": v for k, v in sd.items()}
  pth.write(path, sd)
  if how == "state_dict":  # pth.write writes flat state_dicts: wrapped once read
    wrapped = {"state_dict": pth.read(path), "epoch": 199, "best_acc": 95.5}
    return torch_import.convert_state_dict(wrapped, arch, num_classes, input_shape)
  return torch_import.load_pth(path, arch, num_classes, input_shape)


@pytest.mark.parametrize("arch,num_classes,input_shape,how", lib.CLASSIFIERS,
                         ids=[f"{a}-{'x'.join(map(str, s))}-{h}"
                              for a, _, s, h in lib.CLASSIFIERS])
def test_logits_match_torch(tmp_path, arch, num_classes, input_shape, how):
  name = lib.classifier_name(arch, num_classes, input_shape)
  variables = wrap_and_load(tmp_path, case_state_dict(name), how, arch, num_classes,
                            input_shape)
  expected_cols = {"params", "batch_stats"} if not arch.startswith("lenet") else {"params"}
  assert set(variables) == expected_cols
  assert all(isinstance(x, np.ndarray) and x.dtype == np.float32
             for x in jax.tree_util.tree_leaves(variables))
  x = lib.inputs((lib.CLASSIFIER_BATCH,) + input_shape, name)
  assert_close(flax_logits(arch, num_classes, variables, x), lib.golden(name))


@pytest.mark.parametrize("channels", [3, 1])
def test_generator_matches_torch(channels):
  nz, ngf, img = lib.GENERATOR_NZ, lib.GENERATOR_NGF, 16
  name = lib.generator_name("generator", img, channels)
  layout, torch_params = lib.golden_layout(name)
  variables = torch_import.convert_state_dict(lib.state_dict(layout, name), "generator", 0,
                                              (img, img, channels))
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == torch_params
  model = get_model("generator", nz=nz, ngf=ngf, img_size=img, channels=channels)
  z = lib.inputs((lib.GENERATOR_BATCH, nz), name)
  # Eval mode (running statistics) and train mode (batch statistics).
  got = lib.flax_apply(model, variables, z)
  want = lib.golden(f"{name}/eval")
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  got_train = lib.flax_apply(model, variables, z, train=True)
  want_train = lib.golden(f"{name}/train")
  np.testing.assert_allclose(got_train, want_train, rtol=1e-4, atol=1e-5)
  assert want.std() > 1e-3 and want_train.std() > 1e-3
  assert np.abs(want - want_train).max() > 1e-2  # the two modes differ


# ------------------------------------------------------------ keys that do not fit
def _resnet8_sd(num_classes=10, cin=3):
  layout = torch_import.torch_layout("resnet8", num_classes, (32, 32, cin))
  return lib.state_dict(layout, f"resnet8-{num_classes}-{cin}")


def test_missing_keys_listed():
  sd = _resnet8_sd()
  del sd["fc.weight"], sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(errors.UserError) as e:
    torch_import.convert_state_dict(sd, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "2 missing keys" in msg
  assert "fc.weight (expected shape (10, 64))" in msg
  assert "layer2.0.downsample.1.running_var" in msg
  assert "unexpected" not in msg and "mis-shaped" not in msg


def test_unexpected_keys_listed():
  sd = _resnet8_sd()
  sd["layer4.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  sd["head.bias"] = np.zeros((3,), np.float32)
  with pytest.raises(errors.UserError) as e:
    torch_import.convert_state_dict({"state_dict": sd}, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "2 unexpected keys" in msg
  assert "layer4.0.conv1.weight" in msg and "head.bias" in msg
  assert "missing" not in msg


def test_mis_shaped_keys_listed_with_shapes():
  sd = _resnet8_sd(num_classes=10, cin=3)
  with pytest.raises(errors.UserError) as e:  # wrong class count and wrong input channels
    torch_import.convert_state_dict(sd, "resnet8", 100, (32, 32, 1))
  msg = str(e.value)
  assert "3 mis-shaped keys" in msg
  assert "fc.weight: expected (100, 64), got (10, 64)" in msg
  assert "fc.bias: expected (100,), got (10,)" in msg
  assert "conv1.weight: expected (16, 1, 3, 3), got (16, 3, 3, 3)" in msg


def test_all_problems_in_one_error_and_wrong_arch():
  sd = _resnet8_sd()
  del sd["bn1.weight"]
  sd["extra.weight"] = np.zeros(2, np.float32)
  sd["fc.bias"] = np.zeros(11, np.float32)
  with pytest.raises(errors.UserError) as e:
    torch_import.convert_state_dict(sd, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "bn1.weight" in msg and "extra.weight" in msg
  assert "fc.bias: expected (10,), got (11,)" in msg
  with pytest.raises(errors.UserError, match="block1.layer.0.bn1.weight"):
    torch_import.convert_state_dict(sd, "wrn16_1", 10, (32, 32, 3))
  with pytest.raises(errors.UserError, match="unknown arch"):
    torch_import.convert_state_dict(sd, "resnet9", 10, (32, 32, 3))


# ------------------------------------------------------------ load_pth: the file route
def test_load_pth_of_the_wrong_architecture_lists_every_key(tmp_path):
  path = str(tmp_path / "resnet8.pth")
  pth.write(path, lib.with_bn_steps(_resnet8_sd()))
  with pytest.raises(errors.UserError, match="does not fit wrn16_1") as e:
    torch_import.load_pth(path, "wrn16_1", 10, (32, 32, 3))
  msg = str(e.value)
  assert "missing keys" in msg and "block1.layer.0.conv1.weight (expected shape" in msg
  assert "unexpected keys" in msg and "layer1.0.conv1.weight" in msg
  assert "num_batches_tracked" not in msg  # ignored, not unexpected
  with pytest.raises(errors.UserError, match="1 mis-shaped keys") as e:
    torch_import.load_pth(path, "resnet8", 10, (32, 32, 1))
  assert "conv1.weight: expected (16, 1, 3, 3), got (16, 3, 3, 3)" in str(e.value)


def test_load_pth_refuses_pickled_objects_with_one_line(tmp_path):
  """A whole pickled nn.Module (torch.save(model)) is refused before it is built."""
  custom = os.path.join(PTH_FIXTURES, "custom.pth")
  with pytest.raises(errors.UserError) as e:
    torch_import.load_pth(custom, "resnet8", 10, (32, 32, 3))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{custom} holds Python objects besides tensors")
  assert "__main__.Net" in msg and "torch.save(model.state_dict(), path)" in msg
  with pytest.raises(errors.UserError, match="holds Python objects besides tensors"):
    loader.load(custom, arch="resnet8", num_classes=10, input_shape=(32, 32, 3))


def test_load_pth_missing_and_unreadable_files(tmp_path):
  with pytest.raises(errors.UserError, match="no PyTorch checkpoint at .*nothing.pth"):
    torch_import.load_pth(str(tmp_path / "nothing.pth"), "resnet8", 10, (32, 32, 3))
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint\n")
  with pytest.raises(errors.UserError, match="is not a readable PyTorch checkpoint"):
    torch_import.load_pth(str(text), "resnet8", 10, (32, 32, 3))


def test_load_pth_needs_no_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  path = str(tmp_path / "resnet8.pth")
  sd = _resnet8_sd()
  pth.write(path, sd)
  variables = torch_import.load_pth(path, "resnet8", 10, (32, 32, 3))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)


# ------------------------------------------------------------ the CLI + teacher.loader
def cli(*args) -> dict:
  """`python -m fastdfkd_jax.import_torch ARGS`, in process with fresh flags."""
  fv = flags.FlagValues()
  import_torch.define_flags(fv)
  return import_torch.main(fv(["import_torch", *args]), fv)


def cli_error(capsys, *args, one_line: bool = True) -> str:
  """The `error: ...` stderr of a CLI call that exits 2 (one line, but for the listing of
  the keys that do not fit)."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli(*args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "Traceback" not in err
  assert len(err.splitlines()) == 1 or not one_line, err
  return err


def wrapped_checkpoint(tmp_path) -> str:
  source = str(tmp_path / f"{lib.PTH_NAME}.pth")
  lib.write_wrapped(source, case_state_dict(lib.PTH_NAME))
  return source


def test_cli_imports_a_release_checkpoint(tmp_path, capsys):
  source = wrapped_checkpoint(tmp_path)
  # As the release saves it: the wrapper, DataParallel's prefixes, int64 BN step counts.
  saved = pth.read(source)
  assert saved["epoch"] == 199 and saved["best_acc"] == 95.5
  want = lib.with_bn_steps(lib.state_dict(lib.golden_layout(lib.PTH_NAME)[0], lib.PTH_NAME))
  assert sorted(saved["state_dict"]) == sorted(f"module.{k}" for k in want)
  for key, value in want.items():
    np.testing.assert_array_equal(saved["state_dict"][f"module.{key}"], value)

  out = str(tmp_path / "teacher")
  meta = cli("--arch=resnet8", "--num_classes=10", "--dataset=cifar10", source, out)
  assert f"wrote resnet8 (cifar10, 10 classes, input (32, 32, 3)) to {out}" in (
      capsys.readouterr().out)
  assert meta["mode"] == "import" and meta["source"] == source

  # As mode=distill --config.teacher.checkpoint=OUT does it.
  expect = dict(arch="resnet8", num_classes=10, input_shape=[32, 32, 3])
  variables, meta = loader.load(out, **expect)
  assert meta["arch"] == "resnet8" and meta["num_classes"] == 10
  assert meta["input_shape"] == [32, 32, 3] and meta["dataset"] == "cifar10"
  assert meta["mode"] == "import" and meta["source"] == source
  x = lib.inputs((lib.PTH_BATCH, 32, 32, 3), lib.PTH_NAME)
  assert_close(flax_logits("resnet8", 10, variables, x), lib.golden(lib.PTH_NAME))

  # The .pth route of the loader gives the same variables.
  direct, direct_meta = loader.load(source, **expect)
  jax.tree.map(np.testing.assert_array_equal, direct, variables)
  assert direct_meta == dict(expect, source=source)

  # A second import into the same directory needs --overwrite.
  assert "--overwrite" in cli_error(capsys, "--arch=resnet8", source, out)
  cli("--arch=resnet8", "--overwrite", source, out)
  assert loader.load(out, **expect)[1]["mode"] == "import"
  with pytest.raises(checkpoint.CheckpointError, match="num_classes"):
    loader.load(out, **dict(expect, num_classes=100))


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
  out = str(tmp_path / "out")
  line = cli_error(capsys, "--arch=resnet8", str(tmp_path / "nothing.pth"), out)
  assert line.startswith("error: no PyTorch checkpoint at")
  custom = os.path.join(PTH_FIXTURES, "custom.pth")
  assert "holds Python objects besides tensors" in cli_error(capsys, "--arch=resnet8", custom,
                                                             out)
  source = wrapped_checkpoint(tmp_path)
  assert "--num_classes=100 but dataset cifar10 has 10" in cli_error(
      capsys, "--arch=resnet8", "--num_classes=100", source, out)
  listing = cli_error(capsys, "--arch=wrn16_1", source, out, one_line=False)
  assert "does not fit wrn16_1" in listing and "block1.layer.0.conv1.weight" in listing
  assert "classifiers" in cli_error(capsys, "--arch=generator", source, out)
  assert not os.path.exists(out)
  # One positional argument: the usage line, exit 2.
  with pytest.raises(SystemExit) as e:
    cli("--arch=resnet8", source)
  assert e.value.code == 2 and "usage: python -m fastdfkd_jax.import_torch" in (
      capsys.readouterr().err)
  with pytest.raises(flags.IllegalFlagValueError, match="arch"):  # required
    cli(source, out)


def test_import_to_checkpoint_errors(tmp_path):
  name = lib.classifier_name("lenet5", 10, (28, 28, 1))
  source = str(tmp_path / "lenet.pth")
  pth.write(source, case_state_dict(name))
  with pytest.raises(errors.UserError, match="--num_classes=100"):
    torch_import.import_to_checkpoint(source, str(tmp_path / "a"), "lenet5", "mnist", 100)
  # A 1-channel net on 3-channel data.
  with pytest.raises(errors.UserError, match="conv1.weight: expected"):
    torch_import.import_to_checkpoint(source, str(tmp_path / "b"), "lenet5", "cifar10")
  meta = torch_import.import_to_checkpoint(source, str(tmp_path / "c"), "lenet5", "mnist")
  assert meta["input_shape"] == [28, 28, 1]
  variables, meta = loader.load(str(tmp_path / "c"))
  assert set(variables) == {"params"}
  x = lib.inputs((lib.CLASSIFIER_BATCH, 28, 28, 1), name)
  assert_close(flax_logits(meta["arch"], meta["num_classes"], variables, x), lib.golden(name))
