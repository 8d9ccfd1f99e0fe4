"""``config.init_weights='pretrained:NAME'``: a ``resnet`` backbone (params and BatchNorm statistics)
initialised from a shipped ``fer_jax.pretrained`` model (msgpack, no torch)."""

import gzip
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils, pretrained
from fer_jax.train import optim, sharding, trainer

FER_CSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fer2013", "fer2013.csv.gz")


def _faces(n=4):
  """The first ``n`` FER2013 faces (48x48 grey, 44-px centre crop as the model was trained), else
  smooth synthetic images."""
  if os.path.exists(FER_CSV):
    with gzip.open(FER_CSV, "rt") as f:
      rows = [line.split(",")[1] for line in itertools.islice(f, 1, n + 1)]
    x = np.stack([np.array(r.split(), np.float32).reshape(48, 48) for r in rows])
  else:
    yy, xx = np.mgrid[:48, :48]
    x = np.stack([128 + 100 * np.sin(xx / (3 + k) + yy / (5 + k)) for k in range(n)]).astype(np.float32)
  x = x[:, 2:46, 2:46, None]
  return (x - x.mean((1, 2, 3), keepdims=True)) / np.maximum(x.std((1, 2, 3), keepdims=True), 1 / 44)


def _state(backbone, init_weights, ema=0.0):
  c = config_utils.base_config()
  c.dataset.num_classes = 2
  c.input.update(resize=44, crop=44, channels=1)
  c.model.backbone = backbone
  c.model.head = dict(name="linear", num_outputs=2)
  c.init_weights = init_weights
  c.ema.decay = ema
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  state, shardings = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  return model, state, trainer.load_init_weights(state, c, shardings)


def test_backbone_features_equal_the_shipped_models():
  model, fresh, state = _state(dict(name="resnet", size="fer_s"), "pretrained:fer2013_resnet_s", ema=0.9)
  ref = pretrained.load("fer2013_resnet_s")
  x = jnp.asarray(_faces())
  want = ref.model.apply(ref.variables, image=x, train=False)["features"]
  got = model.apply({"params": state.params, **state.model_state}, image=x, train=False)["features"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
  assert float(jnp.abs(want).max()) > 0.1
  # BatchNorm statistics came along, the head stayed fresh, the EMA starts from the loaded weights.
  np.testing.assert_array_equal(state.model_state["batch_stats"]["backbone"]["stem_bn0"]["mean"],
                                ref.variables["batch_stats"]["backbone"]["stem_bn0"]["mean"])
  np.testing.assert_array_equal(state.params["head"]["dense"]["kernel"],
                                fresh.params["head"]["dense"]["kernel"])
  np.testing.assert_array_equal(state.ema_params["backbone"]["stem_conv0"]["kernel"],
                                state.params["backbone"]["stem_conv0"]["kernel"])


def test_same_network_given_by_fields_is_accepted():
  import fer_jax.models.resnet as resnet
  stem_widths, stem_strides, widths, depths = resnet.SIZES["fer_s"]
  spec = dict(name="resnet", stem_widths=stem_widths, stem_strides=stem_strides, widths=widths, depths=depths)
  _state(spec, "pretrained:fer2013_resnet_s")


def test_mismatched_backbone_is_named():
  with pytest.raises(ValueError, match=r"backbone \{'name': 'resnet', 'size': 'fer_s'\} differs from "
                                       r"config.model.backbone=\{'name': 'resnet', 'size': 'fer_xs'\}"):
    _state(dict(name="resnet", size="fer_xs"), "pretrained:fer2013_resnet_s")
