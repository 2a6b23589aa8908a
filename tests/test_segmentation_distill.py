"""Segmentation teacher training and data-free distillation (issue 19, item 3), unit by
unit: pixel-wise losses, the tiny DeepLab pair, the segmentation synthesis loss
(bn * L_BN + adv * L_adv, no class target) of fast_meta / deepinversion / the
generative baselines, and the config checks. The runs of `modes.run` (a teacher, then
fast_meta and dafl students) are test_segmentation_runs.py's.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.config import checks as config_checks
from fastdfkd_jax import data, errors, models, synthesis
from fastdfkd_jax.training import objectives
from fastdfkd_jax.models import util as model_util
from fastdfkd_jax.synthesis import generative, losses as synth_losses

from conftest import compile_unoptimized, load_config_file

IMAGE = (16, 16, 3)


def test_pixel_cross_entropy_leaves_out_ignored_pixels():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  labels = rng.integers(0, 3, (2, 4, 4)).astype(np.uint8)
  labels[0, :2] = 255
  loss, acc = objectives.pixel_cross_entropy(logits, jnp.asarray(labels))
  valid = labels != 255
  logp = jax.nn.log_softmax(logits, -1)
  picked = np.take_along_axis(np.asarray(logp), np.where(valid, labels, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, -picked[valid].mean(), rtol=1e-6)
  np.testing.assert_allclose(acc, (np.asarray(logits).argmax(-1) == labels)[valid].mean())


def test_tiny_deeplab_pair_counts_and_outputs():
  """Parameter counts, 8 BN layers each, per-pixel logits and sown features."""
  for name, count, width in (("deeplab_tiny", 39_477, 32), ("deeplab_tiny_half", 10_141, 16)):
    model = models.get_model(name, 5)
    shapes = jax.eval_shape(lambda: model_util.init_variables(model, jax.random.key(0),
                                                              (32, 32, 3)))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"])) == count
    out, aux = jax.eval_shape(lambda: model.apply(
        jax.tree.map(jnp.zeros_like, shapes), jnp.zeros((2, 32, 32, 3)), train=False,
        mutable=["bn_stats", "features"]))
    assert out.shape == (2, 32, 32, 5)
    assert len(synth_losses.flatten_bn_stats(aux["bn_stats"])) == 8
    assert aux["features"]["penultimate"].shape == (2, 16, 16, width)


def test_per_pixel_synthesis_terms():
  """No class target for segmentation; one-hot and balance terms run per pixel."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  l_oh, metrics = synth_losses.target_terms(logits, jnp.zeros((2,), jnp.int32), True)
  assert float(l_oh) == 0.0 and metrics == {}
  flat = logits.reshape(-1, 4)
  np.testing.assert_allclose(synth_losses.one_hot_loss(logits, logits.argmax(-1)),
                             synth_losses.one_hot_loss(flat, flat.argmax(-1)), rtol=1e-6)
  np.testing.assert_allclose(generative.balance_loss(logits), generative.balance_loss(flat),
                             rtol=1e-6)


def _seg_config(method="fast_meta"):
  c = load_config_file("fastdfkd_seg_cpu.py", method)
  c.batch_size, c.k, c.synth.nz, c.synth.ngf = 4, 1, 8, 4   # one inner step: one compile
  return c


@pytest.mark.parametrize("method", ["fast_meta", "deepinversion", "dafl", "dfad",
                                    "fast_meta+balance"])
def test_segmentation_synthesis_call(method):
  """One synthesis call of each method family on per-pixel models: images of the task's
  resolution, finite losses, no class-target metrics; `synth.balance` adds DAFL's
  class-balance term to an inversion method."""
  method, balance = method.partition("+")[::2]
  c = _seg_config(method)
  if method == "fast_meta":   # the paper's loss, and the CPU config's DAFL term
    c.synth.balance = 0.5 if balance else 0.0
  info = dataclasses.replace(data.get_info("shapes_seg"), image_shape=IMAGE)
  teacher = models.get_model("deeplab_tiny_half", 5, axis_name=None)
  variables = model_util.init_variables(teacher, jax.random.key(0), IMAGE)
  synth = synthesis.build(c, teacher=teacher, student=teacher, info=info, axis_name=None,
                          unroll=True)
  state = synth.init(jax.random.key(1), variables)
  call = compile_unoptimized(synth.synthesize, state, variables, variables,
                             jax.random.key(2), jnp.float32(1.0))
  _, images, metrics = call(state, variables, variables, jax.random.key(2), jnp.float32(1.0))
  assert images.shape == (4,) + IMAGE and images.dtype == jnp.uint8
  assert "loss_bn" in metrics and "teacher_target_acc" not in metrics
  assert all(np.isfinite(float(v)) for v in metrics.values())
  if balance:   # sum_c p_c log p_c lies in [-log C, 0]
    assert -np.log(5) - 1e-5 <= float(metrics["loss_balance"]) <= 0.0


@pytest.mark.parametrize("change, match", [
    (dict(task="classification"), "segmentation set"),
    (dict(oh=0.5), "no class target"),
    (dict(method="cmi"), "classification only"),
    (dict(mode="synthesize"), "classification only"),
])
def test_segmentation_config_refusals(change, match):
  c = load_config_file("fastdfkd_seg_cpu.py", "fast_meta")
  for key, value in change.items():
    if key == "oh":
      c.synth.oh = value
    else:
      c[key] = value
  with pytest.raises(errors.UserError, match=match):
    config_checks.validate(c)


@pytest.mark.parametrize("name", ["fastdfkd_nyuv2.py", "fastdfkd_seg_cpu.py"])
def test_every_seg_config_validates(name):
  """Every row validates; the distillation rows share one KD budget."""
  budgets = set()
  for run in ("teacher", "fast_meta", "deepinversion", "dafl", "dfad", "noise", "real"):
    c = load_config_file(name, run)
    config_checks.validate(c)
    assert c.task == "segmentation"
    if run != "teacher":
      budgets.add((c.epochs - c.warmup) * c.kd.steps)
  assert len(budgets) == 1


def test_nyuv2_config_is_the_papers_pair():
  c = load_config_file("fastdfkd_nyuv2.py", "fast_meta")
  assert (c.teacher.arch, c.student.arch, c.dataset.name) == (
      "deeplabv3_resnet50", "deeplabv3_mobilenet", "nyuv2")
  assert c.synth.oh == 0 and data.get_info("nyuv2").image_shape == (128, 128, 3)
