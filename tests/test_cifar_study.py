"""experiments/cifar_study.py: every run of the study is a valid config with the same KD
images; --list, --runs and --flags; the flags experiments/accelerator_study.sh passes it."""

import argparse
import os
import re

from absl import flags
import pytest

from fastdfkd_jax import cli
from fastdfkd_jax.config import checks as config_checks

from conftest import REPO, load_experiment


def _tool():
  return load_experiment("cifar_study")


def test_every_run_parses_validates_and_sees_the_same_kd_images(monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))   # parse_flags may add
  tool = _tool()
  runs = tool.plan()
  names = [name for _, name, _, _ in runs]
  assert len(names) == len(set(names))
  kd_images = set()
  for _, name, config, extra in runs:
    fv = flags.FlagValues()
    cmd = tool.command(argparse.Namespace(
        python="python", out="/tmp/study", data_dir="d", teacher="t", teacher_arch="resnet20",
        cache_dir="", flags=""), name, config, extra)
    assert cmd[:4] == ["python", "-m", "fastdfkd_jax.main", f"--workdir=/tmp/study/{name}"]
    assert cli.parse_flags(["main", *cmd[4:]], fv) == ["main"]
    c = fv.config
    config_checks.validate(c)
    assert (c.teacher.arch, c.student.arch, c.dataset.name) == ("resnet20", "resnet8", "cifar10")
    kd_images.add((c.epochs - c.warmup) * c.kd.steps * c.batch_size)
  assert len(kd_images) == 1, kd_images


def test_list_prints_commands_and_the_report(tmp_path, capsys):
  tool = _tool()
  (tmp_path / "fast2_s0").mkdir()
  (tmp_path / "fast2_s0" / "summary.json").write_text("{}")
  assert tool.main(["--out", str(tmp_path), "--teacher", "t", "--list", "--only", "table1"]) == 0
  out = capsys.readouterr().out
  assert f"--workdir={tmp_path}/fast2_s0 " not in out and f"--workdir={tmp_path}/fast5_s2" in out
  assert "python -m fastdfkd_jax.table Fast-2=" in out and "--reference=DeepInversion-50" in out


def test_runs_selects_by_name(tmp_path, capsys):
  tool = _tool()
  assert tool.main(["--out", str(tmp_path), "--teacher", "t", "--list",
                    "--runs", "dfad,dafl"]) == 0
  workdirs = [w for w in capsys.readouterr().out.split() if w.startswith("--workdir=")]
  assert workdirs == [f"--workdir={tmp_path}/dfad", f"--workdir={tmp_path}/dafl"]


def test_flags_reach_every_listed_run(tmp_path, capsys):
  tool = _tool()
  assert tool.main(["--out", str(tmp_path), "--teacher", "t", "--list", "--runs", "cmi50_s0",
                    "--flags", "--config.loop=host --config.k=3"]) == 0
  line = next(l for l in capsys.readouterr().out.splitlines() if "--workdir=" in l)
  assert line.endswith("--config.seed=0 --config.loop=host --config.k=3")


def test_accelerator_study_passes_only_options_of_the_study(capsys):
  """experiments/accelerator_study.sh runs `cifar_study.py --out=... --no_pin ...`: every
  option it names is one of the study's (its --help)."""
  with open(os.path.join(REPO, "experiments", "accelerator_study.sh")) as f:
    text = f.read()
  (call,) = re.findall(r'"\$PY" experiments/cifar_study\.py (.*?)&\n', text, re.S)
  passed = set(re.findall(r"(?<![\w-])--(\w+)", call))
  assert {"out", "teacher", "runs", "no_pin", "python"} <= passed
  with pytest.raises(SystemExit) as e:
    _tool().main(["--help"])
  assert e.value.code == 0
  options = set(re.findall(r"(?<![\w-])--(\w+)", capsys.readouterr().out))
  assert passed <= options, passed - options
