"""CPU-sized data-free segmentation on the procedural shapes set:
`configs/fastdfkd_seg_cpu.py:<run>`.

  # the data set (5 classes, 32 px; 512 train and 128 test images, seconds)
  python tools/make_shapes_seg.py runs/shapes_seg
  # the teacher (deeplab_tiny: pixel-wise cross-entropy, poly decay; mIoU in its summary)
  python -m fastdfkd_jax.main --workdir=runs/seg_teacher \
      --config=configs/fastdfkd_seg_cpu.py:teacher --config.dataset.data_dir=runs/shapes_seg
  # a data-free student (deeplab_tiny_half) by FastDFKD, and the comparison rows
  python -m fastdfkd_jax.main --workdir=runs/seg_fast_meta \
      --config=configs/fastdfkd_seg_cpu.py:fast_meta --config.dataset.data_dir=runs/shapes_seg \
      --config.teacher.checkpoint=runs/seg_teacher

<run>: teacher | fast_meta | deepinversion | dafl | dfad | noise | real.
fast_meta is FastDFKD with bn * L_BN + adv * L_adv (synth.oh = 0: an image has no
class target; the adversarial term is per pixel) and pixel-wise KL KD.
deepinversion is the batch-wise baseline (fresh pixels per call, k Adam steps);
dafl and dfad are the release's generator-vs-student presets
(config_lib.GENERATIVE_PRESETS: DAFL's one-hot, activation and balance terms on the
teacher's per-pixel argmax; DFAD's L1 adversary). noise and real are fast_meta's KD
schedule on uniform-noise images (the lower bound) and on the real training images
(the upper bound), without synthesis or warmup. Every distillation row has the same
KD budget: (epochs - warmup) x kd.steps updates of batch_size images; the generative
baselines have no warmup, so their epochs are fast_meta's KD epochs.

CPU sizing: 32 px images, batch 64, the tiny DeepLab pair (39,477 -> 10,141
parameters; the paper-size pair is configs/fastdfkd_nyuv2.py), a generator with
nz 64 and ngf 32, k = 5 with the paper's lr_g / lr_z for k = 5, bn 10 and adv 1.1
(the release's wrn weights), KD T = 20 (the release), lr 0.05 with the per-epoch cosine.
Measured numbers: docs/RESULTS.md (Segmentation).
"""

from fastdfkd_jax import config_lib

RUNS = ("teacher", "fast_meta", "deepinversion", "dafl", "dfad", "noise", "real")
_EPOCHS, _WARMUP, _KD_STEPS, _BATCH = 25, 5, 20, 64


def _common(c):
  c.task = "segmentation"
  c.dataset.name = "shapes_seg"
  c.eval_batch_size = 128
  c.sample_every = 5
  return c


def teacher_config():
  c = _common(config_lib.base_config())
  c.mode, c.model = "train_teacher", "deeplab_tiny"
  c.epochs, c.batch_size = 40, 32
  c.optim.optimizer, c.optim.lr, c.optim.weight_decay = "adam", 3e-3, 1e-4
  c.optim.schedule = "poly"
  c.precise_bn = True
  return c


def get_config(arg: str = "fast_meta"):
  if arg not in RUNS:
    raise ValueError(f"configs/fastdfkd_seg_cpu.py:{arg}: use one of {', '.join(RUNS)}")
  if arg == "teacher":
    return teacher_config()
  c = _common(config_lib.base_config())
  c.mode = "distill"
  c.teacher.arch, c.student.arch = "deeplab_tiny", "deeplab_tiny_half"
  c.epochs, c.warmup, c.batch_size = _EPOCHS, _WARMUP, _BATCH
  c.k = 5
  c.synth.lr_g, c.synth.lr_z = config_lib.PAPER_STEP_LRS[5]
  c.synth.nz, c.synth.ngf = 64, 32
  c.synth.bn, c.synth.adv, c.synth.oh = 10.0, 1.1, 0.0
  c.synth.reset_l0 = False
  c.kd.steps, c.kd.lr, c.kd.lr_min = _KD_STEPS, 0.05, 2e-4
  c.kd.cosine_epochs = _EPOCHS - _WARMUP
  if arg in ("noise", "real"):
    c.kd.source = arg
  elif arg == "deepinversion":
    c.method = "deepinversion"
  elif arg in ("dafl", "dfad"):
    config_lib.generative_preset(c, arg)
    c.synth.nz = 128 if arg == "dafl" else 64   # DAFL: twice the others', as the release
    c.epochs, c.warmup = _EPOCHS - _WARMUP, 0
  return c
