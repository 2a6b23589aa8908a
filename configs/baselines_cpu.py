"""CPU-sized generative baselines: `configs/baselines_cpu.py:<method>-<dataset>`.

  python -m fastdfkd_jax.main --workdir=runs/dafl_digits \
      --config=configs/baselines_cpu.py:dafl-digits

  python -m fastdfkd_jax.main --workdir=runs/dfq_cifar10 \
      --config=configs/baselines_cpu.py:dfq-cifar10 \
      --config.dataset.data_dir=../shared/data/cifar10_jpeg.tar.gz \
      --config.teacher.checkpoint=runs/teacher_cifar10_e10

method: dafl | zskt | dfq | dfad; dataset: as in configs/fastdfkd_cpu.py (digits,
mnist, fashion_mnist, cifar10). The method's loss weights, criterion, kd_steps, T,
g_steps (k = 1) and lr_g are the release's scripts (schema.GENERATIVE_PRESETS).
Everything else is configs/fastdfkd_cpu.py:<dataset>, so the student sees the same
KD images on the same schedule as the FastDFKD rows: teacher, batch, KD lr, kd.steps
per epoch and the cosine; the generator's ngf (32) and nz (DAFL: twice that config's,
as the release's 512 is twice 256). The release's generative scripts have no warmup,
so the epochs are that config's KD epochs (its epochs - warmup) with warmup 0.
"""

from fastdfkd_jax.config import files, schema


def get_config(arg: str = "dafl-digits"):
  method, _, dataset = arg.partition("-")
  if method not in schema.GENERATIVE_PRESETS or "-" in dataset:
    raise ValueError(f"configs/baselines_cpu.py:{arg}: use <method>-<dataset> with method "
                     f"one of {', '.join(schema.GENERATIVE_PRESETS)}")
  c = files.config_module(__file__, "fastdfkd_cpu.py").get_config(dataset)
  nz = c.synth.nz
  schema.generative_preset(c, method)
  c.synth.nz = 2 * nz if method == "dafl" else nz
  c.epochs, c.warmup = c.epochs - c.warmup, 0
  return c
