"""Tests of a study's markdown table from run workdirs: the library
(`fastdfkd_jax.study.table`) and its absl command line (`fastdfkd_jax.table`) in process."""

import json
import math

from absl import flags
import pytest

from fastdfkd_jax import table as table_cli
from fastdfkd_jax.study import table


def fake_run(root, name, accs, synth_per_epoch, teacher_acc=80.0):
  wd = root / name
  wd.mkdir()
  rows = [dict(epoch=e, student_acc=a, synth_seconds=synth_per_epoch * (e + 1))
          for e, a in enumerate(accs)]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (wd / "summary.json").write_text(json.dumps(dict(
      student_acc=accs[-1], best_student_acc=max(accs), teacher_acc=teacher_acc,
      synth_seconds=synth_per_epoch * len(accs), wall_seconds=600.0,
      synth_images=1280, kd_images=51200)))
  return str(wd)


def _cli(*args):
  """`python -m fastdfkd_jax.table ARGS` in process: absl parses into fresh flags."""
  fv = flags.FlagValues()
  table_cli.define_flags(fv)
  return table_cli.main(fv(["table", *args]), fv)


def test_mean_sd_is_the_sample_deviation():
  m, sd = table.mean_sd([60.0, 62.0, 64.0])
  assert (m, sd) == (62.0, 2.0)
  assert math.isnan(table.mean_sd([5.0])[1])


def test_seconds_to_reach_uses_the_seeds_mean_curve():
  curves = [[(1.0, 10.0), (2.0, 50.0), (3.0, 70.0)], [(3.0, 30.0), (4.0, 40.0), (5.0, 60.0)]]
  assert table.seconds_to_reach(curves, 45.0) == 3.0      # means 20, 45, 65
  assert math.isnan(table.seconds_to_reach(curves, 66.0))


def test_table_rows_and_speed_up(tmp_path):
  fast = [fake_run(tmp_path, f"f{s}", [20.0, 50.0 + s, 60.0 + 2 * s], 1.0) for s in range(3)]
  slow = fake_run(tmp_path, "di", [10.0, 30.0, 50.0], 10.0)
  text = table.markdown([table.read_row("Fast-5=" + ",".join(fast)),
                         table.read_row("DeepInv=" + slow)], reference="DeepInv")
  lines = text.splitlines()
  assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|")
  cells = [c.strip() for c in lines[2].split("|")[1:-1]]
  assert cells[:5] == ["Fast-5", "3", "**62.00** ± 2.00 (60.00..64.00)", "62.00", "77.5 %"]
  # DeepInv ends at 50 % after 30 s of synthesis; Fast-5's mean curve passes 50 at epoch 2
  assert cells[-2:] == ["2", "15.0x"]
  di = [c.strip() for c in lines[3].split("|")[1:-1]]
  assert di[2] == "**50.00** ± -" and di[-1] == "1.0x"


def test_two_references_and_the_paper_column(tmp_path):
  fast = fake_run(tmp_path, "f", [40.0, 55.0, 60.0], 1.0)
  di = fake_run(tmp_path, "di", [30.0, 50.0], 10.0)
  cmi = fake_run(tmp_path, "cmi", [45.0, 58.0], 20.0)
  rows = [table.read_row(f"Fast-5={fast}"), table.read_row(f"DI={di}"),
          table.read_row(f"CMI={cmi}")]
  lines = table.markdown(rows, "DI,CMI", paper={"Fast-5": 93.63, "CMI": 94.84}).splitlines()
  assert lines[0].split("|")[2].strip() == "paper (%)"
  assert "synthesis s to DI's acc." in lines[0] and "synthesis s to CMI's acc." in lines[0]
  cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
  assert cells[0][1] == "93.63" and cells[1][1] == "-" and cells[2][1] == "94.84"
  # Fast-5 reaches DI's 50 % at 2 s (DI: 20 s, 10x) and CMI's 58 % at 3 s (CMI: 40 s)
  assert cells[0][-4:] == ["2", "10.0x", "3", "13.3x"]
  assert len({len(c) for c in cells}) == 1 and len(cells[0]) == len(lines[0].split("|")) - 2
  with pytest.raises(ValueError, match="--reference=X names no row"):
    table.markdown(rows, "DI,X")


def test_cli_prints_the_table_of_the_library(tmp_path, capsys):
  a = fake_run(tmp_path, "a", [20.0, 40.0], 1.0)
  b = fake_run(tmp_path, "b", [10.0, 30.0], 4.0)
  text = _cli(f"A={a}", f"B={b}", "--reference=B")
  assert capsys.readouterr().out == text + "\n"
  assert text == table.markdown([table.read_row(f"A={a}"), table.read_row(f"B={b}")], "B")
  # A reaches B's final 30 % after 2 s of synthesis (epoch 2), B after 8 s: 4x.
  assert text.splitlines()[2].rstrip(" |").endswith("4.0x")


def test_cli_until_kd_step_reaches_the_rows_and_the_title(tmp_path):
  wd = tmp_path / "stopped"
  wd.mkdir()
  rows = [dict(epoch=e, step=40 * e, student_acc=10.0 * e, synth_seconds=2.0 * e)
          for e in range(1, 4)]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (wd / "config.json").write_text(json.dumps(dict(batch_size=8)))
  text = _cli(f"S={wd}", "--until_kd_step=90")
  assert text == table.markdown([table.read_row(f"S={wd}", 90)], None, "at <= 90 KD steps")
  assert "student acc. at <= 90 KD steps (%)" in text.splitlines()[0]
  assert "**20.00**" in text and "**30.00**" not in text     # the evaluation at step 80


def _one_error_line(capsys, exit_info) -> str:
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  (line,) = captured.err.splitlines()
  assert captured.out == ""
  return line


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    _cli(f"x={tmp_path}")
  line = _one_error_line(capsys, e)
  assert line.startswith("error: ") and "has no summary.json" in line
  with pytest.raises(SystemExit) as e:
    _cli("nodirs")
  line = _one_error_line(capsys, e)
  assert line.startswith("error: ") and "NAME=WORKDIR" in line
  a = fake_run(tmp_path, "a", [20.0, 40.0], 1.0)
  with pytest.raises(SystemExit) as e:
    _cli(f"A={a}", "--reference=B")
  line = _one_error_line(capsys, e)
  assert line == "error: --reference=B names no row; rows: A"
  with pytest.raises(SystemExit) as e:
    _cli("--until_kd_step=3")
  assert _one_error_line(capsys, e) == f"usage: {table_cli.USAGE}"


def test_until_kd_step_reads_stopped_runs_at_equal_kd_steps(tmp_path):
  wd = tmp_path / "stopped"
  wd.mkdir()
  rows = [dict(epoch=e, step=40 * e, student_acc=10.0 * e, synth_seconds=2.0 * e,
               wall_seconds=3.0 * e, teacher_acc=80.0) for e in range(1, 6)]
  rows[1]["student_acc"] = 45.0          # best before the cut, not the last
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (wd / "config.json").write_text(json.dumps(dict(batch_size=128)))
  with pytest.raises(FileNotFoundError, match="--until_kd_step"):
    table.read_row(f"S={wd}")
  row = table.read_row(f"S={wd}", until_kd_step=130)   # evaluations at steps 40..120
  s = row["summaries"][0]
  assert (s["student_acc"], s["best_student_acc"], s["synth_seconds"]) == (30.0, 45.0, 6.0)
  assert s["kd_images"] == 120 * 128 and s["epoch"] == 3
  assert row["curves"][0] == [(2.0, 10.0), (4.0, 45.0), (6.0, 30.0)]
  with pytest.raises(ValueError, match="no evaluation within 10 KD steps"):
    table.read_row(f"S={wd}", until_kd_step=10)
