"""The CPU comparison study (the paper's Tables 1, 4 and 5 structure) on the one-CPU-hour
CIFAR-10 setting, resumable across sessions.

  PYTHONPATH=$PWD python experiments/cifar_study.py --out=runs/study \\
      --teacher=docs/study_teacher --data_dir=../shared/data/cifar10_jpeg.tar.gz \\
      [--only=table1,table4,table5,metagrad] [--runs=dafl,zskt] [--cores=0,1] [--list]

docs/study_teacher holds the study's resnet20 teacher: its records are in git, its checkpoint
is not (train it into that folder with the command in docs/RESULTS.md, "Teachers").

Every row is one `python -m fastdfkd_jax.main` run of configs/fastdfkd_cpu.py:cifar10,
configs/baselines_cpu.py or configs/batchwise_cifar.py:<preset>-cpu: the same teacher,
the same KD schedule and the same KD images seen by the student (155 KD epochs x 40 steps
x 128). Runs go one per core, pinned with `taskset` where it exists; a run whose
workdir has a summary.json is skipped and an interrupted one resumes from its
checkpoint, so the study can be run piecewise. At the end (and with --list) it prints the
`fastdfkd_jax.table` and `fastdfkd_jax.plot` commands of each table.

Batch-wise rows of Table 1 (DeepInversion, CMI) use k = BATCHWISE_K steps per call
instead of their scripts' 1000 / 200: at the scripts' counts one run would take 10-40
CPU-hours here. The few-step rows (Table 4) run k = 2 / 5 / 10 as the paper's.
`--only=scripts` adds those two at their scripts' counts (deepinversion1000_s0, cmi200_s0),
for an accelerator (experiments/accelerator_study.sh); they are not among the CPU study's 29.
`--only=nayer` runs NAYER-5 (configs/nayer.py:cifar10-cpu, the same budget) for three seeds,
to set beside the three Fast-5 seeds of table1 (experiments/nayer_study.sh runs both on three
teachers on one accelerator).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

BATCHWISE_K = 50
SEEDS = (0, 1, 2)


def plan() -> list[tuple[str, str, str, list[str]]]:
  """(table, run name, config, extra flags) of every run of the study."""
  runs = []
  for k in (2, 5, 10):
    for s in (SEEDS if k == 5 else (0,)):
      runs.append(("table1", f"fast{k}_s{s}", f"configs/fastdfkd_cpu.py:cifar10-k{k}",
                   [f"--config.seed={s}"]))
  for m in ("dafl", "zskt", "dfq", "dfad"):
    runs.append(("table1", m, f"configs/baselines_cpu.py:{m}-cifar10", []))
  for preset in ("deepinversion", "cmi"):
    for s in SEEDS:
      runs.append(("table1", f"{preset}{BATCHWISE_K}_s{s}",
                   f"configs/batchwise_cifar.py:{preset}-cpu",
                   [f"--config.k={BATCHWISE_K}", f"--config.seed={s}"]))
    for k in (2, 5, 10):
      runs.append(("table4", f"{preset}{k}", f"configs/batchwise_cifar.py:{preset}-cpu",
                   [f"--config.k={k}"]))
  for method in ("deepinv", "fast"):   # no reuse, sequential reuse; meta = fast5_s0
    runs.append(("table5", method, "configs/fastdfkd_cpu.py:cifar10-k5",
                 [f"--config.method={method}"]))
  for k in (2, 5):
    for s in (SEEDS if k == 5 else (0,)):
      runs.append(("metagrad", f"fast{k}_suminner_s{s}", f"configs/fastdfkd_cpu.py:cifar10-k{k}",
                   ["--config.synth.meta_grad=sum_inner_grads", f"--config.seed={s}"]))
  for preset, k in (("deepinversion", 1000), ("cmi", 200)):   # the release's scripts' steps
    runs.append(("scripts", f"{preset}{k}_s0", f"configs/batchwise_cifar.py:{preset}-cpu",
                 [f"--config.k={k}", "--config.seed=0"]))
  for s in SEEDS:   # NAYER against Fast-5 on one budget (docs/RESULTS.md, "NAYER against Fast-5")
    runs.append(("nayer", f"nayer5_s{s}", "configs/nayer.py:cifar10-cpu", [f"--config.seed={s}"]))
  runs.append(("table1", "kd_real", "configs/fastdfkd_cpu.py:cifar10", ["--config.kd.source=real"]))
  runs.append(("table1", "kd_noise", "configs/fastdfkd_cpu.py:cifar10",
               ["--config.kd.source=noise"]))
  return runs


def command(args, name: str, config: str, flags: list[str]) -> list[str]:
  cmd = [args.python, "-m", "fastdfkd_jax.main", f"--workdir={os.path.join(args.out, name)}",
         f"--config={config}", f"--config.dataset.data_dir={args.data_dir}",
         f"--config.teacher.checkpoint={args.teacher}",
         f"--config.teacher.arch={args.teacher_arch}"] + flags + args.flags.split()
  return cmd + ([f"--config.dataset.cache_dir={args.cache_dir}"] if args.cache_dir else [])


def report_commands(args, runs) -> str:
  """The table and plot commands of each table of the study."""
  d = lambda name: os.path.join(args.out, name)   # noqa: E731
  seeds = lambda stem: ",".join(d(f"{stem}_s{s}") for s in SEEDS)   # noqa: E731
  rows = {
      "table1": [f"Fast-2={d('fast2_s0')}", f"Fast-5={seeds('fast5')}",
                 f"Fast-10={d('fast10_s0')}"] + [f"{m.upper()}={d(m)}" for m in
                                                  ("dafl", "zskt", "dfq", "dfad")]
                + [f"DeepInversion-{BATCHWISE_K}={seeds(f'deepinversion{BATCHWISE_K}')}",
                   f"CMI-{BATCHWISE_K}={seeds(f'cmi{BATCHWISE_K}')}",
                   f"KD-real={d('kd_real')}", f"KD-noise={d('kd_noise')}"],
      "table4": [f"{p}-{k}={d(f'{p}{k}')}" for p in ("deepinversion", "cmi") for k in (2, 5, 10)]
                + [f"Fast-2={d('fast2_s0')}", f"Fast-5={seeds('fast5')}",
                   f"Fast-10={d('fast10_s0')}"],
      "table5": [f"no-reuse={d('deepinv')}", f"sequential={d('fast')}",
                 f"meta={d('fast5_s0')}"],
      "metagrad": [f"param_diff-5={seeds('fast5')}", f"sum_inner-5={seeds('fast5_suminner')}",
                   f"param_diff-2={d('fast2_s0')}", f"sum_inner-2={d('fast2_suminner_s0')}"],
      "nayer": [f"NAYER-5={seeds('nayer5')}", f"Fast-5={seeds('fast5')}"],
  }
  ref = {"table1": f" --reference=DeepInversion-{BATCHWISE_K}"}
  lines = []
  for table, specs in rows.items():
    lines.append(f"python -m fastdfkd_jax.table {' '.join(specs)}{ref.get(table, '')}")
    dirs = [s.partition("=")[2] for s in specs]
    lines.append(f"python -m fastdfkd_jax.plot {' '.join(dirs)} "
                 f"--out=docs/cifar10_{table}.png")
  return "\n".join(lines)


def run_all(args, todo) -> int:
  cores = [c for c in args.cores.split(",") if c]
  pin = args.pin and shutil.which("taskset") is not None
  running, failed = {}, 0
  while todo or running:
    while todo and len(running) < len(cores):
      core = next(c for c in cores if c not in running.values())
      _, name, config, flags = todo.pop(0)
      cmd = (["taskset", "-c", core] if pin else []) + command(args, name, config, flags)
      log = open(os.path.join(args.out, f"{name}.log"), "a")   # pylint: disable=consider-using-with
      print(f"[{time.strftime('%H:%M:%S')}] core {core}: {name}", flush=True)
      running[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)] = core
    time.sleep(5)
    for proc in [p for p in running if p.poll() is not None]:
      failed += proc.returncode != 0
      print(f"[{time.strftime('%H:%M:%S')}] {' '.join(proc.args[-1:])} rc={proc.returncode}")
      del running[proc]
  return failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--teacher", required=True, help="the teacher's workdir or .pth")
  parser.add_argument("--teacher_arch", default="resnet20")
  parser.add_argument("--data_dir", default="../shared/data/cifar10_jpeg.tar.gz")
  parser.add_argument("--cache_dir", default="")
  parser.add_argument("--only", default="table1,table4,table5,metagrad")
  parser.add_argument("--runs", default="",
                      help="only these run names (comma-separated; --only is then ignored)")
  parser.add_argument("--cores", default="0,1", help="one run per listed core")
  parser.add_argument("--python", default=sys.executable)
  parser.add_argument("--flags", default="", help="extra flags for every run (space-separated)")
  parser.add_argument("--no_pin", dest="pin", action="store_false",
                      help="do not pin runs to cores (accelerator runs: --cores only counts slots)")
  parser.add_argument("--list", action="store_true", help="print the commands, run nothing")
  args = parser.parse_args(argv)
  tables = set(args.only.split(","))
  names = set(args.runs.split(",")) - {""}
  todo = [r for r in plan() if (r[1] in names if names else r[0] in tables)
          and not os.path.isfile(os.path.join(args.out, r[1], "summary.json"))]
  todo = list({r[1]: r for r in todo}.values())
  if names:   # in the order asked for (a short session runs the most needed rows first)
    order = [n for n in args.runs.split(",") if n]
    todo.sort(key=lambda r: order.index(r[1]))
  if args.list:
    for _, name, config, flags in todo:
      print(" ".join(command(args, name, config, flags)))
    print(report_commands(args, plan()))
    return 0
  os.makedirs(args.out, exist_ok=True)
  failed = run_all(args, todo)
  print(report_commands(args, plan()))
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
