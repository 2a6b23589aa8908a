"""The prepared accelerator benchmark (tools/accelerator_bench.sh): summary arithmetic, and a
CPU smoke run of the whole script at tiny sizes in the loop structure the GPU uses (lax.scan)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_tool


def _driver():
  return load_tool("accelerator_bench")


def test_summary_ratios_and_projection():
  d = _driver()
  rows = [
      dict(impl="jax", job_dtype="float32", what="synth", k=5, median_s=0.10),
      dict(impl="jax", job_dtype="bfloat16", what="synth", k=5, median_s=0.08),
      dict(impl="torch", job_dtype="float32", what="synth", k=5, median_s=0.24),
      dict(impl="torch", job_dtype="bfloat16", what="synth", k=5, median_s=0.16),
      dict(impl="jax", job_dtype="float32", what="kd", k=5, median_s=1.0, images_per_s=5000.0),
      dict(impl="torch", job_dtype="float32", what="kd", k=5, median_s=2.0, images_per_s=2500.0),
      dict(impl="jax", job_dtype="float32", what="synth", k=2, failed=True),
      dict(job="jax-k10-float32", impl="jax", skipped="budget"),
  ]
  s = d.summarize(rows, [5, 2])
  k5 = s["k5"]
  assert k5["speedup_jax_best_vs_torch_float32"] == pytest.approx(3.0)
  assert k5["speedup_jax_best_vs_torch_bf16"] == pytest.approx(2.0)
  assert k5["speedup_jax_float32_vs_torch_float32"] == pytest.approx(2.4)
  assert k5["speedup_jax_bf16_vs_torch_bf16"] == pytest.approx(2.0)
  assert k5["projected_hours_220_calls"]["jax_bfloat16"] == pytest.approx(220 * 0.08 / 3600, abs=1e-5)
  assert k5["projected_minutes_220_calls_jax_best"] == pytest.approx(220 * 0.08 / 60, abs=1e-3)
  assert k5["paper_hours_220_calls"] == 0.14
  assert s["k2"]["synth_s_per_call"]["jax_float32"] is None      # failed rows are not numbers
  assert s["k2"]["speedup_jax_best_vs_torch_float32"] is None
  assert s["kd_images_per_s"] == {"jax_float32": 5000.0, "torch_float32": 2500.0}


def test_plan_order_puts_the_acceptance_setting_first():
  d = _driver()
  jobs = d.plan([5, 2, 10], "ref.py", "cuda", smoke=False)
  names = [j["name"] for j in jobs]
  assert names[:6] == ["jax-k5-float32", "jax-k5-bfloat16", "torch-synth-k5-none",
                       "torch-synth-k5-bf16", "torch-kd-k5-none", "torch-kd-k5-bf16"]
  assert "torch-kd-k2-none" not in names            # KD does not depend on k
  jax5 = jobs[0]["cmd"]
  assert "--config=configs/fastdfkd_cifar.py:cifar10-resnet34-resnet18-k5" in jax5
  assert "--epoch_kd_steps=400" in jax5 and "--what=synth,kd,epoch" in jax5
  assert all("--device" in j["cmd"] and "cuda" in j["cmd"] for j in jobs if j["impl"] == "torch")


@pytest.mark.slow
def test_cpu_smoke_run_of_the_script(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, ACCEL_BENCH_SMOKE="1", PYTHON=sys.executable)
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "tools", "accelerator_bench.sh"), "run", str(out),
       "--jax_flag=--config.loop=scan", "--jax_flag=--config.inner_unroll=scan"],
      capture_output=True, text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (out / "accel_bench.jsonl").read_text().splitlines()]
  assert not [r for r in rows if r.get("failed")], [r for r in rows if r.get("failed")]
  jax_rows = [r for r in rows if r.get("impl") == "jax" and "what" in r]
  got = {(r["what"], r["job_dtype"]) for r in jax_rows}
  assert got == {(w, d) for w in ("synth", "kd", "epoch") for d in ("float32", "bfloat16")}
  assert all("epoch_loop=scan inner_loop=scan" in r["loop"] for r in jax_rows)
  torch_rows = [r for r in rows if r.get("impl") == "torch" or r.get("job") == "torch"]
  assert torch_rows  # measured where torch is importable, else one 'skipped' line
  summary = json.loads((out / "accel_summary.json").read_text())
  assert summary["k2"]["synth_s_per_call"]["jax_float32"] > 0
  assert summary["k2"]["paper_hours_220_calls"] == 0.06
  assert "seconds per synthesis call" in proc.stdout
