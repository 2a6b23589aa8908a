"""`python -m fastdfkd_jax.bench --config=configs/F.py[:ARG] [--config.FIELD=VALUE ...]
[--what=synth,kd,epoch] [--repeats=5] [--kd_steps=20] [--epoch_kd_steps=400]
[--profile_dir=DIR] [--torch_reference=../shared/bench/torch_reference.py]`: throughput
of the jitted synthesis / KD / fused-epoch programs, one JSON line per measurement
(`study.bench`; docs/BENCHMARKS.md lists the fields)."""

import json

from absl import app, flags

from fastdfkd_jax import cli
from fastdfkd_jax.study import bench

FLAGS = flags.FLAGS
flags.DEFINE_list("what", list(bench.WHATS), "Measurements: synth, kd, epoch.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (after the warm-up calls).")
flags.DEFINE_integer("warmup_calls", 1, "Untimed warm-up calls per measurement (after compiling).")
flags.DEFINE_integer("kd_steps", 20, "KD updates per timed kd call.")
flags.DEFINE_integer("epoch_kd_steps", 400, "KD updates in one timed epoch call.")
flags.DEFINE_string("profile_dir", "", "If set, one extra call per measurement is traced "
                    "with jax.profiler.trace into PROFILE_DIR/<what> (not timed).")
flags.DEFINE_string("torch_reference", "", "Path of torch_reference.py: also time the "
                    "PyTorch reference (synth, kd) and print a comparison line.")
flags.DEFINE_string("torch_python", "", "Interpreter with torch for --torch_reference "
                    "(default: this one; e.g. a Python 3.11 venv with the CPU torch wheel).")
flags.DEFINE_list("torch_amp", ["none"], "The reference's --amp settings to time side by "
                  "side: none (float32), bf16 (bfloat16 autocast).")
flags.DEFINE_integer("peak_matmul_size", 0, "Square matmul size for the peak FLOP/s "
                     "estimate (0: 2048 on CPU, 8192 on accelerators; <0: skip).")
flags.DEFINE_string("json_out", "", "If set, JSON lines are also appended to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = open(FLAGS.json_out, "a") if FLAGS.json_out else None

  def emit(row):
    line = json.dumps(row)
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()

  try:
    with cli.user_errors():
      bench.run(FLAGS.config, FLAGS.what, FLAGS.repeats, FLAGS.kd_steps,
                FLAGS.epoch_kd_steps, FLAGS.profile_dir, FLAGS.torch_reference,
                FLAGS.peak_matmul_size, emit, FLAGS.warmup_calls, FLAGS.torch_python,
                FLAGS.torch_amp)
  finally:
    if out:
      out.close()


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
