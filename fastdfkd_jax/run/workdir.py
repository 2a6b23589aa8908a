"""A run's workdir: one writer (`WorkdirLock`), the checks before a run starts, the saved
config and the summary of a finished run.

`check_workdir` runs before the run's setup: a writable directory, enough free space, and
(unless `config.allow_config_change`) the same config as the run it holds. The config
is recorded (`record_config`) only once setup succeeded, so a run that never started
(a data error, a batch that does not divide the devices) leaves nothing that binds the
corrected command.
"""

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time

import ml_collections
from absl import logging

from fastdfkd_jax import errors
from fastdfkd_jax.run import reporting

MIN_FREE_BYTES = 200 * 2**20
CONFIG_FILE = "config.json"


class ConfigMismatchError(errors.UserError):
  """The workdir holds a run with a different config."""


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Creates the workdir and refuses one that is unwritable, nearly full, or (unless
  `config.allow_config_change`) holds a run with another config."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise errors.UserError(f"workdir {workdir} is not writable ({e.strerror}); "
                           "pass a writable --workdir") from e
  free = shutil.disk_usage(workdir).free
  if free < MIN_FREE_BYTES:
    raise errors.UserError(f"only {free / 2**20:.0f} MiB free under {workdir}; "
                           f"checkpoints need at least {MIN_FREE_BYTES / 2**20:.0f} MiB")
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  diff = config_diff(old, json.loads(config.to_json_best_effort()),
                     ignore=("allow_config_change", "stop_at"))
  if diff and not config.allow_config_change:
    raise ConfigMismatchError(
        f"workdir {workdir} holds a run with a different config:\n  " + "\n  ".join(diff)
        + "\nuse a new --workdir, or resume anyway with --config.allow_config_change=True")
  if diff:
    logging.warning("config changed on resume (allowed):\n  %s", "\n  ".join(diff))


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the run's config.json (after its setup succeeded)."""
  reporting.write_json(os.path.join(os.path.abspath(workdir), CONFIG_FILE),
                       json.loads(config.to_json_best_effort()))


class WorkdirLock:
  """One writer per workdir: an exclusive `flock` on `workdir/.lock`, held for the run.

  The file names the holder (pid, host, start time). A second process on the
  same workdir fails with a `errors.UserError` naming that holder. The kernel
  drops the lock when its process dies, so the lock of a killed run (its file
  still naming the dead pid) is taken over with a warning. A clean exit empties
  the file. Only process 0 of a multi-process run takes it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), ".lock")
    self._file = None

  def __enter__(self):
    if not reporting.is_main_process():
      return self
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._file = open(self.path, "a+")  # pylint: disable=consider-using-with
    except OSError as e:
      raise errors.UserError(f"workdir {os.path.dirname(self.path)} is not writable "
                             f"({e.strerror}); pass a writable --workdir") from e
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      who = self._holder() or "a process still starting up"
      self._file.close()
      raise errors.UserError(
          f"workdir {os.path.dirname(self.path)} is in use by another run ({who}); wait "
          "for it, stop it, or pass another --workdir") from None
    holder = self._holder()
    if holder:
      logging.warning("taking over the lock of a run that is gone (%s); its checkpoints "
                      "are resumed", holder)
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    self._file.flush()
    return self

  def _holder(self) -> str:
    self._file.seek(0)
    return self._file.read().strip()

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      self._file.close()  # closing releases the flock
      self._file = None


def config_diff(old: dict, new: dict, ignore=(), prefix: str = "") -> list[str]:
  """Field-by-field differences, 'field: old -> new'."""
  out = []
  for key in sorted(set(old) | set(new)):
    name = prefix + key
    if name in ignore:
      continue
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, ignore, name + ".")
    elif a != b:
      out.append(f"{name}: {a!r} -> {b!r}")
  return out


def finished_summary(workdir: str, next_epoch: int, epochs: int) -> dict | None:
  """The saved summary of a run that already finished (re-running it is a no-op)."""
  path = os.path.join(workdir, "summary.json")
  if next_epoch < epochs or not os.path.exists(path):
    return None
  logging.info("run already finished; see %s", path)
  with open(path) as f:
    return json.load(f)
