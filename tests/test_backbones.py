"""Registry-driven checks of every registered backbone (``fer_jax.registry.BACKBONES``), their
equality with the whole models they come from, and the pretrained-weight importers (``PRETRAINED``).

The backbone contract: a Linen module with a class attribute ``input_names``, called as
``backbone.apply(v, **{name: array}, train=...)`` and returning a dict with at least 'features'
(float32; (B, F) for images, (B, T, F) for clips). Every backbone's parameter tree is the tree of
its whole model minus the classifier / regression head (ConvNeXt, EmoNeXt, the LSTM model), or the
whole model's ``backbone`` subtree (Shallow / Deep Inception-ResNet), so checkpoints carry over.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import testing
from fer_jax.models import convnext, emonext
from fer_jax.models import inception_resnet as irn
from fer_jax.models.convert import convnext_from_torch_state_dict
from fer_jax.registry import BACKBONES, PRETRAINED, get_model

_CNX = dict(depths=(1, 1, 2, 1), dims=(8, 16, 16, 24), stem_patch_size=2)
_IRN = dict(width_multiplier=0.125, padding="SAME")

# name -> (smallest kwargs, {input name: shape}, {output key: shape}); the batch is 2, clips have 3
# frames. A registered backbone without a row fails test_every_backbone_has_a_row.
SMALLEST: Dict[str, Tuple[Dict[str, Any], Dict[str, tuple], Dict[str, tuple]]] = {
    "convnext": (_CNX, {"image": (2, 32, 32, 3)}, {"features": (2, 24)}),
    # STN, SE after the downsampling convs and batch-mode attention: the official defaults.
    "emonext": ({**_CNX, "se_reduction": 4}, {"image": (2, 32, 32, 3)},
                {"features": (2, 24), "sa_loss": (), "attention": (2, 2)}),
    "inception_resnet": ({**_IRN, "depth": "shallow"}, {"image": (2, 32, 32, 3)},
                         {"features": (2, irn.feature_dim(0.125))}),
    "inception_resnet_lstm": ({**_IRN, "lstm_hidden": 8}, {"frames": (2, 3, 32, 32, 3)},
                              {"features": (2, 3, 8)}),
    "resnet": (dict(stem_widths=(4,), stem_strides=(2,), widths=(8, 12), depths=(1, 2)),
               {"image": (2, 32, 32, 1)}, {"features": (2, 12)}),
    "iresnet": (dict(depths=(1, 1), widths=(4, 8), input_size=16, embedding_size=6), {"image": (2, 16, 16, 3)},
                {"features": (2, 6)}),
    "efficientnet": (dict(width_multiplier=0.25, depth_multiplier=0.2), {"image": (2, 32, 32, 3)},
                     {"features": (2, 320)}),
    "au_autoencoder": (dict(block="basic", depths=(1, 1), widths=(8, 16), stem_width=8, decoder_widths=(8, 4, 4)),
                       {"image": (2, 32, 32, 3)}, {"features": (2, 256), "reconstruction": (2, 32, 32, 3)}),
    "emotic_baseline": (dict(branch=dict(block="basic", depths=(1, 1), widths=(8, 16), stem_width=8), fusion_width=8),
                        {"body": (2, 32, 32, 3), "context": (2, 32, 32, 3)},
                        {"features": (2, 8), "body_features": (2, 16), "context_features": (2, 16)}),
    "selinet": (dict(body={"name": "mobilenetv3", "layout": "small", "width_multiplier": 0.25},
                     aesthetics_widths=(4, 8), fusion_width=8, hidden_width=8),
                {"body": (2, 32, 32, 3), "context": (2, 32, 32, 3)}, {"features": (2, 8), "aesthetics": (2, 5)}),
    "landmark_cnn_lstm": (dict(conv_features=(4, 8), conv_kernel=(1, 5), conv_strides=(1, 2), frame_features=8,
                               lstm_hidden=6), {"landmarks": (2, 3, 68, 4)}, {"features": (2, 6)}),
    "resnext": (dict(block="bottleneck", depths=(1, 1), widths=(8, 16), groups=4, base_width=16, stem_width=8),
                {"image": (2, 32, 32, 3)}, {"features": (2, 64)}),
    # The head width (1024 for 'small') is not scaled by the width multiplier (timm's num_features).
    "mobilenetv3": (dict(layout="small", width_multiplier=0.25), {"image": (2, 32, 32, 3)},
                    {"features": (2, 1024)}),
}
# With _random_variables' weights (no activation gain, BN statistics unrelated to the activations) the
# input-dependent part of EfficientNet's activations shrinks ~25x at every block without a shortcut (two SiLUs
# and the SE gate halve it, a 3x3 depthwise conv on a 1x1 map keeps one tap), to ~1e-6 after 7 stages in
# eval mode; train mode's batch statistics renormalise it at every BN. MobileNetV3 likewise (ReLU / hard-swish
# blocks and the hard-sigmoid SE gate, 2e-5 left after its 12 blocks).
DECAYS_IN_EVAL = ("efficientnet", "mobilenetv3")


def _flat(tree, prefix=()) -> Dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      out.update(_flat(v, prefix + (k,)))
    else:
      out["/".join(prefix + (k,))] = v
  return out


def _shapes(tree) -> Dict[str, tuple]:
  return {k: (tuple(v.shape), str(v.dtype)) for k, v in _flat(tree).items()}


def _random_variables(shapes, seed: int):
  """Random float32 NumPy values for the leaves of ``shapes`` (no compile, unlike an init): kernels
  N(0, 1 / fan_in), LN / BN scales and layer-scale gammas 1 + 0.2 N, BN variances in [0.5, 1.5),
  everything else (biases, BN means) 0.2 N. Away from the init values (LN 1 / 0, gamma 1e-6, zero
  biases), which would hide a wrongly shared or dropped parameter."""
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    shape, name = tuple(leaf.shape), str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "gamma"):
      v = 1 + 0.2 * rng.randn(*shape)
    elif name == "var":
      v = 0.5 + rng.rand(*shape)
    elif len(shape) >= 2:
      v = rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      v = 0.2 * rng.randn(*shape)
    return v.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _init_random(module, seed: int, **inputs):
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), **inputs)
  return _random_variables(shapes, seed)


def _inputs(name: str, seed: int = 0) -> Dict[str, jax.Array]:
  shapes = SMALLEST[name][1]
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {k: jax.random.uniform(key, s) for (k, s), key in zip(shapes.items(), keys)}


def _without_head(variables):
  return {c: {k: v for k, v in t.items() if k != "head"} for c, t in variables.items()}


def _apply(module, variables, train=False, rng=1, return_features=None, **inputs):
  """Jitted apply; train mode updates BN statistics when there are any (returns (out, stats))."""
  static = dict(mutable=["batch_stats"] if train and "batch_stats" in variables else False,
                train=train)
  if return_features is not None:
    static["return_features"] = return_features
  fn = jax.jit(functools.partial(module.apply, **static))
  return fn(variables, rngs={"dropout": jax.random.key(rng)}, **inputs)


# ----------------------------------------------------------------------------- the registry


def test_every_backbone_has_a_row():
  # The library's own backbones (tests may register toy ones, e.g. tests/toy_clips.py).
  names = [n for n in BACKBONES.names() if BACKBONES.get(n).__module__.startswith("fer_jax.")]
  assert {"convnext", "emonext", "inception_resnet", "inception_resnet_lstm"} <= set(names)
  missing = sorted(set(names) - set(SMALLEST))
  assert not missing, f"backbones without a SMALLEST row in tests/test_backbones.py: {missing}"
  assert set(PRETRAINED.names()) >= {"convnext", "emonext"}


@functools.lru_cache(maxsize=None)
def _built(name: str):
  """(backbone, random variables, inputs, eval outputs) of the smallest variant of ``name``."""
  kwargs, _, _ = SMALLEST[name]
  backbone = BACKBONES.build(name, **kwargs)
  inputs = _inputs(name)
  variables = _init_random(backbone, 1, **inputs)
  return backbone, variables, inputs, _apply(backbone, variables, **inputs)


def _with_head(backbone_variables, whole_model, seed, **inputs):
  """``backbone_variables`` plus random values for what ``whole_model`` adds (its head); checks
  that the backbone's tree is the whole model's tree minus 'head'."""
  whole = _init_random(whole_model, seed, **inputs)
  assert _shapes(_without_head(whole)) == _shapes(backbone_variables)
  return {c: {**t, "head": whole[c]["head"]} if "head" in whole[c] else dict(t)
          for c, t in backbone_variables.items()}


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_smallest_variant_init_apply(name):
  kwargs, input_shapes, output_shapes = SMALLEST[name]
  backbone, variables, inputs, out = _built(name)
  assert tuple(type(backbone).input_names) == tuple(input_shapes)
  assert set(out) == set(output_shapes), (name, sorted(out))
  for k, shape in output_shapes.items():
    assert out[k].shape == shape and out[k].dtype == jnp.float32, (k, out[k].shape, out[k].dtype)
    assert np.all(np.isfinite(out[k])), k
  f = np.asarray(out["features"])
  if name in DECAYS_IN_EVAL:
    f = np.asarray(_apply(backbone, variables, train=True, **inputs)[0]["features"])
  assert np.abs(f - f[:1]).max() > 1e-3  # different inputs, different features
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
  # bfloat16 compute: params stay float32 (same tree), features come back as float32.
  low = BACKBONES.build(name, **kwargs, dtype=jnp.bfloat16)
  low_shapes = jax.eval_shape(functools.partial(low.init, train=False), jax.random.key(0), **inputs)
  assert _shapes(low_shapes) == _shapes(variables)
  low_out = jax.eval_shape(functools.partial(low.apply, train=False), variables, **inputs)
  assert low_out["features"].dtype == jnp.float32


# ----------------------------------------------------------------------------- = whole models
# Same ops on both sides; rtol 1e-6 only allows for XLA compiling the two programs differently.


def test_convnext_backbone_equals_classifier_features():
  """Backbone tree == ConvNeXt's minus head; the same params give ConvNeXt's pooled features."""
  backbone, variables, inputs, out = _built("convnext")
  x = inputs["image"]
  clf = convnext.ConvNeXt(num_classes=5, **_CNX)
  _, want = _apply(clf, _with_head(variables, clf, 2, x=x), x=x, return_features=True)
  np.testing.assert_allclose(out["features"], want, rtol=1e-6, atol=1e-6)
  features_only = _apply(clf.clone(num_classes=0), variables, x=x)
  np.testing.assert_allclose(out["features"], features_only, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", ["atto", "tiny"])
def test_convnext_backbone_sizes_have_the_classifier_tree(size):
  bb = convnext.ConvNeXtBackbone(size=size)
  x = jnp.zeros((1, 32, 32, 3))
  got = jax.eval_shape(functools.partial(bb.init, train=False), jax.random.key(0), image=x)
  want = jax.eval_shape(convnext.VARIANTS[f"convnext_{size}"](num_classes=7).init,
                        jax.random.key(0), x)
  assert _shapes(got) == _shapes(_without_head(want))
  depths, dims = convnext.SIZES[size]
  assert bb.resolved_size() == (depths, dims)
  assert convnext.ConvNeXtBackbone(depths=depths, dims=dims).resolved_size() == (depths, dims)


def test_convnext_backbone_size_errors():
  def init(image_side=32, **kw):
    bb = convnext.ConvNeXtBackbone(**kw)
    jax.eval_shape(functools.partial(bb.init, train=False), jax.random.key(0),
                   image=jnp.zeros((1, image_side, image_side, 3)))
  with pytest.raises(ValueError, match=r"unknown ConvNeXt size 'huge'.*'atto'"):
    init(size="huge")
  with pytest.raises(ValueError, match="either size='atto' or depths and dims"):
    init(size="atto", depths=(2, 2, 6, 2))
  with pytest.raises(ValueError, match="pass size .* or both depths and dims"):
    init(dims=(8, 16))
  with pytest.raises(ValueError, match="se_placement"):
    init(size="atto", se_placement="everywhere")
  with pytest.raises(ValueError, match=r"input spatial size \(4, 4\).*ConvNeXt backbone"):
    init(4, size="atto")


def test_emonext_backbone_equals_emonext_aux():
  """Backbone tree == EmoNeXt's minus head (params and STN batch_stats); the same variables give
  EmoNeXt's features, sa_loss and attention, in eval and in train mode (drop path with the same rng,
  STN batch statistics)."""
  backbone, variables, inputs, out = _built("emonext")
  x = inputs["image"]
  model = emonext.EmoNeXt(num_classes=5, **SMALLEST["emonext"][0])
  whole = _with_head(variables, model, 2, x=x)
  _, want = _apply(model, whole, x=x, return_features=True)
  assert set(want) == set(out) and float(out["sa_loss"]) > 0
  for k in out:
    np.testing.assert_allclose(out[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
  dp = dict(drop_path_rate=0.5)
  (_, want_tr), want_stats = _apply(model.clone(**dp), whole, train=True, rng=4, x=x,
                                    return_features=True)
  got_tr, got_stats = _apply(backbone.clone(**dp), variables, train=True, rng=4, image=x)
  for k in got_tr:
    np.testing.assert_allclose(got_tr[k], want_tr[k], rtol=1e-6, atol=1e-7, err_msg=k)
  assert np.abs(np.asarray(got_tr["features"]) - np.asarray(out["features"])).max() > 1e-3
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7), got_stats,
               want_stats)


def test_emonext_backbone_paper_reading_equals_emonext_aux():
  """SE after every stage and the per-image ('feature') attention: W is (B, C, C)."""
  kw = dict(SMALLEST["emonext"][0], se_placement="stage", sa_mode="feature", use_stn=False)
  backbone = emonext.EmoNeXtBackbone(**kw)
  model = emonext.EmoNeXt(num_classes=5, **kw)
  x = _inputs("emonext")["image"]
  variables = _init_random(backbone, 3, image=x)
  assert "stage_se" in variables["params"]["stage_0"] and "stn" not in variables["params"]
  got = _apply(backbone, variables, image=x)
  _, want = _apply(model, _with_head(variables, model, 4, x=x), x=x, return_features=True)
  assert got["attention"].shape == (2, 24, 24) and float(got["sa_loss"]) > 0
  for k in got:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_emonext_backbone_plain_equals_convnext_backbone():
  """EmoNeXtBackbone(use_stn=False, se_placement='none', sa_mode=None) is the ConvNeXt backbone with
  the same tree, plus sa_loss = 0 and no 'attention'."""
  _, variables, inputs, out = _built("convnext")
  plain = emonext.EmoNeXtBackbone(**_CNX, use_stn=False, se_placement="none", sa_mode=None)
  assert _shapes(_init_random(plain, 0, **inputs)) == _shapes(variables)
  got = _apply(plain, variables, **inputs)
  assert set(got) == {"features", "sa_loss"} and float(got["sa_loss"]) == 0.0
  np.testing.assert_allclose(got["features"], out["features"], rtol=1e-6, atol=1e-6)


def test_inception_resnet_backbone_equals_v1():
  """Same variables -> InceptionResNetV1's features; the tree is the shallow model's 'backbone'."""
  backbone, variables, inputs, out = _built("inception_resnet")
  kw = backbone.backbone_kwargs()
  assert (kw["num_a"], kw["num_b"], kw["num_c"]) == (1, 1, 1)
  want = _apply(irn.InceptionResNetV1(**kw), variables, x=inputs["image"])
  np.testing.assert_allclose(out["features"], want, rtol=1e-6, atol=1e-6)
  whole = jax.eval_shape(get_model("inception_resnet_shallow", **_IRN).init, jax.random.key(0),
                         inputs["image"])
  assert _shapes({c: t["backbone"] for c, t in whole.items()}) == _shapes(variables)


def test_inception_resnet_depth_shorthand():
  deep = irn.InceptionResNetBackbone(**_IRN)  # depth='deep' by default (Inception-ResNet-v1)
  x = jnp.zeros((1, 32, 32, 3))
  got = jax.eval_shape(functools.partial(deep.init, train=False), jax.random.key(0), image=x)
  whole = jax.eval_shape(get_model("inception_resnet_deep", **_IRN).init, jax.random.key(0), x)
  assert _shapes(got) == _shapes({c: t["backbone"] for c, t in whole.items()})
  kw = irn.InceptionResNetBackbone(depth="shallow", num_b=2).backbone_kwargs()
  assert (kw["num_a"], kw["num_b"], kw["num_c"]) == (1, 2, 1)  # explicit counts win
  assert irn.InceptionResNetLSTMBackbone().backbone_kwargs()["num_b"] == 1  # shallow by default
  with pytest.raises(ValueError, match=r"depth must be one of \['deep', 'shallow'\], got 'medium'"):
    irn.InceptionResNetBackbone(depth="medium").backbone_kwargs()


def test_inception_resnet_lstm_backbone_equals_lstm_features():
  """Backbone tree == InceptionResNetLSTM's minus head; same variables -> its LSTM outputs."""
  backbone, variables, inputs, out = _built("inception_resnet_lstm")
  model = get_model("inception_resnet_lstm", **SMALLEST["inception_resnet_lstm"][0])
  x = inputs["frames"]
  _, want = _apply(model, _with_head(variables, model, 2, x=x), x=x, return_features=True)
  np.testing.assert_allclose(out["features"], want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"expects clips \(B, T, H, W, C\)"):
    jax.eval_shape(functools.partial(backbone.apply, train=False), variables, frames=x[:, 0])


# ----------------------------------------------------------------------------- pretrained weights


@pytest.fixture(scope="module")
def tt():
  try:
    return testing.import_timm()
  except ImportError as e:
    pytest.skip(str(e))


def _randomized(torch, module, seed):
  """1-D params away from init (LN 1/0, gamma 1e-6, zero biases): 1 + 0.2 N or 0.2 N."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1:
        one = name.endswith(("gamma", "weight"))
        p.copy_(float(one) + 0.2 * torch.randn(p.shape, generator=g))
  return module.eval()


# float32 on both sides (timm in torch, ours under XLA), different summation orders. The pre-logits
# features are LayerNorm-ed, |f| <= ~5 (checked below; float32 spacing there 2^-21 ~ 4.8e-7), and the
# rounding of 12 blocks (7x7 depthwise sums, 4C-wide MLP sums, LayerNorm reductions) is renormalised
# by every LayerNorm, so the difference stays at a few ulps of |f|: measured 1.3e-6 .. 1.8e-6 max over
# three seeds. 2e-5 is ~10x that (~40 ulps at |f| = 4); a wrong mapping moves features by O(0.1..1).
PRETRAINED_ATOL = 2e-5


def test_pretrained_convnext_matches_timm_pre_logits(tt):
  torch, timm = tt
  torch.manual_seed(0)
  ref = _randomized(torch, timm.create_model("convnext_atto", pretrained=False), 1)
  backbone = convnext.ConvNeXtBackbone(size="atto")
  x = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)
  params = _init_random(backbone, 0, image=x)["params"]
  loaded = PRETRAINED.get("convnext")(params, ref.state_dict())
  assert _shapes(loaded) == _shapes(params)
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(loaded))
  got = np.asarray(_apply(backbone, {"params": loaded}, image=x)["features"])
  with torch.no_grad():
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    want = ref.forward_head(ref.forward_features(t), pre_logits=True).numpy()
  assert got.shape == want.shape == (2, 320)
  assert 0.5 < np.abs(want).max() < 20  # O(1) LayerNorm-ed features: an absolute bound is fair
  np.testing.assert_allclose(got, want, rtol=0, atol=PRETRAINED_ATOL)
  # A state dict of another size is refused with the converter's list of mismatches.
  with pytest.raises(ValueError, match=r"wrong shape.*stem_conv/kernel"):
    PRETRAINED.get("convnext")(_built("convnext")[1]["params"], ref.state_dict())


# (timm puts a stage-0 downsampling layer after a stem of stride < 4: keep the paper's 4 here.)
_TIMM_SMALL = dict(depths=_CNX["depths"], dims=_CNX["dims"])


def test_pretrained_emonext_loads_only_the_convnext_part(tt):
  """'emonext' (and 'convnext' with SE): stem / stages / final norm from the checkpoint; STN, SE
  and attention keep their values, as the trainer's load_init_weights does."""
  torch, timm = tt
  from timm.models.convnext import ConvNeXt as TimmConvNeXt
  torch.manual_seed(0)
  ref = _randomized(torch, TimmConvNeXt(num_classes=10, **_TIMM_SMALL), 2)
  sd = ref.state_dict()
  converted = _flat(convnext_from_torch_state_dict(sd, include_head=False))
  x = jnp.zeros((1, 32, 32, 3))
  loaded_params = {}
  for name, backbone in (
      ("emonext", emonext.EmoNeXtBackbone(**_TIMM_SMALL, se_reduction=4)),
      ("convnext", convnext.ConvNeXtBackbone(**_TIMM_SMALL, se_placement="stage", se_reduction=4))):
    params = _init_random(backbone, 0, image=x)["params"]
    loaded = PRETRAINED.get(name)(params, sd)
    assert _shapes(loaded) == _shapes(params)
    before, after = _flat(params), _flat(loaded)
    assert set(converted) < set(before)
    for k, v in after.items():
      np.testing.assert_array_equal(v, converted[k] if k in converted else before[k], err_msg=k)
    kept = {k.split("/")[1] if "_se/" in k else k.split("/")[0]
            for k in set(before) - set(converted)}
    assert kept == ({"stn", "attention", "downsample_se"} if name == "emonext" else {"stage_se"})
    loaded_params[name] = params
  bad = {**sd, "stages.0.blocks.0.mlp.fc1.weight": sd["stages.0.blocks.0.mlp.fc1.weight"][:3]}
  with pytest.raises(ValueError, match=r"stage_0/block_0/pwconv1/kernel"):
    PRETRAINED.get("emonext")(loaded_params["emonext"], bad)
