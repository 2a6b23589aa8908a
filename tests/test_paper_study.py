"""experiments/paper_study.py, the paper-scale queue for lent accelerator windows: every
item of the paper's queue is a valid config at the paper's settings; the store's pieces
(teachers rounded to bfloat16 against a NumPy rounding, bundles within a budget, what
`prepare` carries); and the CPU smoke run of the whole tiny queue, stopped by a deadline
in its first call and finished by a second call on a fresh work folder, from the bundle.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tarfile

from absl import flags
import numpy as np
import pytest

from fastdfkd_jax import cli
from fastdfkd_jax.config import checks as config_checks

from conftest import REPO, load_experiment, one_device_env
from data_fixtures import make_tree

sys.path.insert(0, os.path.join(REPO, "experiments"))
import paper_carry  # noqa: E402


def _tool():
  return load_experiment("paper_study")


def parse(item):
  fv = flags.FlagValues()
  assert cli.parse_flags(["main", f"--config={item.config}", *item.flags], fv) == ["main"]
  config_checks.validate(fv.config)
  return fv.config


def test_the_paper_queue_is_the_papers_settings(monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  items = _tool().plan("paper")
  assert [i.name for i in items[:4]] == ["t_resnet34", "t_wrn40_2", "t_vgg11", "fast5"]
  assert len({i.name for i in items}) == len(items) == 13
  for item in items:
    c = parse(item)
    assert c.dataset.name == "cifar10" and c.dtype == "bfloat16"
    if not item.teacher:
      assert (c.mode, c.epochs, c.batch_size, c.optim.lr) == ("train_teacher", 200, 256, 0.1)
      continue
    assert (c.teacher.arch, c.student.arch, c.batch_size, c.kd.steps) == (
        "resnet34", "resnet18", 256, 400)
    assert item.needs_train == (c.kd.source == "real")
  fast5 = parse(items[3])
  assert (fast5.k, fast5.epochs, fast5.warmup, fast5.kd.lr) == (5, 220, 20, 0.2)


def bf16_round(x: np.ndarray) -> np.ndarray:
  """float32 -> bfloat16 -> float32, round to nearest even, by bit arithmetic."""
  u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
  u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
  return u.astype(np.uint32).view(np.float32)


def test_a_teacher_is_rounded_once_and_reads_back_as_rounded(tmp_path):
  rng = np.random.default_rng(0)
  variables = {"params": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
                          "fc": {"bias": np.array([1 + 2**-9, 1 + 3 * 2**-9, -2.5e-3], np.float32)}},
               "batch_stats": {"bn": {"mean": rng.normal(size=4).astype(np.float32)}}}
  meta = {"arch": "resnet8", "num_classes": 10, "input_shape": [32, 32, 3]}
  rounded = paper_carry.save_teacher(variables, meta, str(tmp_path / "t.npz"))
  loaded, meta_back = paper_carry.load_teacher(str(tmp_path / "t.npz"))
  assert meta_back == meta
  for got in (rounded, loaded):
    for layer, leaf in (("conv", "kernel"), ("fc", "bias")):
      want = bf16_round(variables["params"][layer][leaf])
      np.testing.assert_array_equal(got["params"][layer][leaf], want)
    np.testing.assert_array_equal(got["batch_stats"]["bn"]["mean"],
                                  variables["batch_stats"]["bn"]["mean"])   # exact
  # ties go to the even mantissa: 1 + 2^-9 -> 1, 1 + 3 * 2^-9 -> 1 + 2^-7
  assert loaded["params"]["fc"]["bias"][:2].tolist() == [1.0, 1 + 2**-7]


def fill(path, n: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(n).bytes(n))


def test_a_bundle_keeps_the_budget_and_merges_back(tmp_path, monkeypatch):
  store = tmp_path / "store"
  fill(store / "records" / "a" / "summary.json", 50)
  fill(store / "records" / "b" / "metrics.jsonl", 60)
  fill(store / "teachers" / "t.npz", 3000)
  fill(store / "states" / "a.tgz", 2000)
  fill(store / "states" / "b.tgz", 500)
  fill(store / "cache.tgz", 1000)
  monkeypatch.setattr(paper_carry, "PART_BYTES", 2048)
  m = paper_carry.write_bundle(str(store), str(tmp_path / "out"), 5000, {"status": {}})
  assert m["packed"] == ["records/a", "records/b", "teachers/t.npz", "states/b.tgz",
                         "cache.tgz"]
  assert m["left_out"] == [{"path": "states/a.tgz", "bytes": 2000}]
  assert len(m["parts"]) == -(-m["bundle_bytes"] // 2048) > 1
  assert sorted(os.listdir(tmp_path / "out")) == sorted(m["parts"] + ["manifest.json"])
  (store / "records" / "a" / "summary.json").write_text(json.dumps({"student_acc": 1.0}))
  m = paper_carry.write_bundle(str(store), str(tmp_path / "out2"), 10**6, {"status": {}})
  new = tmp_path / "new"
  fill(new / "states" / "a.tgz", 7)   # an older copy: the item has finished since
  paper_carry.read_bundle(str(tmp_path / "out2"), str(new))
  for rel in ("teachers/t.npz", "states/b.tgz", "cache.tgz", "records/b/metrics.jsonl"):
    assert (new / rel).read_bytes() == (store / rel).read_bytes()
  assert not (new / "states" / "a.tgz").exists()   # a finished record drops its state


def make_cifar_archive(tmp_path):
  classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
  make_tree(tmp_path / "tree", classes, per_class=(20, 2))
  path = tmp_path / "cifar10_jpeg.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    for split in ("train", "test"):
      tar.add(tmp_path / "tree" / split, arcname=split)
  return str(path)


def two_teacher_plan():
  """The tiny queue with a second teacher, t_wrn16_1, whose student is KD-real, and a
  KD-noise row of t_resnet8 between."""
  tool = _tool()
  teacher, fast2, kd_real = tool.plan("tiny")
  return [teacher, dataclasses.replace(teacher, name="t_wrn16_1"), fast2,
          dataclasses.replace(fast2, name="kd_noise", label="KD-noise"),
          dataclasses.replace(kd_real, teacher="t_wrn16_1")]


def test_prepare_carries_what_the_next_items_need_in_order(tmp_path):
  items = two_teacher_plan()   # t_resnet8, t_wrn16_1, fast2, kd_noise, kd_real
  data = make_cifar_archive(tmp_path)
  store, carry = tmp_path / "store", str(tmp_path / "carry")
  fill(store / "states" / "t_wrn16_1.tgz", 100)
  report = paper_carry.prepare(str(store), carry, data, items, 10**6)
  assert sorted(os.listdir(os.path.join(carry, "data"))) == ["cifar10_jpeg.tar.gz"]
  assert report.endswith("carries data, states/t_wrn16_1.tgz")
  with tarfile.open(store / "cifar10_test.tar.gz") as tar:   # made once, the test split
    members = tar.getmembers()
    assert {m.name.split("/")[0] for m in members} == {"test"}
    assert sum(m.isfile() for m in members) == 20
  # Teachers done: the rows of t_resnet8 need the test split alone; kd_real the full set
  for t in ("t_resnet8", "t_wrn16_1"):
    fill(store / "records" / t / "summary.json", 0)
    (store / "records" / t / "summary.json").write_text("{}")
  fill(store / "teachers" / "t_resnet8.npz", 5000)
  fill(store / "teachers" / "t_wrn16_1.npz", 10**6)
  fill(store / "states" / "kd_noise.tgz", 300)
  budget = 5000 + 300 + os.path.getsize(store / "cifar10_test.tar.gz")
  report = paper_carry.prepare(str(store), carry, data, items, budget)
  assert os.listdir(os.path.join(carry, "data")) == ["cifar10_test.tar.gz"]
  assert sorted(os.listdir(os.path.join(carry, "teachers"))) == ["t_resnet8.npz"]
  assert os.listdir(os.path.join(carry, "states")) == ["kd_noise.tgz"]
  assert report.endswith("no room beside them): kd_real")


@pytest.mark.e2e
def test_the_tiny_queue_stops_at_a_deadline_and_a_second_call_finishes_it(tmp_path,
                                                                        monkeypatch, capsys):
  """Two calls as two lent windows: the first starts the teacher with a deadline already
  passed (it stops after one epoch and checkpoints); its bundle is all the second call
  gets, on a new work folder: it resumes the teacher, rounds it, runs both rows at once."""
  for k, v in one_device_env().items():
    monkeypatch.setenv(k, v)
  tool = _tool()
  run = ["run", "--scale=tiny", "--slots=2"]
  rc = tool.main(run + [f"--store={tmp_path}/s1", f"--work={tmp_path}/w1", "--deadline_s=1",
                        "--min_start_s=0", f"--out={tmp_path}/b1"])
  first = json.loads(capsys.readouterr().out)
  assert rc == 124 and first["status"] == {"t_resnet8": "stopped", "fast2": "not started",
                                           "kd_real": "not started"}
  assert "states/t_resnet8.tgz" in first["packed"] and not first["left_out"]
  assert tool.main(["collect", f"{tmp_path}/b1", f"--store={tmp_path}/s2",
                    f"--records={tmp_path}/rec"]) == 0
  capsys.readouterr()
  rc = tool.main(run + [f"--store={tmp_path}/s2", f"--work={tmp_path}/w2", "--deadline_s=600",
                        f"--out={tmp_path}/b2"])
  second = json.loads(capsys.readouterr().out)
  assert rc == 0 and set(second["status"].values()) == {"finished"}, second
  assert tool.main(["collect", f"{tmp_path}/b2", f"--store={tmp_path}/s3",
                    f"--records={tmp_path}/rec"]) == 0
  rec = tmp_path / "rec"
  for t in ("t_resnet8",):   # resumed after the first call's epoch
    rows = [json.loads(line) for line in (rec / t / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert "resumed after epoch 0" in (tmp_path / "s3" / "records" / t / "run.log").read_text()
  for name in ("fast2", "kd_real"):
    summary = json.loads((rec / name / "summary.json").read_text())
    assert summary["mode"] == "distill" and 0 < summary["teacher_acc"] <= 100
    assert json.loads((rec / name / "environment.json").read_text())["backend"] == "cpu"
  assert not os.path.exists(tmp_path / "s3" / "states") or not os.listdir(tmp_path / "s3" / "states")
  capsys.readouterr()
  assert tool.main(["table", "--scale=tiny", f"--records={rec}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split("|")[1].strip() for line in lines[2:]] == ["Fast-2", "KD-real"]


def test_the_window_script_parses_and_runs_the_study_from_the_carry():
  script = os.path.join(REPO, "experiments", "paper_study.sh")
  proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  text = open(script).read()
  assert "experiments/paper_study.py run --store=.paper_carry --work=.paper_work" in text
  ignored = open(os.path.join(REPO, ".gitignore")).read().split()
  assert {".paper_carry/", ".paper_work/", ".paper_store/"} <= set(ignored)
