"""What a run writes into its workdir, from process 0 only.

  config.json      the resolved config
  metrics.jsonl    one JSON object per evaluation (epoch, step, wall_seconds, ...);
                   a row torn by a kill or a full disk is dropped on resume
  summary.json     at the end (mode, test_accuracy, wall_seconds, num_devices, ...)
  tb/              TensorBoard event files (scalars, sample images)
  samples/         epoch_NNNN.png grids of synthesized images
"""

import contextlib
import json
import math
import os
import time
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging

from fastdfkd_jax import errors


def is_main_process() -> bool:
  return jax.process_index() == 0


def _to_json(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray) or isinstance(x, jax.Array):
    return np.asarray(x).tolist()
  raise TypeError(type(x))


@contextlib.contextmanager
def disk_full_stops(path: str) -> Iterator[None]:
  """Turns a full disk while writing `path` into an `errors.DiskFullError`."""
  try:
    yield
  except OSError as e:
    if not errors.is_disk_full(e):
      raise
    raise errors.DiskFullError(
        f"no space left on the device while writing {path}; the run stops here and its "
        "last checkpoint is kept. Free some space and re-run the same command to "
        "resume") from e


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (temp file + rename)."""
  if not is_main_process():
    return
  tmp = path + ".tmp"
  with disk_full_stops(path):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=_to_json)
    os.replace(tmp, path)


class Reporter:
  """metrics.jsonl + TensorBoard + log lines for one run."""

  def __init__(self, workdir: str, resume_wall_seconds: float = 0.0):
    self.workdir = workdir
    self.main = is_main_process()
    self._t0 = time.time() - resume_wall_seconds
    self._tb = None
    if self.main:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # pragma: no cover - tensorboardX is a dependency
        logging.warning("tensorboardX missing: no TensorBoard events")

  def wall_seconds(self) -> float:
    return time.time() - self._t0

  def truncate_metrics(self, last_epoch: int) -> None:
    """On resume, drops rows logged after the checkpoint we resumed from."""
    path = os.path.join(self.workdir, "metrics.jsonl")
    if not self.main or not os.path.exists(path):
      return
    rows = []
    with open(path) as f:
      for line in filter(str.strip, f):
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row torn by a kill or a full disk
          logging.warning("dropping a torn row of %s: %r", path, line[:80])
    kept = [r for r in rows if r.get("epoch", -1) <= last_epoch]
    with disk_full_stops(path):
      with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
      os.replace(path + ".tmp", path)

  def write_metrics(self, row: dict) -> None:
    """Appends one row to metrics.jsonl and its scalars to TensorBoard."""
    if not self.main:
      return
    row = {k: _to_json(v) if isinstance(v, (np.generic, np.ndarray, jax.Array)) else v
           for k, v in row.items()}
    path = os.path.join(self.workdir, "metrics.jsonl")
    with disk_full_stops(path), open(path, "a") as f:
      f.write(json.dumps(row, sort_keys=True) + "\n")
    self.scalars(row.get("step", row.get("epoch", 0)), row)

  def scalars(self, step: int, values: dict) -> None:
    if self._tb is None:
      return
    for k, v in values.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def image(self, tag: str, grid_uint8: np.ndarray, step: int) -> None:
    if self._tb is not None:
      self._tb.add_image(tag, grid_uint8, step, dataformats="HWC")
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class RateLogger:
  """Rate-limited progress lines: epoch, step, ETA, images/s, losses."""

  def __init__(self, total_steps: int, every: int, images_per_step: int, what: str):
    self.total, self.every, self.ips, self.what = total_steps, max(1, every), images_per_step, what
    self._t = time.time()
    self._start = self._t
    self._last_step = 0

  def maybe_log(self, step: int, epoch: int, values: dict | None = None) -> None:
    if step % self.every and step != self.total:
      return
    now = time.time()
    rate = (step - self._last_step) * self.ips / max(now - self._t, 1e-9)
    eta = (self.total - step) * (now - self._start) / max(step, 1)
    extra = " ".join(f"{k}={float(v):.4g}" for k, v in (values or {}).items())
    logging.info("%s epoch %d step %d/%d  %.1f img/s  ETA %s  %s", self.what, epoch,
                 step, self.total, rate, _hms(eta), extra)
    self._t, self._last_step = now, step


def log_epoch(what: str, epoch: int, **values) -> None:
  """One log line per epoch: 'WHAT epoch N: name value ...' (None shown as '-')."""
  text = " ".join(f"{k} {'-' if v is None else f'{v:.4g}' if isinstance(v, float) else v}"
                  for k, v in values.items())
  logging.info("%s epoch %d: %s", what, epoch, text)


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def image_grid(images: np.ndarray, ncol: int = 16) -> np.ndarray:
  """(N,H,W,C) uint8 -> one (rows*H, ncol*W, 3) uint8 grid with 1-pixel borders."""
  images = np.asarray(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, c = images.shape
  ncol = min(ncol, n)
  nrow = -(-n // ncol)
  grid = np.zeros((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  return grid


def save_png(path: str, grid: np.ndarray, scale: int = 1) -> None:
  if not is_main_process():
    return
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(grid)
  if scale > 1:
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  img.save(path + ".tmp.png")
  os.replace(path + ".tmp.png", path)
