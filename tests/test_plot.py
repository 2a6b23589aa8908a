"""Tests of the accuracy-vs-synthesis-time plot: the library (`fastdfkd_jax.study.plot`) on
fake run workdirs, and its absl command line (`fastdfkd_jax.plot`) in process."""

import json
import os

from absl import flags
import numpy as np
import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from fastdfkd_jax import plot as plot_cli  # noqa: E402
from fastdfkd_jax.study import plot  # noqa: E402

# plot_runs saves the 7.0 x 4.5 inch figure at 120 dpi.
PNG_SIZE = (840, 540)


def fake_run(root, name, method, k, per_epoch_synth, epochs=6, with_summary=True):
  wd = root / name
  wd.mkdir()
  rows = []
  for e in range(epochs):
    rows.append(dict(epoch=e, step=10 * (e + 1), student_acc=10.0 + 12.0 * e + k,
                     best_student_acc=10.0 + 12.0 * e + k, teacher_acc=95.0,
                     synth_seconds=per_epoch_synth * (e + 1), kd_seconds=2.0 * (e + 1),
                     wall_seconds=(per_epoch_synth + 2.5) * (e + 1)))
  with open(wd / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if with_summary:
    (wd / "summary.json").write_text(json.dumps(dict(
        mode="distill", method=method, k=k, dataset="cifar10", teacher="resnet34",
        student="resnet18", student_acc=rows[-1]["student_acc"])))
  return str(wd)


@pytest.fixture
def two_runs(tmp_path):
  return [fake_run(tmp_path, "fast2", "fast", 2, 1.5),
          fake_run(tmp_path, "fast10", "fast", 10, 7.0)]


def _check_png(path):
  """The file is the saved figure: its size, and more than a blank canvas."""
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == PNG_SIZE
    pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
  assert len(np.unique(pixels, axis=0)) > 16    # curves, text and a legend were drawn


def _cli(*args):
  """`python -m fastdfkd_jax.plot ARGS` in process: absl parses into fresh flags."""
  fv = flags.FlagValues()
  plot_cli.define_flags(fv)
  return plot_cli.main(fv(["plot", *args]), fv)


def _one_error_line(capsys, exit_info) -> str:
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  (line,) = captured.err.splitlines()
  assert line.startswith("error: ") and captured.out == ""
  return line


def test_plot_runs_default_out(two_runs):
  out = plot.plot_runs(two_runs)
  assert out == os.path.join(two_runs[0], "accuracy_vs_synthesis.png")
  _check_png(out)


def test_figure_has_one_labelled_line_per_run(two_runs):
  fig = plot.make_figure(two_runs)
  (ax,) = fig.axes
  lines = ax.get_lines()
  assert len(lines) == 2
  assert [l.get_label() for l in lines] == ["fast (k=2)", "fast (k=10)"]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fast (k=2)", "fast (k=10)"]
  assert "synthesis" in ax.get_xlabel() and "(s)" in ax.get_xlabel()
  assert "accuracy (%)" in ax.get_ylabel()
  assert "cifar10" in ax.get_title() and "resnet34" in ax.get_title()
  # Points: cumulative synthesis seconds against accuracy in %.
  xs, ys = lines[1].get_data()
  assert list(xs) == [7.0 * (e + 1) for e in range(6)]
  assert list(ys) == [20.0 + 12.0 * e for e in range(6)]


def test_x_axis_choices_and_units(tmp_path):
  runs = [fake_run(tmp_path, "slow", "deepinv", 2000, 2000.0),
          fake_run(tmp_path, "nosummary", None, 0, 5.0, with_summary=False)]
  fig = plot.make_figure(runs)  # 12000 s -> hours
  ax = fig.axes[0]
  assert ax.get_xlabel() == "cumulative synthesis time (h)"
  assert [l.get_label() for l in ax.get_lines()] == ["deepinv (k=2000)", "nosummary"]
  assert ax.get_lines()[0].get_data()[0][-1] == pytest.approx(12000.0 / 3600)
  ax = plot.make_figure(runs, x="epoch").axes[0]
  assert ax.get_xlabel() == "epoch" and list(ax.get_lines()[0].get_data()[0]) == [1, 2, 3, 4, 5, 6]
  ax = plot.make_figure(runs, x="wall_seconds").axes[0]
  assert ax.get_xlabel().startswith("wall-clock time")
  with pytest.raises(ValueError, match="x must be one of"):
    plot.make_figure(runs, x="kd_seconds")


def test_equal_labels_disambiguated_and_resumed_rows(tmp_path):
  a = fake_run(tmp_path, "seed0", "fast", 5, 1.0)
  b = fake_run(tmp_path, "seed1", "fast", 5, 1.0)
  with open(os.path.join(b, "metrics.jsonl"), "a") as f:  # repeated epoch + torn line
    f.write(json.dumps(dict(epoch=5, student_acc=99.0, synth_seconds=6.5)) + "\n")
    f.write('{"epoch": 6, "stud')
  ax = plot.make_figure([a, b]).axes[0]
  assert [l.get_label() for l in ax.get_lines()] == ["fast (k=5) [seed0]", "fast (k=5) [seed1]"]
  xs, ys = ax.get_lines()[1].get_data()
  assert len(xs) == 6 and xs[-1] == 6.5 and ys[-1] == 99.0


def test_missing_metrics_is_a_clear_error(tmp_path, two_runs):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="has no metrics.jsonl"):
    plot.plot_runs([two_runs[0], str(empty)])


def test_cli_draws_the_runs_and_prints_the_path(tmp_path, two_runs, capsys):
  out = str(tmp_path / "sub" / "acc.png")
  assert _cli(*two_runs, f"--out={out}", "--x=wall_seconds") == out
  assert capsys.readouterr().out == out + "\n"
  _check_png(out)


def test_cli_defaults_are_the_librarys(two_runs, monkeypatch):
  seen = []
  monkeypatch.setattr(plot, "plot_runs", lambda *a: seen.append(a) or "p.png")
  assert _cli(*two_runs) == "p.png"
  assert seen == [(two_runs, None, "synth_seconds")]   # out: FIRST_WORKDIR/DEFAULT_NAME


def test_cli_user_errors_exit_2_with_one_line(tmp_path, two_runs, capsys):
  with pytest.raises(SystemExit) as e:
    _cli(str(tmp_path / "nope"))
  assert "has no metrics.jsonl" in _one_error_line(capsys, e)
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / "metrics.jsonl").write_text(json.dumps(dict(epoch=0, test_accuracy=50.0)) + "\n")
  with pytest.raises(SystemExit) as e:     # a ValueError of the library: no synth_seconds
    _cli(str(teacher))
  assert "choose another --x" in _one_error_line(capsys, e)
  assert not os.path.exists(teacher / plot.DEFAULT_NAME)


def test_cli_without_workdirs_prints_the_usage(capsys):
  with pytest.raises(SystemExit) as e:
    _cli("--x=epoch")
  assert e.value.code == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line == f"usage: {plot_cli.USAGE}"


def test_cli_refuses_an_unknown_x_axis(two_runs):
  with pytest.raises(flags.IllegalFlagValueError, match="kd_seconds"):
    _cli(*two_runs, "--x=kd_seconds")


def test_teacher_run_uses_test_accuracy(tmp_path):
  wd = tmp_path / "teacher"
  wd.mkdir()
  rows = [dict(epoch=e, test_accuracy=50.0 + e, wall_seconds=3.0 * (e + 1)) for e in range(3)]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  ax = plot.make_figure([str(wd)], x="wall_seconds").axes[0]
  assert ax.get_ylabel() == "top-1 test accuracy (%)"
  assert list(ax.get_lines()[0].get_data()[1]) == [50.0, 51.0, 52.0]
  with pytest.raises(ValueError, match="choose another --x"):
    plot.make_figure([str(wd)])  # no synth_seconds in a teacher run


def test_kd_baselines_are_reference_lines_on_the_synthesis_axis(tmp_path):
  runs = [fake_run(tmp_path, "fast5", "fast_meta", 5, 3.0)]
  for source in ("real", "noise"):
    wd = fake_run(tmp_path, f"kd_{source}", "fast_meta", 5, 0.0)
    summary = json.loads((tmp_path / f"kd_{source}" / "summary.json").read_text())
    summary["kd_source"] = source
    (tmp_path / f"kd_{source}" / "summary.json").write_text(json.dumps(summary))
    runs.append(wd)
  ax = plot.make_figure(runs).axes[0]
  lines = ax.get_lines()
  assert [l.get_label() for l in lines] == ["fast_meta (k=5)", "KD on real data", "KD on noise"]
  real = lines[1]
  assert list(real.get_ydata()) == [75.0, 75.0]     # the final accuracy (10 + 12 * 5 + 5)
  assert real.get_linestyle() == "--"
  ax = plot.make_figure(runs, x="wall_seconds").axes[0]   # over wall clock: curves
  assert len(ax.get_lines()[1].get_xdata()) == 6


def test_seed_group_is_one_curve_with_its_spread(tmp_path):
  seeds = [fake_run(tmp_path, f"s{s}", "fast_meta", 5 + s, 1.0 + s) for s in range(3)]
  other = fake_run(tmp_path, "other", "fast", 2, 1.5)
  fig = plot.make_figure([",".join(seeds), other])
  (ax,) = fig.axes
  assert len(ax.get_lines()) == 2
  mean_line = ax.get_lines()[0]
  assert "3 seeds" in mean_line.get_label()
  # accuracies 10 + 12 e + k, k = 5, 6, 7: the mean is k = 6; x the mean of 1, 2, 3 s/epoch
  assert list(mean_line.get_ydata()) == pytest.approx([16.0 + 12.0 * e for e in range(6)])
  assert list(mean_line.get_xdata()) == pytest.approx([2.0 * (e + 1) for e in range(6)])
  (band,) = ax.collections
  ys = band.get_paths()[0].vertices[:, 1]
  assert min(ys) == pytest.approx(15.0) and max(ys) == pytest.approx(17.0 + 12.0 * 5)
