"""Synthesis losses (reference doc, section 3), pure functions.

The DeepInversion feature prior on the teacher's BN inputs (with the release's
momentum buffers), the one-hot cross-entropy against drawn targets, and the
adversarial term gated on teacher/student agreement. All batch reductions accept
`axis_name`: inside `shard_map` the means are taken over the global batch, so
any device count gives the same value.
"""

import jax
import jax.numpy as jnp

from fastdfkd_jax.training import objectives as kd_losses
from fastdfkd_jax.run import parallel
from fastdfkd_jax.models.layers import BN_STATS as BN_STATS_COLLECTION  # noqa: F401  (re-export)


def adversarial_loss(student_logits, teacher_logits,
                     axis_name: str | None = None) -> jax.Array:
  """-mean_n KL(t_n || s_n) [argmax s_n == argmax t_n] at T = 1 (section 3)."""
  agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).astype(jnp.float32)
  per = kd_losses.kl_per_sample(student_logits, teacher_logits) * agree
  return -parallel.pmean(per.mean(), axis_name)


def balance_loss(logits: jax.Array, axis_name: str | None = None) -> jax.Array:
  """sum_c p_c log p_c of the global batch-mean (and pixel-mean, for per-pixel logits)
  softmax p (minimised: p uniform). DAFL's information-entropy term; an option of the
  inversion methods too (synth.balance), e.g. for segmentation, whose images have no
  class target."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
  p = parallel.pmean(probs.reshape(-1, probs.shape[-1]).mean(0), axis_name)
  return jnp.sum(p * jnp.log(p))


def one_hot_loss(teacher_logits, targets, axis_name: str | None = None) -> jax.Array:
  """Cross-entropy of the teacher logits (N, C) against the targets (N,), or per pixel of
  logits (N, H, W, C) against target maps (N, H, W)."""
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), -1)
  ce = -jnp.take_along_axis(logp, targets[..., None], -1).mean()
  return parallel.pmean(ce, axis_name)


TARGET_METRICS = ("loss_oh", "teacher_target_acc")


def target_terms(teacher_logits, targets, segmentation: bool,
                 axis_name: str | None = None) -> tuple[jax.Array, dict]:
  """(one-hot loss, metrics) of the drawn class targets of an inversion method: the
  cross-entropy and the teacher's agreement with them (`TARGET_METRICS`). A
  segmentation image has no class target: (0, {})."""
  if segmentation:
    return jnp.float32(0.0), {}
  l_oh = one_hot_loss(teacher_logits, targets, axis_name)
  t_acc = parallel.pmean(jnp.mean(teacher_logits.argmax(-1) == targets), axis_name)
  return l_oh, dict(loss_oh=l_oh, teacher_target_acc=t_acc)


def bn_prior_loss(bn_stats, momentum_stats, has_momentum, bn_mmt: float):
  """DeepInversion feature prior summed over BN layers, with momentum mixing.

  Args:
    bn_stats: the teacher's sown `BN_STATS_COLLECTION`; each leaf dict holds the
      layer input's batch `mean`, biased `var` (global over devices) and the
      layer's `running_mean`, `running_var`, all (C,).
    momentum_stats: matching list of {'mean', 'var'} momentum buffers.
    has_momentum: bool scalar; False before the first buffer update (then the
      plain batch statistics are used).
    bn_mmt: m in (1-m) * batch + m * buffer.

  Returns:
    (loss scalar, list of this call's {'mean', 'var'} batch statistics).
  """
  layers = flatten_bn_stats(bn_stats)
  total = 0.0
  for layer, buf in zip(layers, momentum_stats):
    mean, var = layer["mean"], layer["var"]
    mixed_mean = jnp.where(has_momentum, (1 - bn_mmt) * mean + bn_mmt * buf["mean"], mean)
    mixed_var = jnp.where(has_momentum, (1 - bn_mmt) * var + bn_mmt * buf["var"], var)
    total = total + jnp.linalg.norm(layer["running_var"] - mixed_var) \
                  + jnp.linalg.norm(layer["running_mean"] - mixed_mean)
  last = [dict(mean=l["mean"], var=l["var"]) for l in layers]
  return total, last


def flatten_bn_stats(bn_stats) -> list[dict]:
  """The sown per-layer dicts in a fixed (tree-flatten) order."""
  is_leaf = lambda x: isinstance(x, dict) and "running_mean" in x
  return jax.tree.leaves(bn_stats, is_leaf=is_leaf)


def init_momentum(bn_stats) -> list[dict]:
  """Zero momentum buffers shaped like the teacher's BN inputs."""
  return [dict(mean=jnp.zeros_like(l["mean"]), var=jnp.zeros_like(l["var"]))
          for l in flatten_bn_stats(bn_stats)]


def update_momentum(buffers, last, has_momentum, bn_mmt: float):
  """buffer <- m * buffer + (1-m) * last (first call: buffer <- last)."""
  def upd(b, l):
    return jnp.where(has_momentum, bn_mmt * b + (1 - bn_mmt) * l, l)
  return jax.tree.map(upd, buffers, last)


def bn_prior_plain(bn_stats) -> jax.Array:
  """The BN prior without momentum buffers: sum_l ||rv_l - var_l|| + ||rm_l - mean_l||."""
  total = 0.0
  for layer in flatten_bn_stats(bn_stats):
    total = total + jnp.linalg.norm(layer["running_var"] - layer["var"]) \
                  + jnp.linalg.norm(layer["running_mean"] - layer["mean"])
  return total


def js_divergence(student_logits, teacher_logits, temperature: float,
                  axis_name: str | None = None) -> jax.Array:
  """The release's `jsdiv(s, t, T)`: 0.5 KL(M||P) + 0.5 KL(M||Q), batch mean.

  P = softmax(s/T), Q = softmax(t/T), M = (P+Q)/2, each clamped to [0.01, 0.99]
  after M is formed (as the release does); no T^2 factor.
  """
  p = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, -1)
  q = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, -1)
  m = jnp.clip(0.5 * (p + q), 0.01, 0.99)
  p, q = jnp.clip(p, 0.01, 0.99), jnp.clip(q, 0.01, 0.99)
  kl = lambda log_a: (m * (jnp.log(m) - log_a)).sum(-1).mean()
  return parallel.pmean(0.5 * kl(jnp.log(p)) + 0.5 * kl(jnp.log(q)), axis_name)


def _image_diffs(x) -> list[jax.Array]:
  """The four neighbour differences of the release's image prior (NHWC)."""
  return [x[:, :, :-1] - x[:, :, 1:], x[:, :-1, :] - x[:, 1:, :],
          x[:, 1:, :-1] - x[:, :-1, 1:], x[:, :-1, :-1] - x[:, 1:, 1:]]


def tv_l1(x, axis_name: str | None = None) -> jax.Array:
  """The release's `get_image_prior_losses`: sum of the 4 mean absolute differences."""
  return parallel.pmean(sum(jnp.abs(d).mean() for d in _image_diffs(x)), axis_name)


def _global_norm(x, axis_name: str | None) -> jax.Array:
  sq = jnp.square(x).sum()
  return jnp.sqrt(sq if axis_name is None else jax.lax.psum(sq, axis_name))


def tv_l2(x, axis_name: str | None = None) -> jax.Array:
  """The l2 image prior of the original DeepInversion: sum of the 4 differences' norms
  (over the global batch)."""
  return sum(_global_norm(d, axis_name) for d in _image_diffs(x))


def l2_norm(x, axis_name: str | None = None) -> jax.Array:
  """||x||_2 of the whole (global) batch, the release's `torch.norm(inputs, 2)`."""
  return _global_norm(x, axis_name)


def contrastive_loss(local_proj, global_proj, cached_local, cached_global, cached_valid,
                     temperature: float, axis_name: str | None = None) -> jax.Array:
  """CMI's L_cr: InfoNCE of local-view projections against global-view ones.

  Rows are [this device's local projections (B_local, d); the cached local ones
  (N', d)], columns [all B global projections; the cached global ones], logits
  rows @ columns^T / T, the positive of a row its own image's column. Columns
  carry no gradient (the release detaches them). The loss is the mean over the
  batch rows plus, when any cached row is valid, the mean over valid cached
  rows (invalid cached rows and columns are masked out: a bank not yet full).

  Args:
    local_proj: (B_local, d) this device's stripe.
    global_proj: (B, d) the global batch's global-view projections (all devices).
    cached_local, cached_global: (N', d) projections of the sampled bank rows.
    cached_valid: (N',) bool.
    temperature: cr_T.
    axis_name: the data axis (the batch rows are averaged over the global batch).
  """
  cols = jax.lax.stop_gradient(jnp.concatenate([global_proj, cached_global]))
  n_local, n_global = local_proj.shape[0], global_proj.shape[0]
  col_ok = jnp.concatenate([jnp.ones((n_global,), bool), cached_valid])
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n_local

  def row_ce(rows, labels):
    # A finite mask value: masked rows then get finite (zero-weighted) gradients.
    logits = jnp.where(col_ok, rows @ cols.T / temperature, -1e9)
    picked = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
    return jax.nn.logsumexp(logits, -1) - picked

  local = parallel.pmean(row_ce(local_proj, offset + jnp.arange(n_local)).mean(), axis_name)
  n_cached = cached_local.shape[0]
  ce = row_ce(cached_local, n_global + jnp.arange(n_cached))
  n_valid = cached_valid.sum()
  cached = jnp.where(cached_valid, ce, 0.0).sum() / jnp.maximum(n_valid, 1)
  return local + jnp.where(n_valid > 0, cached, 0.0)
