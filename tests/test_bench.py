"""Tests of the throughput benchmark (fastdfkd_jax.bench) on a tiny config.

configs/bench_smoke.py: digits 8x8x1, random resnet8 -> resnet8, batch 16, k 2,
nz 16, ngf 8. Only checks that every measurement runs and reports sane fields;
the PyTorch comparison (fastdfkd_jax.study.bench_torch) is tested in test_bench_torch.py.
"""

import importlib.util
import json
import os

import pytest

from fastdfkd_jax.study import bench

from conftest import REPO

COMMON_KEYS = ("what", "teacher", "student", "k", "batch", "num_devices", "device_kind",
               "backend", "dtype", "loop", "compile_s", "median_s", "min_s", "max_s",
               "repeats", "images_per_s", "flops", "flops_source", "achieved_flops_per_s",
               "peak_matmul_flops_per_s", "fraction_of_peak")


def smoke_config():
  spec = importlib.util.spec_from_file_location(
      "bench_smoke", os.path.join(REPO, "configs", "bench_smoke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def rows():
  lines = []
  out = bench.run(smoke_config(), what=["synth", "kd", "epoch"], repeats=2, kd_steps=2,
                  epoch_kd_steps=3, peak_matmul_size=128, emit=lambda r: lines.append(json.dumps(r)))
  assert len(lines) == len(out) == 3
  return [json.loads(line) for line in lines]  # every line is valid JSON


@pytest.mark.slow
def test_every_line_has_all_keys_and_sane_values(rows):
  assert [r["what"] for r in rows] == ["synth", "kd", "epoch"]
  for r in rows:
    missing = [k for k in COMMON_KEYS if k not in r]
    assert not missing, (r["what"], missing)
    assert (r["teacher"], r["student"], r["k"], r["batch"]) == ("resnet8", "resnet8", 2, 16)
    assert r["num_devices"] >= 1 and r["repeats"] == 2
    assert r["dtype"] in ("float32", "bfloat16")   # 'auto' resolved
    assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    assert r["compile_s"] > 0 and r["images_per_s"] > 0
    assert r["flops"] > 0 and r["achieved_flops_per_s"] > 0
    assert r["peak_matmul_flops_per_s"] > 0 and r["fraction_of_peak"] > 0
    assert f"backend={r['backend']}" in r["loop"]
  synth, kd, epoch = rows
  assert synth["images_per_s"] == pytest.approx(16 / synth["median_s"])
  assert kd["images_per_s"] == pytest.approx(16 * 2 / kd["median_s"])
  assert kd["kd_step_s"] == pytest.approx(kd["median_s"] / 2)
  assert epoch["images_per_s"] == pytest.approx((16 + 16 * 3) / epoch["median_s"])
  predicted = synth["median_s"] + 3 * kd["kd_step_s"]
  assert epoch["synth_plus_kd_s"] == pytest.approx(predicted)
  assert epoch["overhead_frac"] == pytest.approx(epoch["median_s"] / predicted - 1)
  # Same work per step: an epoch's FLOPs are one synthesis plus 3 KD steps.
  assert epoch["flops"] == pytest.approx(synth["flops"] + 3 * kd["flops"] / 2, rel=0.02)


def test_cost_flops_handles_dict_list_and_missing():
  assert bench.cost_flops({"flops": 3.0, "bytes accessed": 1.0}) == 3.0
  assert bench.cost_flops([{"flops": 1.0}, {"flops": 2.0}]) == 3.0
  assert bench.cost_flops([{"bytes accessed": 1.0}]) is None
  assert bench.cost_flops({}) is None
  assert bench.cost_flops(None) is None


def test_unknown_what_is_a_value_error():
  with pytest.raises(ValueError, match="--what"):
    bench.run(smoke_config(), what=["synth", "train"])
