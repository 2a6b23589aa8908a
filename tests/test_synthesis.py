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

from fastdfkd_jax import losses, synthesis
from fastdfkd_jax.data import augment

from conftest import compile_unoptimized

IMAGE_SHAPE = (8, 8, 1)
MEAN, STD, PADDING = (0.3054,), (0.3757,), 1
BATCH, NZ, K = 8, 16, 2
ADV = jnp.float32(1.1)


@pytest.fixture(scope="module")
def nets(tiny_nets):
  return tiny_nets


def make_synth(nets, cls=synthesis.Synthesizer, **hp):
  teacher, student, generator, _, _ = nets
  hp = dict(dict(k=K, batch_size=BATCH, nz=NZ, unroll=True), **hp)
  return cls(generator=generator, teacher=teacher, student=student,
             hp=synthesis.SynthesisHParams(**hp), num_classes=10,
             image_shape=IMAGE_SHAPE, mean=MEAN, std=STD, padding=PADDING, axis_name=None)


compiled = compile_unoptimized


def run(synth, state, nets, key, adv=ADV):
  """One synthesis call, compiled once per synthesizer (cached on the instance)."""
  _, _, _, tv, sv = nets
  entry = _COMPILED.get(id(synth))
  if entry is None or entry[0] is not synth:
    entry = _COMPILED[id(synth)] = (
        synth, compiled(synth.synthesize, state, tv, sv, key, adv))
  return entry[1](state, tv, sv, key, adv)


_COMPILED = {}


class RecordMetaGrad(synthesis.Synthesizer):
  """Plain-SGD inner loop; the 'meta optimiser' stores the meta-gradient as its state."""

  def gen_tx(self, lr):
    return optax.sgd(lr)

  def meta_tx(self):
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


@pytest.fixture(scope="module")
def meta_unrolled(nets):
  """fast_meta/param_diff, unrolled: two calls (for the momentum test too)."""
  synth = make_synth(nets)
  s0 = synth.init(jax.random.key(0), nets[3])
  s1, x1, m1 = run(synth, s0, nets, jax.random.key(10))
  return synth, s0, s1, x1, m1


@pytest.fixture(scope="module")
def fast_unrolled(nets):
  """method='fast' (sequential reuse) from the same init and key: params = theta'_k."""
  synth = make_synth(nets, method="fast")
  f0 = synth.init(jax.random.key(0), nets[3])
  f1, x, m = run(synth, f0, nets, jax.random.key(10))
  return synth, f0, f1, x, m


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
  diff = sum(np.abs(np.asarray(a) - np.asarray(b)).sum() for a, b in
             zip(jax.tree.leaves(s0.gen_params), jax.tree.leaves(s1.gen_params)))
  assert diff > 0


def test_fast_method_outputs(fast_unrolled):
  _, f0, f1, x, m = fast_unrolled
  chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
  assert x.dtype == jnp.uint8
  assert np.isfinite(float(m["best_loss"])) and int(f1.calls) == 1
  # Sequential reuse: the generator's own Adam state persists (one step per inner step).
  counts = [int(c) for c in jax.tree.leaves(f1.opt_state) if jnp.ndim(c) == 0]
  assert counts and all(c == K for c in counts)


# deepinv (k = 1) also serves the momentum test (e): its single inner step
# renders sigmoid(latent), so the last step's teacher statistics are recomputable.
@pytest.fixture(scope="module")
def deepinv_k1(nets):
  synth = make_synth(nets, method="deepinv", k=1)
  s0 = synth.init(jax.random.key(0), nets[3])
  k1, k2 = jax.random.key(11), jax.random.key(12)
  s1, x1, m1 = run(synth, s0, nets, k1)
  s2, x2, m2 = run(synth, s1, nets, k2)
  return synth, (s0, s1, s2), (k1, k2), (x1, x2), (m1, m2)


def test_deepinv_outputs(deepinv_k1):
  _, (s0, s1, s2), _, (x1, x2), (m1, _) = deepinv_k1
  for x in (x1, x2):
    chex.assert_shape(x, (BATCH,) + IMAGE_SHAPE)
    assert x.dtype == jnp.uint8
  assert np.isfinite(float(m1["best_loss"]))
  assert not np.array_equal(np.asarray(x1), np.asarray(x2))
  # No reuse: the generator is untouched.
  chex.assert_trees_all_equal(s2.gen_params, s0.gen_params)
  assert int(s2.calls) == 2


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
def test_param_diff_meta_step(meta_unrolled, fast_unrolled):
  """theta_new = theta + MetaAdam(g = theta - theta'_k), theta'_k from method='fast'."""
  synth, s0, s1, _, _ = meta_unrolled
  _, f0, f1, _, _ = fast_unrolled
  chex.assert_trees_all_equal(f0.gen_params, s0.gen_params)   # same init key
  theta, theta_k = s0.gen_params, f1.gen_params   # same z, targets and inner steps

  @jax.jit
  def meta_step(theta, theta_k, opt_state):
    g = jax.tree.map(jnp.subtract, theta, theta_k)
    updates, opt = synth.meta_tx().update(g, opt_state, theta)
    return g, optax.apply_updates(theta, updates), opt

  g, expected, opt = meta_step(theta, theta_k, s0.opt_state)
  assert max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(g)) > 0
  assert_tree_close(s1.gen_params, expected, rtol=1e-5, atol=1e-6)
  assert_tree_close(s1.opt_state, opt, rtol=1e-3, atol=1e-10)
  # Meta Adam lr is lr_g * k: its first step moves each weight by <= lr_g * k.
  step = max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
             zip(jax.tree.leaves(s1.gen_params), jax.tree.leaves(theta)))
  assert step <= synth.hp.lr_g * synth.hp.k * (1 + 1e-4)


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
  norm = np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(g_sum)))
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

  grad = jax.grad(objective, argnums=(0, 1, 2))
  g_x, g_t, g_s = compiled(grad, x, tv, sv)(x, tv, sv)
  assert np.abs(np.asarray(g_x)).sum() > 0  # the images do get a gradient
  chex.assert_trees_all_equal_structs(g_t, tv)
  for leaf in jax.tree.leaves((g_t, g_s)):
    assert np.abs(np.asarray(leaf)).max() == 0.0


# ------------------------------------------------------------------ (e)
def _last_stats(synth, nets, key):
  """Teacher BN input stats of the single inner step of a deepinv k=1 call."""
  return compiled(lambda tv, key: _last_stats_fn(synth, tv, key), nets[3], key)(nets[3], key)


def _last_stats_fn(synth, tv, key):
  k_z, _, k_steps = jax.random.split(key, 3)
  x = jax.nn.sigmoid(jax.random.normal(k_z, (BATCH,) + IMAGE_SHAPE))
  xa = synthesis.augment_stripe(jax.random.split(k_steps, 1)[0], x, MEAN, STD, PADDING, None)
  _, aux = synth.teacher.apply(tv, xa, train=False, mutable=[losses.BN_STATS_COLLECTION])
  return [dict(mean=l["mean"], var=l["var"])
          for l in losses.flatten_bn_stats(aux[losses.BN_STATS_COLLECTION])]


def test_bn_momentum_buffers(nets, deepinv_k1):
  synth, (s0, s1, s2), (k1, k2), _, _ = deepinv_k1
  assert not bool(s0.has_momentum)
  assert len(s0.bn_momentum) == 9  # resnet8 has 9 BN layers
  chex.assert_trees_all_equal_shapes(s0.bn_momentum, s1.bn_momentum)
  assert bool(s1.has_momentum) and bool(s2.has_momentum)
  # First call: the buffers are the last inner step's statistics.
  assert_tree_close(s1.bn_momentum, _last_stats(synth, nets, k1),
                    rtol=1e-4, atol=1e-5)
  # Later calls: buffer <- m * buffer + (1 - m) * last.
  m = synth.hp.bn_mmt
  expected = jax.tree.map(lambda b, l: m * b + (1 - m) * l, s1.bn_momentum,
                          _last_stats(synth, nets, k2))
  assert_tree_close(s2.bn_momentum, expected, rtol=1e-4, atol=1e-5)


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
