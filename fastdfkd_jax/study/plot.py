"""Student accuracy against cumulative synthesis time, one curve per run.

    python -m fastdfkd_jax.plot WORKDIR[,WORKDIR...] [...] [--out=PATH.png] \
        [--x=synth_seconds|epoch|wall_seconds]

Reads each workdir's `metrics.jsonl` (one row per epoch: epoch, student_acc,
synth_seconds, wall_seconds, ...) and, where present, `summary.json` (method,
k, dataset, teacher, student) for the labels and title. The default output is
WORKDIR/accuracy_vs_synthesis.png of the first workdir. A train_teacher workdir
(no student_acc) is drawn with its test_accuracy.

Seeds: comma-separated workdirs (`runs/fast5_s0,runs/fast5_s1,runs/fast5_s2`) are
one curve: the mean accuracy at each evaluation (x: the mean over the seeds) with
the seeds' spread (min to max) shaded; the label says how many seeds.

matplotlib is an optional dependency (`pip install -e .[plot]`), imported only
when drawing; it is used through its object API with the Agg canvas, so the
process-wide pyplot backend is left alone.
"""

import json
import os
from typing import Any, Sequence


X_CHOICES = ("synth_seconds", "epoch", "wall_seconds")
DEFAULT_NAME = "accuracy_vs_synthesis.png"
_ACC_KEYS = ("student_acc", "test_accuracy")  # distill runs, then teacher runs


def read_run(workdir: str) -> tuple[list[dict], dict]:
  """(metrics rows sorted by epoch, last row per epoch; summary dict or {})."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{workdir} has no metrics.jsonl; pass the workdir of a distill (or "
        "train_teacher) run, the directory holding metrics.jsonl and summary.json")
  by_epoch: dict[Any, dict] = {}
  with open(path) as f:
    lines = f.readlines()
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if n == len(lines):  # a half-written last line of a live run: skip it
        continue
      raise ValueError(f"{path}:{n} is not JSON: {e}") from None
    by_epoch[row.get("epoch", n)] = row  # a resumed run may repeat an epoch
  rows = [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (not isinstance(e, (int, float)), e))]
  summary = {}
  spath = os.path.join(workdir, "summary.json")
  if os.path.isfile(spath):
    with open(spath) as f:
      summary = json.load(f)
  return rows, summary


_BASELINE_LABELS = {"real": "KD on real data", "noise": "KD on noise"}


def is_baseline(summary: dict) -> bool:
  """A KD baseline run (kd.source real/noise): no synthesis."""
  return summary.get("kd_source", "synthetic") in _BASELINE_LABELS


def run_label(workdir: str, summary: dict) -> str:
  """'fast (k=5)' or 'KD on real data' from the summary, else the workdir's name."""
  if is_baseline(summary):
    return _BASELINE_LABELS[summary["kd_source"]]
  method, k = summary.get("method"), summary.get("k")
  if not method:
    return os.path.basename(os.path.normpath(workdir))
  return f"{method} (k={k})" if k is not None else str(method)


def _series(workdir: str, rows: list[dict], x: str) -> tuple[list[float], list[float], str]:
  acc_key = next((k for k in _ACC_KEYS if any(r.get(k) is not None for r in rows)), None)
  if acc_key is None:
    raise ValueError(f"{workdir}/metrics.jsonl has no accuracy column "
                     f"({' or '.join(_ACC_KEYS)}); has the run evaluated yet?")
  pts = [(r.get(x), r[acc_key]) for r in rows if r.get(acc_key) is not None]
  if any(px is None for px, _ in pts):
    raise ValueError(f"{workdir}/metrics.jsonl has rows without '{x}'; choose another "
                     f"--x ({', '.join(X_CHOICES)})")
  if x == "epoch":  # epochs count from 0 in metrics.jsonl; plot epochs done
    pts = [(px + 1, py) for px, py in pts]
  return [float(px) for px, _ in pts], [float(py) for _, py in pts], acc_key


def _group_series(group: str, x: str):
  """One curve of a workdir or of comma-separated seed workdirs -> (name, summary with
  'seeds', xs (mean over the seeds), ys (per point: the seeds' accuracies), acc_key).
  Seeds are aligned by evaluation index, cut to the shortest run."""
  wds = [w for w in group.split(",") if w]
  series, summaries = [], []
  for wd in wds:
    rows, summary = read_run(wd)
    series.append(_series(wd, rows, x))
    summaries.append(summary)
  n = min(len(xs) for xs, _, _ in series)
  xs = [sum(s[0][i] for s in series) / len(series) for i in range(n)]
  ys = [[s[1][i] for s in series] for i in range(n)]
  return wds[0], dict(summaries[0], seeds=len(wds)), xs, ys, series[0][2]


def _time_unit(max_seconds: float) -> tuple[float, str]:
  if max_seconds >= 3 * 3600:
    return 3600.0, "h"
  if max_seconds >= 600:
    return 60.0, "min"
  return 1.0, "s"


def make_figure(workdirs: Sequence[str], x: str = "synth_seconds"):
  """The matplotlib Figure (Agg canvas) with one labelled curve per workdir."""
  if x not in X_CHOICES:
    raise ValueError(f"x must be one of {', '.join(X_CHOICES)}, got {x!r}")
  if not workdirs:
    raise ValueError("no workdirs given")
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("plotting needs matplotlib: pip install -e .[plot]") from e

  runs, acc_keys = [], set()
  for group in workdirs:
    wd, summary, xs, ys, acc_key = _group_series(group, x)
    acc_keys.add(acc_key)
    runs.append((wd, summary, xs, ys))

  scale, unit = 1.0, ""
  if x != "epoch":
    scale, unit = _time_unit(max((max(xs, default=0.0) for _, _, xs, _ in runs), default=0.0))

  base = [run_label(wd, s) for wd, s, _, _ in runs]
  labels = [  # equal labels are told apart by the workdir's name
      f"{label} [{os.path.basename(os.path.normpath(wd))}]" if base.count(label) > 1 else label
      for label, (wd, _, _, _) in zip(base, runs)]

  fig = Figure(figsize=(7.0, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for (wd, summary, xs, ys), label in zip(runs, labels):
    mean = [sum(v) / len(v) for v in ys]
    if summary.get("seeds", 1) > 1:
      label += f" ({summary['seeds']} seeds)"
    if x == "synth_seconds" and is_baseline(summary):  # no synthesis: its final accuracy
      ax.axhline(mean[-1], linestyle="--", linewidth=1.2, color="gray" if
                 summary["kd_source"] == "noise" else "black", label=label)
      continue
    line, = ax.plot([v / scale for v in xs], mean, marker="o" if len(xs) <= 30 else None,
                    markersize=3, linewidth=1.5, label=label)
    if summary.get("seeds", 1) > 1:
      ax.fill_between([v / scale for v in xs], [min(v) for v in ys], [max(v) for v in ys],
                      color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xlabel({"synth_seconds": f"cumulative synthesis time ({unit})",
                 "wall_seconds": f"wall-clock time ({unit})",
                 "epoch": "epoch"}[x])
  ax.set_ylabel("student top-1 accuracy (%)" if acc_keys == {"student_acc"}
                else "top-1 test accuracy (%)")
  if x != "epoch":
    ax.set_xlim(left=0.0)
  ax.set_title(_title(runs, x))
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right", fontsize="small")
  fig.tight_layout()
  return fig


def _title(runs, x: str) -> str:
  what = {"synth_seconds": "synthesis time", "wall_seconds": "wall-clock time",
          "epoch": "epoch"}[x]
  title = f"Student accuracy vs {what}"
  common = {}
  for field in ("dataset", "teacher", "student"):
    values = {s.get(field) for _, s, _, _ in runs}
    if len(values) == 1 and None not in values:
      common[field] = values.pop()
  details = []
  if "dataset" in common:
    details.append(common["dataset"])
  if "teacher" in common and "student" in common:
    details.append(f"{common['teacher']} \u2192 {common['student']}")
  return title + (f" ({', '.join(details)})" if details else "")


def plot_runs(workdirs: Sequence[str], out: str | None = None,
              x: str = "synth_seconds") -> str:
  """Draws the runs of `workdirs` into the PNG `out` and returns its path.

  `out` defaults to <first workdir>/accuracy_vs_synthesis.png.
  """
  workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
  fig = make_figure(workdirs, x)
  out = out or os.path.join(workdirs[0], DEFAULT_NAME)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  fig.savefig(out, dpi=120)
  return out
