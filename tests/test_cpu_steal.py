"""tools/cpu_steal.py: the steal share of a window, from /proc/stat samples."""

import datetime as dt

from conftest import load_tool


def _log(tmp_path):
  lines = ["2026-11-30T09:00:00 cpu  100 0 10 50 0 0 0 40 0 0",
           "2026-11-30T09:00:30 cpu  160 0 20 60 0 0 0 60 0 0",    # +60 +10 +10 +20 steal
           "2026-11-30T09:01:00 cpu  250 0 30 60 0 0 0 60 0 0"]    # +90 +10, no steal
  path = tmp_path / "cpu_stat.log"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_share_counts_the_samples_inside_the_window(tmp_path):
  tool = load_tool("cpu_steal")
  rows = tool.read_log(_log(tmp_path))
  t = lambda s: dt.datetime.fromisoformat(f"2026-11-30T09:{s}")   # noqa: E731
  assert tool.steal_share(rows, t("00:00"), t("00:30")) == (20 / 100, 30.0)
  assert tool.steal_share(rows, t("00:00"), t("01:00")) == (20 / 200, 60.0)
  assert tool.steal_share(rows, t("00:10"), t("00:40")) is None   # one sample inside


def test_share_command_prints_the_share(tmp_path, capsys):
  tool = load_tool("cpu_steal")
  assert tool.main(["share", _log(tmp_path), "2026-11-30T08:59", "2026-11-30T09:02"]) == 0
  assert capsys.readouterr().out.strip() == "steal 10.0 % of the CPU over 60 s"
