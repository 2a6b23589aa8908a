"""The paper's CIFAR-10 Table 1 at the paper's scale, worked through in windows of a lent
accelerator: a queue of teachers and rows that makes progress in any window and keeps it.

Each window is one call of the device tool (docs/GUIDE.md, "A lent accelerator"):

  # here: what the next call needs, within what may travel (64 MiB with the repository)
  PYTHONPATH=$PWD python experiments/paper_study.py prepare --store=.paper_store \\
      --carry=.paper_carry --data=../shared/data/cifar10_jpeg.tar.gz
  # there: run(command="bash experiments/paper_study.sh", carry=[".paper_carry", ".accel"])
  # here: merge what came back, copy the records into git, rebuild the table
  PYTHONPATH=$PWD python experiments/paper_study.py collect FILES_AT --store=.paper_store \\
      --records=docs/paper_study
  PYTHONPATH=$PWD python experiments/paper_study.py table --records=docs/paper_study

The queue (`plan`): the teachers with the release's recipe (resnet34 first, then wrn40_2
and vgg11: 200 epochs, batch 256, SGD lr 0.1, weight decay 5e-4, cosine), then the Table 1
rows for resnet34 -> resnet18 at the paper's settings (configs/fastdfkd_cifar.py,
configs/baselines_cifar.py, configs/batchwise_cifar.py as they stand), Fast-5 first, all
in bfloat16 activations. `run` starts every item whose inputs are there, `--slots` at once
(rows share the device, as the H200 study did), and gives each `--config.stop_at`: at the
deadline every run checkpoints after its epoch and stops. A finished teacher is rounded to
bfloat16 once (paper_carry.save_teacher) and every row teaches with that rounding.
What carries to the next window is paper_carry's store: records, finished teachers, the
newest checkpoint of each stopped item and the compilation cache, each only where it fits.

`--scale=tiny` is the same queue on the embedded digits set (one teacher; Fast-2 and KD on
real images), the CPU smoke run of tests/test_paper_study.py.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accelerator_bench  # noqa: E402  (experiments/ is no package)
import paper_carry  # noqa: E402
import paper_queue  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAVEL_BYTES = 64 * 2**20     # the device tool's working tree, repository included
RETURN_BYTES = 60 * 2**20     # files back: 8 of 16 MiB, 64 MiB in all, less the manifest
# The batch-wise rows' synthesis steps per call. The paper's DeepInversion-2k and CMI-500
# are 400k and 100k inversion steps of resnet34 + resnet18 (about 9 ms each on the H200):
# an hour and 15 minutes, where a row must end inside one window (its checkpoint, with a
# pool of up to 56k images, does not travel). The release scripts' CMI count, both.
BATCHWISE_K = 200
# Table 1 of the paper, resnet34 (95.70 %) -> resnet18 on CIFAR-10 (reference doc, sec. 8).
PAPER = {"Fast-5": 93.63, "Fast-2": 92.62, "Fast-10": 94.05, "DFQ": 94.61,
         f"DeepInversion-{BATCHWISE_K}": 93.26, f"CMI-{BATCHWISE_K}": 94.84}


@dataclasses.dataclass(frozen=True)
class Item:
  name: str
  config: str
  flags: tuple[str, ...] = ()
  teacher: str = ""          # the teacher item a row distills from ("" for a teacher)
  needs_train: bool = False  # reads the training split (teachers, KD on real images)
  label: str = ""            # the row's name in the table


def plan(scale: str = "paper") -> list[Item]:
  """The queue, in order."""
  if scale == "tiny":
    return _tiny_plan()
  common = ("--config.dtype=bfloat16",)
  teachers = [Item(f"t_{a}", "configs/teacher.py:cifar10", common + (
      f"--config.model={a}", "--config.epochs=200", "--config.batch_size=256",
      "--config.optim.lr=0.1", "--config.optim.weight_decay=0.0005"), needs_train=True)
      for a in ("resnet34", "wrn40_2", "vgg11")]
  pair, t = "cifar10-resnet34-resnet18", "t_resnet34"
  fast = lambda k: f"configs/fastdfkd_cifar.py:{pair}-k{k}"   # noqa: E731
  rows = [Item("fast5", fast(5), common, t, label="Fast-5"),
          Item("kd_real", fast(5), common + ("--config.kd.source=real",), t, True, "KD-real"),
          Item("fast2", fast(2), common, t, label="Fast-2"),
          Item("fast10", fast(10), common, t, label="Fast-10")]
  rows += [Item(m, f"configs/baselines_cifar.py:{m}-{pair}", common, t, label=m.upper())
           for m in ("dfq", "dafl", "zskt", "dfad")]
  rows += [Item(f"{p}{BATCHWISE_K}", f"configs/batchwise_cifar.py:{p}-{pair}",
                common + (f"--config.k={BATCHWISE_K}",), t, label=f"{n}-{BATCHWISE_K}")
           for p, n in (("cmi", "CMI"), ("deepinversion", "DeepInversion"))]
  return teachers + rows


def _tiny_plan() -> list[Item]:
  tiny = ("--config.dataset.name=digits", "--config.batch_size=32", "--config.eval_every=1",
          "--config.checkpoint_every=1")
  fast = tiny + ("--config.epochs=3", "--config.synth.ngf=8", "--config.warmup=1",
                 "--config.kd.steps=2")
  return [Item("t_resnet8", "configs/teacher.py:digits",
               tiny + ("--config.model=resnet8", "--config.epochs=2"), needs_train=True),
          Item("fast2", "configs/fastdfkd_cpu.py:digits", fast + ("--config.k=2",),
               "t_resnet8", label="Fast-2"),
          Item("kd_real", "configs/fastdfkd_cpu.py:digits", fast + ("--config.kd.source=real",),
               "t_resnet8", True, "KD-real")]


def environment() -> dict:
  """The benchmark's own record (python, nvidia-smi) with jax, the devices and the commit,
  as experiments/accelerator_study.sh writes it."""
  import jax   # pylint: disable=import-outside-toplevel
  git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
  return dict(accelerator_bench.environment(jax.default_backend()), jax=jax.__version__,
              backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()],
              commit=git.stdout.strip())


def do_run(a) -> int:
  start = time.time()
  call = paper_queue.Call(store=a.store, work=a.work, deadline=start + a.deadline_s,
                          slots=a.slots, grace_s=a.grace_s, min_start_s=a.min_start_s,
                          cifar10=a.scale != "tiny")
  os.makedirs(call.store, exist_ok=True)
  paper_queue.restore(call)
  status = paper_queue.run_queue(call, plan(a.scale))
  env = environment()
  for name in status:
    rec = os.path.join(call.store, "records", name)
    if os.path.isdir(rec):
      with open(os.path.join(rec, "environment.json"), "w") as f:
        json.dump(env, f, indent=1)
  paper_queue.save_progress(call, status)
  manifest = dict(status=status, log=call.log, wall_seconds=round(time.time() - start, 1),
                  environment=env, store_bytes={n: paper_carry.size_of(os.path.join(a.store, n))
                                                for n in sorted(os.listdir(a.store))})
  if a.out:
    manifest = paper_carry.write_bundle(a.store, a.out, a.return_mb * 2**20, manifest)
  print(json.dumps(manifest, indent=1))
  if any(v.startswith("failed") for v in status.values()):
    return 1
  left = [i for i in plan(a.scale)
          if not paper_carry.finished(os.path.join(a.store, "records", i.name))]
  return 124 if left else 0   # as timeout(1): the queue goes on in the next call


# --- here, between windows -------------------------------------------------------------------

def do_prepare(a) -> int:
  budget = TRAVEL_BYTES - travel_bytes() - sum(paper_carry.size_of(p) for p in a.also)
  print(paper_carry.prepare(a.store, a.carry, a.data, plan(a.scale), budget))
  return 0


def travel_bytes() -> int:
  """What the device tool sends besides the carry: tracked and untracked-not-ignored files."""
  out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, text=True, cwd=REPO, check=True).stdout
  return sum(os.path.getsize(os.path.join(REPO, p)) for p in out.split("\0")
             if p and os.path.isfile(os.path.join(REPO, p)))


def do_collect(a) -> int:
  manifest = paper_carry.collect(a.files_at, a.store, a.records)
  print(json.dumps(dict(status=manifest["status"], left_out=manifest["left_out"]), indent=1))
  return 0


def do_table(a) -> int:
  from fastdfkd_jax.study import table   # pylint: disable=import-outside-toplevel
  rows = [table.read_row(f"{i.label}={os.path.join(a.records, i.name)}") for i in plan(a.scale)
          if i.label and paper_carry.finished(os.path.join(a.records, i.name))]
  refs = [r["name"] for r in rows if r["name"].startswith(("DeepInversion", "CMI"))]
  print(table.markdown(rows, ",".join(refs) or None, paper=PAPER if a.scale == "paper" else None))
  return 0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="verb", required=True)
  run = sub.add_parser("run", help="one call: the queue until the deadline")
  run.add_argument("--store", required=True)
  run.add_argument("--work", required=True)
  run.add_argument("--out", default="", help="write the store back as a bundle here")
  run.add_argument("--deadline_s", type=float, default=480.0)
  run.add_argument("--slots", type=int, default=4)
  run.add_argument("--grace_s", type=float, default=60.0)
  run.add_argument("--min_start_s", type=float, default=30.0)
  run.add_argument("--return_mb", type=float, default=RETURN_BYTES / 2**20)
  prep = sub.add_parser("prepare", help="here: what the next call carries")
  prep.add_argument("--store", required=True)
  prep.add_argument("--carry", required=True)
  prep.add_argument("--data", required=True, help="the CIFAR-10 JPEG archive")
  prep.add_argument("--also", action="append", default=[], help="other carried paths")
  col = sub.add_parser("collect", help="here: merge a call's files into the store")
  col.add_argument("files_at")
  col.add_argument("--store", required=True)
  col.add_argument("--records", default="docs/paper_study")
  tab = sub.add_parser("table", help="the RESULTS table from the records")
  tab.add_argument("--records", default="docs/paper_study")
  for p in (run, prep, tab):
    p.add_argument("--scale", choices=("paper", "tiny"), default="paper")
  a = ap.parse_args(argv)
  return dict(run=do_run, prepare=do_prepare, collect=do_collect, table=do_table)[a.verb](a)


if __name__ == "__main__":
  raise SystemExit(main())
