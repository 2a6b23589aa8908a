"""The PyTorch side of `bench`: runs the release-style reference script for the same
measurement and compares medians (`--torch_reference=PATH`)."""

import json
import re
import subprocess
import sys
from typing import Callable

from absl import logging

TORCH_ARCHS = ("resnet18", "resnet34")  # plus every wrn<depth>_<width>


def torch_archs_ok(name: str) -> bool:
  return name in TORCH_ARCHS or re.fullmatch(r"wrn\d+_\d+", name) is not None


def torch_compare(row: dict, path: str, config, kd_steps: int, repeats: int,
                  runner: Callable = subprocess.run, python: str = "",
                  amp: str = "none") -> dict | None:
  """Runs torch_reference.py for the same measurement; the comparison line (or None).

  `python`: the interpreter that has torch (default: this one); `amp`: the
  reference's `--amp` (none = float32, bf16 = PyTorch's bfloat16 autocast).
  """
  what = row["what"]
  if what not in ("synth", "kd"):
    return None
  notes = []
  for arch in (row["teacher"], row["student"]):
    if not torch_archs_ok(arch):
      logging.warning("torch reference does not know %s; no comparison for %s", arch, what)
      return dict(what=what, skipped=f"torch reference does not know {arch}")
  from fastdfkd_jax import data
  info = data.get_info(config.dataset.name)
  if info.num_classes != 10:
    notes.append(f"torch reference uses 10 classes, jax {info.num_classes}")
  if tuple(info.image_shape) != (32, 32, 3):
    notes.append(f"torch reference uses 32x32x3 images, jax {tuple(info.image_shape)}")
  if what == "synth" and (config.synth.nz, config.synth.ngf) != (256, 64):
    notes.append(f"torch generator nz=256 ngf=64, jax nz={config.synth.nz} "
                 f"ngf={config.synth.ngf}")
  if what == "synth" and config.method != "fast_meta":
    notes.append(f"torch reference runs fast_meta, jax {config.method}")
  cmd = [python or sys.executable, path, what, "--teacher", row["teacher"], "--student", row["student"],
         "--k", str(row["k"]), "--batch", str(row["batch"]), "--steps", str(kd_steps),
         "--repeats", str(repeats), "--amp", amp]
  logging.info("torch reference: %s", " ".join(cmd))
  proc = runner(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    return dict(what=what, skipped=f"torch reference failed (rc {proc.returncode}): "
                f"{proc.stderr[-2000:]}")
  lines = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")]
  if not lines:
    return dict(what=what, skipped="torch reference printed no JSON line")
  ref = json.loads(lines[-1])
  torch_med = float(ref["median_s"])
  out = dict(what=what, teacher=row["teacher"], student=row["student"], k=row["k"],
             batch=row["batch"], kd_steps=kd_steps if what == "kd" else None,
             jax_median_s=row["median_s"], torch_median_s=torch_med,
             speedup=torch_med / row["median_s"],
             jax_images_per_s=row["images_per_s"],
             torch_images_per_s=float(ref["images_per_s"]),
             jax_device_kind=row["device_kind"], jax_loop=row["loop"],
             jax_dtype=row.get("dtype"), torch_amp=amp,
             torch_version=ref.get("torch"), torch_threads=ref.get("threads"))
  if notes:
    out["notes"] = notes
  return out
