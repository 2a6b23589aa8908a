"""How much CPU the host of a VM took away ("steal") while a run measured its seconds.

  python tools/cpu_steal.py sample LOG [--every=30]     # append /proc/stat's cpu line to LOG
  python tools/cpu_steal.py share LOG START END         # steal share between two UTC times

A run's seconds are wall seconds; on a shared VM they are high by about the steal share of
its window (docs/RESULTS.md, the study on the Ice Lake CPU). A LOG line is the UTC time
(ISO 8601) followed by /proc/stat's aggregate `cpu` line: user nice system idle iowait irq
softirq steal ... in clock ticks.
"""

import argparse
import datetime as dt
import time

STEAL = 7   # the column of steal among /proc/stat's cpu counters


def read_log(path: str) -> list[tuple[dt.datetime, list[int]]]:
  rows = []
  with open(path) as f:
    for line in f:
      stamp, _, *counters = line.split()
      rows.append((dt.datetime.fromisoformat(stamp), [int(c) for c in counters]))
  return rows


def steal_share(rows, start: dt.datetime, end: dt.datetime) -> tuple[float, float] | None:
  """(steal share of all ticks, seconds covered) between the samples inside [start, end]."""
  inside = [r for r in rows if start <= r[0] <= end]
  if len(inside) < 2:
    return None
  delta = [b - a for a, b in zip(inside[0][1], inside[-1][1])]
  total = sum(delta[:STEAL + 1])   # guest and guest_nice, after steal, are inside user and nice
  return delta[STEAL] / max(total, 1), (inside[-1][0] - inside[0][0]).total_seconds()


def sample(path: str, every: float) -> None:
  while True:
    with open("/proc/stat") as stat, open(path, "a") as log:
      log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {stat.readline()}")
    time.sleep(every)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  s = sub.add_parser("sample")
  s.add_argument("log")
  s.add_argument("--every", type=float, default=30.0)
  h = sub.add_parser("share")
  h.add_argument("log")
  h.add_argument("start", type=dt.datetime.fromisoformat)
  h.add_argument("end", type=dt.datetime.fromisoformat)
  args = parser.parse_args(argv)
  if args.cmd == "sample":
    sample(args.log, args.every)
    return 0
  share = steal_share(read_log(args.log), args.start, args.end)
  if share is None:
    print("fewer than two samples in that window")
    return 1
  print(f"steal {100 * share[0]:.1f} % of the CPU over {share[1]:.0f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
