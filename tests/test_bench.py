"""Tests of the throughput benchmark (fastdfkd_jax.study.bench) on a tiny config.

configs/bench_smoke.py: digits 8x8x1, random resnet8 -> resnet8, batch 16, k 2, nz 16,
ngf 8 (the shapes of the suite's standard tiny run, conftest.tiny_distill). One device
(the first), one timed call per measurement: the numbers are checked for what they must
be whatever the machine (images per call, the structure `distill.builder.choose` picked,
FLOPs of the programs that ran, the epoch's arithmetic), not for speed. The PyTorch comparison
(fastdfkd_jax.study.bench_torch) is tested in test_bench_torch.py.
"""

import importlib.util
import json
import math
import os

import pytest

from fastdfkd_jax.distill import builder
from fastdfkd_jax.run import parallel, xla_env
from fastdfkd_jax.study import bench

from conftest import REPO, make_mesh

COMMON_KEYS = ("what", "teacher", "student", "k", "batch", "num_devices", "device_kind",
               "backend", "dtype", "loop", "compile_s", "median_s", "min_s", "max_s",
               "repeats", "images_per_s", "flops", "flops_source", "achieved_flops_per_s",
               "peak_matmul_flops_per_s", "fraction_of_peak")
BATCH, KD_STEPS, EPOCH_KD_STEPS = 16, 2, 3


def smoke_config():
  spec = importlib.util.spec_from_file_location(
      "bench_smoke", os.path.join(REPO, "configs", "bench_smoke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _bench(config, what, peak_matmul_size):
  """bench.run on the first device, one timed call each: (rows, emitted lines, the
  structures `builder.choose` picked)."""
  lines, chosen = [], []
  choose, mesh = builder.choose, make_mesh(1)

  def recording_choose(*args):
    chosen.append(choose(*args))
    return chosen[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(parallel, "make_mesh", lambda devices=None: mesh)
    mp.setattr(builder, "choose", recording_choose)
    rows = bench.run(config, what=what, repeats=1, warmup_calls=0, kd_steps=KD_STEPS,
                     epoch_kd_steps=EPOCH_KD_STEPS, peak_matmul_size=peak_matmul_size,
                     emit=lambda r: lines.append(json.dumps(r)))
  return rows, lines, chosen


# The benchmark's runs compile and run the distillation programs (about 10 s with the
# persistent compilation cache warm, 45 s cold): the integration layer.
@pytest.fixture(scope="module")
def host_run():
  """The CPU default structure (host loops); `epoch` asked for, `synth` and `kd` implied."""
  return _bench(smoke_config(), ["kd", "epoch"], peak_matmul_size=64)


@pytest.fixture(scope="module")
def scan_run():
  """KD as one scanned dispatch (`--config.loop=scan`)."""
  config = smoke_config()
  config.loop = "scan"
  return _bench(config, ["kd"], peak_matmul_size=-1)


@pytest.mark.integration
def test_every_line_is_its_row_with_all_keys(host_run):
  rows, lines, _ = host_run
  assert [json.loads(line) for line in lines] == rows
  assert [r["what"] for r in rows] == ["synth", "kd", "epoch"]
  assert rows[0]["implied_by"] == "epoch"             # measured for the prediction only
  assert "implied_by" not in rows[1] and "implied_by" not in rows[2]
  for r in rows:
    missing = [k for k in COMMON_KEYS if k not in r]
    assert not missing, (r["what"], missing)
    assert (r["teacher"], r["student"], r["k"], r["batch"], r["num_devices"]) == (
        "resnet8", "resnet8", 2, BATCH, 1)
    assert (r["backend"], r["repeats"], r["warmup_calls"]) == ("cpu", 1, 0)
    # The config's dtype, resolved: bench_smoke keeps the default float32 ('auto' would
    # be bfloat16 on a CPU with native bfloat16 and float32 elsewhere).
    assert r["dtype"] == xla_env.resolve_dtype(smoke_config().dtype) == "float32"


@pytest.mark.integration
def test_loop_names_the_structure_builder_chose(host_run, scan_run):
  (host,), (scan,) = host_run[2], scan_run[2]
  assert (host.kd, host.synth_inner, host.fused) == ("host", "host", False)
  assert (scan.kd, scan.synth_inner, scan.fused) == ("scan", "host", False)
  assert host.description == ("backend=cpu epoch_loop=host inner_loop=host kd=host "
                              "fused_epoch=False")
  assert {r["loop"] for r in host_run[0]} == {host.description}
  synth, kd, epoch = host_run[0]
  assert kd["kd_structure"] == "host loop of the 1-step compiled function"
  assert epoch["epoch_structure"] == "one synth call + host KD"
  (kd,) = scan_run[0]
  assert kd["loop"] == scan.description and "epoch_loop=scan" in kd["loop"]
  assert kd["kd_structure"] == "scan: one jit_kd_steps dispatch"


@pytest.mark.integration
def test_images_and_times_per_call(host_run):
  synth, kd, epoch = host_run[0]
  for r, images in ((synth, BATCH), (kd, BATCH * KD_STEPS),
                    (epoch, BATCH * (1 + EPOCH_KD_STEPS))):
    assert all(math.isfinite(r[k]) for k in ("compile_s", "median_s", "min_s", "max_s"))
    assert r["min_s"] == r["median_s"] == r["max_s"]     # one timed call
    assert r["images_per_s"] * r["median_s"] == pytest.approx(images)
  assert kd["kd_steps"] == KD_STEPS and epoch["epoch_kd_steps"] == EPOCH_KD_STEPS
  assert kd["kd_step_s"] == pytest.approx(kd["median_s"] / KD_STEPS)
  # The epoch's programs were compiled for synth and kd already: its compile_s is theirs.
  assert epoch["compile_s"] == pytest.approx(synth["compile_s"] + kd["compile_s"], abs=2e-4)
  predicted = synth["median_s"] + EPOCH_KD_STEPS * kd["kd_step_s"]
  assert epoch["synth_plus_kd_s"] == pytest.approx(predicted)
  assert epoch["overhead_frac"] == pytest.approx(epoch["median_s"] / predicted - 1)


@pytest.mark.integration
def test_flops_are_the_work_of_one_call(host_run):
  synth, kd, epoch = host_run[0]
  # k host dispatches of the inner step: no one executable, so the unrolled program.
  assert (synth["flops_source"], synth["flops_compiled_raw"]) == ("lowered_unrolled", None)
  # KD_STEPS dispatches of the compiled one-step program.
  assert kd["flops_source"] == "compiled" and kd["flops"] == kd["flops_compiled_raw"]
  # Same work per step: an epoch is one synthesis plus EPOCH_KD_STEPS KD steps.
  assert epoch["flops"] == pytest.approx(
      synth["flops"] + EPOCH_KD_STEPS * kd["flops"] / KD_STEPS, rel=0.02)
  for r in host_run[0]:
    assert r["achieved_flops_per_s"] == pytest.approx(r["flops"] / r["median_s"])
    assert r["peak_matmul_size"] == 64
    assert r["fraction_of_peak"] == pytest.approx(
        r["achieved_flops_per_s"] / r["peak_matmul_flops_per_s"])


@pytest.mark.integration
def test_scanned_kd_flops_are_the_unrolled_steps(host_run, scan_run):
  (kd,) = scan_run[0]
  # XLA counts a while body once: the compiled scan of KD_STEPS steps holds one step's
  # FLOPs, the reported ones are the unrolled program's, KD_STEPS of them.
  assert kd["flops_source"] == "lowered_unrolled"
  assert kd["flops"] >= kd["flops_compiled_raw"]
  assert kd["flops"] == pytest.approx(KD_STEPS * kd["flops_compiled_raw"], rel=0.05)
  assert kd["flops"] == pytest.approx(host_run[0][1]["flops"], rel=0.03)
  assert kd["images_per_s"] * kd["median_s"] == pytest.approx(BATCH * KD_STEPS)
  assert kd["peak_matmul_flops_per_s"] is None and kd["fraction_of_peak"] is None


def test_cost_flops_handles_dict_list_and_missing():
  assert bench.cost_flops({"flops": 3.0, "bytes accessed": 1.0}) == 3.0
  assert bench.cost_flops([{"flops": 1.0}, {"flops": 2.0}]) == 3.0
  assert bench.cost_flops([{"bytes accessed": 1.0}]) is None
  assert bench.cost_flops({}) is None
  assert bench.cost_flops(None) is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(what=["synth", "train"]), "--what='train'"),
    (dict(torch_amp=("fp16",)), "--torch_amp=fp16"),
    (dict(repeats=0), "--repeats"),
    (dict(epoch_kd_steps=0), "--epoch_kd_steps"),
])
def test_bad_arguments_are_user_errors_before_any_work(kwargs, match, monkeypatch):
  monkeypatch.setattr(bench, "Bench", None)     # nothing may be built
  with pytest.raises(ValueError, match=match):
    bench.run(smoke_config(), **kwargs)
