"""``config.optimizer.frozen``: matched parameters get zero updates (no decay, no EMA drift) and modules
whose parameters are all frozen keep their BatchNorm statistics (a linear probe of a BN backbone)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.train import optim, sharding, trainer


def _config(frozen):
  c = config_utils.base_config()
  c.dataset.num_classes = 3
  c.input.update(resize=8, crop=8, channels=3)
  c.model.backbone = dict(name="resnet", stem_widths=(4,), stem_strides=(1,), widths=(4, 8), depths=(1, 1))
  c.model.head = dict(name="linear", num_outputs=3)
  c.optimizer.update(lr=0.05, weight_decay=0.1, frozen=frozen)  # adamw: decay would move frozen kernels
  c.schedule.name = "constant"
  c.ema.decay = 0.9
  return c


def _run(frozen, steps=3):
  c = _config(frozen)
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  task = trainer.get_task(c)
  task.bind_model(model.input_names)
  step = jax.jit(lambda s, b: trainer.train_step(s, b, jax.random.key(1), model=model, tx=tx, config=c,
                                                 task=task))
  rng = np.random.default_rng(0)
  new = state
  for _ in range(steps):
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)),
             "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}
    new, metrics = step(new, batch)
    assert bool(metrics["finite"])
  return state, new


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _all_changed(a, b):
  return all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_frozen_backbone_params_stats_and_ema_stay_bit_identical():
  old, new = _run("^backbone/")
  assert _equal(old.params["backbone"], new.params["backbone"])
  assert _equal(old.ema_params["backbone"], new.ema_params["backbone"])
  assert _equal(old.model_state["batch_stats"]["backbone"], new.model_state["batch_stats"]["backbone"])
  assert _all_changed(old.params["head"], new.params["head"])
  assert _all_changed(old.ema_params["head"], new.ema_params["head"])


def test_without_frozen_everything_trains():
  old, new = _run(None)
  assert _all_changed(old.params["head"], new.params["head"])
  kernels = [k for k in jax.tree_util.tree_flatten_with_path(old.params["backbone"])[0]]
  assert not _equal(old.params["backbone"], new.params["backbone"]) and kernels
  assert _all_changed(old.model_state["batch_stats"]["backbone"], new.model_state["batch_stats"]["backbone"])


def test_partly_frozen_module_keeps_updating_its_statistics():
  # Only the kernels of the backbone: its BatchNorm scales still train, so its statistics update.
  params = {"backbone": {"bn": {"scale": np.ones(2), "bias": np.zeros(2)}, "conv": {"kernel": np.ones(2)}},
            "head": {"dense": {"kernel": np.ones(2)}}}
  stats = {"batch_stats": {"backbone": {"bn": {"mean": np.zeros(2), "var": np.ones(2)}}}}
  kernels_only = optim.frozen_mask(params, "kernel$")
  assert jax.tree.leaves(optim.frozen_stats_mask(stats, kernels_only)) == [False, False]
  mask = optim.frozen_mask(params, "^backbone/")
  assert jax.tree.leaves(optim.frozen_stats_mask(stats, mask)) == [True, True]
  assert optim.frozen_mask(params, "^backbone/")["head"]["dense"]["kernel"] is False


def test_regex_matching_nothing_is_named():
  with pytest.raises(ValueError, match=r"frozen='\^encoder/' matches no parameter; paths look like"):
    optim.frozen_mask({"backbone": {"w": np.ones(1)}}, "^encoder/")
  with pytest.raises(ValueError, match="not a valid regex"):
    optim.frozen_mask({"backbone": {"w": np.ones(1)}}, "([")


def test_backbone_frozen_is_a_linear_probe_on_inference_features():
  """``model.backbone_frozen``: one SGD step of the head equals logistic regression's closed-form gradient
  step on the features of the network in inference mode (running BatchNorm statistics)."""
  c = _config("^backbone/")
  c.model.backbone_frozen = True
  c.optimizer.update(name="sgd", momentum=0.0, weight_decay=0.0, grad_clip_norm=0.0, lr=0.5)
  c.ema.decay = 0.0
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  # Running statistics far from a batch's own: train-mode BN would give other features.
  stats = jax.tree.map(lambda v: v + 0.7, state.model_state)
  state = state.replace(model_state=stats)
  task = trainer.get_task(c)
  task.bind_model(model.input_names)
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)),
           "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}
  new, metrics = trainer.train_step(state, batch, jax.random.key(1), model=model, tx=tx, config=c, task=task)
  assert bool(metrics["finite"])
  variables = {"params": state.params, **state.model_state}
  inputs = task.model_inputs(task.preprocess(batch), model.input_names)
  x = np.asarray(model.apply(variables, train=False, **inputs)["features"],
                 np.float64)
  w = np.asarray(state.params["head"]["dense"]["kernel"], np.float64)
  b = np.asarray(state.params["head"]["dense"]["bias"], np.float64)
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  d = (p - np.eye(3)[np.asarray(batch["label"])]) / len(x)  # d(mean CE)/dz
  np.testing.assert_allclose(new.params["head"]["dense"]["kernel"], w - 0.5 * x.T @ d, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new.params["head"]["dense"]["bias"], b - 0.5 * d.sum(0), rtol=1e-4, atol=1e-6)
  assert _equal(state.params["backbone"], new.params["backbone"])
  assert _equal(state.model_state, new.model_state)


def test_backbone_frozen_must_be_a_bool():
  c = _config(None)
  c.model.backbone_frozen = "yes"
  with pytest.raises(ValueError, match=r"backbone_frozen='yes'; expected True or False"):
    trainer.create_model(c)
