"""Optimizers and schedules shared by teacher training and KD (fastdfkd_jax.training.optim)."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fastdfkd_jax.training import optim
from fastdfkd_jax.training.train_state import TrainState


def test_sgd_matches_pytorch_weight_decay_order():
  """optim.sgd: decay added to the gradient before momentum (PyTorch SGD)."""
  tx = optim.sgd(0.1, 0.9, 0.01)
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.5, 0.5])}
  state = tx.init(p)
  buf = np.zeros(2)
  w = np.array([1.0, -2.0])
  for _ in range(3):
    upd, state = tx.update(g, state, p)
    p = optax.apply_updates(p, upd)
    d = 0.5 + 0.01 * w
    buf = 0.9 * buf + d
    w = w - 0.1 * buf
  np.testing.assert_allclose(p["w"], w, rtol=1e-6)


def test_cosine_schedule_with_and_without_warmup():
  plain = optim.cosine_schedule(0.1, 100)
  assert float(plain(0)) == pytest.approx(0.1)
  assert float(plain(50)) == pytest.approx(0.05)
  assert float(plain(100)) == pytest.approx(0.0, abs=1e-9)
  warm = optim.cosine_schedule(0.1, 100, warmup_steps=10)
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.05)
  assert float(warm(10)) == pytest.approx(0.1)
  assert float(warm(55)) == pytest.approx(0.05)


def test_teacher_optimizer_steps_the_schedule_inside_optax():
  """The lr of step t is the schedule's: an SGD step without momentum or decay moves
  a parameter by -lr(t) * grad."""
  cfg = ml_collections.ConfigDict(dict(lr=0.1, momentum=0.0, weight_decay=0.0,
                                       warmup_epochs=1, schedule="cosine", poly_power=0.9,
                                       optimizer="sgd"))
  tx = optim.teacher_optimizer(cfg, steps_per_epoch=4, epochs=3)
  schedule = optim.cosine_schedule(0.1, 12, 4)
  state = TrainState.create({"params": {"w": jnp.zeros(())}}, tx)
  assert state.batch_stats == {} and int(state.step) == 0
  for t in range(6):
    before = float(state.params["w"])
    updates, opt_state = tx.update({"w": jnp.ones(())}, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, step=state.step + 1)
    assert before - float(state.params["w"]) == pytest.approx(float(schedule(t)), abs=1e-7)
  assert set(state.variables) == {"params", "batch_stats"}


def _kd_config(**kw):
  return ml_collections.ConfigDict(dict(dict(lr=0.2, lr_min=2e-4, cosine_epochs=200, steps=3,
                                             momentum=0.0, weight_decay=0.0, optimizer="sgd"),
                                        **kw))


def test_epoch_cosine_schedule_golden_values():
  """The KD rate of update n is the per-epoch cosine of epoch n // kd.steps, float32 of
  the float64 formula (what `distill.kd_lr` computed per epoch before the schedule moved
  into optax), constant at lr_min after cosine_epochs."""
  kd = _kd_config()
  schedule = optim.epoch_cosine_schedule(kd)
  golden = {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.19998768, 111: 0.18359716, 300: 0.1001,
            598: 2.1232442e-4, 600: 2e-4, 601: 2e-4, 10_000: 2e-4}
  for count, value in golden.items():
    assert float(schedule(jnp.int32(count))) == pytest.approx(value, rel=1e-6), count
  for e in (0, 1, 37, 100, 199, 200):
    want = np.float32(2e-4 + (0.2 - 2e-4) * (1 + math.cos(math.pi * e / 200)) / 2)
    for j in range(kd.steps):   # bit-identical to the old per-epoch kd_lr, every step
      assert schedule(jnp.int32(e * kd.steps + j)) == want, (e, j)


def test_kd_optimizer_steps_the_epoch_cosine_inside_optax():
  """kd_optimizer: no learning rate passed in; each update moves by -lr(count) * grad."""
  kd = _kd_config(cosine_epochs=4, steps=2)
  tx = optim.kd_optimizer(kd)
  values = optim.epoch_cosine_values(kd)
  state = TrainState.create({"params": {"w": jnp.zeros(())}}, tx)
  for t in range(12):
    before = state.params["w"]
    updates, opt_state = tx.update({"w": jnp.ones(())}, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
    assert before - state.params["w"] == pytest.approx(values[min(t // 2, 4)], abs=2e-7)


def test_poly_schedule_decays_to_zero_after_its_warmup():
  """lr (1 - n / N) ** p over the steps after a linear warmup; teacher_optimizer picks it
  with optim.schedule='poly'."""
  s = optim.poly_schedule(1.0, 100, 0.9, warmup_steps=10)
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(55)) == pytest.approx(0.5 ** 0.9, rel=1e-5)
  assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
  cfg = ml_collections.ConfigDict(dict(lr=0.1, momentum=0.0, weight_decay=0.0,
                                       warmup_epochs=0, schedule="poly", poly_power=0.9,
                                       optimizer="sgd"))
  tx = optim.teacher_optimizer(cfg, steps_per_epoch=5, epochs=2)
  state = tx.init({"w": jnp.zeros(())})
  for t in range(3):
    updates, state = tx.update({"w": jnp.ones(())}, state, {"w": jnp.zeros(())})
    assert float(updates["w"]) == pytest.approx(-0.1 * (1 - t / 10) ** 0.9, rel=1e-5)


def test_adam_option_adds_decay_to_the_gradient():
  """optimizer='adam' (teacher and KD): PyTorch's Adam; the first update is -lr * sign."""
  kd = _kd_config(optimizer="adam", lr=0.01, lr_min=0.0, weight_decay=0.5)
  tx = optim.kd_optimizer(kd)
  params = {"w": jnp.asarray([1.0, -2.0])}
  updates, _ = tx.update({"w": jnp.asarray([0.0, 3.0])}, tx.init(params), params)
  # grads + 0.5 * params = [0.5, 2.0]: Adam's first step is -lr * sign(g) (up to eps).
  np.testing.assert_allclose(updates["w"], [-0.01, -0.01], rtol=1e-5)
