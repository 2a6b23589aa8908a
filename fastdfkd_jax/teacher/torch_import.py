"""Imports the release's PyTorch checkpoints (.pth) into Flax variables.

    variables = convert_state_dict(state_dict, 'wrn40_2', 10, (32, 32, 3))
    variables = load_pth('wrn40_2.pth', 'wrn40_2', 10, (32, 32, 3))

and `import_to_checkpoint`, an orbax teacher checkpoint that `teacher.loader.load(OUT_DIR)`
and `mode=distill --config.teacher.checkpoint=OUT_DIR` accept (the command line
`python -m fastdfkd_jax.import_torch --arch=wrn40_2 wrn40_2.pth OUT_DIR`).

Supported: the tiny ResNets (resnet8/20/32/56), resnet18/34, the WRNs, VGG-BN
(vgg8/vgg11), lenet5/lenet5_half and the generator, with the key layouts of the
reference doc, section 7; torchvision's resnet18, resnet50 and mobilenet_v2
(`resnet18_imagenet`, `resnet50_imagenet`, `mobilenetv2_imagenet`), the
release's DeepGenerator (`deep_generator`) and its DeepLabV3 segmentation models
(`deeplabv3_resnet50`, `deeplabv3_mobilenet`; `convert_state_dict`/`load_pth` only:
the CLI imports classifiers of the registered data sets). Each model file's
docstring gives its Flax <-> PyTorch name mapping. The expected Flax tree is built
abstractly (jax.eval_shape of `init_variables`) and every leaf is looked up by
name, so a checkpoint of the wrong architecture, class count or input size fails with one
`errors.UserError` that lists every missing, unexpected and mis-shaped key.

Conversions: conv OIHW -> HWIO; Linear weight (out, in) -> Dense kernel
(in, out); BN weight/bias/running_mean/running_var -> params scale/bias and
batch_stats mean/var (`num_batches_tracked` is ignored). Two layers also need
their units reordered because PyTorch flattens/reshapes NCHW and Flax NHWC:
LeNet's `fc1` input rows and the generator's `l1` output units, both
(c, h, w) -> (h, w, c).

No PyTorch is needed: `load_pth` reads the file with `teacher.pth` (weights only), and
`convert_state_dict` takes numpy arrays (or torch tensors, where a caller has them).
"""

import os
import shutil
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from fastdfkd_jax.run import checkpoint
from fastdfkd_jax import data, errors, models
from fastdfkd_jax.teacher import pth
from fastdfkd_jax.models import util as model_util

# Flax module name -> PyTorch key prefix of the release's generator.
_GENERATOR_NAMES = {
    "l1": "l1.0", "bn0": "conv_blocks.0", "conv1": "conv_blocks.2",
    "bn1": "conv_blocks.3", "conv2": "conv_blocks.6", "bn2": "conv_blocks.7",
    "conv3": "conv_blocks.9",
}
_DEEP_GENERATOR_NAMES = {
    "l1": "l1.0", "conv0": "conv_blocks.0", "bn0": "conv_blocks.1",
    "conv1": "conv_blocks.4", "bn1": "conv_blocks.5", "conv2": "conv_blocks.8",
    "bn2": "conv_blocks.9", "conv3": "conv_blocks.12", "bn3": "conv_blocks.13",
    "conv4": "conv_blocks.16", "bn4": "conv_blocks.17", "conv5": "conv_blocks.19",
}
_NAME_MAPS = {"generator": _GENERATOR_NAMES, "deep_generator": _DEEP_GENERATOR_NAMES}
# Generator arch -> the release keys whose dimension 1 is nz and ngf.
_GENERATOR_SIZE_KEYS = {"generator": ("l1.0.weight", "conv_blocks.9.weight"),
                        "deep_generator": ("conv_blocks.0.weight", "conv_blocks.19.weight")}
# Flax module names kept as they are in the PyTorch key (deeplabv3_mobilenet).
_VERBATIM_NAMES = ("low_level_features", "high_level_features")
_WRAPPER_KEYS = ("state_dict", "model", "net", "student", "teacher")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


# ------------------------------------------------------------------ helpers
def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor (bf16/half are cast below)
    x = x.detach().cpu()
    if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
      x = x.float()
    x = x.numpy()
  return np.asarray(x)


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
  """The flat name -> tensor mapping of a loaded checkpoint.

  Accepts a plain state_dict, one under 'state_dict' (or 'model', 'net', ...),
  with or without the 'module.' prefix that (Distributed)DataParallel adds.
  """
  if not isinstance(obj, Mapping):
    raise errors.UserError(
        f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}; "
        "if the file holds a whole pickled nn.Module, re-save its .state_dict()")
  for key in _WRAPPER_KEYS:
    inner = obj.get(key)
    if isinstance(inner, Mapping) and inner and not _looks_like_weights(obj):
      return unwrap_state_dict(inner)
  sd = {}
  for k, v in obj.items():
    if not isinstance(k, str):
      raise errors.UserError(f"state_dict key {k!r} is not a string")
    name = k[len("module."):] if k.startswith("module.") else k
    sd[name] = v
  return sd


def _looks_like_weights(obj: Mapping) -> bool:
  """True where `obj` itself is a state_dict (its values are arrays)."""
  return any(hasattr(v, "shape") and k.endswith(("weight", "bias", "running_mean"))
             for k, v in obj.items() if isinstance(k, str))


def _torch_prefix(arch: str, path: Sequence[str]) -> str:
  """PyTorch module prefix of the Flax module path (leaf name excluded)."""
  if arch in _NAME_MAPS:
    return ".".join(_NAME_MAPS[arch].get(p, p) for p in path)
  # Classifiers: every '_' in a Flax module name stands for a '.' of the
  # release key (layer2_0 -> layer2.0, downsample_1 -> downsample.1,
  # block1_layer_0 -> block1.layer.0, block3_4 -> block3.4), except in the
  # DeepLab MobileNetV2's stage names, which the release spells with '_'.
  return ".".join(p if p in _VERBATIM_NAMES else p.replace("_", ".") for p in path)


def _leaf_rule(collection: str, module_path: Sequence[str], leaf: str,
               flax_shape: tuple[int, ...], is_bn: bool):
  """(torch suffix, torch shape, kind) of one Flax leaf."""
  if collection == "batch_stats":
    return {"mean": "running_mean", "var": "running_var"}[leaf], flax_shape, "copy"
  if leaf == "scale":
    return "weight", flax_shape, "copy"
  if leaf == "bias":
    return "bias", flax_shape, "copy"
  if leaf == "kernel" and len(flax_shape) == 4:  # conv HWIO <- OIHW
    h, w, i, o = flax_shape
    return "weight", (o, i, h, w), "conv"
  if leaf == "kernel" and len(flax_shape) == 2:  # Dense (in, out) <- Linear (out, in)
    return "weight", (flax_shape[1], flax_shape[0]), "dense"
  raise ValueError(f"no PyTorch rule for {collection}/{'/'.join(module_path)}/{leaf} "
                   f"of shape {flax_shape} (is_bn={is_bn})")


def _build_model(arch: str, num_classes: int, input_shape, state_dict, model_kwargs):
  """(module, init input shape) for `arch`; a generator's sizes come from `state_dict`."""
  if arch not in _GENERATOR_SIZE_KEYS:
    return models.get_model(arch, num_classes, **model_kwargs), tuple(input_shape)
  kw = dict(model_kwargs)
  h, _, c = tuple(input_shape) if len(input_shape) == 3 else (None, None, None)
  for field, key in zip(("nz", "ngf"), _GENERATOR_SIZE_KEYS[arch]):
    w = state_dict.get(key)
    if field not in kw and w is not None and w.ndim >= 2:
      kw[field] = int(w.shape[1])
  if h is not None:
    kw.setdefault("img_size", int(h))
    kw.setdefault("channels", int(c))
  module = models.get_model(arch, **kw)
  return module, (module.latent_shape if arch == "deep_generator" else (module.nz,))


def _reorder_chw_rows(kernel: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
  """Dense kernel rows from torch (c, h, w) flatten order to Flax (h, w, c)."""
  c, h, w = chw
  out = kernel.shape[1]
  return kernel.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(h * w * c, out)


def _lenet_fc1_chw(input_shape, expected_flat) -> tuple[int, int, int]:
  h, w = int(input_shape[0]), int(input_shape[1])
  for _ in range(2):  # conv 5x5 VALID + maxpool 2, twice
    h, w = (h - 4) // 2, (w - 4) // 2
  c = expected_flat[("params", "conv2", "kernel")].shape[-1]
  return c, h, w


def _check_fit(sd: Mapping[str, Any], plan: dict, what: str) -> None:
  """Raises one errors.UserError listing every missing, unexpected and mis-shaped key."""
  missing, mis_shaped = [], []
  for key, torch_shape, _ in plan.values():
    if key not in sd:
      missing.append(f"{key} (expected shape {torch_shape})")
      continue
    got = tuple(sd[key].shape) if hasattr(sd[key], "shape") else np.shape(sd[key])
    if got != torch_shape:
      mis_shaped.append(f"{key}: expected {torch_shape}, got {got}")
  used = {key for key, _, _ in plan.values()}
  unexpected = sorted(k for k in sd if k not in used)
  if missing or unexpected or mis_shaped:
    parts = [f"state_dict does not fit {what}:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("mis-shaped keys", mis_shaped)):
      if items:
        parts.append(f"  {len(items)} {title}:\n    " + "\n    ".join(items))
    raise errors.UserError("\n".join(parts))


def _plan(arch: str, num_classes: int, input_shape, sd: Mapping[str, Any], model_kwargs):
  """(module, flat abstract Flax variables, {flax path: (torch key, torch shape, kind)})."""
  if arch not in models.list_models():
    raise errors.UserError(
        f"unknown arch {arch!r}; valid names: {', '.join(models.list_models())}")
  module, init_shape = _build_model(arch, num_classes, input_shape, sd, model_kwargs)
  try:
    abstract = jax.eval_shape(
        lambda k: model_util.init_variables(module, k, init_shape), jax.random.key(0))
  except errors.UserError as e:  # e.g. LeNet on a too small input
    raise errors.UserError(
        f"cannot build {arch} for input shape {tuple(input_shape)}: {e}") from e
  expected = traverse_util.flatten_dict(abstract)
  bn_modules = {path[1:-1] for path in expected if path[0] == "params" and path[-1] == "scale"}
  plan = {}
  for path, leaf in expected.items():
    collection, module_path, name = path[0], path[1:-1], path[-1]
    suffix, torch_shape, kind = _leaf_rule(collection, module_path, name, tuple(leaf.shape),
                                           module_path in bn_modules)
    plan[path] = (f"{_torch_prefix(arch, module_path)}.{suffix}", torch_shape, kind)
  return module, expected, plan


# ------------------------------------------------------------------ API
def torch_layout(arch: str, num_classes: int, input_shape: Sequence[int],
                 **model_kwargs) -> dict[str, tuple[int, ...]]:
  """The release state_dict a classifier `arch` needs: PyTorch key -> shape.

  What `convert_state_dict` checks a checkpoint against (`num_batches_tracked`
  aside); e.g. to see why a `.pth` does not fit.
  """
  _, _, plan = _plan(arch, num_classes, input_shape, {}, model_kwargs)
  return {key: shape for key, shape, _ in plan.values()}


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, num_classes: int,
                       input_shape: Sequence[int], **model_kwargs) -> dict[str, Any]:
  """Converts a release PyTorch state_dict into Flax variables (numpy).

  Args:
    state_dict: name -> array (numpy or torch); may be wrapped under
      'state_dict'/'model' and carry a 'module.' prefix.
    arch: zoo name (`models.list_models()`).
    num_classes: classifier outputs (ignored by the generator).
    input_shape: (H, W, C) of one input image. For a generator (`generator`,
      `deep_generator`): the image shape it produces (img_size = H, channels =
      C); nz and ngf are read off the state_dict unless given in `model_kwargs`.
    **model_kwargs: extra module fields for `models.get_model`.

  Returns:
    The structure of `init_variables` for the model: {'params', 'batch_stats'}
    (only 'params' for LeNet, which has no BN), float32 numpy leaves.

  Raises:
    errors.UserError: unknown arch, or state_dict keys that do not fit; the
      message lists all missing, unexpected and mis-shaped keys (expected vs
      got, in PyTorch layout).
  """
  sd = unwrap_state_dict(state_dict)
  sd = {k: v for k, v in sd.items() if not k.endswith(_IGNORED_SUFFIXES)}
  module, expected, plan = _plan(arch, num_classes, input_shape, sd, model_kwargs)
  _check_fit(sd, plan, f"{arch} (num_classes={num_classes}, "
                        f"input_shape={tuple(input_shape)})")

  out = {}
  for path, (key, _, kind) in plan.items():
    value = _to_numpy(sd[key]).astype(np.float32)
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif kind == "dense":
      value = value.T
    module_name = path[1] if len(path) > 2 else ""
    if arch.startswith("lenet") and path == ("params", "fc1", "kernel"):
      chw = _lenet_fc1_chw(input_shape, expected)
      value = _reorder_chw_rows(value, chw)
    elif arch == "generator" and module_name == "l1":
      init, c2 = module.img_size // 4, 2 * module.ngf
      if path[-1] == "kernel":  # (nz, c*h*w) -> (nz, h*w*c)
        value = _reorder_chw_rows(value.T, (c2, init, init)).T
      else:
        value = value.reshape(c2, init, init).transpose(1, 2, 0).reshape(-1)
    out[path] = np.ascontiguousarray(value, dtype=expected[path].dtype)
  return traverse_util.unflatten_dict(out)


def load_pth(path: str, arch: str, num_classes: int, input_shape: Sequence[int],
             **model_kwargs) -> dict[str, Any]:
  """Reads a PyTorch checkpoint without torch (`teacher.pth`: tensors and plain containers
  only) and converts it (`convert_state_dict`).

  Raises:
    errors.UserError: no such file, a file that is no readable torch checkpoint or holds
      other Python objects, or one that is not a fitting state_dict.
  """
  return convert_state_dict(pth.read(path), arch, num_classes, input_shape, **model_kwargs)


def import_to_checkpoint(pth: str, out_dir: str, arch: str, dataset: str = "cifar10",
                         num_classes: int | None = None, overwrite: bool = False) -> dict:
  """Converts `pth` and writes an orbax teacher checkpoint into out_dir/checkpoints.

  Returns the checkpoint's meta dict.
  """
  if arch in _GENERATOR_SIZE_KEYS:
    raise errors.UserError("the CLI imports classifiers (teachers); convert a generator with "
                     "convert_state_dict/load_pth instead")
  info = data.get_info(dataset)
  if num_classes is not None and num_classes != info.num_classes:
    raise errors.UserError(f"--num_classes={num_classes} but dataset {dataset} has "
                     f"{info.num_classes} classes")
  variables = load_pth(pth, arch, info.num_classes, tuple(info.image_shape))
  directory = os.path.join(os.path.abspath(out_dir), "checkpoints")
  if os.path.isdir(directory) and os.listdir(directory):
    if not overwrite:
      raise errors.UserError(f"{directory} is not empty; pass --overwrite to replace it")
    shutil.rmtree(directory)
  meta = checkpoint.model_meta(arch, info, "import", source=os.path.abspath(pth))
  mngr = checkpoint.manager(directory)
  checkpoint.save(mngr, 0, meta, variables)
  mngr.close()
  return meta
