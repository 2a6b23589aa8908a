"""Model zoo registry: `get_model(name, num_classes, **kw)` and `list_models()`.

Every classifier is a Flax Linen module, NHWC, called as
`model.apply(variables, x, train=bool)` -> float32 logits (N, num_classes),
with collections `params` and (for BN models) `batch_stats`. Names follow the
release (reference doc, section 7).
"""

from typing import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Decorator registering a factory `f(num_classes, **kw) -> nn.Module`."""

  def deco(fn):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn

  return deco


def list_models() -> list[str]:
  """Names accepted by `get_model`, sorted."""
  _import_all()
  return sorted(_REGISTRY)


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
  """Builds a zoo model by its release name.

  Args:
    name: e.g. 'resnet20', 'wrn40_2', 'generator'.
    num_classes: classifier outputs (ignored by the generator).
    **kwargs: module fields, e.g. `dtype`, `axis_name`, generator `nz`/`ngf`/
      `img_size`/`channels`.

  Returns:
    An unbound Flax module.

  Raises:
    ValueError: unknown name; the message lists the valid ones.
  """
  _import_all()
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown model {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


def _import_all():
  # Importing the modules runs their @register decorators.
  from fastdfkd_jax.models import generator, lenet, resnet, resnet_cifar, vgg, wrn  # noqa: F401
  from fastdfkd_jax.models import (  # noqa: F401
      deep_generator, deeplab, deeplab_tiny, mobilenetv2, noisy_generator, resnet_imagenet)
