"""The PyTorch comparison of the benchmark (fastdfkd_jax.study.bench_torch), with a mocked
subprocess."""

import json
import subprocess

import pytest

from fastdfkd_jax.study import bench_torch

from test_bench import smoke_config


def test_torch_compare_parses_the_reference_line():
  config = smoke_config()
  config.dataset.name = "cifar10"
  row = dict(what="kd", teacher="wrn40_2", student="wrn16_1", k=5, batch=256,
             median_s=2.0, images_per_s=256 * 20 / 2.0, device_kind="cpu", loop="x")
  seen = {}

  def runner(cmd, **kw):
    seen["cmd"] = cmd
    line = json.dumps(dict(impl="torch-eager", torch="2", threads=2, what="kd",
                           median_s=5.0, images_per_s=256 * 20 / 5.0))
    return subprocess.CompletedProcess(cmd, 0, stdout="noise\n" + line + "\n", stderr="")

  out = bench_torch.torch_compare(row, "torch_reference.py", config, kd_steps=20, repeats=3,
                            runner=runner)
  cmd = seen["cmd"]
  assert cmd[1:3] == ["torch_reference.py", "kd"]
  assert cmd[cmd.index("--steps") + 1] == "20" and cmd[cmd.index("--batch") + 1] == "256"
  assert out["speedup"] == pytest.approx(2.5)
  assert out["jax_median_s"] == 2.0 and out["torch_median_s"] == 5.0
  assert out["torch_images_per_s"] == pytest.approx(1024.0)
  assert "notes" not in out
  # Architectures the reference does not know are skipped, epoch is never compared.
  assert "skipped" in bench_torch.torch_compare(dict(row, teacher="resnet8"), "t.py", config, 20, 3,
                                          runner=runner)
  assert bench_torch.torch_compare(dict(row, what="epoch"), "t.py", config, 20, 3,
                             runner=runner) is None


def _runner(rc=0, stdout="", stderr=""):
  calls = []

  def runner(cmd, **kw):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, rc, stdout=stdout, stderr=stderr)
  return runner, calls


def test_torch_compare_notes_what_differs_and_forwards_python_and_amp():
  config = smoke_config()   # digits 8x8x1, nz 16, ngf 8
  row = dict(what="synth", teacher="wrn16_1", student="wrn16_1", k=2, batch=16,
             median_s=0.5, images_per_s=32.0, device_kind="cpu", loop="l", dtype="float32")
  line = json.dumps(dict(median_s=1.0, images_per_s=16.0, torch="2.13", threads=4))
  runner, calls = _runner(stdout=line + "\n")
  out = bench_torch.torch_compare(row, "ref.py", config, 20, 3, runner=runner,
                                  python="/venv/bin/python", amp="bf16")
  (cmd,) = calls
  assert cmd[:3] == ["/venv/bin/python", "ref.py", "synth"]
  assert cmd[cmd.index("--amp") + 1] == "bf16" and cmd[cmd.index("--k") + 1] == "2"
  assert (out["torch_amp"], out["speedup"], out["kd_steps"]) == ("bf16", 2.0, None)
  assert (out["torch_version"], out["torch_threads"], out["jax_dtype"]) == ("2.13", 4, "float32")
  assert out["notes"] == ["torch reference uses 32x32x3 images, jax (8, 8, 1)",
                          "torch generator nz=256 ngf=64, jax nz=16 ngf=8"]


def test_torch_compare_failures_are_skipped_lines():
  config = smoke_config()
  config.dataset.name = "cifar10"
  row = dict(what="kd", teacher="resnet34", student="resnet18", k=5, batch=8,
             median_s=1.0, images_per_s=8.0, device_kind="cpu", loop="x")
  runner, _ = _runner(rc=1, stderr="x" * 3000 + "ImportError: torch")
  out = bench_torch.torch_compare(row, "ref.py", config, 2, 1, runner=runner)
  assert out["what"] == "kd" and out["skipped"].startswith("torch reference failed (rc 1): ")
  assert out["skipped"].endswith("ImportError: torch") and len(out["skipped"]) < 2100
  runner, _ = _runner(stdout="no json here\n")
  assert bench_torch.torch_compare(row, "ref.py", config, 2, 1, runner=runner) == dict(
      what="kd", skipped="torch reference printed no JSON line")
