"""The binarized LSTM (fer_jax.layers.binary_lstm) against a NumPy loop of its equations, its packed
XNOR-popcount twin against the float simulation, and its straight-through gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.layers import binary_lstm
from fer_jax.models import composite
from fer_jax.models import landmark_lstm as ll


def _sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def np_binary_lstm(x, p):
  """The module docstring's equations, one frame at a time, in float64."""
  wx, wh = _sign(p["input"]["latent_kernel"]), _sign(p["recurrent"]["latent_kernel"])
  hdim = wh.shape[0]
  h, c, out = np.zeros((x.shape[0], hdim)), np.zeros((x.shape[0], hdim)), []
  for t in range(x.shape[1]):
    z = p["scale_x"] * (_sign(x[:, t]) @ wx) + p["scale_h"] * (_sign(h) @ wh) + p["bias"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    out.append(h)
  return np.stack(out, 1)


def _params(d, hdim, seed):
  rng = np.random.default_rng(seed)
  return {"input": {"latent_kernel": rng.uniform(-1, 1, (d, 4 * hdim)).astype(np.float32)},
          "recurrent": {"latent_kernel": rng.uniform(-1, 1, (hdim, 4 * hdim)).astype(np.float32)},
          "scale_x": rng.uniform(0.05, 0.4, 4 * hdim).astype(np.float32),
          "scale_h": rng.uniform(0.05, 0.4, 4 * hdim).astype(np.float32),
          "bias": rng.normal(0, 0.5, 4 * hdim).astype(np.float32)}


@pytest.mark.parametrize("d,hdim", [(5, 3), (40, 33)])  # fan-ins below and above one 32-bit word
def test_binary_lstm_matches_numpy_and_packed_equals_float(d, hdim):
  p = _params(d, hdim, d)
  x = np.random.default_rng(1).normal(size=(4, 6, d)).astype(np.float32)
  x[0, 0, :2] = 0.0  # sign(0) = +1 on both paths
  layer = binary_lstm.BinaryLSTM(hdim)
  init = jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.asarray(x)))
  assert jax.tree.map(lambda a: a.shape, init["params"]) == jax.tree.map(np.shape, p)
  got = np.asarray(layer.apply({"params": p}, jnp.asarray(x)))
  np.testing.assert_allclose(got, np_binary_lstm(x.astype(np.float64), p), rtol=1e-5, atol=1e-6)
  packed = binary_lstm.pack_binary_lstm(p)
  assert packed["input"]["kernel_packed"].shape == (-(-d // 32), 4 * hdim)
  assert packed["recurrent"]["kernel_packed"].dtype == jnp.uint32
  got_packed = binary_lstm.BinaryLSTM(hdim, packed=True).apply({"params": packed}, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(got_packed), got)


def test_straight_through_gradients():
  """ste_sign passes the gradient where |input| <= 1 and stops it beyond: inputs above 1 get none, and the
  latent kernels get a gradient (they would get exactly zero through a plain sign)."""
  p = _params(6, 4, 3)
  x = np.random.default_rng(2).normal(size=(2, 5, 6)).astype(np.float32)
  x[:, :, 0] = 3.0
  layer = binary_lstm.BinaryLSTM(4)
  gx, gp = jax.grad(lambda x, p: jnp.sum(layer.apply({"params": p}, x) ** 2), argnums=(0, 1))(jnp.asarray(x), p)
  gx = np.asarray(gx)
  assert np.all(gx[:, :, 0] == 0) and np.all(np.abs(gx[:, :, 1:]).sum(-1) > 0)
  assert np.abs(np.asarray(gp["input"]["latent_kernel"])).sum() > 0
  assert np.abs(np.asarray(gp["recurrent"]["latent_kernel"])).sum() > 0


def test_whole_landmark_model_runs_packed_with_the_binary_lstm():
  model = composite.build_model({"backbone": {"name": "landmark_cnn_lstm", "size": "tiny", "binary": True,
                                              "binary_lstm": True}, "head": {"name": "linear", "num_outputs": 1}})
  x = jax.random.normal(jax.random.key(0), (3, 5, 68, 4))
  v = jax.jit(lambda: model.init(jax.random.key(1), train=False, landmarks=x))()
  rng = np.random.default_rng(0)  # BN statistics away from the identity
  v = {**v, "batch_stats": jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype),
                                        v["batch_stats"])}
  packed_model, pv = ll.pack_landmark_model(model, v)
  assert set(pv["params"]["backbone"]["lstm"]) == {"input", "recurrent", "scale_x", "scale_h", "bias"}
  run = lambda m, v: m.apply(v, train=False, landmarks=x)["logits"]  # noqa: E731
  np.testing.assert_allclose(np.asarray(jax.jit(run, static_argnums=0)(packed_model, pv)),
                             np.asarray(jax.jit(run, static_argnums=0)(model, v)), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="binary_lstm=True needs binary=True"):
    ll.LandmarkCNNLSTM(size="tiny", binary_lstm=True).init(jax.random.key(0), x)


def test_bank_config_and_variant_name():
  from fer_jax import config_utils
  from fer_jax.emotion_bank import members
  c = config_utils.load_config_file("experiments/emotion_bank_synthetic.py:arch=binary_lstm,size=tiny,data=tracked")
  assert dict(c.model.backbone) == {"name": "landmark_cnn_lstm", "size": "tiny", "binary": True, "binary_lstm": True}
  assert c.optimizer.no_decay_regex == "latent_kernel" and c.dataset.name == "synthetic_expressions/sequences_tracked"
  assert members.variant_name(c) == "binary_lstm"


def test_pack_binary_lstm_names_missing_params():
  p = _params(4, 2, 0)
  del p["recurrent"]
  with pytest.raises(ValueError, match=r"no \['recurrent'\]; they hold \['bias', 'input', 'scale_h', 'scale_x'\]"):
    binary_lstm.pack_binary_lstm(p)
