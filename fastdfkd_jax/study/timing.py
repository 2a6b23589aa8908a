"""Timing and cost helpers of the benchmarks: XLA's flop counts, timed calls, the peak
matmul rate of a device."""

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import logging


def cost_flops(cost: Any) -> float | None:
  """'flops' of a cost analysis: a dict, a list of per-module dicts, or None."""
  if cost is None:
    return None
  if isinstance(cost, dict):
    cost = [cost]
  total, found = 0.0, False
  for entry in cost:
    if isinstance(entry, dict) and entry.get("flops") is not None:
      total += float(entry["flops"])
      found = True
  return total if found else None


def safe_cost(obj) -> Any:
  try:
    return obj.cost_analysis()
  except Exception as e:  # pylint: disable=broad-except  # Backend without cost analysis.
    logging.warning("cost analysis unavailable: %s", e)
    return None


def time_calls(call: Callable[[], Any], repeats: int, warmup_calls: int = 1) -> list[float]:
  """Seconds of `repeats` calls after `warmup_calls` untimed ones; each ends blocked on its outputs."""
  for _ in range(warmup_calls):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return times


def peak_matmul_flops_per_s(dtype, size: int, repeats: int = 5) -> dict:
  """FLOP/s of a jitted dense size x size matmul on device 0 (a peak estimate)."""
  dev = jax.devices()[0]
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(k1, (size, size), jnp.float32).astype(dtype), dev)
  b = jax.device_put(jax.random.normal(k2, (size, size), jnp.float32).astype(dtype), dev)
  mm = jax.jit(jnp.matmul).lower(a, b).compile()
  calls = 3 if jax.default_backend() == "cpu" else 20
  jax.block_until_ready(mm(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = mm(a, b)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls)
  med = statistics.median(times)
  return dict(peak_matmul_flops_per_s=2.0 * size ** 3 / med, peak_matmul_size=size,
              peak_matmul_dtype=jnp.dtype(dtype).name)


# ------------------------------------------------------------------ the bench
