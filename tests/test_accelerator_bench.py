"""The prepared accelerator benchmark (experiments/accelerator_bench.sh and .py), in process:
the job plan (every JAX job's command line parses as `fastdfkd_jax.bench` would parse it
and gives a valid config), the job runner, the driver's main with the jobs faked (the
JSON lines, the summary file, the table, the budget), the summary arithmetic, and the shell
scripts (syntax, usage, the arguments `run` hands the driver, the paths they name). The
benchmark itself is tested on a tiny config in test_bench.py; nothing here runs it.
"""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from fastdfkd_jax import cli
from fastdfkd_jax.config import checks as config_checks

from conftest import REPO, load_experiment

SCRIPT = os.path.join(REPO, "experiments", "accelerator_bench.sh")
STUDY_SCRIPT = os.path.join(REPO, "experiments", "accelerator_study.sh")
NAYER_SCRIPT = os.path.join(REPO, "experiments", "nayer_study.sh")


@pytest.fixture(scope="module")
def driver():
  return load_experiment("accelerator_bench")


def _bench_flag_definitions() -> list[tuple[str, str]]:
  """(DEFINE function, flag name) of each flag fastdfkd_jax/bench.py defines, read from its
  source (importing it would define them in absl's global FLAGS)."""
  with open(os.path.join(REPO, "fastdfkd_jax", "bench.py")) as f:
    tree = ast.parse(f.read())
  return [(node.func.attr, node.args[0].value) for node in ast.walk(tree)
          if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr.startswith("DEFINE_")]


def parse_bench_command(cmd: list[str]) -> flags.FlagValues:
  """A `python -m fastdfkd_jax.bench ...` job parsed as the bench parses its command line
  (its own flags, then `cli.parse_flags`: --config and its overrides), config validated."""
  assert cmd[:3] == [sys.executable, "-m", "fastdfkd_jax.bench"], cmd[:3]
  fv = flags.FlagValues()
  for define, name in _bench_flag_definitions():
    getattr(flags, define)(name, None, "", flag_values=fv)
  assert cli.parse_flags(["bench", *cmd[3:]], fv) == ["bench"]   # no stray argument
  config_checks.validate(fv.config)
  assert fv.config.pool.on_device       # the bench measures the on-device pool path
  return fv


def test_summary_ratios_and_projection(driver):
  rows = [
      dict(impl="jax", job_dtype="float32", what="synth", k=5, median_s=0.10),
      dict(impl="jax", job_dtype="bfloat16", what="synth", k=5, median_s=0.08),
      dict(impl="torch", job_dtype="float32", what="synth", k=5, median_s=0.24),
      dict(impl="torch", job_dtype="bfloat16", what="synth", k=5, median_s=0.16),
      dict(impl="torch_compiled", job_dtype="bfloat16", what="synth", k=5, median_s=0.12),
      dict(impl="jax", job_dtype="float32", what="kd", k=5, median_s=1.0, images_per_s=5000.0),
      dict(impl="torch", job_dtype="float32", what="kd", k=5, median_s=2.0, images_per_s=2500.0),
      dict(impl="jax", job_dtype="float32", what="kd", k=2, median_s=1.0, images_per_s=9.0),
      dict(impl="jax", job_dtype="float32", what="synth", k=2, failed=True),
      dict(job="jax-k10-float32", impl="jax", skipped="budget"),
      dict(impl="jax_imagenet", job_dtype="bfloat16", what="synth", k=2, batch=64,
           median_s=0.5, device_peak_bytes=123),
  ]
  s = driver.summarize(rows, [5, 2])
  k5 = s["k5"]
  assert k5["speedup_jax_best_vs_torch_float32"] == pytest.approx(3.0)
  assert k5["speedup_jax_best_vs_torch_bf16"] == pytest.approx(2.0)
  assert k5["speedup_jax_float32_vs_torch_float32"] == pytest.approx(2.4)
  assert k5["speedup_jax_bf16_vs_torch_bf16"] == pytest.approx(2.0)
  assert k5["speedup_jax_bf16_vs_torch_compiled_bf16"] == pytest.approx(1.5)
  assert s["k2"]["speedup_jax_bf16_vs_torch_compiled_bf16"] is None
  assert k5["projected_hours_220_calls"]["jax_bfloat16"] == pytest.approx(220 * 0.08 / 3600,
                                                                         abs=1e-5)
  assert k5["projected_minutes_220_calls_jax_best"] == pytest.approx(220 * 0.08 / 60, abs=1e-3)
  assert k5["paper_hours_220_calls"] == 0.14
  assert s["k2"]["synth_s_per_call"]["jax_float32"] is None      # failed rows are not numbers
  assert s["k2"]["speedup_jax_best_vs_torch_float32"] is None
  assert s["k2"]["paper_hours_220_calls"] == 0.06
  # KD does not depend on k: the first measurement of each implementation counts.
  assert s["kd_images_per_s"] == {"jax_float32": 5000.0, "torch_float32": 2500.0}
  assert s["imagenet_synthesis"] == dict(s_per_call=0.5, batch=64, k=2, device_peak_bytes=123)


def test_plan_order_puts_the_acceptance_setting_first(driver):
  jobs = driver.plan([5, 2, 10], "ref.py", "cuda", smoke=False)
  names = [j["name"] for j in jobs]
  assert names[:9] == ["jax-k5-float32", "jax-k5-bfloat16", "torch-synth-k5-none",
                       "torch-synth-k5-bf16", "torch-kd-k5-none", "torch-kd-k5-bf16",
                       "torch-synth-k5-bf16-compiled", "torch-kd-k5-bf16-compiled",
                       "jax-imagenet-r50-r18-bfloat16"]
  assert all(j["cmd"][-2:] == ["--compile", "--channels_last"] for j in jobs[6:8])
  assert not any(n.endswith("compiled") for n in names[9:])   # the first k only
  traced = driver.plan([5, 2], None, "cuda", smoke=False, profile_dir="P")
  assert [j["name"] for j in traced if "--profile_dir=P" in j["cmd"]] == ["jax-k5-bfloat16"]
  assert "torch-kd-k2-none" not in names            # KD does not depend on k
  assert names.count("jax-imagenet-r50-r18-bfloat16") == 1
  jax5 = jobs[0]["cmd"]
  assert "--config=configs/fastdfkd_cifar.py:cifar10-resnet34-resnet18-k5" in jax5
  assert "--epoch_kd_steps=400" in jax5 and "--what=synth,kd,epoch" in jax5
  assert all("--device" in j["cmd"] and "cuda" in j["cmd"] for j in jobs if j["impl"] == "torch")
  assert [j["name"] for j in driver.plan([2], None, "cpu", smoke=True)] == [
      "jax-k2-float32", "jax-k2-bfloat16", "jax-imagenet-r50-r18-bfloat16"]


@pytest.mark.parametrize("smoke", [False, True], ids=["accelerator", "smoke"])
def test_every_jax_job_parses_as_the_bench_parses_it(driver, smoke, monkeypatch):
  monkeypatch.chdir(REPO)     # the jobs name their config files from the repository root
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))   # parse_flags may add
  extra = ("--config.inner_unroll=scan",)
  jobs = [j for j in driver.plan([5, 2, 10], None, "cuda", smoke, extra) if j["impl"] != "torch"]
  assert len(jobs) == 7
  for job in jobs:
    fv = parse_bench_command(job["cmd"])
    c = fv.config
    assert c.dtype == job["dtype"]
    if job["impl"] == "jax_imagenet":
      assert fv.what == ["synth"] and c.dataset.name.startswith("imagenet")
      assert c.batch_size == (4 if smoke else 64)
      continue
    assert c.k == job["k"] and c.inner_unroll == "scan"        # the extra flag reaches it
    assert fv.what == ["synth", "kd", "epoch"] and c.dataset.name == "cifar10"
    if smoke:   # tiny and quick: one timed call of a small network
      assert (c.teacher.arch, c.student.arch, c.batch_size) == ("wrn16_1", "wrn16_1", 8)
      assert (fv.repeats, fv.warmup_calls, fv.kd_steps, fv.epoch_kd_steps) == (1, 0, 2, 2)
    else:       # the paper's setting, the epoch as one fused dispatch
      assert (c.teacher.arch, c.student.arch, c.batch_size) == ("resnet34", "resnet18", 256)
      assert c.loop == "fused" and fv.epoch_kd_steps == c.kd.steps == 400


def test_run_job_tags_rows_and_records_failures(driver):
  job = dict(name="j", impl="jax", dtype="float32")
  out = 'echo noise; echo \'{"what": "synth", "median_s": 0.5}\'; echo "{torn"; echo \'{"b": 2}\''
  rows, _ = driver.run_job(dict(job, cmd=["sh", "-c", out]), timeout_s=30, env=dict(os.environ))
  assert [{k: r[k] for k in r if not k.startswith("job_wall")} for r in rows] == [
      dict(what="synth", median_s=0.5, job="j", impl="jax", job_dtype="float32", job_rc=0),
      dict(b=2, job="j", impl="jax", job_dtype="float32", job_rc=0)]
  rows, err = driver.run_job(dict(job, cmd=["sh", "-c", out + "; echo boom >&2; exit 3"]),
                             timeout_s=30, env=dict(os.environ))
  assert len(rows) == 3 and err == "boom\n"
  assert rows[-1]["failed"] and rows[-1]["job_rc"] == 3 and rows[-1]["stderr_tail"] == "boom\n"
  rows, _ = driver.run_job(dict(job, cmd=["true"]), timeout_s=30, env=dict(os.environ))
  assert [r.get("failed") for r in rows] == [True]          # exit 0 but no measurement
  rows, _ = driver.run_job(dict(job, cmd=["sleep", "10"]), timeout_s=0.2, env=dict(os.environ))
  assert rows[0]["job_rc"] == "timeout" and rows[0]["failed"] and rows[0]["job_wall_s"] < 5


def _fake_jobs(monkeypatch, driver):
  """Jobs answered without running: one row per measurement as the bench and the
  reference print them (median_s of a JAX job: 0.1 float32, 0.05 bfloat16)."""
  ran = []

  def run_job(job, timeout_s, env):
    ran.append(job)
    tag = dict(job=job["name"], impl=job["impl"], job_dtype=job["dtype"], job_rc=0)
    if job["impl"] == "torch":
      return [dict(tag, what=job["what"], k=job["k"], median_s=0.4, images_per_s=100.0)], ""
    if job["impl"] == "jax_imagenet":
      return [dict(tag, what="synth", k=2, batch=4, median_s=2.0, device_peak_bytes=None)], ""
    median = 0.1 if job["dtype"] == "float32" else 0.05
    return [dict(tag, what=w, k=job["k"], median_s=median, images_per_s=1000.0)
            for w in ("synth", "kd", "epoch")], ""

  monkeypatch.setattr(driver, "run_job", run_job)
  return ran


def _lines(out_dir) -> list[dict]:
  with open(os.path.join(out_dir, "accel_bench.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_main_records_every_job_and_the_summary(driver, monkeypatch, tmp_path, capsys):
  ran = _fake_jobs(monkeypatch, driver)
  out = tmp_path / "out"
  assert driver.main([str(out), "--smoke", "--ks", "2", "--device", "cpu",
                      "--torch_reference", str(tmp_path / "missing.py"),
                      "--jax_flag=--config.loop=scan",
                      "--jax_flag=--config.inner_unroll=scan"]) == 0
  assert [j["name"] for j in ran] == ["jax-k2-float32", "jax-k2-bfloat16",
                                      "jax-imagenet-r50-r18-bfloat16"]
  for job in ran[:2]:
    i = job["cmd"].index("--config.loop=scan")
    assert job["cmd"][i + 1] == "--config.inner_unroll=scan"
  assert "--config.loop=scan" not in ran[2]["cmd"]          # not the ImageNet job
  lines = _lines(out)
  assert lines[0]["job"] == "environment" and lines[0]["device"] == "cpu"
  assert lines[1] == dict(job="torch", skipped=f"no torch reference at "
                                               f"{str(tmp_path / 'missing.py')!r}")
  assert len(lines) == 2 + 3 + 3 + 1 and not [r for r in lines if r.get("failed")]
  with open(out / "accel_summary.json") as f:
    summary = json.load(f)
  assert summary["k2"]["synth_s_per_call"] == dict(jax_float32=0.1, jax_bfloat16=0.05,
                                                   torch_float32=None, torch_bfloat16=None,
                                                   torch_compiled_bfloat16=None)
  assert summary["k2"]["projected_minutes_220_calls_jax_best"] == round(220 * 0.05 / 60, 3)
  assert summary["k2"]["paper_hours_220_calls"] == 0.06
  assert summary["imagenet_synthesis"]["s_per_call"] == 2.0
  stdout = capsys.readouterr().out
  assert "seconds per synthesis call" in stdout and "# jax-k2-float32: " in stdout
  # A second run appends to the same record.
  assert driver.main([str(out), "--smoke", "--ks", "2", "--budget_s", "0"]) == 0
  lines = _lines(out)
  assert [r.get("skipped", "")[:7] for r in lines[-3:]] == ["budget:"] * 3
  assert len(lines) == 9 + 2 + 3


def test_main_times_the_reference_where_torch_is_importable(driver, monkeypatch, tmp_path):
  ran = _fake_jobs(monkeypatch, driver)
  ref = tmp_path / "torch_reference.py"
  ref.write_text("")
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name == "torch" else find_spec(name, *a))
  assert driver.main([str(tmp_path / "out"), "--ks", "5", "--torch_reference", str(ref)]) == 0
  torch_jobs = [j for j in ran if j["impl"] == "torch"]
  assert [j["name"] for j in torch_jobs] == ["torch-synth-k5-none", "torch-synth-k5-bf16",
                                             "torch-kd-k5-none", "torch-kd-k5-bf16"]
  assert all(j["cmd"][:2] == [sys.executable, str(ref)] for j in torch_jobs)
  with open(tmp_path / "out" / "accel_summary.json") as f:
    k5 = json.load(f)["k5"]
  assert k5["speedup_jax_best_vs_torch_float32"] == pytest.approx(0.4 / 0.05)
  assert k5["speedup_jax_float32_vs_torch_float32"] == pytest.approx(0.4 / 0.1)


@pytest.mark.parametrize("script", [SCRIPT, STUDY_SCRIPT, NAYER_SCRIPT], ids=os.path.basename)
def test_shell_scripts_parse_and_name_existing_files(script):
  proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  with open(script) as f:
    text = f.read()
  named = set(re.findall(r"experiments/[\w.]+\.py", text))
  assert named and all(os.path.isfile(os.path.join(REPO, p)) for p in named), named


def test_study_script_imports_the_benchmarks_environment_record(driver):
  """accelerator_study.sh's inline Python imports `environment` from the benchmark driver
  through a sys.path entry relative to the repository root."""
  with open(STUDY_SCRIPT) as f:
    text = f.read()
  (inline,) = re.findall(r"<<'EOF'.*?\n(.*?)\nEOF\n", text, re.S)
  (path,) = re.findall(r'sys\.path\.insert\(0, "([^"]+)"\)', inline)
  (module, name), = re.findall(r"from (\w+) import (\w+)", inline)
  assert os.path.isfile(os.path.join(REPO, path, f"{module}.py"))
  assert (path, module) == ("experiments", "accelerator_bench") and callable(getattr(driver, name))


@pytest.fixture
def fake_python(tmp_path):
  """A PYTHON for the script that records its arguments, one call per line, and succeeds
  (so `import ml_collections` is taken as present and nothing is installed)."""
  log = tmp_path / "calls.jsonl"
  fake = tmp_path / "python"
  fake.write_text(f'#!{sys.executable}\nimport json, os, sys\n'
                  f'open({str(log)!r}, "a").write(json.dumps(dict(argv=sys.argv[1:], '
                  f'cwd=os.getcwd(), path=os.environ.get("PYTHONPATH", ""))) + "\\n")\n')
  fake.chmod(0o755)

  def calls():
    with open(log) as f:
      return [json.loads(line) for line in f]
  return str(fake), calls


def _script(*args, env=None):
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, **(env or {})))


def test_script_run_hands_its_arguments_to_the_driver(driver, fake_python, tmp_path,
                                                      monkeypatch):
  fake, calls = fake_python
  env = dict(PYTHON=fake, ACCEL_BENCH_SMOKE="1")
  proc = _script("run", str(tmp_path / "out"), "--jax_flag=--config.loop=scan", env=env)
  assert proc.returncode == 0, proc.stderr
  check, run = calls()
  assert check["argv"] == ["-c", "import ml_collections"]
  ref = run["argv"][3]
  assert ref in (".accel/torch_reference.py", "../shared/bench/torch_reference.py")
  assert run["argv"] == ["experiments/accelerator_bench.py", str(tmp_path / "out"),
                         "--torch_reference", ref, "--smoke", "--device", "cpu", "--ks", "2",
                         "--budget_s", "600", "--jax_flag=--config.loop=scan"]
  assert run["cwd"] == REPO and REPO in run["path"].split(":")
  # What the driver makes of them (jobs faked): the smoke plan with the extra flag.
  ran = _fake_jobs(monkeypatch, driver)
  monkeypatch.chdir(REPO)
  assert driver.main(run["argv"][1:]) == 0
  assert [j["name"] for j in ran if j["impl"] == "jax"] == ["jax-k2-float32", "jax-k2-bfloat16"]
  assert all("--config.loop=scan" in j["cmd"] for j in ran if j["impl"] == "jax")
  # Without ACCEL_BENCH_SMOKE: the accelerator defaults of the driver.
  proc = _script("run", str(tmp_path / "out2"), "--ks", "5", env=dict(PYTHON=fake))
  assert proc.returncode == 0, proc.stderr
  assert calls()[-1]["argv"] == ["experiments/accelerator_bench.py", str(tmp_path / "out2"),
                                 "--torch_reference", ref,
                                 f"--profile_dir={tmp_path / 'out2' / 'profile'}", "--ks", "5"]


def test_script_usage_errors(tmp_path, fake_python):
  fake, calls = fake_python
  proc = _script(env=dict(PYTHON=fake))
  assert proc.returncode == 2 and proc.stderr.startswith("usage: bash experiments/")
  proc = _script("run", env=dict(PYTHON=fake))
  assert proc.returncode != 0 and "usage: accelerator_bench.sh run OUT_DIR" in proc.stderr
  assert not os.path.exists(tmp_path / "calls.jsonl")       # nothing was started


def test_nayer_study_runs_both_methods_on_three_teachers_with_their_recipes(fake_python,
                                                                          tmp_path):
  """nayer_study.sh starts one accelerator_study.sh per teacher: each trains its teacher with
  that architecture's recipe (docs/RESULTS.md, "Teachers") and runs the three NAYER-5 and
  three Fast-5 rows of cifar_study.py on it; OUT gets one archive per teacher."""
  fake, calls = fake_python
  out, root = tmp_path / "out", tmp_path / "root"
  proc = subprocess.run(["bash", NAYER_SCRIPT, str(out), "data.tgz"], capture_output=True,
                        text=True, timeout=60,
                        env=dict(os.environ, PYTHON=fake, STUDY_ROOT=str(root)))
  assert proc.returncode == 0, proc.stderr
  teachers = {c["argv"][2].partition("=")[2]: " ".join(c["argv"][3:]) for c in calls()
              if c["argv"][:2] == ["-m", "fastdfkd_jax.main"]}
  assert set(teachers) == {str(root / f"t_{a}") for a in ("resnet20", "wrn16_2", "vgg8")}
  assert "--config.model" not in teachers[str(root / "t_resnet20")]
  assert "--config.model=wrn16_2 --config.epochs=4" in teachers[str(root / "t_wrn16_2")]
  assert "--config.model=vgg8 --config.epochs=5" in teachers[str(root / "t_vgg8")]
  studies = [c["argv"] for c in calls() if c["argv"][0] == "experiments/cifar_study.py"]
  assert sorted(a for s in studies for a in s if a.startswith("--teacher_arch=")) == [
      "--teacher_arch=resnet20", "--teacher_arch=vgg8", "--teacher_arch=wrn16_2"]
  for argv in studies:
    assert "--runs=nayer5_s0,nayer5_s1,nayer5_s2,fast5_s0,fast5_s1,fast5_s2" in argv
    assert "--flags=--config.loop=host" in argv
  assert {"resnet20.tgz", "wrn16_2.tgz", "vgg8.tgz"} <= set(os.listdir(out))
