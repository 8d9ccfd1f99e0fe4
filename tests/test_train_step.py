"""The jitted train step in isolation: loss, label smoothing, EMA, the non-finite guard, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.losses.terms import softmax_cross_entropy
from fer_jax.train import optim, trainer
from fer_jax.train import sharding
from fer_jax.train.preprocess import preprocess_images


def _config(**kw):
  c = config_utils.base_config()
  c.dataset.num_classes = 3
  c.input.update(resize=8, crop=8, channels=3)
  c.model.backbone = dict(name="convnext", depths=(1, 1), dims=(4, 8), stem_patch_size=2,
                          layer_scale_init_value=1.0)
  c.model.head = dict(name="linear", num_outputs=3)
  c.optimizer.update(lr=0.05, weight_decay=0.0, grad_clip_norm=0.0)
  c.schedule.name = "constant"
  for k, v in kw.items():
    if isinstance(v, dict):
      c[k].update(v)
    else:
      c[k] = v
  return c


def _step(c, model, tx):
  task = trainer.get_task(c)
  task.bind_model(model.input_names)
  return jax.jit(lambda s, b: trainer.train_step(s, b, jax.random.key(1), model=model, tx=tx, config=c,
                                                 task=task))


def _setup(c):
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  mesh = sharding.create_mesh(c.mesh)
  state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), mesh)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)),
           "label": jnp.asarray([0, 1, 2, 1], jnp.int32)}
  return model, tx, state, batch


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_with_label_smoothing_matches_numpy():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], np.float32)
  labels = np.array([0, 2])
  eps = 0.2
  targets = np.full((2, 3), eps / 3) + (1 - eps) * np.eye(3)[labels]
  want = -(targets * _np_log_softmax(logits)).sum(-1).mean()
  got = softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_preprocess_grey_to_rgb_and_standardization():
  c = _config()
  img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
  x = np.asarray(preprocess_images(jnp.asarray(img), c))
  assert x.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(x[..., 1], img[..., 0] / 255.0, rtol=1e-6)
  c.input.per_image_standardization = True
  x = np.asarray(preprocess_images(jnp.asarray(img), c))
  f = img / 255.0
  np.testing.assert_allclose(x[..., 0], ((f - f.mean()) / f.std())[..., 0], rtol=1e-5, atol=1e-6)
  blank = np.asarray(preprocess_images(jnp.zeros((1, 4, 4, 1), jnp.uint8), c))
  np.testing.assert_array_equal(blank, 0.0)  # no division by zero


def test_step_applies_sgd_update_and_ema():
  c = _config(optimizer=dict(name="sgd", momentum=0.0), ema=dict(decay=0.75, every=1))
  model, tx, state, batch = _setup(c)
  p0 = jax.tree.map(np.asarray, state.params)

  def loss(params):
    x = preprocess_images(batch["image"], c)
    return softmax_cross_entropy(model.apply({"params": params}, train=False, image=x)["logits"],
                                 batch["label"])

  grads = jax.jit(jax.grad(loss))(state.params)
  new, metrics = _step(c, model, tx)(state, batch)
  assert int(new.step) == 1 and bool(metrics["finite"])
  np.testing.assert_allclose(float(metrics["loss"]), float(jax.jit(loss)(state.params)), rtol=1e-5)
  for p, g, q, e in zip(jax.tree.leaves(p0), jax.tree.leaves(grads), jax.tree.leaves(new.params),
                        jax.tree.leaves(new.ema_params)):
    want = p - 0.05 * np.asarray(g)  # plain SGD
    np.testing.assert_allclose(q, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(e, 0.75 * p + 0.25 * want, rtol=1e-4, atol=1e-6)  # EMA


def test_ema_warmup_follows_tf_num_updates_closed_form():
  """ema.warmup: the n-th average uses decay_n = min(decay, (1 + n) / (10 + n)) (NumPy recurrence)."""
  c = _config(optimizer=dict(name="sgd", momentum=0.0), ema=dict(decay=0.9, every=2, warmup=True))
  model, tx, state, batch = _setup(c)
  step = _step(c, model, tx)
  want = np.asarray(jax.tree.leaves(state.params)[0], np.float64)
  n = 0
  for t in range(1, 7):
    state, _ = step(state, batch)
    if t % 2 == 0:  # every=2: the average moves on steps 2, 4, 6 only
      n += 1
      d = min(0.9, (1 + n) / (10 + n))
      want = d * want + (1 - d) * np.asarray(jax.tree.leaves(state.params)[0], np.float64)
    np.testing.assert_allclose(jax.tree.leaves(state.ema_params)[0], want, rtol=1e-5, atol=1e-7)


def test_non_finite_loss_leaves_state_untouched():
  c = _config()
  model, tx, state, batch = _setup(c)
  bad = state.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), state.params))
  new, metrics = _step(c, model, tx)(bad, batch)
  assert not bool(metrics["finite"])
  assert int(new.step) == 0
  for a, b in zip(jax.tree.leaves(bad), jax.tree.leaves(new)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_compute_close_to_float32():
  c32 = _config()
  c16 = _config(compute_dtype="bfloat16")
  _, _, state, batch = _setup(c32)
  losses = []
  for c in (c32, c16):
    model = trainer.create_model(c)
    tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
    step = _step(c, model, tx)
    _, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert jax.tree.leaves(state.params)[0].dtype == jnp.float32  # params stay float32
  assert losses[0] == pytest.approx(losses[1], rel=2e-2)
  assert losses[0] != losses[1]  # bf16 really changed the arithmetic


def test_arcface_head_and_margin_loss_by_configuration_only():
  """The pairwise-ArcFace recipe needs no trainer code: a cosine head + the 'arcface' loss term."""
  c = _config(optimizer=dict(name="sgd", momentum=0.0, lr=0.0))
  c.model.head = dict(name="cosine", num_outputs=3)
  c.loss = dict(arcface=dict(weight=1.0, scale=16.0, m2=0.3))
  model, tx, state, batch = _setup(c)
  _, metrics = _step(c, model, tx)(state, batch)
  x = preprocess_images(batch["image"], c)
  cos = np.asarray(model.apply({"params": state.params}, train=False, image=x)["cosine"], np.float64)
  theta = np.arccos(np.clip(cos, -1, 1))
  y = np.asarray(batch["label"])
  logits = 16.0 * cos
  logits[np.arange(4), y] = 16.0 * np.cos(theta[np.arange(4), y] + 0.3)  # no theta + m > pi here
  assert (theta[np.arange(4), y] + 0.3 < np.pi).all()
  want = -(logits[np.arange(4), y] - np.log(np.exp(logits).sum(-1))).mean()
  np.testing.assert_allclose(float(metrics["loss/arcface"]), want, rtol=1e-4)
  assert "accuracy" in metrics  # argmax of the cosines
