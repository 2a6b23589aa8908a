"""Accelerator benchmark: FastDFKD on the paper's CIFAR-10 resnet34 -> resnet18 settings, JAX vs PyTorch.

  bash experiments/accelerator_bench.sh prepare          # here: wheels + the PyTorch reference into .accel/
  bash experiments/accelerator_bench.sh run OUT_DIR      # on the GPU/TPU machine (about 8 minutes)
  ACCEL_BENCH_SMOKE=1 bash experiments/accelerator_bench.sh run OUT_DIR   # tiny CPU smoke test

For k = 5, 2, 10 (in that order: the acceptance setting first) it runs, one process after
another so that nothing shares the device:
  - `python -m fastdfkd_jax.bench --what=synth,kd,epoch` on
    `configs/fastdfkd_cifar.py:cifar10-resnet34-resnet18-k<k>` (batch 256) in float32 and
    with `--config.dtype=bfloat16`;
  - the eager PyTorch reference (`torch_reference.py synth|kd --device cuda`) in float32 and
    with `--amp bf16` (its bfloat16 autocast), and for the first k the reference compiled
    (`--amp bf16 --compile --channels_last`: the fastest PyTorch a user would build);
  - after the k = 5 jobs, one ImageNet synthesis call (`configs/fastdfkd_imagenet.py:
    resnet50-resnet18`, 224 px, bfloat16, batch 64) with its time and device peak memory.
Every raw JSON line goes to OUT_DIR/accel_bench.jsonl as it arrives (tagged with its job), so
a run cut short keeps what it measured; jobs that would overrun `--budget_s` are recorded as
skipped. At the end OUT_DIR/accel_summary.json and a table on stdout give, per k, seconds per
synthesis call for the four implementations, the ratios the performance issue asks for, and the
projected synthesis time of 220 calls (a 220-epoch run) beside the paper's 0.06 / 0.14 / 0.28 h.

Only the standard library is imported here; the jobs import jax / torch themselves.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PAPER_HOURS = {2: 0.06, 5: 0.14, 10: 0.28}   # paper, Table 4: synthesis time of 220 calls
CALLS = 220
TEACHER, STUDENT = "resnet34", "resnet18"


def jax_job(k: int, dtype: str, smoke: bool, extra=()) -> dict:
  cmd = [sys.executable, "-m", "fastdfkd_jax.bench",
         f"--config=configs/fastdfkd_cifar.py:cifar10-{TEACHER}-{STUDENT}-k{k}",
         f"--config.dtype={dtype}", "--what=synth,kd,epoch"]
  # The epoch as one fused dispatch (what docs/BENCHMARKS.md's H200 epochs measured).
  cmd += ([] if smoke else ["--config.loop=fused"]) + list(extra)
  if smoke:
    cmd += ["--config.teacher.arch=wrn16_1", "--config.student.arch=wrn16_1",
            "--config.batch_size=8", "--config.synth.nz=16", "--config.synth.ngf=8",
            "--repeats=1", "--warmup_calls=0", "--kd_steps=2", "--epoch_kd_steps=2",
            "--peak_matmul_size=64"]
  else:
    cmd += ["--repeats=3", "--warmup_calls=1", "--kd_steps=20", "--epoch_kd_steps=400"]
  return dict(name=f"jax-k{k}-{dtype}", impl="jax", k=k, dtype=dtype, cmd=cmd,
              estimate_s=20 if smoke else 60)


def imagenet_job(smoke: bool) -> dict:
  """One ImageNet synthesis call (Fast-50 resnet50 -> resnet18, 224 px, bf16, batch 64)."""
  cmd = [sys.executable, "-m", "fastdfkd_jax.bench", "--what=synth"]
  if smoke:
    cmd += ["--config=configs/fastdfkd_imagenet.py:cpu", "--config.batch_size=4",
            "--config.k=2", "--config.synth.ngf=8", "--repeats=1", "--warmup_calls=0",
            "--peak_matmul_size=64"]
  else:
    cmd += ["--config=configs/fastdfkd_imagenet.py:resnet50-resnet18",
            "--config.batch_size=64", "--repeats=2", "--warmup_calls=1"]
  # bench times the on-device pool path; a small ring (synthesis does not read the pool)
  cmd += ["--config.dtype=bfloat16", "--config.pool.on_device=True",
          "--config.pool.memmap=False", "--config.pool.capacity=256"]
  return dict(name="jax-imagenet-r50-r18-bfloat16", impl="jax_imagenet", k=None,
              dtype="bfloat16", cmd=cmd, estimate_s=30 if smoke else 150)


def torch_job(what: str, k: int, amp: str, ref: str, device: str, smoke: bool,
              compiled: bool = False) -> dict:
  """The PyTorch reference; `compiled`: torch.compile of teacher, student and generator in
  channels-last layout, the fastest PyTorch a user would build (impl 'torch_compiled')."""
  arch = ("wrn16_1", "wrn16_1") if smoke else (TEACHER, STUDENT)
  cmd = [sys.executable, ref, what, "--teacher", arch[0], "--student", arch[1], "--k", str(k),
         "--device", device, "--amp", amp]
  cmd += (["--batch", "8", "--steps", "2", "--repeats", "1"] if smoke else
          ["--batch", "256", "--steps", "20", "--repeats", "5"])
  cmd += ["--compile", "--channels_last"] if compiled else []
  return dict(name=f"torch-{what}-k{k}-{amp}" + ("-compiled" if compiled else ""),
              impl="torch_compiled" if compiled else "torch", what=what, k=k,
              dtype="bfloat16" if amp == "bf16" else "float32", cmd=cmd,
              estimate_s=(8 if smoke else 25) * (4 if compiled else 1))


def plan(ks, ref: str | None, device: str, smoke: bool, extra=(), profile_dir: str = ""
         ) -> list[dict]:
  """The jobs in order; `profile_dir`: the first k's bfloat16 JAX job also traces one
  synthesis call, one KD step and one epoch there (untimed; `fastdfkd_jax.bench`)."""
  jobs = []
  for k in ks:
    for dtype in ("float32", "bfloat16"):
      trace = (f"--profile_dir={profile_dir}",) if profile_dir and k == ks[0] and \
          dtype == "bfloat16" else ()
      jobs.append(jax_job(k, dtype, smoke, tuple(extra) + trace))
    if ref:
      whats = ("synth", "kd") if k == ks[0] else ("synth",)   # KD does not depend on k
      jobs += [torch_job(w, k, amp, ref, device, smoke) for w in whats for amp in ("none", "bf16")]
      if k == ks[0]:   # the reference compiled, bf16, at the acceptance setting
        jobs += [torch_job(w, k, "bf16", ref, device, smoke, compiled=True) for w in whats]
    if k == ks[0]:   # after the acceptance setting: one ImageNet synthesis call (issue 16)
      jobs.append(imagenet_job(smoke))
  return jobs


def run_job(job: dict, timeout_s: float, env: dict) -> tuple[list[dict], str]:
  """Runs one job; (its JSON lines, stderr tail)."""
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(job["cmd"], capture_output=True, text=True, timeout=timeout_s, env=env)
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, out, err = "timeout", e.stdout or "", e.stderr or ""
    out = out.decode() if isinstance(out, bytes) else out
    err = err.decode() if isinstance(err, bytes) else err
  rows = []
  for line in out.splitlines():
    if line.strip().startswith("{"):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  tag = dict(job=job["name"], impl=job["impl"], job_dtype=job["dtype"],
             job_wall_s=round(time.perf_counter() - t0, 2), job_rc=rc)
  rows = [dict(r, **tag) for r in rows]
  if rc != 0 or not rows:
    rows.append(dict(tag, failed=True, stderr_tail=err[-3000:]))
  return rows, err


def summarize(rows: list[dict], ks) -> dict:
  """Per k: seconds per synthesis call of each implementation, ratios, projected hours."""
  synth, kd_ips, imagenet = {}, {}, None
  for r in rows:
    if r.get("failed") or r.get("skipped") or r.get("what") not in ("synth", "kd"):
      continue
    if r["impl"] == "jax_imagenet":
      imagenet = dict(s_per_call=r["median_s"], batch=r["batch"], k=r["k"],
                      device_peak_bytes=r.get("device_peak_bytes"))
      continue
    if r["what"] == "synth":
      synth[(r["impl"], r["job_dtype"], r["k"])] = r["median_s"]
    else:   # KD does not depend on k: the first measurement of each implementation
      kd_ips.setdefault(f"{r['impl']}_{r['job_dtype']}", r["images_per_s"])
  out = {}
  for k in ks:
    s = {f"{impl}_{dt}": synth.get((impl, dt, k)) for impl in ("jax", "torch")
         for dt in ("float32", "bfloat16")}
    s["torch_compiled_bfloat16"] = synth.get(("torch_compiled", "bfloat16", k))
    jax_best = min([v for key, v in s.items() if key.startswith("jax") and v] or [None],
                   key=lambda v: v or float("inf"))
    ratio = lambda a, b: round(a / b, 3) if a and b else None
    entry = dict(
        synth_s_per_call=s,
        speedup_jax_best_vs_torch_float32=ratio(s["torch_float32"], jax_best),
        speedup_jax_best_vs_torch_bf16=ratio(s["torch_bfloat16"], jax_best),
        speedup_jax_float32_vs_torch_float32=ratio(s["torch_float32"], s["jax_float32"]),
        speedup_jax_bf16_vs_torch_bf16=ratio(s["torch_bfloat16"], s["jax_bfloat16"]),
        speedup_jax_bf16_vs_torch_compiled_bf16=ratio(s["torch_compiled_bfloat16"],
                                                      s["jax_bfloat16"]),
        projected_hours_220_calls={key: (round(CALLS * v / 3600, 5) if v else None)
                                   for key, v in s.items()},
        projected_minutes_220_calls_jax_best=(round(CALLS * jax_best / 60, 3)
                                              if jax_best else None),
        paper_hours_220_calls=PAPER_HOURS.get(k))
    out[f"k{k}"] = entry
  out["kd_images_per_s"] = kd_ips
  out["imagenet_synthesis"] = imagenet
  return out


def print_table(summary: dict, ks) -> None:
  cols = ("jax_float32", "jax_bfloat16", "torch_float32", "torch_bfloat16",
          "torch_compiled_bfloat16")
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"
  print("\nseconds per synthesis call (median); projected hours for 220 calls; paper")
  print("k    " + "  ".join(f"{c:>15}" for c in cols) + "  jax/torch32  jax/torchbf16"
        "  jaxbf16/compiled  220-call min (jax best)  paper h")
  for k in ks:
    e = summary[f"k{k}"]
    s = e["synth_s_per_call"]
    print(f"{k:<4} " + "  ".join(f"{fmt(s[c]):>15}" for c in cols)
          + f"  {fmt(e['speedup_jax_best_vs_torch_float32']):>11}"
          + f"  {fmt(e['speedup_jax_best_vs_torch_bf16']):>13}"
          + f"  {fmt(e['speedup_jax_bf16_vs_torch_compiled_bf16']):>16}"
          + f"  {fmt(e['projected_minutes_220_calls_jax_best']):>23}"
          + f"  {e['paper_hours_220_calls']}")
  print("KD images/s:", json.dumps(summary["kd_images_per_s"]))
  print("ImageNet synthesis call:", json.dumps(summary.get("imagenet_synthesis")))


def environment(device: str) -> dict:
  env = dict(job="environment", python=sys.version.split()[0], device=device)
  smi = shutil.which("nvidia-smi")
  if smi:
    q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                        "--format=csv,noheader"], capture_output=True, text=True)
    env["nvidia_smi"] = q.stdout.strip()
  return env


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("out_dir")
  ap.add_argument("--torch_reference", default="")
  ap.add_argument("--device", default="cuda", help="torch device for the reference")
  ap.add_argument("--ks", default="5,2,10")
  ap.add_argument("--budget_s", type=float, default=480.0,
                  help="wall-clock budget: jobs whose estimate would overrun it are skipped")
  ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (CI smoke test)")
  ap.add_argument("--profile_dir", default="", help="XLA traces of the first k's bf16 JAX job")
  ap.add_argument("--jax_flag", action="append", default=[],
                  help="extra flag for every JAX job, e.g. --jax_flag=--config.loop=scan")
  a = ap.parse_args(argv)
  ks = [int(k) for k in a.ks.split(",")]
  os.makedirs(a.out_dir, exist_ok=True)
  path = os.path.join(a.out_dir, "accel_bench.jsonl")
  ref = a.torch_reference if a.torch_reference and os.path.exists(a.torch_reference) else None
  has_torch = importlib.util.find_spec("torch") is not None
  env = dict(os.environ)
  # The JAX jobs share compiled programs (e.g. the KD step, identical for every k) through
  # the persistent compilation cache; it never enters a timing (programs are compiled first).
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(tempfile.gettempdir(), "fastdfkd_accel_jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  t_start = time.perf_counter()
  rows = [environment(a.device)]
  if not ref or not has_torch:
    rows.append(dict(job="torch", skipped=(f"no torch reference at {a.torch_reference!r}"
                                           if not ref else "torch is not importable")))
    ref = None
  with open(path, "a") as f:
    def emit(r):
      rows.append(r)
      f.write(json.dumps(r) + "\n")
      f.flush()
      print(json.dumps(r), flush=True)
    for r in list(rows):
      f.write(json.dumps(r) + "\n")
    for job in plan(ks, ref, a.device, a.smoke, a.jax_flag, a.profile_dir):
      left = a.budget_s - (time.perf_counter() - t_start)
      if left < job["estimate_s"]:
        emit(dict(job=job["name"], impl=job["impl"], skipped=f"budget: {left:.0f} s left"))
        continue
      print(f"# {job['name']}: {' '.join(job['cmd'])}", flush=True)
      job_rows, _ = run_job(job, timeout_s=max(left, job["estimate_s"]), env=env)
      for r in job_rows:
        emit(r)
  summary = summarize(rows, ks)
  summary["wall_s"] = round(time.perf_counter() - t_start, 1)
  with open(os.path.join(a.out_dir, "accel_summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print_table(summary, ks)
  return 0


if __name__ == "__main__":
  sys.exit(main())
