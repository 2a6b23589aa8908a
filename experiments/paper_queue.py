"""One call of the paper-scale study (experiments/paper_study.py): restore the store into a
work folder, start every queue item whose inputs are there (`slots` at once, each a
`python -m fastdfkd_jax.main` process told the deadline by `--config.stop_at`), record each
as it ends, round each finished teacher into the store, and keep the stopped items' newest
checkpoints and the compilation cache for the next call.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import time

import paper_carry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Call:
  store: str                 # read at the start, written at the end
  work: str                  # workdirs (kept between calls on a warm machine)
  deadline: float            # Unix seconds
  slots: int = 2
  grace_s: float = 60.0      # after the deadline, then SIGTERM, then SIGKILL
  min_start_s: float = 30.0  # no item starts with less left
  cifar10: bool = True       # items read the store's CIFAR-10 archive (False: digits)
  python: str = sys.executable
  log: list = dataclasses.field(default_factory=list)

  def path(self, *parts) -> str:
    return os.path.join(self.work, *parts)


def data_archive(store: str, full: bool) -> str | None:
  """The CIFAR-10 archive in the store's data/: the full one, or for a row that reads no
  training split, either (prepare carries the test split alone where that is all it needs)."""
  for name in ("cifar10_jpeg.tar.gz",) + (() if full else ("cifar10_test.tar.gz",)):
    if os.path.isfile(os.path.join(store, "data", name)):
      return os.path.join(store, "data", name)
  return None


def command(call: Call, item) -> list[str] | None:
  """The item's `fastdfkd_jax.main` command, or None while its inputs are missing here."""
  cmd = [call.python, "-m", "fastdfkd_jax.main", f"--workdir={call.path('runs', item.name)}",
         f"--config={item.config}", *item.flags, f"--config.stop_at={call.deadline:.0f}"]
  if call.cifar10:
    archive = data_archive(call.store, item.needs_train)
    if archive is None:
      return None
    cmd += [f"--config.dataset.data_dir={archive}",
            f"--config.dataset.cache_dir={call.path('data_cache')}"]
  if item.teacher:
    if not os.path.isdir(call.path("teachers", item.teacher, "checkpoints")):
      return None
    cmd += [f"--config.teacher.checkpoint={call.path('teachers', item.teacher)}",
            f"--config.teacher.arch={item.teacher[2:]}"]
  return cmd


def restore(call: Call) -> None:
  """The store's teachers, stopped items and cache into the work folder (a warm machine's
  newer copies stay)."""
  for npz in sorted(os.listdir(os.path.join(call.store, "teachers"))
                    if os.path.isdir(os.path.join(call.store, "teachers")) else []):
    dst = call.path("teachers", npz[:-4])
    if not os.path.isdir(os.path.join(dst, "checkpoints")):
      variables, meta = paper_carry.load_teacher(os.path.join(call.store, "teachers", npz))
      write_teacher(variables, meta, dst)
  states = os.path.join(call.store, "states")
  for tgz in sorted(os.listdir(states) if os.path.isdir(states) else []):
    if not os.path.isdir(call.path("runs", tgz[:-4])):
      paper_carry.unpack_dir(os.path.join(states, tgz), call.path("runs", tgz[:-4]))
  cache = os.path.join(call.store, "cache.tgz")
  if os.path.isfile(cache) and not os.path.isdir(call.path("cache")):
    paper_carry.unpack_dir(cache, call.path("cache"))


def write_teacher(variables: dict, meta: dict, workdir: str) -> None:
  from fastdfkd_jax.run import checkpoint   # pylint: disable=import-outside-toplevel
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"))
  checkpoint.save(mngr, 0, meta, variables)
  mngr.close()


def finish_item(call: Call, item) -> None:
  """Records of an item that ran; a finished teacher rounded into the store and work."""
  src, rec = call.path("runs", item.name), os.path.join(call.store, "records", item.name)
  os.makedirs(rec, exist_ok=True)
  for f in ("summary.json", "metrics.jsonl", "config.json"):
    if os.path.isfile(os.path.join(src, f)):
      shutil.copy(os.path.join(src, f), rec)
  if os.path.isfile(src + ".log"):
    shutil.copy(src + ".log", os.path.join(rec, "run.log"))
  if item.teacher or not paper_carry.finished(rec):
    return
  from fastdfkd_jax.teacher import loader   # pylint: disable=import-outside-toplevel
  variables, meta = loader.load(src)
  os.makedirs(os.path.join(call.store, "teachers"), exist_ok=True)
  rounded = paper_carry.save_teacher(
      variables, meta, os.path.join(call.store, "teachers", item.name + ".npz"))
  write_teacher(rounded, meta, call.path("teachers", item.name))


def run_queue(call: Call, items: list) -> dict:
  """Starts every ready item, `slots` at once, until the queue is done or the deadline;
  returns {item: 'finished' | 'stopped' | 'failed rc=N' | 'not started'}."""
  todo = [i for i in items
          if not paper_carry.finished(os.path.join(call.store, "records", i.name))]
  status, running = {i.name: "not started" for i in todo}, {}
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
             JAX_COMPILATION_CACHE_DIR=call.path("cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  os.makedirs(call.path("runs"), exist_ok=True)
  while True:
    for item in list(todo) if time.time() < call.deadline - call.min_start_s else []:
      cmd = len(running) < call.slots and command(call, item)
      if cmd:
        log = open(call.path("runs", item.name + ".log"), "a")  # pylint: disable=consider-using-with
        running[item] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=REPO, env=env)
        todo.remove(item)
        call.log.append(f"{time.strftime('%H:%M:%S')} start {item.name}")
    if not running:
      break   # done, past the deadline, or nothing left whose inputs are here
    time.sleep(0.5)
    _stop_late(call, running)
    for item, proc in list(running.items()):
      if proc.poll() is not None:
        del running[item]
        finish_item(call, item)
        done = paper_carry.finished(os.path.join(call.store, "records", item.name))
        status[item.name] = ("finished" if done else "stopped" if proc.returncode == 0
                             else f"failed rc={proc.returncode}")
        call.log.append(f"{time.strftime('%H:%M:%S')} {status[item.name]} {item.name}")
  return status


def _stop_late(call: Call, running: dict) -> None:
  """SIGTERM after the deadline's grace (a run inside an epoch longer than it), SIGKILL
  after twice the grace."""
  late = time.time() - call.deadline
  for proc in running.values():
    if late > 2 * call.grace_s:
      proc.kill()
    elif late > call.grace_s:
      proc.terminate()


def save_progress(call: Call, status: dict) -> None:
  """Stopped items' newest checkpoints and the compilation cache into the store."""
  states = os.path.join(call.store, "states")
  for name, what in status.items():
    src = call.path("runs", name)
    if what != "finished" and os.path.isdir(os.path.join(src, "checkpoints")):
      os.makedirs(states, exist_ok=True)
      paper_carry.pack_dir(src, os.path.join(states, name + ".tgz"),
                           paper_carry.newest_checkpoint_only(src))
    elif what == "finished" and os.path.isfile(os.path.join(states, name + ".tgz")):
      os.remove(os.path.join(states, name + ".tgz"))
  if os.path.isdir(call.path("cache")):
    paper_carry.pack_dir(call.path("cache"), os.path.join(call.store, "cache.tgz"))


