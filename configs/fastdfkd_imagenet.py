"""FastDFKD on ImageNet (the paper's Table 2, Fast-50): `configs/fastdfkd_imagenet.py:<arg>`.

  python -m fastdfkd_jax.main --workdir=runs/imnet_r50_r18 \
      --config=configs/fastdfkd_imagenet.py:resnet50-resnet18 \
      --config.dataset.data_dir=/data/imagenet \
      --config.teacher.checkpoint=/data/resnet50-0676ba61.pth   # torchvision weights

<arg>: resnet50-resnet50 | resnet50-resnet18 | resnet50-mobilenetv2 (the models
resnet50_imagenet -> resnet50_imagenet / resnet18_imagenet / mobilenetv2_imagenet),
or `cpu`: the same synthesis semantics at CPU size on the 64 px procedural set of
experiments/make_imagenet_folder.py (dataset imagenet_mini; a resnet8 teacher trained
first, a resnet8 student).

Every setting is the release's logged run (logs/log-imagenet-resnet50_imagenet-
<student>_imagenet-FastDFKD_50.txt of zju-vipa/Fast-Datafree, the last argument
block of each log, i.e. the run that finished; line numbers below are the
resnet50 -> resnet18 log's, the other two logs list the same values except adv):
  method fast_meta, is_maml 0 (l.94): synth.meta_grad = 'param_diff'
  adv 1.0 (l.61; resnet50 and mobilenetv2 logs: 0.1, their l.60 and l.2),
  bn 0.1 (l.62), oh 0.1 (l.63), bn_mmt 0.9 (l.92)
  lr_g 2e-4 (l.77), lr_z 0.01 (l.78): the inner steps
  lr_g_meta 1e-4 (l.79), lr_z_meta 5e-3 (l.80): synth.meta_lr_g / meta_lr_z, with the
    meta-learned latent of fast_meta_imagenet.py (synth.meta_latent)
  g_steps 50 (l.83): k; reinit 50 (l.87): synth.reinit_every
  ep_steps 1000 (l.85), kd_steps 100 (l.84): kd.steps 1000 in synth.calls_per_epoch 10
  start_kd 0 (l.86): no warmup; reset_l0 0 (l.89)
  batch_size 100 (l.97, synthesis_batch_size None = the same), seed 0 (l.106)
  lr 0.1 (l.74), momentum 0.9 (l.110), weight_decay 1e-4 (l.111), T 5.0 (l.81),
    epochs 400 (l.82); the KD lr is CosineAnnealingLR(T_max=epochs) stepped per epoch
    (datafree_kd_imagenet.py l.366; the logged lr_decay_milestones 120,150,180, l.75,
    are unused): kd.cosine_epochs 400, kd.lr_min 0
From the release's code: the DeepGenerator with nz 256, ngf 64 at 224 px and the
spatial latent (datafree_kd_imagenet.py), kornia RandomResizedCrop(scale 0.75-1) +
flip in the synthesis loss, the last inner step's images into the pool
(fast_meta_imagenet.py: synth.augment, synth.crop_scale, synth.keep), and the
KD batches through torchvision's RandomResizedCrop(224) + flip (registry.py:
kd.augment). The logged runs also started from a pre-inverted image set
(cmi_init, l.69); that is not reproduced here (no such set is published).
The pool of 400 epochs x 10 calls x 100 images does not fit on a device: it is a
memory-mapped file in the workdir (pool.on_device False, pool.memmap).
"""

from fastdfkd_jax.config import schema

# student -> adv (the logs' l.61 / l.60 / l.2, see above)
_PAIRS = {"resnet50": 0.1, "resnet18": 1.0, "mobilenetv2": 0.1}
SETTINGS = [f"resnet50-{s}" for s in _PAIRS] + ["cpu"]


def _imagenet_synthesis(c):
  """The release's ImageNet synthesis semantics (fast_meta_imagenet.py)."""
  c.method, c.warmup = "fast_meta", 0
  s = c.synth
  s.generator, s.meta_latent, s.meta_grad = "deep_generator", True, "param_diff"
  s.bn, s.oh, s.bn_mmt = 0.1, 0.1, 0.9
  s.lr_g, s.lr_z, s.meta_lr_g, s.meta_lr_z = 2e-4, 0.01, 1e-4, 5e-3
  s.augment, s.crop_scale, s.keep = "resized_crop", (0.75, 1.0), "last"
  s.reset_l0 = False
  c.kd.augment, c.kd.crop_scale = "resized_crop", (0.08, 1.0)
  c.kd.momentum, c.kd.weight_decay, c.kd.temperature, c.kd.lr_min = 0.9, 1e-4, 5.0, 0.0
  c.pool.on_device, c.pool.memmap = False, True
  return c


def get_config(arg: str = "resnet50-resnet18"):
  if arg not in SETTINGS:
    raise ValueError(f"configs/fastdfkd_imagenet.py:{arg}: not a setting; use one of "
                     f"{', '.join(SETTINGS)}")
  c = _imagenet_synthesis(schema.base_config())
  c.mode, c.seed = "distill", 0
  if arg == "cpu":
    return _cpu(c)
  student = arg.split("-")[1]
  c.dataset.name = "imagenet"
  c.teacher.arch, c.student.arch = "resnet50_imagenet", f"{student}_imagenet"
  c.synth.adv, c.synth.nz, c.synth.ngf = _PAIRS[student], 256, 64
  c.k, c.synth.reinit_every, c.synth.calls_per_epoch = 50, 50, 10
  c.epochs, c.batch_size = 400, 100
  c.kd.steps, c.kd.lr, c.kd.cosine_epochs = 1000, 0.1, 400
  c.eval_batch_size, c.checkpoint_every, c.sample_every = 500, 1, 10
  return c


def _cpu(c):
  """CPU size on imagenet_mini (64 px, 10 classes): a resnet8 teacher trained first."""
  c.dataset.name = "imagenet_mini"
  c.teacher.arch, c.teacher.train_if_missing = "resnet8", True
  c.teacher.epochs, c.teacher.batch_size, c.teacher.lr = 4, 50, 0.05
  c.student.arch = "resnet8"
  c.synth.adv, c.synth.nz, c.synth.ngf = 1.0, 32, 16
  c.k, c.synth.reinit_every, c.synth.calls_per_epoch = 5, 4, 2
  c.epochs, c.batch_size = 6, 50
  c.kd.steps, c.kd.lr, c.kd.cosine_epochs = 20, 0.05, 6
  c.eval_batch_size, c.checkpoint_every, c.sample_every = 200, 2, 2
  return c
