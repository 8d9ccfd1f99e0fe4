"""Heads (``fer_jax.models.heads``, ``HEADS``) and the backbone + head ``Model`` (``fer_jax.models.composite``).

Every head's output is checked against a NumPy computation from its own parameters (set to random values,
so biases are non-zero): linear / multilabel / regression logits = x W + b, tanh head = tanh(x W + b), the
action-unit head sigmoid(x W + b), the cosine head = (x / |x|) (W / |W|_col). Error paths are checked by
their messages.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax.models.composite import Model, build_backbone, build_model
from fer_jax.models.heads import build_head
from fer_jax.registry import BACKBONES, HEADS

B, F, K = 4, 6, 3  # one set of shapes, so that eager ops compile once for the whole file


def _features(seed: int = 0, batch: int = B, feat: int = F) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, feat)).astype(np.float32)


def _dense_params(seed: int, feat: int = F, out: int = K, scale: float = 0.5):
  rng = np.random.default_rng(seed)
  return {"kernel": (scale * rng.normal(size=(feat, out))).astype(np.float32),
          "bias": rng.normal(size=(out,)).astype(np.float32)}


def _np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _init(head, x):
  return head.init(jax.random.key(0), {"features": jnp.asarray(x)})


def _apply_dense(spec, x, seed=1):
  """(output dict, kernel, bias) of a dense head whose parameters are replaced by random ones."""
  head = build_head(spec)
  variables = _init(head, x)
  assert set(variables["params"]) == {"dense"}
  assert variables["params"]["dense"]["kernel"].shape == (x.shape[-1], spec["num_outputs"])
  p = _dense_params(seed, x.shape[-1], spec["num_outputs"])
  out = head.apply({"params": {"dense": p}}, {"features": jnp.asarray(x)})
  return out, p["kernel"].astype(np.float64), p["bias"].astype(np.float64)


# ----------------------------------------------------------------------------- registry


def test_registered_heads():
  assert {"linear", "tanh", "multilabel", "regression", "cosine", "multitask",
          "action_units"} <= set(HEADS.names())


# ----------------------------------------------------------------------------- dense heads


@pytest.mark.parametrize("name,output,activation", [
    ("linear", "logits", lambda z: z),
    ("multilabel", "multilabel_logits", lambda z: z),  # pre-sigmoid logits
    ("regression", "regression", lambda z: z),
    ("tanh", "valence_arousal", np.tanh),
    ("action_units", "au_intensity", _np_sigmoid),
])
def test_dense_head_values(name, output, activation):
  x = _features(0)
  out, w, b = _apply_dense({"name": name, "num_outputs": K}, x)
  assert set(out) == {output}
  assert out[output].dtype == jnp.float32
  expected = activation(x.astype(np.float64) @ w + b)
  np.testing.assert_allclose(np.asarray(out[output]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation,fn", [
    ("none", lambda z: z),
    ("tanh", np.tanh),
    ("sigmoid", _np_sigmoid),
    ("relu", lambda z: np.maximum(z, 0.0)),
    ("softplus", lambda z: np.log1p(np.exp(z))),
])
def test_regression_head_activations_and_output_name(activation, fn):
  x = _features(2)
  out, w, b = _apply_dense({"name": "regression", "num_outputs": K, "activation": activation,
                            "output": "au_intensity"}, x, seed=3)
  assert set(out) == {"au_intensity"}
  np.testing.assert_allclose(np.asarray(out["au_intensity"]), fn(x.astype(np.float64) @ w + b),
                             rtol=1e-5, atol=1e-6)


def test_output_field_renames_the_output():
  x = _features(4)
  out, w, b = _apply_dense({"name": "linear", "num_outputs": K, "output": "sentiment_logits"}, x)
  assert set(out) == {"sentiment_logits"}
  np.testing.assert_allclose(np.asarray(out["sentiment_logits"]), x @ w + b, rtol=1e-5, atol=1e-6)


def test_leading_axes_are_kept():
  """(B, T, F) features (a sequence backbone) -> (B, T, K) outputs, the same Dense on every step."""
  x = np.random.default_rng(5).normal(size=(2, B, F)).astype(np.float32)
  out, w, b = _apply_dense({"name": "tanh", "num_outputs": K}, x)
  np.testing.assert_allclose(np.asarray(out["valence_arousal"]), np.tanh(x @ w + b), rtol=1e-5, atol=1e-6)


def test_kernel_init_scale_and_lecun_std():
  """init_scale multiplies the initial kernel exactly; 'lecun' (the tanh head's default) has std 1/sqrt(F)."""
  x = jnp.asarray(_features(0))
  k1 = _init(build_head({"name": "linear", "num_outputs": K}), x)["params"]["dense"]["kernel"]
  k3 = _init(build_head({"name": "linear", "num_outputs": K, "init_scale": 3.0}), x)["params"]["dense"]["kernel"]
  np.testing.assert_allclose(np.asarray(k3), 3.0 * np.asarray(k1), rtol=1e-6)
  assert np.all(np.abs(np.asarray(k1)) <= 2 * 0.02 + 1e-7)  # truncated at 2 stddev = 0.04
  big = jnp.zeros((1, 256))
  tanh_params = build_head({"name": "tanh", "num_outputs": 64}).init(jax.random.key(1), {"features": big})
  kernel = np.asarray(tanh_params["params"]["dense"]["kernel"])
  np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(256), rtol=0.05)  # 16384 samples
  np.testing.assert_array_equal(np.asarray(tanh_params["params"]["dense"]["bias"]), 0.0)


def test_bfloat16_head_returns_float32_close_to_numpy():
  x = _features(6)
  head = build_head({"name": "linear", "num_outputs": K}, dtype=jnp.bfloat16)
  variables = _init(head, x)
  p = _dense_params(7)
  out = head.apply({"params": {"dense": p}}, {"features": jnp.asarray(x)})["logits"]
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), x @ p["kernel"] + p["bias"], rtol=0.03, atol=0.03)
  assert variables["params"]["dense"]["kernel"].dtype == jnp.float32  # params stay float32


# ----------------------------------------------------------------------------- dropout


def _identity_linear(rate: float):
  """A linear head of width F with W = I, b = 0, so its output is the (dropped-out) features."""
  head = build_head({"name": "linear", "num_outputs": 64, "dropout_rate": rate})
  variables = {"params": {"dense": {"kernel": jnp.eye(64), "bias": jnp.zeros(64)}}}
  return head, variables


def test_dropout_only_with_train_and_rng():
  x = jnp.asarray(np.random.default_rng(8).uniform(1.0, 2.0, size=(16, 64)).astype(np.float32))
  head, variables = _identity_linear(0.5)
  feats = {"features": x}
  # Eval: the identity, with or without an rng.
  np.testing.assert_allclose(np.asarray(head.apply(variables, feats)["logits"]), np.asarray(x), rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(head.apply(variables, feats, train=False, rngs={"dropout": jax.random.key(3)})["logits"]),
      np.asarray(x), rtol=1e-6)
  # Train: each feature is either dropped (0) or kept and scaled by 1 / (1 - rate) = 2.
  y = np.asarray(head.apply(variables, feats, train=True, rngs={"dropout": jax.random.key(3)})["logits"])
  dropped = y == 0.0
  np.testing.assert_allclose(y[~dropped], 2.0 * np.asarray(x)[~dropped], rtol=1e-6)
  assert 0.4 < dropped.mean() < 0.6, dropped.mean()  # 1024 Bernoulli(0.5) draws
  # Same rng -> same mask; another rng -> another mask.
  y_again = head.apply(variables, feats, train=True, rngs={"dropout": jax.random.key(3)})["logits"]
  np.testing.assert_array_equal(np.asarray(y_again), y)
  y_other = head.apply(variables, feats, train=True, rngs={"dropout": jax.random.key(4)})["logits"]
  assert not np.array_equal(np.asarray(y_other) == 0.0, dropped)
  # Train without an rng: flax's error names the missing 'dropout' PRNG.
  with pytest.raises(Exception, match='needs PRNG for "dropout"'):
    head.apply(variables, feats, train=True)


def test_zero_dropout_needs_no_rng_in_train_mode():
  x = jnp.asarray(_features(9, batch=2, feat=64))
  head, variables = _identity_linear(0.0)
  np.testing.assert_allclose(np.asarray(head.apply(variables, {"features": x}, train=True)["logits"]),
                             np.asarray(x), rtol=1e-6)


def test_cosine_head_dropout_only_in_train():
  x = jnp.asarray(_features(10, batch=8, feat=64))
  head = build_head({"name": "cosine", "num_outputs": K, "dropout_rate": 0.5})
  variables = _init(head, x)
  eval_out = head.apply(variables, {"features": x})["cosine"]
  np.testing.assert_array_equal(
      np.asarray(head.apply(variables, {"features": x}, rngs={"dropout": jax.random.key(0)})["cosine"]),
      np.asarray(eval_out))
  train_out = head.apply(variables, {"features": x}, train=True, rngs={"dropout": jax.random.key(0)})["cosine"]
  assert not np.allclose(np.asarray(train_out), np.asarray(eval_out))


# ----------------------------------------------------------------------------- cosine head


def test_cosine_head_values():
  x = _features(11)
  x[1] *= 50.0  # the norm of x does not matter
  head = build_head({"name": "cosine", "num_outputs": K})
  variables = _init(head, x)
  assert jax.tree_util.tree_map(jnp.shape, variables["params"]) == {"cosine": {"kernel": (F, K)}}
  w = np.random.default_rng(12).normal(size=(F, K)).astype(np.float32) * np.array([0.1, 1.0, 30.0],
                                                                                   np.float32)
  out = head.apply({"params": {"cosine": {"kernel": jnp.asarray(w)}}}, {"features": jnp.asarray(x)})
  assert set(out) == {"cosine"} and out["cosine"].dtype == jnp.float32
  xd, wd = x.astype(np.float64), w.astype(np.float64)
  expected = (xd / np.linalg.norm(xd, axis=1, keepdims=True)) @ (wd / np.linalg.norm(wd, axis=0, keepdims=True))
  np.testing.assert_allclose(np.asarray(out["cosine"]), expected, atol=1e-6)
  # A feature vector parallel to class 2's weight has cosine 1 with it.
  aligned = head.apply({"params": {"cosine": {"kernel": jnp.asarray(w)}}},
                       {"features": jnp.asarray(3.0 * w[:, 2][None])})["cosine"]
  np.testing.assert_allclose(np.asarray(aligned)[0, 2], 1.0, atol=1e-6)


def test_cosine_head_bad_num_outputs():
  with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
    _init(build_head({"name": "cosine", "num_outputs": 0}), _features())


def test_cosine_head_rejects_bad_dropout_rate():
  with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
    _init(build_head({"name": "cosine", "num_outputs": K, "dropout_rate": 1.5}), _features())


# ----------------------------------------------------------------------------- multitask


def test_multitask_merges_outputs_and_params():
  x = _features(13)
  spec = {"name": "multitask", "heads": {
      "emotion": {"name": "multilabel", "num_outputs": K},
      "sentiment": {"name": "linear", "num_outputs": 2, "output": "sentiment_logits"},
      "va": {"name": "tanh", "num_outputs": 2}}}
  head = build_head(spec)
  variables = _init(head, x)
  shapes = jax.tree_util.tree_map(jnp.shape, variables["params"])
  assert shapes == {"emotion": {"dense": {"kernel": (F, K), "bias": (K,)}},
                    "sentiment": {"dense": {"kernel": (F, 2), "bias": (2,)}},
                    "va": {"dense": {"kernel": (F, 2), "bias": (2,)}}}
  params = {"emotion": {"dense": _dense_params(20, out=K)}, "sentiment": {"dense": _dense_params(21, out=2)},
            "va": {"dense": _dense_params(22, out=2)}}
  out = head.apply({"params": params}, {"features": jnp.asarray(x)})
  assert set(out) == {"multilabel_logits", "sentiment_logits", "valence_arousal"}

  def lin(name):
    return x.astype(np.float64) @ params[name]["dense"]["kernel"] + params[name]["dense"]["bias"]

  np.testing.assert_allclose(np.asarray(out["multilabel_logits"]), lin("emotion"), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["sentiment_logits"]), lin("sentiment"), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["valence_arousal"]), np.tanh(lin("va")), rtol=1e-5, atol=1e-6)


def test_multitask_from_config_dict():
  spec = ml_collections.ConfigDict({"name": "multitask", "heads": {
      "a": {"name": "linear", "num_outputs": K}, "b": {"name": "cosine", "num_outputs": 2}}})
  head = build_head(spec)
  out = head.apply(_init(head, _features()), {"features": jnp.asarray(_features())})
  assert {k: v.shape for k, v in out.items()} == {"logits": (B, K), "cosine": (B, 2)}


def test_multitask_rejects_clashing_outputs():
  head = build_head({"name": "multitask", "heads": {"first": {"name": "linear", "num_outputs": K},
                                                     "second": {"name": "linear", "num_outputs": 2}}})
  with pytest.raises(ValueError, match=r"multitask head 'second' outputs \['logits'\] already produced by "
                                       r"another head; give it another 'output'"):
    _init(head, _features())


def test_multitask_rejects_empty_heads():
  with pytest.raises(ValueError, match="multitask head: heads is empty"):
    _init(build_head({"name": "multitask", "heads": {}}), _features())


def test_multitask_sub_head_without_name():
  head = build_head({"name": "multitask", "heads": {"a": {"num_outputs": K}}})
  with pytest.raises(ValueError, match=r"head spec \{'num_outputs': 3\} has no 'name'; known heads: \[.*'linear'"):
    _init(head, _features())


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("num_outputs", [0, -2, 2.5, "3"])
def test_bad_num_outputs(num_outputs):
  with pytest.raises(ValueError, match=rf"head num_outputs must be an int >= 1, got {num_outputs!r}"):
    _init(build_head({"name": "linear", "num_outputs": num_outputs}), _features())


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_bad_dropout_rate(rate):
  with pytest.raises(ValueError, match=rf"head dropout_rate must be in \[0, 1\), got {rate!r}"):
    _init(build_head({"name": "tanh", "num_outputs": K, "dropout_rate": rate}), _features())


def test_bad_activation_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"head activation='gelu'; expected one of "
                                       r"\['none', 'relu', 'sigmoid', 'softplus', 'tanh'\]"):
    _init(build_head({"name": "regression", "num_outputs": K, "activation": "gelu"}), _features())


def test_bad_kernel_init_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"head kernel_init='xavier'; expected one of \['lecun', 'trunc_normal'\]"):
    _init(build_head({"name": "linear", "num_outputs": K, "kernel_init": "xavier"}), _features())


def test_missing_features_names_what_it_got():
  head = build_head({"name": "linear", "num_outputs": K})
  with pytest.raises(KeyError, match=r"A head needs the backbone output 'features'; got \['embedding', 'sa_loss'\]"):
    head.init(jax.random.key(0), {"embedding": jnp.zeros((B, F)), "sa_loss": jnp.zeros(())})


def test_build_head_errors():
  with pytest.raises(ValueError, match=r"has no 'name'; known heads: \[.*'action_units'.*'cosine'.*'linear'"):
    build_head({"num_outputs": K})
  with pytest.raises(KeyError, match=r"Unknown head 'lineer'\. Did you mean \['linear'\]\? Known heads: \["):
    build_head({"name": "lineer", "num_outputs": K})
  with pytest.raises(TypeError, match=r"head LinearHead: .*'num_classes'"):
    build_head({"name": "linear", "num_classes": K})


def test_build_head_does_not_mutate_its_spec():
  spec = {"name": "linear", "num_outputs": K}
  build_head(spec, dtype=jnp.bfloat16)
  assert spec == {"name": "linear", "num_outputs": K}


# ----------------------------------------------------------------------------- composite Model


class _ToyBackbone(nn.Module):
  """image (B, 2, 2, 2) -> {'features': flatten(image) @ Wb + bb, 'aux_loss': sum(features^2)}."""

  input_names = ("image",)
  width: int = F
  dtype: object = None

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    f = nn.Dense(self.width, name="proj")(image.reshape(image.shape[0], -1))
    return {"features": f, "aux_loss": jnp.sum(f * f)}


@pytest.fixture
def toy_backbone(monkeypatch):
  """'toy_heads_backbone' registered for this test only (test_backbones wants a row for every backbone)."""
  BACKBONES.names()  # load the built-in backbones first
  monkeypatch.setitem(BACKBONES._entries, "toy_heads_backbone", _ToyBackbone)
  return "toy_heads_backbone"


def _image(seed=0):
  return np.random.default_rng(seed).normal(size=(B, 2, 2, 2)).astype(np.float32)


def test_model_outputs_backbone_and_head_values(toy_backbone):
  model = build_model({"backbone": {"name": toy_backbone},
                       "head": {"name": "multitask", "heads": {
                           "cls": {"name": "linear", "num_outputs": K},
                           "va": {"name": "tanh", "num_outputs": 2}}}})
  assert isinstance(model, Model) and model.input_names == ("image",)
  img = _image(1)
  variables = model.init(jax.random.key(0), train=False, image=jnp.asarray(img))
  shapes = jax.tree_util.tree_map(jnp.shape, variables["params"])
  assert shapes == {"backbone": {"proj": {"kernel": (8, F), "bias": (F,)}},
                    "head": {"cls": {"dense": {"kernel": (F, K), "bias": (K,)}},
                             "va": {"dense": {"kernel": (F, 2), "bias": (2,)}}}}
  params = {"backbone": {"proj": _dense_params(30, feat=8, out=F)},
            "head": {"cls": {"dense": _dense_params(31, out=K)}, "va": {"dense": _dense_params(32, out=2)}}}
  out = model.apply({"params": params}, train=False, image=jnp.asarray(img))
  assert set(out) == {"features", "aux_loss", "logits", "valence_arousal"}
  feats = img.reshape(B, -1).astype(np.float64) @ params["backbone"]["proj"]["kernel"] + \
      params["backbone"]["proj"]["bias"]
  np.testing.assert_allclose(np.asarray(out["features"]), feats, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["aux_loss"]), np.sum(feats ** 2), rtol=1e-5)
  hp = params["head"]
  np.testing.assert_allclose(np.asarray(out["logits"]), feats @ hp["cls"]["dense"]["kernel"] +
                             hp["cls"]["dense"]["bias"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["valence_arousal"]),
                             np.tanh(feats @ hp["va"]["dense"]["kernel"] + hp["va"]["dense"]["bias"]),
                             rtol=1e-5, atol=1e-5)
  # Inputs the backbone does not declare are ignored.
  extra = model.apply({"params": params}, train=False, image=jnp.asarray(img), landmarks=jnp.zeros((B, 5)))
  np.testing.assert_array_equal(np.asarray(extra["logits"]), np.asarray(out["logits"]))


def test_model_missing_input_names_it(toy_backbone):
  model = build_model({"backbone": {"name": toy_backbone}, "head": {"name": "linear", "num_outputs": K}})
  with pytest.raises(ValueError, match=r"_ToyBackbone needs the input\(s\) \['image'\]; got \['frames'\]"):
    model.init(jax.random.key(0), train=False, frames=jnp.zeros((B, 2, 2, 2)))


def test_model_rejects_head_output_clashing_with_backbone(toy_backbone):
  model = build_model({"backbone": {"name": toy_backbone},
                       "head": {"name": "regression", "num_outputs": K, "output": "aux_loss"}})
  with pytest.raises(ValueError, match=r"head outputs \['aux_loss'\] clash with the backbone's outputs"):
    model.init(jax.random.key(0), train=False, image=jnp.asarray(_image()))


def test_model_from_config_dict_with_dtype(toy_backbone):
  cfg = ml_collections.ConfigDict({"backbone": {"name": toy_backbone, "width": 5},
                                   "head": {"name": "linear", "num_outputs": 2}})
  model = build_model(cfg, dtype=jnp.bfloat16)
  assert model.backbone.dtype == jnp.bfloat16 and model.head.dtype == jnp.bfloat16
  variables = model.init(jax.random.key(0), train=False, image=jnp.asarray(_image()))
  assert variables["params"]["head"]["dense"]["kernel"].shape == (5, 2)


def test_convnext_model_logits_are_a_dense_map_of_its_features():
  model = build_model({"backbone": {"name": "convnext", "depths": (1, 1), "dims": (4, 8), "stem_patch_size": 2},
                       "head": {"name": "linear", "num_outputs": K}})
  img = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32))
  # Abstract init (no compute) for the parameter tree; the backbone runs once, jitted.
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), train=False, image=img))
  assert set(variables["params"]) == {"backbone", "head"}
  assert "head" not in variables["params"]["backbone"]  # ConvNeXt's own classifier is not in the backbone
  head_params = _dense_params(40, feat=8, out=K)
  rng = np.random.default_rng(41)
  backbone_params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)), variables["params"]["backbone"])
  variables = {"params": {"backbone": backbone_params, "head": {"dense": head_params}}}
  out = jax.jit(lambda v: model.apply(v, train=False, image=img))(variables)
  assert set(out) == {"features", "logits"} and out["features"].shape == (2, 8)
  np.testing.assert_allclose(np.asarray(out["logits"]),
                             np.asarray(out["features"], np.float64) @ head_params["kernel"] + head_params["bias"],
                             rtol=1e-5, atol=1e-5)


def test_build_model_errors():
  head = {"name": "linear", "num_outputs": K}
  with pytest.raises(ValueError, match=r"config.model has no 'backbone' section; it has \['head'\]"):
    build_model({"head": head})
  with pytest.raises(ValueError, match=r"config.model has no 'head' section; it has \['backbone'\]"):
    build_model({"backbone": {"name": "convnext"}})
  with pytest.raises(ValueError, match=r"config.model has unknown field\(s\) \['dropout', 'num_classes'\]; "
                                       r"expected 'backbone', 'head' and optionally 'backbone_frozen'"):
    build_model({"backbone": {"name": "convnext"}, "head": head, "num_classes": 7, "dropout": 0.1})
  with pytest.raises(ValueError, match=r"backbone spec \{'size': 'atto'\} has no 'name'; known backbones: "
                                       r"\[.*'convnext'"):
    build_model({"backbone": {"size": "atto"}, "head": head})
  with pytest.raises(KeyError, match=r"Unknown backbone 'convnxt'\. Did you mean \['convnext'\]"):
    build_model({"backbone": {"name": "convnxt"}, "head": head})
  with pytest.raises(TypeError, match=r"backbone ConvNeXtBackbone: .*'num_classes'"):
    build_backbone({"name": "convnext", "num_classes": 7})
  with pytest.raises(KeyError, match=r"Unknown head 'softmax'"):
    build_model({"backbone": {"name": "convnext"}, "head": {"name": "softmax"}})
