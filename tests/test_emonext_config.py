"""experiments/emonext_fer2013.py: every Table II row builds the intended model; the trainer adds the
self-attention regulariser to the loss; pretrained ConvNeXt weights load into the backbone."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.train import optim, sharding, trainer
from fer_jax.train.preprocess import preprocess_images

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "emonext_fer2013.py")

# Table II ConvNeXt rows with 7 classes: timm's 1000-class counts (tests/test_models.py) minus the
# head difference (dim * 993 + 993).
CONVNEXT_7 = {"tiny": 28_589_128 - 993 * 769, "small": 50_223_688 - 993 * 769,
              "base": 88_591_464 - 993 * 1025, "large": 197_767_336 - 993 * 1537,
              "xlarge": 350_196_968 - 993 * 2049}
STN_224 = 8 * 3 * 49 + 8 + 2 * 8 + 10 * 8 * 25 + 10 + 2 * 10 + 27040 * 32 + 32 + 32 * 6 + 6
DIMS = {"tiny": 768, "small": 768, "base": 1024, "large": 1536, "xlarge": 2048}


def _se(dims, blocks):  # SE on the given channel counts, reduction 16, no bias: 2 * C * C/16
  return sum(2 * c * (c // 16) for c in dims[:blocks])


def _count(config):
  model = trainer.create_model(config)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                             image=jnp.zeros((1, 224, 224, 3)), train=False))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xlarge"])
def test_table2_rows_build_the_expected_models(size):
  c = DIMS[size]
  dims = (c // 8, c // 4, c // 2, c)
  assert STN_224 == 868_740
  baseline = config_utils.load_config_file(f"{CONFIG}:size={size},arch=convnext")
  assert _count(baseline) == CONVNEXT_7[size]
  code = config_utils.load_config_file(f"{CONFIG}:size={size}")
  attention = 2 * c + 2 * (c * c + c)  # LayerNorm + Q, K Dense(C)
  # Official code: SE after the downsampling convs of stages 2-4 (input channels dims[1:]).
  assert _count(code) == CONVNEXT_7[size] + STN_224 + _se(dims[1:], 3) + attention
  if size in ("tiny", "xlarge"):
    paper = config_utils.load_config_file(f"{CONFIG}:size={size},reading=paper")
    assert _count(paper) == CONVNEXT_7[size] + STN_224 + _se(dims, 4) + attention
  assert code.loss.sa.weight == 1.0 and "sa" not in baseline.loss
  assert code.loss.ce.label_smoothing == 0.2 and code.input.batch_size == 64
  assert (code.input.resize, code.input.crop, code.input.eval_crops) == (236, 224, "ten")
  assert code.schedule.name == "cosine_warm_restarts" and code.ema.decay == 0.99 and code.ema.every == 16


def _tiny_emonext_config(sa_weight):
  c = config_utils.base_config()
  c.dataset.update(num_classes=3, image_size=32)
  c.input.update(resize=32, crop=32, channels=3)
  c.model.backbone = dict(name="emonext", depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), stem_patch_size=2,
                          use_stn=True, se_placement="downsample", se_reduction=4, sa_mode="batch")
  c.model.head = dict(name="linear", num_outputs=3)
  c.loss = dict(ce=dict(weight=1.0, label_smoothing=0.0), sa=dict(weight=sa_weight))
  c.optimizer.update(name="sgd", lr=0.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=0.0)
  return c


@pytest.mark.slow  # a whole EmoNeXt train step compiled twice (about a minute on 2 cores)
def test_train_step_adds_the_self_attention_term():
  c = _tiny_emonext_config(sa_weight=2.5)
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)),
           "label": jnp.asarray([0, 1, 2, 1, 0, 2], jnp.int32)}
  task = trainer.get_task(c)
  _, metrics = jax.jit(lambda s, b: trainer.train_step(s, b, jax.random.key(1), model=model, tx=tx,
                                                       config=c, task=task))(state, batch)
  # Reference: the same forward pass by hand (drop path is 0, so the rng does not matter).
  x = preprocess_images(batch["image"], c)
  aux, _ = model.apply({"params": state.params, **state.model_state}, image=x, train=True,
                       mutable=["batch_stats"])
  logp = np.asarray(jax.nn.log_softmax(aux["logits"]))
  ce = -logp[np.arange(6), np.asarray(batch["label"])].mean()
  w = np.asarray(aux["attention"], np.float64)
  sa = np.mean((w - w.mean()) ** 2)  # L_SA = mean((W - mean W)^2), W: the B x B attention
  assert w.shape == (6, 6)
  np.testing.assert_allclose(float(metrics["loss/sa"]), sa, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss/ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), ce + 2.5 * sa, rtol=1e-5)


@pytest.mark.slow  # compiles a whole train step to reach the error; slow on 2 cores
def test_sa_weight_needs_a_model_that_returns_the_term():
  c = _tiny_emonext_config(sa_weight=1.0)
  c.model.backbone = dict(name="convnext", depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), stem_patch_size=2)
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  batch = {"image": jnp.zeros((2, 32, 32, 3), jnp.uint8), "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(KeyError, match=r"loss term 'sa' needs the model output 'sa_loss'.*outputs are "
                                     r"\['features', 'logits'\]"):
    trainer.train_step(state, batch, jax.random.key(1), model=model, tx=tx, config=c,
                       task=trainer.get_task(c))


def test_init_weights_errors_name_the_path_and_the_model(tmp_path):
  c = _tiny_emonext_config(sa_weight=0.0)
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, shardings = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  c.init_weights = str(tmp_path / "missing.safetensors")
  with pytest.raises(FileNotFoundError, match="missing.safetensors"):
    trainer.load_init_weights(state, c, shardings)
  c.model.backbone.name = "inception_resnet"
  with pytest.raises(ValueError, match="backbone 'inception_resnet' has no pretrained-weight importer"):
    trainer.load_init_weights(state, c, shardings)


def test_init_weights_loads_a_convnext_checkpoint_into_the_backbone(tmp_path):
  safetensors = pytest.importorskip("safetensors.torch")
  from fer_jax.testing import import_timm
  try:
    _, timm = import_timm()
  except ImportError as e:
    pytest.skip(str(e))
  ref = timm.create_model("convnext_atto", pretrained=False, num_classes=7)
  path = tmp_path / "atto.safetensors"
  safetensors.save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
  c = config_utils.load_config_file(f"{CONFIG}:cpu")
  c.init_weights = str(path)
  c.ema.decay = 0.99  # the CPU variant has no EMA; the paper recipe has one
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, shardings = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  loaded = trainer.load_init_weights(state, c, shardings)
  sd = ref.state_dict()
  # Stem conv (OIHW -> HWIO) and a block's pointwise layer ((out, in[, 1, 1]) -> (in, out)) come from
  # the file (timm's atto uses 1x1 convs for the MLP).
  backbone, fresh = loaded.params["backbone"], state.params["backbone"]
  np.testing.assert_array_equal(np.asarray(backbone["stem_conv"]["kernel"]),
                                sd["stem.0.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(backbone["stage_3"]["block_1"]["pwconv1"]["kernel"]),
                                sd["stages.3.blocks.1.mlp.fc1.weight"].numpy().reshape(4 * 320, 320).T)
  # STN, SE, attention and head keep their fresh values; the EMA starts from the loaded weights.
  for key in ("stn", "attention"):
    jax.tree.map(np.testing.assert_array_equal, backbone[key], fresh[key])
  jax.tree.map(np.testing.assert_array_equal, loaded.params["head"], state.params["head"])
  jax.tree.map(np.testing.assert_array_equal, loaded.ema_params, loaded.params)
