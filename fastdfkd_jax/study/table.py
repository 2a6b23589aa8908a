"""A study's markdown table from run workdirs: accuracy (mean and spread over seeds),
share of the teacher, synthesis seconds and the speed-up over a reference row.

    python -m fastdfkd_jax.table "Fast-5=runs/f5_s0,runs/f5_s1,runs/f5_s2" \\
        "DeepInversion=runs/di_s0,runs/di_s1,runs/di_s2" [--reference=DeepInversion]

Each argument is NAME=WORKDIR[,WORKDIR...] (comma-separated workdirs are the seeds of
one row). A row reads each workdir's summary.json (final and best student accuracy,
teacher accuracy, synth_seconds, wall_seconds, synth_images, kd_images) and, for the
speed-up, metrics.jsonl. Columns: final accuracy mean +- s.d. over the seeds (sample
s.d., n - 1; '-' for one seed) with min..max, best accuracy, share of the teacher's
accuracy, synthesis seconds, wall minutes, synthetic images made, KD images seen.
With --reference=NAME two more: the synthesis seconds a row needed to first reach the
reference's final accuracy (mean over seeds of the evaluated epochs' cumulative
synth_seconds; the seeds' mean curve), and the speed-up = the reference's synthesis
seconds / those seconds, the paper's "speed-up at its accuracy"; '-' where a row never
reaches it.

--until_kd_step=S reads every row as it stood at its last evaluation with at most S KD
steps (metrics.jsonl's `step`): accuracy, best so far, synthesis and wall seconds there,
KD images = step x batch (config.json); no summary.json is needed, so a run stopped
before its end still has a row, compared at equal KD images with the others.
"""

import json
import math
import os
from typing import Sequence

from fastdfkd_jax.study import plot


def read_row(spec: str, until_kd_step: int | None = None) -> dict:
  """NAME=WD[,WD...] -> {name, summaries, curves}; a curve is [(synth_seconds, acc)].

  With `until_kd_step`, each summary is the run's state at its last evaluation with at
  most that many KD steps (`summary_at`)."""
  name, sep, dirs = spec.partition("=")
  if not sep or not name or not dirs:
    raise ValueError(f"{spec!r}: write a row as NAME=WORKDIR[,WORKDIR...]")
  summaries, curves = [], []
  for wd in (d for d in dirs.split(",") if d):
    if until_kd_step is None and not os.path.isfile(os.path.join(wd, "summary.json")):
      raise FileNotFoundError(f"{wd} has no summary.json; has the run finished? "
                              "(--until_kd_step reads a stopped run)")
    rows, summary = plot.read_run(wd)
    evals = [r for r in rows if r.get("student_acc") is not None]
    if until_kd_step is not None:
      evals = [r for r in evals if r.get("step", 0) <= until_kd_step]
      summary = summary_at(wd, evals, until_kd_step)
    summaries.append(summary)
    curves.append([(float(r.get("synth_seconds", 0.0)), float(r["student_acc"]))
                   for r in evals])
  return dict(name=name, summaries=summaries, curves=curves)


def summary_at(wd: str, evals: list[dict], until_kd_step: int) -> dict:
  """A summary.json-like dict from a run's evaluated metrics rows up to a KD step."""
  if not evals:
    raise ValueError(f"{wd} has no evaluation within {until_kd_step} KD steps")
  last = evals[-1]
  batch = math.nan
  cpath = os.path.join(wd, "config.json")
  if os.path.isfile(cpath):
    with open(cpath) as f:
      batch = json.load(f).get("batch_size", math.nan)
  return dict(student_acc=last["student_acc"],
              best_student_acc=max(r["student_acc"] for r in evals),
              teacher_acc=last.get("teacher_acc"), synth_seconds=last.get("synth_seconds"),
              wall_seconds=last.get("wall_seconds"), synth_images=None,
              kd_images=last.get("step", 0) * batch, epoch=last.get("epoch"))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample standard deviation with n - 1; nan for one value)."""
  m = sum(values) / len(values)
  if len(values) < 2:
    return m, math.nan
  return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def seconds_to_reach(curves: list[list[tuple[float, float]]], target: float) -> float:
  """Synthesis seconds at the first evaluation where the seeds' mean accuracy reaches
  `target` (x: the seeds' mean synth_seconds there); nan if it never does."""
  n = min(len(c) for c in curves)
  for i in range(n):
    if sum(c[i][1] for c in curves) / len(curves) >= target:
      return sum(c[i][0] for c in curves) / len(curves)
  return math.nan


def _stat(summaries: list[dict], key: str) -> float:
  values = [s[key] for s in summaries if s.get(key) is not None]
  return sum(values) / len(values) if values else math.nan


def _fmt(v: float, digits: int = 2) -> str:
  return "-" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def row_cells(row: dict, references: Sequence[dict] = ()) -> list[str]:
  s = row["summaries"]
  finals = [x["student_acc"] for x in s]
  m, sd = mean_sd(finals)
  acc = f"**{m:.2f}** ± {_fmt(sd)}" + (f" ({min(finals):.2f}..{max(finals):.2f})"
                                        if len(finals) > 1 else "")
  teacher = _stat(s, "teacher_acc")
  cells = [row["name"], str(len(s)), acc, _fmt(_stat(s, "best_student_acc")),
           _fmt(100.0 * m / teacher, 1) + " %" if teacher == teacher else "-",
           _fmt(_stat(s, "synth_seconds"), 0), _fmt(_stat(s, "wall_seconds") / 60.0, 1),
           _fmt(_stat(s, "synth_images"), 0), _fmt(_stat(s, "kd_images"), 0)]
  for reference in references:
    target = mean_sd([x["student_acc"] for x in reference["summaries"]])[0]
    reach = seconds_to_reach(row["curves"], target)
    ref_s = _stat(reference["summaries"], "synth_seconds")
    cells += [_fmt(reach, 0), "-" if not reach > 0 else f"{ref_s / reach:.1f}x"]
  return cells


def markdown(rows: list[dict], reference: str | None = None, when: str = "final",
             paper: dict[str, float] | None = None) -> str:
  """The table; `reference` names one row or several (comma-separated), each adding its
  two speed-up columns; `paper` (row name -> accuracy) adds a column of published numbers."""
  refs = []
  for name in (reference or "").split(","):
    if not name:
      continue
    ref = next((r for r in rows if r["name"] == name), None)
    if ref is None:
      raise ValueError(f"--reference={name} names no row; rows: "
                       f"{', '.join(r['name'] for r in rows)}")
    refs.append(ref)
  head = ["run", "seeds", f"student acc. {when} (%)", "best (%)", "of teacher",
          "synthesis (s)", "wall (min)", "synthetic images", "KD images"]
  for ref in refs:
    head += [f"synthesis s to {ref['name']}'s acc.", "speed-up"]
  if paper is not None:
    head.insert(1, "paper (%)")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = row_cells(r, refs)
    if paper is not None:
      cells.insert(1, _fmt(paper.get(r["name"], math.nan)))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
