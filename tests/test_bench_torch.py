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
