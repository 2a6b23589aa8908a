"""The one base config every run starts from: every field and its default.

Config files in `configs/` call `base_config()` and override fields; `main.py`
without `--config` runs `default_config()` (digits, teacher training + FastDFKD,
a few minutes on a laptop CPU). Every constant of a run lives here; `config_checks`
validates a config against it.
"""


import ml_collections


MODES = ("train_teacher", "evaluate", "distill", "synthesize")
# What a model predicts: one class per image, or one class per pixel (the data set's
# `DatasetInfo.task` must agree; segmentation uses pixel-wise CE, mIoU and pixel-wise KD).
TASKS = ("classification", "segmentation")
SCHEDULES = ("cosine", "poly")
OPTIMIZERS = ("sgd", "adam")
KD_SOURCES = ("synthetic", "real", "noise", "dataset")
META_GRADS = ("param_diff", "sum_inner_grads")
LOOPS = ("auto", "scan", "host", "fused")
INNER_LOOPS = ("auto", "scan", "unroll", "host")
DTYPES = ("float32", "bfloat16", "auto")
KD_LOSSES = ("kl", "l1")
AUGMENTS = ("crop", "resized_crop")
KEEP_IMAGES = ("best", "last")
GENERATORS = ("generator", "deep_generator")
# The release's per-k synthesis step sizes: k -> (lr_g, lr_z) (reference doc, section 5).
PAPER_STEP_LRS = {2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)}
# The generator-vs-student baselines as the release's scripts/<method>_cifar.sh run them
# (`generative_preset`): the loss weights and kd.loss define the method (`validate`
# refuses others; method=generative takes any); nz (datafree_kd.py), kd_steps, T, the
# generator steps per round (k, --g_steps) and lr_g are the scripts' other settings.
GENERATIVE_WEIGHTS = ("adv", "bn", "oh", "act", "balance")
_RELEASE_GENERATOR = dict(k=1, lr_g=1e-3, nz=256, kd_steps=5, temperature=20.0)
GENERATIVE_PRESETS = {
    "dafl": dict(_RELEASE_GENERATOR, adv=0.0, bn=0.0, oh=1.0, act=1e-3, balance=20.0,
                 loss="kl", nz=512),
    "zskt": dict(_RELEASE_GENERATOR, adv=1.0, bn=0.0, oh=0.0, act=0.0, balance=0.0,
                 loss="kl"),
    "dfq": dict(_RELEASE_GENERATOR, adv=1.0, bn=1.0, oh=1.0, act=0.0, balance=20.0,
                loss="kl", kd_steps=10),
    "dfad": dict(_RELEASE_GENERATOR, adv=1.0, bn=0.0, oh=0.0, act=0.0, balance=0.0,
                 loss="l1", temperature=1.0),
}


def base_config() -> ml_collections.ConfigDict:
  """All fields with the release's defaults (reference doc, section 5)."""
  c = ml_collections.ConfigDict()
  c.mode = "distill"
  c.task = "classification"      # | 'segmentation' (TASKS): the one task switch
  c.seed = 0
  c.dataset = _dataset_config()

  # train_teacher / evaluate.
  c.model = "resnet8"            # architecture trained by mode=train_teacher
  c.checkpoint = ""              # mode=evaluate: checkpoint directory (or a .pth)
  c.epochs = 200                 # train_teacher: epochs; distill: total epochs incl. warmup
  c.batch_size = 256             # train_teacher batch; distill: synthesis and KD batch
  c.optim = _optim_config()
  c.eval_batch_size = 500

  # distill: teacher (loaded, or trained first when missing and allowed).
  c.teacher = _teacher_config()
  c.student = ml_collections.ConfigDict()
  c.student.arch = "resnet8"
  c.student.sync_bn = True       # cross-device BN for the student's train-mode BN

  # FastDFKD synthesis.
  c.method = "fast_meta"         # a synthesis method: fastdfkd_jax.synthesis.available()
  c.k = 5                        # inner steps per synthesis call (generator updates per
                                 # round for the generator-vs-student methods: --g_steps)
  c.warmup = 20                  # synthesis-only epochs (adversarial term off)
  c.synth = _synth_config()
  c.kd = _kd_config()
  c.cmi = _cmi_config()
  c.deepinversion = _deepinversion_config()
  c.nayer = _nayer_config()
  c.pool = ml_collections.ConfigDict()
  c.pool.capacity = 0            # images; 0 = every synthesized image (epochs * batch)
  c.pool.on_device = True        # False: host-memory ring buffer
  c.pool.memmap = False          # with on_device=False: the ring buffer memory-mapped in
                                 # WORKDIR/pool.npy (referenced from the checkpoint)
  c.transfer = _transfer_config()

  # Loop structure, chosen in one place (loops, distill.builder): 'auto' = lax.scan on
  # TPU/GPU, host-driven jitted steps on CPU (XLA:CPU conv grads in loops are ~50x slower).
  c.loop = "auto"                # | 'scan' | 'host' | 'fused': synthesis + KD in one dispatch
  # The k inner synthesis steps: 'scan' (one call holding a lax.scan), 'unroll' (one
  # call, the k steps traced straight-line), 'host' (k dispatches of one compiled
  # step); 'auto' = 'host' on CPU, 'scan' on TPU/GPU (see loops.inner_structure).
  c.inner_unroll = "auto"
  # Activations: 'float32' | 'bfloat16' | 'auto' (bfloat16 on TPU/GPU and on CPUs with
  # native bfloat16, float32 on other CPUs, where bfloat16 is emulated and slower:
  # xla_env.py); params, BN stats and losses stay float32.
  c.dtype = "float32"
  # bfloat16 on CPU: the project sets XLA's oneDNN custom-call flag (xla_env.py) so
  # the CPU's bfloat16 units run the convolutions; False leaves XLA_FLAGS alone.
  c.cpu_onednn = True

  c.eval_every = 1
  # BN running statistics recomputed from the final weights before the last evaluation
  # (models/precise_bn.py): train_teacher over the un-augmented training split.
  c.precise_bn = True
  c.log_every = 50               # steps between log lines inside an epoch
  c.checkpoint_every = 5         # epochs
  c.keep_checkpoints = 2
  c.stop_at = 0.0               # Unix s: checkpoint and stop after the epoch passing it
  c.sample_every = 10            # epochs between samples/epoch_NNNN.png grids
  c.allow_config_change = False
  return c


def _dataset_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = "digits"
  d.data_dir = ""                # empty: TFDS (needs internet); else local files
  d.cache_dir = ""               # where archives are unpacked/decoded; empty: ~/.cache
  return d


def _optim_config() -> ml_collections.ConfigDict:
  """mode=train_teacher's optimizer."""
  o = ml_collections.ConfigDict()
  o.optimizer = "sgd"            # | 'adam' (PyTorch's: betas 0.9/0.999, decay in the grad)
  o.lr = 0.1                     # decayed per step to 0 by `schedule`
  o.momentum = 0.9               # SGD only
  o.weight_decay = 5e-4
  o.warmup_epochs = 0
  o.schedule = "cosine"          # | 'poly': lr (1 - step / steps) ** poly_power
  o.poly_power = 0.9
  return o


def _teacher_config() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.arch = "resnet20"
  t.checkpoint = ""              # orbax checkpoint dir or a release .pth
  t.train_if_missing = False
  t.epochs = 30                  # used only when the teacher is trained first
  t.batch_size = 128
  t.lr = 0.1
  t.weight_decay = 5e-4
  return t


def _synth_config() -> ml_collections.ConfigDict:
  """The synthesis method's generator, step sizes and loss weights."""
  s = ml_collections.ConfigDict()
  s.nz = 256
  s.ngf = 64
  s.lr_g = 3e-3
  s.lr_z = 1e-2
  s.adv = 1.1
  s.bn = 10.0
  s.oh = 0.4
  s.bn_mmt = 0.9
  s.betas = (0.5, 0.999)
  s.meta_grad = "param_diff"     # the paper's Eq. 10; 'sum_inner_grads' is the release's
  s.reset_l0 = True
  s.reset_l0_epoch = 140         # 120 + warmup in the release
  s.deepinv_lr = 0.1             # method=deepinv: Adam on pixel logits
  s.deepinv_betas = (0.5, 0.99)  # deepinv and deepinversion: Adam betas on pixels
  # Generator-vs-student methods (generative, dafl, zskt, dfq, dfad): the DAFL activation
  # and class-balance weights, and the student updates per round (--kd_steps).
  s.act = 0.0
  s.balance = 0.0
  s.kd_steps = 5
  # The ImageNet release (fast_meta_imagenet.py, datafree_kd_imagenet.py); the defaults
  # keep the CIFAR behaviour. generator: 'generator' | 'deep_generator' (fast_meta,
  # fast, deepinv). meta_lr_g: fast_meta's meta Adam lr (0: lr_g * k, the CIFAR
  # release). meta_latent: the latent is meta-learned across calls with Adam(meta_lr_z).
  # reinit_every: a fresh meta latent and meta optimizer at every such call (0: never).
  s.generator = "generator"
  s.meta_lr_g = 0.0
  s.meta_latent = False
  s.meta_lr_z = 5e-3
  s.reinit_every = 0
  # Synthesis calls per epoch (pool methods): the epoch's kd.steps are split evenly
  # after each call (the release's ep_steps // kd_steps rounds).
  s.calls_per_epoch = 1
  # A whole new generator every g_life epochs (methods with `reinit_generator`: nayer);
  # 0: never.
  s.g_life = 0
  s.augment = "crop"             # in the synthesis loss: 'crop' (pad, crop, flip) |
  s.crop_scale = (0.75, 1.0)     # 'resized_crop': RandomResizedCrop(scale, ratio) + flip
  s.crop_ratio = (0.75, 4 / 3)
  s.keep = "best"                # the pool gets the lowest-loss step's images | 'last'
  return s


def _cmi_config() -> ml_collections.ConfigDict:
  """method=cmi (the release's contrastive.py and datafree_kd.py); k is its g_steps,
  synth.lr_g / betas / nz / ngf / adv / bn / oh its generator and loss weights."""
  m = ml_collections.ConfigDict()
  m.cr = 0.8                     # weight of the contrastive loss L_cr
  m.cr_T = 0.2                   # its temperature (the release's scripts; class default 0.1)
  m.bank_size = 40960            # memory bank rows (one row: a local + global feature)
  m.n_neg = 4096                 # bank rows sampled as negatives per step
  m.head_dim = 256               # MLP head output (the head's hidden width = feature dim)
  m.head_betas = (0.9, 0.999)    # the head's Adam (lr = synth.lr_g, PyTorch's default betas)
  m.local_scale = (0.25, 1.0)    # local view: RandomResizedCrop area fraction
  m.local_ratio = (0.75, 4 / 3)  # and aspect ratio
  m.init_std = 0.02              # the generator's re-initialisation every call
  return m


def _nayer_config() -> ml_collections.ConfigDict:
  """method=nayer (synthesis/nayer.py); k is its g_steps, synth.calls_per_epoch its
  g_loops, synth.g_life its g_life; synth.lr_g, adv, bn, oh as FastDFKD's."""
  n = ml_collections.ConfigDict()
  n.label_embedding = ""         # .npy / .npz / NAYER's <dataset>_le.pickle, a row per
                                 # class; "": fixed random orthonormal rows (no text model)
  n.le_size = 512                # width of those built-in rows (CLIP ViT-B/32's)
  n.le_emb_size = 1000           # the noisy layer's width (the generator body's nz)
  return n


def _deepinversion_config() -> ml_collections.ConfigDict:
  """method=deepinversion (the release's deepinversion.py); k is its g_steps,
  synth.lr_g the pixel step size, synth.deepinv_betas its Adam betas."""
  d = ml_collections.ConfigDict()
  d.tv = 0.0                     # l1 TV prior weight (the release's scripts pass 0)
  d.tv_l2 = 0.0                  # l2 TV prior weight (the original DeepInversion's)
  d.l2 = 0.0                     # weight of ||x||_2 (the release's scripts pass 0)
  d.jitter = 0.125               # random roll up to this fraction of H and W
  d.flip = True                  # random horizontal flip of the whole batch
  d.js_T = 3.0                   # temperature of the JS competition term
  d.student_bn = 0.001           # minus this times the student's BN prior
  return d


def _kd_config() -> ml_collections.ConfigDict:
  """KD on the synthetic pool (or on a baseline source)."""
  k = ml_collections.ConfigDict()
  k.steps = 400                  # KD updates per epoch after warmup
  k.optimizer = "sgd"            # | 'adam' (PyTorch's: betas 0.9/0.999, decay in the grad)
  k.lr = 0.2
  k.momentum = 0.9               # SGD only
  k.weight_decay = 1e-4
  k.temperature = 20.0
  k.loss = "kl"                  # 'kl' (at temperature) | 'l1' on logits (DFAD)
  k.augment = "crop"             # KD batches: 'crop' (pad, crop, flip) | 'resized_crop'
  k.crop_scale = (0.08, 1.0)     # resized_crop: torchvision's RandomResizedCrop defaults
  k.crop_ratio = (0.75, 4 / 3)
  k.lr_min = 2e-4                # cosine eta_min
  k.cosine_epochs = 200          # cosine T_max, stepped per epoch after warmup
  # What KD trains on: 'synthetic' (the method), or the baselines 'real' (the real
  # training set: the upper bound) and 'noise' (fresh uniform-noise images each step:
  # the lower bound). The baselines skip synthesis and the warmup epochs and keep the
  # KD schedule (epochs, steps, lr) of the synthetic run.
  k.source = "synthetic"
  # kd.source='dataset': KD on an exported transfer set (the directory OUT of
  # `python -m fastdfkd_jax.export WORKDIR OUT`, or WORKDIR/transfer_set of
  # mode=synthesize), on the same schedule, without synthesis.
  k.dataset_dir = ""
  return k


def _transfer_config() -> ml_collections.ConfigDict:
  """Transfer sets: mode=synthesize and `python -m fastdfkd_jax.export`."""
  t = ml_collections.ConfigDict()
  t.num_images = 5120            # mode=synthesize: the set's size (whole synthesis calls
                                 # of batch_size are made, the first num_images kept)
  t.format = "npz"               # 'image_folder' | 'npz' | 'array_record'; what
                                 # mode=synthesize writes, the export's --format default
  t.diversity_images = 1000      # images (synthetic, real) in summary.json's diversity
  t.grid_images = 64             # images per class grid (OUT/grids/class_<c>.png)
  return t


def default_config() -> ml_collections.ConfigDict:
  """The embedded default: digits teacher (trained first) + FastDFKD, CPU minutes."""
  c = base_config()
  c.mode = "distill"
  c.dataset.name = "digits"
  c.teacher.arch = "resnet20"
  c.teacher.train_if_missing = True
  c.teacher.epochs = 30
  c.teacher.batch_size = 64
  c.teacher.lr = 0.05
  c.student.arch = "resnet8"
  c.epochs = 40
  c.warmup = 5
  c.k = 5
  c.batch_size = 128
  c.synth.nz = 64
  c.synth.ngf = 32
  c.synth.reset_l0 = False
  c.kd.steps = 30
  c.kd.lr = 0.05
  c.kd.cosine_epochs = 35
  c.kd.temperature = 20.0
  c.sample_every = 5
  return c


def generative_preset(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """Sets `c.method` and the release script's settings of a generator-vs-student baseline
  (GENERATIVE_PRESETS); returns `c`."""
  p = GENERATIVE_PRESETS[method]
  c.method, c.k = method, p["k"]
  for w in GENERATIVE_WEIGHTS:
    c.synth[w] = p[w]
  c.synth.nz, c.synth.lr_g, c.synth.kd_steps = p["nz"], p["lr_g"], p["kd_steps"]
  c.kd.loss, c.kd.temperature = p["loss"], p["temperature"]
  return c
