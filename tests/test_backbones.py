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
}


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


def _perturb(variables, seed: int, scale: float = 0.1):
  """Init + scale * N(0, 1) on every leaf: LN scales, biases and layer-scale gammas away from their
  init values (1, 0, 1e-6), which would hide a wrongly shared or dropped parameter."""
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                      for x, k in zip(leaves, keys)])


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
  names = BACKBONES.names()
  assert {"convnext", "emonext", "inception_resnet", "inception_resnet_lstm"} <= set(names)
  missing = sorted(set(names) - set(SMALLEST))
  assert not missing, f"backbones without a SMALLEST row in tests/test_backbones.py: {missing}"
  assert set(PRETRAINED.names()) >= {"convnext", "emonext"}


@functools.lru_cache(maxsize=None)
def _built(name: str):
  """(backbone, perturbed variables, inputs, eval outputs) of the smallest variant of ``name``."""
  kwargs, _, _ = SMALLEST[name]
  backbone = BACKBONES.build(name, **kwargs)
  inputs = _inputs(name)
  variables = jax.jit(functools.partial(backbone.init, train=False))(jax.random.key(0), **inputs)
  variables = _perturb(variables, 1)
  return backbone, variables, inputs, _apply(backbone, variables, **inputs)


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
  assert np.abs(f - f[:1]).max() > 1e-3  # different inputs, different features
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
  # bfloat16 compute: params stay float32 (same tree), features come back as float32.
  low = BACKBONES.build(name, **kwargs, dtype=jnp.bfloat16)
  low_shapes = jax.eval_shape(functools.partial(low.init, train=False), jax.random.key(0), **inputs)
  assert _shapes(low_shapes) == _shapes(variables)
  low_out = jax.eval_shape(functools.partial(low.apply, train=False), variables, **inputs)
  assert low_out["features"].dtype == jnp.float32


# ----------------------------------------------------------------------------- = whole models


def test_convnext_backbone_equals_classifier_features():
  """Backbone tree == ConvNeXt's minus head; same params -> the same pooled features, in eval and in
  train mode (drop path, same rng: the layer paths, which seed the rng, are the same)."""
  backbone, variables, inputs, out = _built("convnext")
  x = inputs["image"]
  clf = convnext.ConvNeXt(num_classes=5, **_CNX)
  clf_vars = _perturb(jax.jit(clf.init)(jax.random.key(2), x), 3)
  assert _shapes(_without_head(clf_vars)) == _shapes(variables)
  bb_vars = _without_head(clf_vars)
  _, want = _apply(clf, clf_vars, x=x, return_features=True)
  got = _apply(backbone, bb_vars, image=x)["features"]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, _apply(clf.clone(num_classes=0), bb_vars, x=x), rtol=1e-6,
                             atol=1e-6)
  dp = dict(drop_path_rate=0.5)
  _, want_tr = _apply(clf.clone(**dp), clf_vars, train=True, rng=4, x=x, return_features=True)
  got_tr = _apply(backbone.clone(**dp), bb_vars, train=True, rng=4, image=x)["features"]
  np.testing.assert_allclose(got_tr, want_tr, rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(got_tr) - np.asarray(got)).max() > 1e-3  # drop path was active


@pytest.mark.parametrize("size", ["atto", "tiny"])
def test_convnext_backbone_sizes_have_the_classifier_tree(size):
  bb = convnext.ConvNeXtBackbone(size=size)
  x = jnp.zeros((1, 32, 32, 3))
  got = jax.eval_shape(functools.partial(bb.init, train=False), jax.random.key(0), image=x)
  want = jax.eval_shape(convnext.VARIANTS[f"convnext_{size}"](num_classes=7).init,
                        jax.random.key(0), x)
  assert _shapes(got) == _shapes(_without_head(want))
  assert (bb.resolved_size() == convnext.SIZES[size]
          == (convnext.ConvNeXtBackbone(depths=convnext.SIZES[size][0],
                                        dims=convnext.SIZES[size][1]).resolved_size()))


def test_convnext_backbone_size_errors():
  def init(**kw):
    bb = convnext.ConvNeXtBackbone(**kw)
    jax.eval_shape(functools.partial(bb.init, train=False), jax.random.key(0),
                   image=jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"unknown ConvNeXt size 'huge'.*'atto'"):
    init(size="huge")
  with pytest.raises(ValueError, match="either size='atto' or depths and dims"):
    init(size="atto", depths=(2, 2, 6, 2))
  with pytest.raises(ValueError, match="pass size .* or both depths and dims"):
    init(dims=(8, 16))
  with pytest.raises(ValueError, match="se_placement"):
    init(size="atto", se_placement="everywhere")
  with pytest.raises(ValueError, match=r"input spatial size \(4, 4\).*ConvNeXt backbone"):
    bb = convnext.ConvNeXtBackbone(size="atto")
    jax.eval_shape(functools.partial(bb.init, train=False), jax.random.key(0),
                   image=jnp.zeros((1, 4, 4, 3)))


@pytest.mark.parametrize("se_placement,sa_mode", [("downsample", "batch"), ("stage", "feature"),
                                                  ("none", None)])
def test_emonext_backbone_equals_emonext_aux(se_placement, sa_mode):
  """Backbone tree == EmoNeXt's minus head (params and STN batch_stats); same variables -> the same
  features, sa_loss and attention, in eval and in train mode (drop path, STN batch statistics)."""
  kw = dict(SMALLEST["emonext"][0], se_placement=se_placement, sa_mode=sa_mode)
  backbone = emonext.EmoNeXtBackbone(**kw)
  x = _inputs("emonext")["image"]
  model = emonext.EmoNeXt(num_classes=5, **kw)
  variables = _perturb(jax.jit(model.init)(jax.random.key(2), x), 3)
  bb_vars = _without_head(variables)
  bb_shapes = jax.eval_shape(functools.partial(backbone.init, train=False), jax.random.key(0), image=x)
  assert _shapes(bb_shapes) == _shapes(bb_vars)
  if sa_mode is None:
    assert "attention" not in bb_vars["params"]
  for train in (False, True):
    m, b = (model.clone(drop_path_rate=0.5), backbone.clone(drop_path_rate=0.5)) if train else (
        model, backbone)
    want = _apply(m, variables, train=train, rng=4, x=x, return_features=True)
    got = _apply(b, bb_vars, train=train, rng=4, image=x)
    (_, want_aux), (got_out) = (want[0], got[0]) if train else (want, got)
    assert set(got_out) == {"features", "sa_loss"} | ({"attention"} if sa_mode else set())
    for k in got_out:
      np.testing.assert_allclose(got_out[k], want_aux[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert got_out["sa_loss"].dtype == jnp.float32 and got_out["sa_loss"].shape == ()
    if sa_mode:
      assert float(got_out["sa_loss"]) > 0
    if train:  # the STN's updated running statistics agree too.
      jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7),
                   got[1], want[1])


def test_emonext_backbone_plain_equals_convnext_backbone():
  """EmoNeXtBackbone(use_stn=False, se_placement='none', sa_mode=None) is the ConvNeXt backbone
  (plus a zero sa_loss)."""
  backbone, variables, inputs, out = _built("convnext")
  plain = emonext.EmoNeXtBackbone(**_CNX, use_stn=False, se_placement="none", sa_mode=None)
  got = _apply(plain, variables, **inputs)
  np.testing.assert_allclose(got["features"], out["features"], rtol=1e-6, atol=1e-6)
  assert float(got["sa_loss"]) == 0.0


def test_inception_resnet_backbone_equals_v1():
  backbone, variables, inputs, out = _built("inception_resnet")
  kw = backbone.backbone_kwargs()
  assert (kw["num_a"], kw["num_b"], kw["num_c"]) == (1, 1, 1)
  v1 = irn.InceptionResNetV1(**kw)
  want = _apply(v1, variables, x=inputs["image"])
  np.testing.assert_allclose(out["features"], want, rtol=1e-6, atol=1e-6)
  # The tree is the whole model's 'backbone' subtree; train mode (BN batch statistics) agrees.
  whole = get_model("inception_resnet_shallow", **_IRN)
  whole_shapes = jax.eval_shape(whole.init, jax.random.key(0), inputs["image"])
  assert _shapes({c: t["backbone"] for c, t in whole_shapes.items()}) == _shapes(variables)
  got_tr, got_stats = _apply(backbone, variables, train=True, **inputs)
  want_tr, want_stats = _apply(v1, variables, train=True, x=inputs["image"])
  np.testing.assert_allclose(got_tr["features"], want_tr, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7), got_stats,
               want_stats)


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
  whole = _perturb(jax.jit(model.init)(jax.random.key(2), x), 3)
  bb_vars = _without_head(whole)
  assert _shapes(bb_vars) == _shapes(variables)
  _, want = _apply(model, whole, x=x, return_features=True)
  got = _apply(backbone, bb_vars, frames=x)["features"]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"expects clips \(B, T, H, W, C\)"):
    _apply(backbone, bb_vars, frames=x[:, 0])


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


# float32 on both sides: the pre-logits features are LayerNorm-ed, O(1) (checked below), and after
# 12 blocks of 7x7 depthwise convs, 4C-wide MLPs and LayerNorms the two float32 computations
# (different summation orders) differ by a few hundred ulps of 1 (2^-23 ~ 1.2e-7); 2e-5 is ~170
# ulps (measured: ~3e-6 max on this input).
PRETRAINED_ATOL = 2e-5


def test_pretrained_convnext_matches_timm_pre_logits(tt):
  torch, timm = tt
  torch.manual_seed(0)
  ref = _randomized(torch, timm.create_model("convnext_atto", pretrained=False), 1)
  backbone = convnext.ConvNeXtBackbone(size="atto")
  x = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)
  params = jax.jit(functools.partial(backbone.init, train=False))(jax.random.key(0), image=x)[
      "params"]
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


def test_pretrained_emonext_loads_only_the_convnext_part(tt):
  """'emonext' (and 'convnext' with SE): stem / stages / final norm from the checkpoint; STN, SE
  and attention keep their values, as the trainer's load_init_weights does."""
  torch, timm = tt
  from timm.models.convnext import ConvNeXt as TimmConvNeXt
  torch.manual_seed(0)
  ref = _randomized(torch, TimmConvNeXt(num_classes=10, depths=_CNX["depths"], dims=_CNX["dims"],
                                        patch_size=_CNX["stem_patch_size"]), 2)
  sd = ref.state_dict()
  converted = _flat(convnext_from_torch_state_dict(sd, include_head=False))
  for name in ("emonext", "convnext"):
    if name == "convnext":
      backbone = convnext.ConvNeXtBackbone(**_CNX, se_placement="stage", se_reduction=4)
      x = _inputs("convnext")["image"]
      params = jax.jit(functools.partial(backbone.init, train=False))(jax.random.key(0), image=x)[
          "params"]
    else:
      params = _built("emonext")[1]["params"]
    loaded = PRETRAINED.get(name)(params, sd)
    assert _shapes(loaded) == _shapes(params)
    before, after = _flat(params), _flat(loaded)
    assert set(converted) < set(before)
    for k, v in after.items():
      np.testing.assert_array_equal(v, converted[k] if k in converted else before[k], err_msg=k)
    kept = {k.split("/")[0] if "_se" not in k else k.split("/")[1] for k in set(before) - set(converted)}
    assert kept == ({"stn", "attention", "downsample_se"} if name == "emonext" else {"stage_se"})
  bad = {**sd, "stages.0.blocks.0.mlp.fc1.weight": sd["stages.0.blocks.0.mlp.fc1.weight"][:3]}
  with pytest.raises(ValueError, match=r"stage_0/block_0/pwconv1/kernel"):
    PRETRAINED.get("emonext")(params, bad)
