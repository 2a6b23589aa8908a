"""The generator-vs-student baselines (fastdfkd_jax.synthesis.generative): each loss term
against NumPy forms of the release's formulas (datafree/synthesis/generative.py,
datafree/criterions.py), the synthesizer protocol, the teacher's penultimate features,
the presets and configs, and the alternating epoch of the run loop (distill.epochs).
Multi-device, resume and end-to-end runs: tests/test_generative_runs.py.
"""

import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastdfkd_jax.config import checks as config_checks, schema
from fastdfkd_jax import errors, models, synthesis
from fastdfkd_jax.training import objectives as kd_losses
from fastdfkd_jax.data import augment
from fastdfkd_jax.distill import epochs, sources, steps
from fastdfkd_jax.models import layers, util as model_util
from fastdfkd_jax.synthesis import base, generative
from fastdfkd_jax.synthesis import losses as synth_losses

from conftest import compile_unoptimized, load_config_file
from reference_logits import STUDENT, TEACHER, np_kl, np_log_softmax
from synthesis_testlib import init

# Golden values, computed once in float64 with the NumPy forms below.
GOLDEN = dict(act=-0.7833333333333333, balance=-1.238435867907009,
              adv_kl=-0.47605220379075747, adv_l1=-0.9666666666666667,
              kd_kl_t20=0.58404504631442, oh_argmax=0.51073415948078)
S32, T32 = jnp.asarray(STUDENT, jnp.float32), jnp.asarray(TEACHER, jnp.float32)


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_balance(logits):
  p = np_softmax(logits).mean(0)              # class_balance_loss
  return (p * np.log(p)).sum()


def np_oh(logits):
  return -np_log_softmax(logits)[np.arange(len(logits)), logits.argmax(-1)].mean()


# ------------------------------------------------------------ loss terms
def test_activation_loss_golden():
  features = TEACHER - 0.7
  assert -np.abs(features).mean() == pytest.approx(GOLDEN["act"], abs=1e-12)
  got = generative.activation_loss(jnp.asarray(features, jnp.float32))
  np.testing.assert_allclose(float(got), GOLDEN["act"], rtol=0, atol=1e-5)


def test_balance_loss_golden():
  assert np_balance(TEACHER) == pytest.approx(GOLDEN["balance"], abs=1e-12)
  np.testing.assert_allclose(float(generative.balance_loss(T32)), GOLDEN["balance"],
                             rtol=0, atol=1e-5)
  # Its minimum is the uniform mean softmax: -log C.
  flat = generative.balance_loss(jnp.zeros((5, 4)))
  np.testing.assert_allclose(float(flat), -np.log(4), rtol=1e-6)


@pytest.mark.parametrize("criterion, golden, reference", [
    ("kl", GOLDEN["adv_kl"], lambda s, t: -np_kl(s, t).mean()),          # -KLDiv()(s, t)
    ("l1", GOLDEN["adv_l1"], lambda s, t: -np.abs(s - t).mean()),        # -L1Loss()(s, t)
])
def test_adversarial_loss_golden(criterion, golden, reference):
  assert reference(STUDENT, TEACHER) == pytest.approx(golden, abs=1e-12)
  got = generative.adversarial_loss(S32, T32, criterion)
  np.testing.assert_allclose(float(got), golden, rtol=0, atol=1e-5)


def test_kd_objective_kl_at_t_and_l1():
  assert np_kl(STUDENT, TEACHER, 20.0).mean() * 400 == pytest.approx(GOLDEN["kd_kl_t20"],
                                                                     abs=1e-12)
  kl = kd_losses.kd_objective(S32, T32, "kl", 20.0)
  np.testing.assert_allclose(float(kl), GOLDEN["kd_kl_t20"], rtol=0, atol=1e-5)
  assert float(kl) == pytest.approx(float(kd_losses.kd_loss(S32, T32, 20.0)))
  l1 = kd_losses.kd_objective(S32, T32, "l1", 20.0)    # DFAD: no temperature
  np.testing.assert_allclose(float(l1), -GOLDEN["adv_l1"], rtol=0, atol=1e-5)


def test_one_hot_on_the_teachers_argmax_golden():
  assert np_oh(TEACHER) == pytest.approx(GOLDEN["oh_argmax"], abs=1e-12)
  got = synth_losses.one_hot_loss(T32, T32.argmax(-1))
  np.testing.assert_allclose(float(got), GOLDEN["oh_argmax"], rtol=0, atol=1e-5)


# ---------------------------------------------------- the synthesizer
WEIGHTS = dict(adv=0.7, bn=0.3, oh=1.1, act=0.01, balance=2.0)


def make_synth(nets, **hp):
  teacher, student, generator, _, _ = nets
  hp = dict(dict(g_steps=2, kd_steps=3, batch_size=8, nz=16, unroll=True, **WEIGHTS), **hp)
  return generative.GenerativeSynthesizer(
      generator=generator, teacher=teacher, student=student,
      hp=generative.GenerativeHParams(**hp), num_classes=10, image_shape=(8, 8, 1),
      mean=(0.3054,), std=(0.3757,), padding=1, axis_name=None)


@pytest.mark.parametrize("criterion", ["kl", "l1"])
def test_loss_terms_match_numpy_on_the_tiny_nets(tiny_nets, criterion):
  teacher, student, _, tv, sv = tiny_nets
  synth = make_synth(tiny_nets, criterion=criterion)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)), jnp.float32)
  adv = jnp.float32(WEIGHTS["adv"])

  def both(x, tv, sv):
    # The release's formulas below take the teacher's and student's outputs for
    # normalize(x), computed in the same program as the synthesizer's loss.
    xn = augment.normalize(x, synth.mean, synth.std)
    outputs = teacher.apply(tv, xn, train=False, mutable=[layers.BN_STATS, layers.FEATURES])
    return synth.loss_terms(x, tv, sv, adv), outputs, student.apply(sv, xn)

  (loss, terms), (t, aux), s = compile_unoptimized(both, x, tv, sv)(x, tv, sv)
  t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
  feats = np.asarray(layers.penultimate(aux), np.float64)
  bn = sum(np.linalg.norm(np.asarray(l["running_var"], np.float64) - np.asarray(l["var"]))
           + np.linalg.norm(np.asarray(l["running_mean"], np.float64) - np.asarray(l["mean"]))
           for l in synth_losses.flatten_bn_stats(aux[layers.BN_STATS]))
  adv = -np_kl(s, t).mean() if criterion == "kl" else -np.abs(s - t).mean()
  expected = dict(loss_bn=bn, loss_oh=np_oh(t), loss_act=-np.abs(feats).mean(),
                  loss_balance=np_balance(t), loss_adv=adv)
  for name, value in expected.items():
    np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, atol=1e-5, err_msg=name)
  total = sum(WEIGHTS[name[5:]] * value for name, value in expected.items())
  np.testing.assert_allclose(float(loss), total, rtol=1e-5)


def test_without_adversarial_weight_the_student_is_not_run(tiny_nets):
  _, _, _, tv, _ = tiny_nets
  synth = make_synth(tiny_nets, adv=0.0)
  x = jnp.full((8, 8, 8, 1), 0.5)
  # No student variables: the student is not in the program at all.
  _, terms = jax.jit(lambda x, tv: synth.loss_terms(x, tv, None, jnp.float32(0.0)))(x, tv)
  assert float(terms["loss_adv"]) == 0.0


def test_protocol_and_registry(tiny_nets):
  synth = make_synth(tiny_nets)
  assert isinstance(synth, base.GeneratorVsStudent) and synthesis.host_steppable(synth)
  assert (synth.uses_pool, synth.g_steps, synth.kd_steps) == (False, 2, 3)
  for name in ("generative", "dafl", "zskt", "dfq", "dfad"):
    assert synthesis.get(name) is generative.GenerativeSynthesizer


def test_synthesize_is_g_steps_generator_steps_and_sample_does_not_update(tiny_nets):
  _, _, _, tv, sv = tiny_nets
  synth = make_synth(tiny_nets)
  state = init(synth, tiny_nets, jax.random.key(0))
  key, adv = jax.random.key(5), jnp.float32(0.7)
  new, images, metrics = compile_unoptimized(synth.synthesize, state, tv, sv, key, adv)(
      state, tv, sv, key, adv)
  assert int(new.calls) == 2 and images.dtype == jnp.uint8 and images.shape == (8, 8, 8, 1)
  step = compile_unoptimized(synth.generator_step, state, tv, sv, key, adv)
  by_steps = state
  for step_key in jax.random.split(key, 2):
    by_steps, step_metrics = step(by_steps, tv, sv, step_key, adv)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(by_steps)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert float(metrics["loss"]) == pytest.approx(float(step_metrics["loss"]), rel=1e-5)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.gen_params,
                       state.gen_params)
  assert max(jax.tree.leaves(moved)) > 0          # the generator trained
  sample = compile_unoptimized(lambda s, k: synth.sample(s, k, 16), new, key)
  batch = sample(new, jax.random.key(9))
  assert batch.dtype == jnp.uint8 and batch.shape == (16, 8, 8, 1)
  # Sampling does not train: the same key gives the same batch, another key another one.
  np.testing.assert_array_equal(sample(new, jax.random.key(9)), batch)
  assert not np.array_equal(sample(new, jax.random.key(10)), batch)


def test_kd_batches_are_fresh_unaugmented_generator_samples(tiny_nets):
  _, student, _, _, _ = tiny_nets
  synth = make_synth(tiny_nets)
  d = steps.Distiller(synth=synth, student_model=student, tx=None, kd_batch=8,
                      temperature=1.0, mesh=None, kd_kind="generator", kd_loss="l1")
  synth_state = init(synth, tiny_nets, jax.random.key(0))
  key = jax.random.key(4)
  assert d.from_generator and not d.on_device_pool
  for kind in ("pool", "host_pool", "noise", "data", "data_host"):
    other = steps.Distiller(synth=synth, student_model=student, tx=None, kd_batch=8,
                            temperature=1.0, mesh=None, kd_kind=kind)
    assert not other.from_generator, kind
  got, want = jax.jit(lambda s, k: (d._kd_inputs(None, k, s), synth.sample(s, k, 8)))(
      synth_state, key)
  np.testing.assert_array_equal(got, want)


# ------------------------------------------------------- features path
@pytest.mark.parametrize("arch, shape, dim", [
    ("wrn16_1", (8, 8, 3), 64), ("lenet5", (32, 32, 1), 120), ("vgg8", (32, 32, 3), 512),
    ("resnet18", (8, 8, 3), 512)])
def test_models_sow_penultimate_features(arch, shape, dim):
  model = models.get_model(arch, 10)

  def apply(key):
    variables = model_util.init_variables(model, key, shape)
    return model.apply(variables, jnp.zeros((2,) + shape), mutable=[layers.FEATURES])

  logits, aux = jax.eval_shape(apply, jax.random.key(0))
  assert logits.shape == (2, 10) and layers.penultimate(aux).shape == (2, dim)


def test_features_are_the_classifier_input():
  model = models.get_model("resnet8", 10)
  variables = model_util.init_variables(model, jax.random.key(1), (8, 8, 1))   # tiny_nets'
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 1)), jnp.float32)

  def apply(variables, x):
    return (model.apply(variables, x, mutable=[layers.FEATURES]), model.apply(variables, x),
            model.apply(variables, x, mutable=[layers.BN_STATS])[1])

  (logits, aux), plain, stats = compile_unoptimized(apply, variables, x)(variables, x)
  np.testing.assert_array_equal(logits, plain)   # sowing the features keeps the logits
  fc = variables["params"]["fc"]
  np.testing.assert_allclose(logits, layers.penultimate(aux) @ fc["kernel"] + fc["bias"],
                             rtol=1e-5, atol=1e-5)
  assert set(stats) == {layers.BN_STATS}


# ---------------------------------------------------- presets, configs
def test_presets_are_the_release_scripts():
  p = schema.GENERATIVE_PRESETS
  # scripts/{dafl,dfad,dfq,zskt}_cifar.sh: (adv, bn, oh, act, balance, T, kd_steps).
  scripts = dict(dafl=(0, 0, 1, 0.001, 20, 20, 5), dfad=(1, 0, 0, 0, 0, 1, 5),
                 dfq=(1, 1, 1, 0, 20, 20, 10), zskt=(1, 0, 0, 0, 0, 20, 5))
  for method, values in scripts.items():
    got = tuple(p[method][f] for f in schema.GENERATIVE_WEIGHTS)
    assert got + (p[method]["temperature"], p[method]["kd_steps"]) == values, method
    assert (p[method]["k"], p[method]["lr_g"]) == (1, 1e-3)
    assert p[method]["nz"] == (512 if method == "dafl" else 256)
    assert p[method]["loss"] == ("l1" if method == "dfad" else "kl")


def test_validate_holds_presets_and_whole_rounds():
  c = schema.generative_preset(schema.default_config(), "zskt")
  config_checks.validate(c)
  c.synth.balance = 3.0
  with pytest.raises(errors.UserError, match="synth.balance=3.0 .*method=generative"):
    config_checks.validate(c)
  c.method = "generative"
  config_checks.validate(c)                      # any weights
  c.kd.steps = 31
  with pytest.raises(errors.UserError, match="multiple of config.synth.kd_steps=5"):
    config_checks.validate(c)
  c.kd.loss = "l2"
  with pytest.raises(errors.UserError, match="kd.loss"):
    config_checks.validate(c)


def test_cifar_configs_cover_the_paper_pairs():
  import importlib.util, os
  from conftest import CONFIGS
  spec = importlib.util.spec_from_file_location("_b", os.path.join(CONFIGS, "baselines_cifar.py"))
  baselines = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(baselines)
  spec = importlib.util.spec_from_file_location("_f", os.path.join(CONFIGS, "fastdfkd_cifar.py"))
  paper = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(paper)
  pairs = {s.rsplit("-", 1)[0] for s in paper.SETTINGS}
  assert {s.split("-", 1)[1] for s in baselines.SETTINGS} == pairs
  for arg in baselines.SETTINGS:
    c = load_config_file("baselines_cifar.py", arg)
    config_checks.validate(c)
    assert (c.epochs, c.warmup, c.batch_size, c.kd.steps, c.kd.lr) == (200, 0, 256, 400, 0.1)
    assert (c.synth.ngf, c.synth.lr_g, tuple(c.synth.betas), c.k) == (64, 1e-3, (0.5, 0.999), 1)


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist", "cifar10"])
def test_cpu_configs_see_the_fastdfkd_cpu_kd_images(dataset):
  fast = load_config_file("fastdfkd_cpu.py", dataset)
  for method in schema.GENERATIVE_PRESETS:
    c = load_config_file("baselines_cpu.py", f"{method}-{dataset}")
    config_checks.validate(c)
    assert c.method == method and c.warmup == 0
    assert (c.epochs * c.kd.steps * c.batch_size ==
            (fast.epochs - fast.warmup) * fast.kd.steps * fast.batch_size)
    assert (c.kd.lr, c.kd.cosine_epochs, c.teacher.arch, c.student.arch) == (
        fast.kd.lr, fast.kd.cosine_epochs, fast.teacher.arch, fast.student.arch)


# ------------------------------------------------- the alternating epoch
class _FakePrograms:
  """`builder.Programs` as `distill.epochs` calls it: records the generator calls (G,
  g_steps updates each) and the KD calls (S, n updates); the state counts updates."""

  structure = types.SimpleNamespace(fused=False)

  def __init__(self):
    self.events = []

  def synth(self, state, teacher_vars, key, adv):
    del teacher_vars, key
    self.events.append(("G", 2, float(adv)))   # one call = g_steps generator updates
    return state + 2, jnp.zeros((4, 8, 8, 1), jnp.uint8), dict(loss=jnp.float32(1.0))

  def kd(self, state, teacher_vars, key, n_steps, on_step=None):
    del teacher_vars, key
    time.sleep(1e-3)                            # so the KD time measured is positive
    self.events.append(("S", n_steps))
    if on_step is not None:
      on_step(n_steps)
    return state, dict(kd_loss=jnp.float32(0.5))


def test_an_epoch_alternates_generator_and_student_updates():
  """kd.steps // kd_steps rounds of (one call of g_steps generator updates, kd_steps
  student updates); during warmup only the generator rounds, without the adversarial
  term; the counters count the rounds, the fresh KD samples and the warmup's time."""
  c = schema.generative_preset(schema.default_config(), "dfq")
  c.kd.steps, c.warmup, c.batch_size = 40, 1, 16
  assert c.synth.kd_steps == 10
  programs = _FakePrograms()
  ep = epochs.Epochs(c, programs, sources.KDSource("generator"), teacher_vars=None,
                     uses_pool=False)
  assert ep.in_rounds() and ep.kd_chunk() == 10
  # Epoch 0 is the warmup: four generator rounds, adv 0, no KD.
  state, images, metrics, counters = epochs.run_epoch(ep, 0, epochs.Counters(), 0)
  assert programs.events == [("G", 2, 0.0)] * 4
  assert state == 8 and images is not None and metrics == dict(loss=1.0)
  assert counters.synth_calls_timed == 4 and counters.kd_seconds == 0.0
  assert counters.synth_images == counters.kd_images == 0
  assert counters.warmup_synth_seconds == counters.synth_seconds > 0
  programs.events.clear()
  state, images, metrics, counters = epochs.run_epoch(ep, state, counters, 1)
  assert programs.events == [("G", 2, c.synth.adv), ("S", 10)] * 4
  assert state == 16 and images is not None
  assert metrics == dict(loss=1.0, kd_loss=0.5)
  assert counters.synth_calls_timed == 8 and counters.kd_seconds > 0
  # Every KD batch is a fresh generator sample.
  assert counters.synth_images == counters.kd_images == 40 * 16
