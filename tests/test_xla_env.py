"""xla_env.py: the XLA flags a config asks for, and `dtype='auto'` (bfloat16 only where the
machine runs it natively)."""

import jax
import jax.numpy as jnp
import pytest

from conftest import load_config_file
from fastdfkd_jax.config import checks as config_checks, schema
from fastdfkd_jax.run import xla_env
from fastdfkd_jax.models import util as model_util

_CPUINFO = """processor\t: {i}
vendor_id\t: GenuineIntel
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
bugs\t\t: spectre_v1

"""


def _cpuinfo(tmp_path, extra: str, processors: int = 2) -> str:
  path = tmp_path / "cpuinfo"
  path.write_text("".join(_CPUINFO.format(i=i, extra=extra) for i in range(processors)))
  return str(path)


@pytest.mark.parametrize("extra, native", [
    ("avx512_bf16 avx512_vnni", True),      # Cooper Lake, Zen 4
    ("amx_bf16 amx_tile amx_int8", True),   # Sapphire Rapids
    ("avx512_vnni avx512_vbmi2", False),    # Ice Lake: AVX-512 without BF16
    ("", False),
])
def test_native_bf16_read_from_the_cpu_flags(tmp_path, extra, native):
  assert xla_env.cpu_has_native_bf16(_cpuinfo(tmp_path, extra)) is native


def test_unknown_cpu_counts_as_without_native_bf16(tmp_path):
  assert xla_env.cpu_has_native_bf16(str(tmp_path / "missing")) is False
  # A flag's name inside another line (here, a bug's) is not a CPU flag.
  path = tmp_path / "cpuinfo"
  path.write_text("flags\t: avx2\nbugs\t: avx512_bf16\n")
  assert xla_env.cpu_has_native_bf16(str(path)) is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_per_backend_and_cpu(monkeypatch, native):
  monkeypatch.setattr(xla_env, "cpu_has_native_bf16", lambda: native)
  assert xla_env.resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
  for backend in ("gpu", "tpu"):
    assert xla_env.resolve_dtype("auto", backend) == "bfloat16"
  for name in ("float32", "bfloat16"):   # explicit names are kept everywhere
    for backend in ("cpu", "gpu"):
      assert xla_env.resolve_dtype(name, backend) == name


@pytest.mark.parametrize("native", [True, False])
def test_onednn_flag_only_where_bfloat16_runs(monkeypatch, native):
  monkeypatch.setattr(xla_env, "cpu_has_native_bf16", lambda: native)
  flag = [f"{xla_env.ONEDNN_CUSTOM_CALL}=true"]

  def flags(dtype, onednn=True):
    c = schema.default_config()
    c.dtype, c.cpu_onednn = dtype, onednn
    return xla_env.flags_for(c)

  assert flags("bfloat16") == flag          # asked for explicitly: always
  assert flags("auto") == (flag if native else [])
  assert flags("float32") == []
  assert flags("bfloat16", onednn=False) == flags("auto", onednn=False) == []


def test_note_only_for_emulated_bfloat16(monkeypatch):
  monkeypatch.setattr(xla_env, "cpu_has_native_bf16", lambda: False)
  note = xla_env.dtype_note("bfloat16", "cpu")
  assert "dtype=auto" in note and "\n" not in note
  assert xla_env.dtype_note("auto", "cpu") is None
  assert xla_env.dtype_note("bfloat16", "gpu") is None
  monkeypatch.setattr(xla_env, "cpu_has_native_bf16", lambda: True)
  assert xla_env.dtype_note("bfloat16", "cpu") is None


def test_start_line_names_the_dtype_and_warns_once(monkeypatch):
  monkeypatch.setattr(xla_env, "cpu_has_native_bf16", lambda: False)
  monkeypatch.setattr(xla_env.jax, "default_backend", lambda: "cpu")
  warned = []
  monkeypatch.setattr(xla_env.logging, "log_first_n", lambda level, msg, n: warned.append(msg))
  assert xla_env.describe_dtype("auto") == "dtype=float32 (auto)"
  assert xla_env.describe_dtype("float32") == "dtype=float32"
  assert not warned
  assert xla_env.describe_dtype("bfloat16") == "dtype=bfloat16"
  assert warned == [xla_env.dtype_note("bfloat16", "cpu")]


def test_apply_keeps_a_users_own_setting(monkeypatch):
  monkeypatch.setattr(xla_env, "cpu_has_native_bf16", lambda: False)
  c = schema.default_config()
  c.dtype = "bfloat16"
  env = {"XLA_FLAGS": f"--foo=1 {xla_env.ONEDNN_CUSTOM_CALL}=false"}
  xla_env.apply(c, env)
  assert env["XLA_FLAGS"] == f"--foo=1 {xla_env.ONEDNN_CUSTOM_CALL}=false"
  env = {}
  xla_env.apply(c, env)
  assert env["XLA_FLAGS"] == f"{xla_env.ONEDNN_CUSTOM_CALL}=true"


def test_activation_dtype_takes_only_resolved_names():
  """models.util.activation_dtype maps the resolved names; 'auto' is resolved once per run
  (xla_env.resolve_dtype) before it, so passing it is an error."""
  want = xla_env.resolve_dtype("auto", jax.default_backend())
  assert xla_env.resolve_dtype("auto") == want in ("float32", "bfloat16")
  assert model_util.activation_dtype(want) == jnp.dtype(want)
  assert model_util.activation_dtype("float32") == jnp.float32
  assert model_util.activation_dtype("bfloat16") == jnp.bfloat16
  for name in ("auto", "float16", ""):
    with pytest.raises(ValueError, match="resolve_dtype"):
      model_util.activation_dtype(name)


def test_the_cpu_sized_configs_ask_for_auto():
  for arg in ("cifar10", "cifar10-k5", "mnist", "fashion_mnist"):
    c = load_config_file("fastdfkd_cpu.py", arg)
    assert c.dtype == "auto", arg
    config_checks.validate(c)
  assert load_config_file("fastdfkd_cpu.py", "digits").dtype == "float32"   # install check
