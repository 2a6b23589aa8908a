"""The step builder (fastdfkd_jax.distill.builder): which programs a config gets on
CPU and on scan backends (loop=auto fuses the epoch on TPU/GPU), and that every program
traces once across epochs."""

import chex
import jax
import jax.numpy as jnp
import pytest

from conftest import make_mesh, tiny_distill
from fastdfkd_jax import data, models, synthesis
from fastdfkd_jax.distill import builder, sources, state as state_lib, steps
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.run import loops, parallel


def tiny_config(**fields):
  """The suite's tiny run (conftest.tiny_distill: the integration runs' programs)."""
  c = tiny_distill("")
  c.update(fields)
  return c


def distiller(c):
  kind = sources.kind(c, synthesis.get(c.method).uses_pool)
  return steps.build(c, data.get_info("digits"), "resnet8", make_mesh(1), kind, "float32")


def structure(monkeypatch, backend, **fields):
  monkeypatch.setattr(loops, "backend", lambda: backend)
  c = tiny_config(**fields)
  return builder.choose(c, distiller(c))


def test_cpu_drives_kd_and_inner_steps_from_the_host(monkeypatch):
  s = structure(monkeypatch, "cpu")
  assert (s.kd, s.synth_inner, s.fused) == ("host", "host", False)
  assert "backend=cpu" in s.description and "fused_epoch=False" in s.description


def test_scan_backends_fuse_the_epoch_by_default(monkeypatch):
  for backend in ("gpu", "tpu"):
    s = structure(monkeypatch, backend)
    assert (s.kd, s.synth_inner, s.fused) == ("scan", "scan", True), backend
    assert "fused_epoch=True" in s.description
    scan = structure(monkeypatch, backend, loop="scan")   # asked for: scanned, not fused
    assert (scan.kd, scan.fused) == ("scan", False), backend


def test_what_cannot_fuse_runs_split_on_scan_backends(monkeypatch):
  """Only a pool method with one synthesis call per epoch fuses: generator rounds,
  several calls per epoch and the KD baselines keep host-driven epochs of programs."""
  assert not structure(monkeypatch, "gpu", method="dafl").fused
  assert not structure(monkeypatch, "gpu", synth=dict(calls_per_epoch=2)).fused
  for source in ("real", "noise"):
    assert not structure(monkeypatch, "gpu", kd=dict(source=source)).fused, source


def test_loop_fused_fuses_the_epoch_on_any_backend(monkeypatch):
  for backend in ("cpu", "gpu"):
    s = structure(monkeypatch, backend, loop="fused")
    assert (s.kd, s.fused) == ("scan", True), backend
  # Forced structures and what cannot fuse.
  assert structure(monkeypatch, "gpu", loop="host").kd == "host"
  assert structure(monkeypatch, "cpu", loop="scan").kd == "scan"
  assert not structure(monkeypatch, "gpu", loop="fused", kd=dict(source="real")).fused
  host_pool = structure(monkeypatch, "gpu", loop="fused", pool=dict(on_device=False))
  assert (host_pool.kd, host_pool.fused) == ("host_pool", False)
  assert structure(monkeypatch, "cpu", inner_unroll="scan").synth_inner == "scan"
  assert structure(monkeypatch, "gpu", inner_unroll="unroll").synth_inner == "unroll"


def test_kd_dispatches_follow_the_structure(monkeypatch):
  monkeypatch.setattr(loops, "backend", lambda: "gpu")
  c = tiny_config()
  d = distiller(c)
  programs = builder.Programs(builder.choose(c, d), d, None, None)
  assert programs.kd_dispatch(7) == ("kd7", 1)
  programs.structure = builder.choose(tiny_config(loop="host"), d)
  assert programs.kd_dispatch(7) == ("kd1", 7)
  with pytest.raises(ValueError, match="no fused epoch"):
    programs.epoch_executable(7)


def tiny_setup(c):
  """(info, distiller, teacher variables, initial state) of a digits resnet8 pair."""
  info, mesh = data.get_info("digits"), make_mesh(1)
  d = distiller(c)
  t = parallel.put_replicated(model_util.init_variables(
      models.get_model("resnet8", 10), jax.random.key(1), info.image_shape), mesh)
  return info, d, t, state_lib.init_state(d, c, info, t, jax.random.key(0))


def programs_for(c):
  _, d, t, state = tiny_setup(c)
  return builder.build_programs(c, d, state, t), state, t


@pytest.mark.parametrize("loop", ["auto", "fused"])
def test_every_program_traces_once_across_epochs(loop):
  c = tiny_config(loop=loop)
  names = ("_synth", "_kd_steps", "_kd_update", "_epoch")
  with pytest.MonkeyPatch.context() as mp:
    for name in names:
      mp.setattr(steps.Distiller, name, chex.assert_max_traces(getattr(steps.Distiller, name),
                                                              n=1))
    programs, state, t = programs_for(c)
    adv = jnp.float32(1.0)
    for epoch in range(3):
      key = jax.random.key(epoch)
      if programs.structure.fused:
        state, metrics = programs.epoch(state, t, key, key, adv, c.kd.steps)
      else:
        state, _, metrics = programs.synth(state, t, key, adv)
        state, metrics = programs.kd(state, t, key, c.kd.steps)
      assert jnp.isfinite(metrics["kd_loss"])
  chex.clear_trace_counter()
  assert int(state.student.step) == 3 * c.kd.steps
  assert int(state.pool.filled) == 3
