"""Schedules against closed forms; optimizer weight-decay masking."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.train import optim


def test_cosine_warm_restarts_closed_form():
  peak, low, warm, cycle, gamma = 1e-3, 1e-6, 128, 1024, 0.5
  sched = optim.cosine_warm_restarts(peak, low, warm, cycle, gamma)
  for step in [0, 1, 64, 127, 128, 500, 1023, 1024, 1100, 1152, 2047, 2048 + 300]:
    c, t = divmod(step, cycle)
    p = peak * gamma ** c
    if t < warm:
      want = low + (p - low) * t / warm
    else:
      want = low + (p - low) * 0.5 * (1 + np.cos(np.pi * (t - warm) / (cycle - warm)))
    assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step


def test_bad_schedule_name_lists_choices():
  c = config_utils.base_config()
  c.schedule.name = "cosin"
  with pytest.raises(ValueError, match="cosine_warm_restarts"):
    optim.create_schedule(c, 10)


def test_adamw_does_not_decay_vectors():
  c = config_utils.base_config()
  c.optimizer.update(lr=0.1, weight_decay=0.5, grad_clip_norm=0.0)
  tx = optim.create_optimizer(c, optim.create_schedule(ml_collections.ConfigDict(
      dict(schedule=dict(name="constant"), optimizer=dict(lr=0.1))), 1))
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Zero gradient: only weight decay moves the matrix (-lr * wd * w); the bias is untouched.
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


def test_optimizer_clips_latent_binary_kernels_only():
  c = config_utils.base_config()
  c.optimizer.update(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=0.0)
  tx = optim.create_optimizer(c, lambda step: 1.0)
  params = {"QuantDense_0": {"latent_kernel": jnp.array([[0.5, -0.9], [0.2, 0.0]]), "bias": jnp.zeros(2)},
            "Dense_0": {"kernel": jnp.array([[0.5, -0.9]])}}
  grads = {"QuantDense_0": {"latent_kernel": jnp.array([[-2.0, 0.5], [0.3, -0.5]]), "bias": jnp.array([-3.0, 0])},
           "Dense_0": {"kernel": jnp.array([[-2.0, 0.5]])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  # SGD step p - g, then the binary latent kernel (only) is clipped to [-1, 1].
  np.testing.assert_allclose(new["QuantDense_0"]["latent_kernel"], [[1.0, -1.0], [-0.1, 0.5]], atol=1e-7)
  np.testing.assert_allclose(new["QuantDense_0"]["bias"], [3.0, 0.0])
  np.testing.assert_allclose(new["Dense_0"]["kernel"], [[2.5, -1.4]], atol=1e-7)


def test_adam_weight_decay_is_torch_adams_l2():
  """``name='adam'`` with ``weight_decay``: torch.optim.Adam's coupled L2 (after gradient clipping), checked
  over 5 steps against torch itself on a matrix (decayed) and a vector (not decayed: our 1-D rule, given to
  torch as a second parameter group)."""
  from fer_jax.testing import import_timm
  torch, _ = import_timm()
  c = config_utils.base_config()
  c.optimizer.update(name="adam", lr=0.05, weight_decay=0.3, grad_clip_norm=1.0, b1=0.8, b2=0.95, eps=1e-6)
  sched_cfg = ml_collections.ConfigDict(dict(schedule=dict(name="constant"), optimizer=dict(lr=0.05)))
  tx = optim.create_optimizer(c, optim.create_schedule(sched_cfg, 1))
  rng = np.random.default_rng(0)
  w0, b0 = rng.normal(size=(3, 2)), rng.normal(size=(2,))
  params = {"dense": {"kernel": jnp.asarray(w0, jnp.float32), "bias": jnp.asarray(b0, jnp.float32)}}
  state = tx.init(params)
  tw = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
  tb = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
  topt = torch.optim.Adam([{"params": [tw], "weight_decay": 0.3}, {"params": [tb], "weight_decay": 0.0}],
                          lr=0.05, betas=(0.8, 0.95), eps=1e-6)
  for _ in range(5):
    gw, gb = rng.normal(size=(3, 2)) * 2, rng.normal(size=(2,)) * 2  # norm > 1: clipping matters
    grads = {"dense": {"kernel": jnp.asarray(gw, jnp.float32), "bias": jnp.asarray(gb, jnp.float32)}}
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    topt.zero_grad()
    tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
    torch.nn.utils.clip_grad_norm_([tw, tb], 1.0)
    topt.step()
  np.testing.assert_allclose(params["dense"]["kernel"], tw.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["dense"]["bias"], tb.detach().numpy(), rtol=1e-5, atol=1e-6)
