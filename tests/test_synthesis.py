"""Tests of the FastDFKD synthesizer (fastdfkd_jax.synthesis) on tiny models.

resnet8 teacher/student on 8x8x1 images, generator nz=16 ngf=8, batch 8, k=2,
axis_name=None (plain per-device code outside shard_map). XLA:CPU runs conv
gradients inside lax.scan slowly, so the scanned variant runs once.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fastdfkd_jax import augment, losses, models, synthesis
from fastdfkd_jax.models import util as model_util

IMAGE_SHAPE = (8, 8, 1)
MEAN, STD, PADDING = (0.3054,), (0.3757,), 1
BATCH, NZ, K = 8, 16, 2
ADV = jnp.float32(1.1)


@pytest.fixture(scope="module")
def nets():
  teacher = models.get_model("resnet8", 10, axis_name=None)
  student = models.get_model("resnet8", 10, axis_name=None)
  generator = models.get_model("generator", nz=NZ, ngf=8, img_size=8, channels=1,
                               axis_name=None)
  tv = model_util.init_variables(teacher, jax.random.key(1), IMAGE_SHAPE)
  sv = model_util.init_variables(student, jax.random.key(2), IMAGE_SHAPE)
  # Non-trivial running statistics, so the BN prior is not centred on (0, 1).
  tv = dict(tv, batch_stats=jax.tree.map(lambda s: s * 0.5 + 0.1, tv["batch_stats"]))
  return teacher, student, generator, tv, sv


def make_synth(nets, cls=synthesis.Synthesizer, **hp):
  teacher, student, generator, _, _ = nets
  hp = dict(dict(k=K, batch_size=BATCH, nz=NZ, unroll=True), **hp)
  return cls(generator=generator, teacher=teacher, student=student,
             hp=synthesis.SynthesisHParams(**hp), num_classes=10,
             image_shape=IMAGE_SHAPE, mean=MEAN, std=STD, padding=PADDING, axis_name=None)


def run(synth, state, nets, key, adv=ADV):
  _, _, _, tv, sv = nets
  return jax.jit(synth.synthesize)(state, tv, sv, key, adv)


class RecordMetaGrad(synthesis.Synthesizer):
  """Plain-SGD inner loop; the 'meta optimiser' stores the meta-gradient as its state."""

  def gen_tx(self, lr):
    return optax.sgd(lr)

  def meta_tx(self):
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


class RecordMetaGradAdam(RecordMetaGrad):
  """Adam inner loop (as released) with the recording meta optimiser."""

  def gen_tx(self, lr):
    return synthesis.Synthesizer.gen_tx(self, lr)


@pytest.fixture(scope="module")
def meta_unrolled(nets):
  """fast_meta/param_diff, unrolled: two calls (for the momentum test too)."""
  synth = make_synth(nets)
  s0 = synth.init(jax.random.key(0), nets[3])
  s1, x1, m1 = run(synth, s0, nets, jax.random.key(10))
  return synth, s0, s1, x1, m1


def assert_tree_close(a, b, rtol=1e-4, atol=1e-6):
  chex.assert_trees_all_equal_structs(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)


# ------------------------------------------------------------------ (f)
def test_fast_meta_outputs(meta_unrolled):
  synth, s0, s1, x1, m1 = meta_unrolled
  chex.assert_shape(x1, (BATCH,) + IMAGE_SHAPE)
  assert x1.dtype == jnp.uint8
  assert int(s1.calls) == 1 and bool(s1.has_momentum)
  chex.assert_trees_all_equal_shapes_and_dtypes(s0.gen_params, s1.gen_params)
  for name in ("loss", "loss_bn", "loss_oh", "loss_adv", "teacher_target_acc", "best_loss"):
    assert np.isfinite(float(m1[name])), name
  assert float(m1["best_loss"]) <= float(m1["loss"]) + 1e-6
  # The generator moved.
  diff = sum(float(jnp.abs(a - b).sum()) for a, b in
             zip(jax.tree.leaves(s0.gen_params), jax.tree.leaves(s1.gen_params)))
  assert diff > 0


@pytest.mark.parametrize("method", ["fast", "deepinv"])
def test_other_methods_run(nets, method):
  synth = make_synth(nets, method=method)
  s0 = synth.init(jax.random.key(0), nets[3])
  s1, x, m = run(synth, s0, nets, jax.random.key(10))
  chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
  assert x.dtype == jnp.uint8
  assert np.isfinite(float(m["best_loss"]))
  assert int(s1.calls) == 1
  if method == "deepinv":  # no reuse: the generator is untouched
    chex.assert_trees_all_equal(s1.gen_params, s0.gen_params)


# ------------------------------------------------------------------ (a)
def test_scan_equals_unrolled(nets, meta_unrolled):
  _, s0, s1, x1, m1 = meta_unrolled
  synth = make_synth(nets, unroll=False)
  s1_scan, x_scan, m_scan = run(synth, s0, nets, jax.random.key(10))
  assert_tree_close(s1_scan, s1, rtol=1e-4, atol=1e-5)
  # uint8 rounding of nearly equal floats may differ by one level.
  np.testing.assert_allclose(np.asarray(x_scan, np.int32), np.asarray(x1, np.int32), atol=1)
  assert_tree_close(m_scan, m1, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ (b)
def test_param_diff_meta_step(nets, meta_unrolled):
  """theta_new = theta + MetaAdam(theta - theta'_k), theta'_k from method='fast'."""
  synth, s0, s1, _, _ = meta_unrolled
  fast = make_synth(nets, method="fast")
  f0 = fast.init(jax.random.key(0), nets[3])
  chex.assert_trees_all_equal(f0.gen_params, s0.gen_params)
  f1, _, _ = run(fast, f0, nets, jax.random.key(10))   # same z, targets, inner steps
  theta, theta_k = s0.gen_params, f1.gen_params
  g = jax.tree.map(jnp.subtract, theta, theta_k)
  updates, opt = synth.meta_tx().update(g, s0.opt_state, theta)
  expected = optax.apply_updates(theta, updates)
  assert_tree_close(s1.gen_params, expected, rtol=1e-5, atol=1e-6)
  assert_tree_close(s1.opt_state, opt, rtol=1e-4, atol=1e-9)
  # Meta Adam lr is lr_g * k: the first step moves each weight by <= lr_g * k.
  step = max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(s1.gen_params), jax.tree.leaves(theta)))
  assert step <= synth.hp.lr_g * synth.hp.k * (1 + 1e-4)


def test_param_diff_meta_gradient_is_theta_minus_fast(nets):
  rec = make_synth(nets, cls=RecordMetaGradAdam)
  s0 = rec.init(jax.random.key(0), nets[3])
  s1, _, _ = run(rec, s0, nets, jax.random.key(10))
  fast = make_synth(nets, method="fast")
  f1, _, _ = run(fast, fast.init(jax.random.key(0), nets[3]), nets, jax.random.key(10))
  expected = jax.tree.map(jnp.subtract, s0.gen_params, f1.gen_params)
  assert_tree_close(s1.opt_state, expected, rtol=1e-4, atol=1e-7)
  # The recording meta optimiser applies a zero update.
  chex.assert_trees_all_close(s1.gen_params, s0.gen_params)


# ------------------------------------------------------------------ (c)
def test_sgd_inner_loop_meta_gradients_agree(nets):
  """With SGD(a) inner steps: theta - theta'_k == a * sum_i dL_i/dtheta'."""
  lr_g = 0.05
  key = jax.random.key(10)
  pd = make_synth(nets, cls=RecordMetaGrad, lr_g=lr_g, meta_grad="param_diff")
  sm = make_synth(nets, cls=RecordMetaGrad, lr_g=lr_g, meta_grad="sum_inner_grads")
  s0 = pd.init(jax.random.key(0), nets[3])
  g_pd = run(pd, s0, nets, key)[0].opt_state
  g_sum = run(sm, s0, nets, key)[0].opt_state
  norm = np.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(g_sum)))
  assert norm > 0
  # theta - theta'_k carries float32 cancellation of |theta| * 1e-7.
  assert_tree_close(g_pd, jax.tree.map(lambda x: lr_g * x, g_sum), rtol=2e-3, atol=2e-6)


# ------------------------------------------------------------------ (d)
def test_teacher_and_student_get_no_gradient(nets):
  _, _, _, tv, sv = nets
  synth = make_synth(nets)
  state = synth.init(jax.random.key(0), tv)
  x = jax.random.uniform(jax.random.key(3), (BATCH,) + IMAGE_SHAPE)
  y = jax.random.randint(jax.random.key(4), (BATCH,), 0, 10)

  def objective(x, tv, sv):
    return synth.loss_terms(x, y, jax.random.key(5), tv, sv, state.bn_momentum,
                            state.has_momentum, ADV)[0]

  g_x, g_t, g_s = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(x, tv, sv)
  assert float(jnp.abs(g_x).sum()) > 0  # the images do get a gradient
  for leaf in jax.tree.leaves((g_t, g_s)):
    assert float(jnp.abs(leaf).max()) == 0.0


# ------------------------------------------------------------------ (e)
def _last_stats(synth, nets, state, key):
  """The teacher's BN input stats of the single inner step of a k=1 call."""
  _, _, generator, tv, _ = nets
  k_z, _, k_steps = jax.random.split(key, 3)
  z = jax.random.normal(k_z, (BATCH, NZ))
  step_key = jax.random.split(k_steps, 1)[0]
  x, _ = generator.apply({"params": state.gen_params, "batch_stats": state.gen_batch_stats},
                         z, train=True, mutable=["batch_stats"])
  xa = synthesis.augment_stripe(step_key, x, MEAN, STD, PADDING, None)
  _, aux = synth.teacher.apply(tv, xa, train=False, mutable=[losses.BN_STATS_COLLECTION])
  return [dict(mean=l["mean"], var=l["var"])
          for l in losses.flatten_bn_stats(aux[losses.BN_STATS_COLLECTION])]


def test_bn_momentum_buffers(nets):
  synth = make_synth(nets, k=1)
  s0 = synth.init(jax.random.key(0), nets[3])
  assert not bool(s0.has_momentum)
  assert len(s0.bn_momentum) == 9  # resnet8 has 9 BN layers
  k1, k2 = jax.random.key(11), jax.random.key(12)
  s1, _, _ = run(synth, s0, nets, k1)
  assert bool(s1.has_momentum)
  last1 = _last_stats(synth, nets, s0, k1)
  assert_tree_close(s1.bn_momentum, last1, rtol=1e-4, atol=1e-5)   # first call: copy
  s2, _, _ = run(synth, s1, nets, k2)
  last2 = _last_stats(synth, nets, s1, k2)
  m = synth.hp.bn_mmt
  expected = jax.tree.map(lambda b, l: m * b + (1 - m) * l, s1.bn_momentum, last2)
  assert_tree_close(s2.bn_momentum, expected, rtol=1e-4, atol=1e-5)  # later: mixed
  assert int(s2.calls) == 2


# ------------------------------------------------------------------ (g)
def test_augment_stripe_matches_augment():
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
  key = jax.random.key(7)
  a = synthesis.augment_stripe(key, x, MEAN, STD, PADDING, None)
  b = augment.augment(key, x, jnp.asarray(MEAN), jnp.asarray(STD), PADDING)
  chex.assert_equal_shape((a, x))
  chex.assert_trees_all_close(a, b)
  chex.assert_trees_all_equal(a, synthesis.augment_stripe(key, x, MEAN, STD, PADDING, None))
  c = synthesis.augment_stripe(jax.random.key(8), x, MEAN, STD, PADDING, None)
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_augment_stripe_no_padding():
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  a = synthesis.augment_stripe(jax.random.key(1), x, mean, std, 0, None)
  b = augment.augment(jax.random.key(1), x, mean, std, 0)
  chex.assert_trees_all_close(a, b)


def test_hparams_from_config():
  from fastdfkd_jax import config_lib
  c = config_lib.base_config()
  hp = synthesis.hparams_from_config(c, unroll=True)
  assert hp.k == c.k and hp.lr_g == c.synth.lr_g and hp.unroll
  assert hp.betas == tuple(c.synth.betas) and hp.meta_grad == c.synth.meta_grad
  assert dataclasses.replace(hp, k=2).k == 2
