"""A tiny benchmark config for smoke tests: `configs/bench_smoke.py`.

  python -m fastdfkd_jax.bench --config=configs/bench_smoke.py \
      --what=synth,kd,epoch --repeats=2 --kd_steps=2 --epoch_kd_steps=3

digits (8x8x1), random resnet8 -> resnet8, batch 16, k 2, nz 16, ngf 8: seconds
on a CPU. Only checks that the benchmark runs; its numbers mean nothing.
"""

from fastdfkd_jax.config import schema


def get_config():
  c = schema.default_config()
  c.mode = "distill"
  c.dataset.name = "digits"
  c.teacher.arch, c.student.arch = "resnet8", "resnet8"
  c.teacher.train_if_missing = False
  c.batch_size, c.k = 16, 2
  c.synth.nz, c.synth.ngf = 16, 8
  c.epochs, c.warmup = 3, 1      # the pool has one slot per epoch
  c.kd.steps, c.kd.cosine_epochs = 2, 2
  return c
