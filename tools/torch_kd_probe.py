"""The PyTorch side of `tools/cpu_kd_probe.py` (docs/BENCHMARKS.md, "Where the last 1 % of
KD is"): the KD step's parts and one 3x3 convolution's gradients in the eager reference,
one thread, bfloat16 autocast, best of `--repeats` wall-clock ms. Needs torch:

  python tools/torch_kd_probe.py --reference=../shared/bench/torch_reference.py
"""

import argparse
import importlib.util
import time

import torch


def best_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", default="../shared/bench/torch_reference.py")
  parser.add_argument("--teacher", default="wrn40_2")
  parser.add_argument("--student", default="wrn16_1")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location("torch_reference", args.reference)
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  torch.set_num_threads(args.threads)
  teacher, student = ref.make(args.teacher).eval(), ref.make(args.student).train()
  x = torch.rand(args.batch, 3, 32, 32)
  bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)

  def teacher_fwd():
    with bf16(), torch.no_grad():
      return teacher(x).float()
  t_logits = teacher_fwd()

  def student_fwd(backward=False):
    with bf16():
      out = student(x).float()
    if backward:
      ref.kldiv(out, t_logits, T=20.0).backward()
  for name, fn in (("teacher eval fwd", teacher_fwd), ("student train fwd", student_fwd),
                   ("student fwd+bwd", lambda: student_fwd(True))):
    print(f"{name}: {best_ms(fn, args.repeats):.1f} ms", flush=True)
  for h, c in ((32, 16), (16, 32), (8, 64)):
    x4, g, w = (torch.randn(*s, dtype=torch.bfloat16)
                for s in ((args.batch, c, h, h), (args.batch, c, h, h), (c, c, 3, 3)))
    line = []
    for layout in (torch.contiguous_format, torch.channels_last):
      xl, gl = x4.to(memory_format=layout), g.to(memory_format=layout)
      dw = lambda xl=xl, gl=gl: torch.ops.aten.convolution_backward(
          gl, xl, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, False, True])
      line.append(f"dW {'NCHW' if layout is torch.contiguous_format else 'channels-last'} "
                  f"{best_ms(dw, args.repeats):.1f} ms")
    fwd = lambda: torch.nn.functional.conv2d(x4, w, padding=1)
    print(f"{h}x{h}x{c}: fwd {best_ms(fwd, args.repeats):.1f} ms, " + ", ".join(line),
          flush=True)


if __name__ == "__main__":
  main()
