"""Helpers of the tests that run `python -m fastdfkd_jax.main` in a subprocess."""

import json
import os
import subprocess
import sys

from conftest import REPO


def main(workdir, *flags, wait=True):
  """`python -m fastdfkd_jax.main --workdir=... flags` from the repository root on the
  CPU: the finished process (output captured), or the running Popen with wait=False."""
  cmd = [sys.executable, "-m", "fastdfkd_jax.main", f"--workdir={workdir}", *flags]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  if not wait:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)


def rows(workdir) -> list[dict]:
  """The run's metrics.jsonl rows ([] before the first)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
