"""EmoNeXt: SE and self-attention vs NumPy, ConvNeXt identity, closed-form parameter counts, and
parity with a PyTorch EmoNeXt (timm ConvNeXt + our torch STN / SE / attention in
benchmarks/emonext_torch_reference.py) through the state-dict converters.

The torch tests need torch + timm (``fer_jax.testing.import_timm``) and skip without them.
"""

import functools
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import testing
from fer_jax.models import convnext, emonext
from fer_jax.models.convert import convnext_from_torch_state_dict, load_torch_weights
from fer_jax.models.emonext_convert import (backbone_of, emonext_from_torch_state_dict,
                                            infer_emonext_config, load_convnext_backbone,
                                            load_emonext_variables)

ATOL = 1e-4
# A small custom size (timm accepts depths / dims overrides) for the cheaper checks.
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48))


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=("train", "return_features"))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model, size, channels=3):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, channels)))


def _random_like(shapes, seed, scale=0.2):
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: (scale * rng.randn(*s.shape)).astype(np.float32), shapes)


# ----------------------------------------------------------------------------- SE


def test_squeeze_excitation_matches_numpy():
  """Hu et al. eq. 2-4: z = GAP(x), s = sigmoid(W2 relu(W1 z)), y = s * x; no biases."""
  se = emonext.SqueezeExcitation(reduction=4)
  x = np.random.RandomState(0).randn(3, 5, 6, 12).astype(np.float32)
  shapes = jax.eval_shape(se.init, jax.random.key(0), x)
  assert jax.tree.map(lambda s: s.shape, shapes["params"]) == {
      "fc1": {"kernel": (12, 3)}, "fc2": {"kernel": (3, 12)}}
  params = _random_like(shapes["params"], 1, scale=1.0)
  y = np.asarray(jax.jit(se.apply)({"params": params}, x))
  z = x.astype(np.float64).mean(axis=(1, 2))
  h = np.maximum(z @ params["fc1"]["kernel"], 0)
  s = 1 / (1 + np.exp(-(h @ params["fc2"]["kernel"])))
  np.testing.assert_allclose(y, x * s[:, None, None, :], rtol=1e-5, atol=1e-6)
  assert 0.05 < s.min() and s.max() < 0.95 and s.std() > 0.05  # a real, non-saturated gating
  with pytest.raises(ValueError, match=r"12 channels and reduction 16.*se_reduction <= 12"):
    jax.eval_shape(emonext.SqueezeExcitation(16).init, jax.random.key(0), x)


# ----------------------------------------------------------------------------- self-attention


def _np_softmax(a):
  a = a - a.max(-1, keepdims=True)
  e = np.exp(a)
  return e / e.sum(-1, keepdims=True)


def test_attention_weights_and_loss_match_numpy():
  rng = np.random.RandomState(0)
  q, k = rng.randn(2, 5, 16).astype(np.float32) * 2
  w_b = emonext.batch_attention_weights(jnp.asarray(q), jnp.asarray(k))
  ref_b = _np_softmax(q.astype(np.float64) @ k.T.astype(np.float64) * 16 ** -0.25)
  np.testing.assert_allclose(np.asarray(w_b), ref_b, rtol=1e-5, atol=1e-7)
  w_f = emonext.feature_attention_weights(jnp.asarray(q), jnp.asarray(k))
  assert w_f.shape == (5, 16, 16)
  ref_f = _np_softmax(q[:, :, None].astype(np.float64) * k[:, None, :] / 4.0)
  np.testing.assert_allclose(np.asarray(w_f), ref_f, rtol=1e-5, atol=1e-7)
  for w, ref, mean in ((w_b, ref_b, 1 / 5), (w_f, ref_f, 1 / 16)):
    np.testing.assert_allclose(ref.mean(), mean, rtol=1e-12)  # rows sum to 1: mean W = 1/n
    want = np.mean((ref - ref.mean()) ** 2)
    np.testing.assert_allclose(float(emonext.attention_variance(w)), want, rtol=1e-4)
    assert want > 1e-4
  # Hand case, batch mode, C = 16 (scale 1/2): q = k = 2 e_0 for the first sample, 0 for the
  # second: scores [[2, 0], [0, 0]], W = [[s, 1 - s], [1/2, 1/2]] with s = sigmoid(2), mean 1/2,
  # L_SA = 2 (s - 1/2)^2 / 4.
  q = np.zeros((2, 16), np.float32)
  q[0, 0] = 2.0
  loss, w = emonext.self_attention_loss(jnp.asarray(q), jnp.asarray(q), "batch")
  s = 1 / (1 + math.exp(-2))
  np.testing.assert_allclose(np.asarray(w), [[s, 1 - s], [0.5, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(float(loss), (s - 0.5) ** 2 / 2, rtol=1e-5)
  # Identical rows everywhere: uniform W, zero loss.
  assert float(emonext.self_attention_loss(jnp.ones((3, 8)), jnp.ones((3, 8)), "feature")[0]) < 1e-12
  with pytest.raises(ValueError, match="sa_mode.*'spatial'"):
    emonext.self_attention_loss(jnp.ones((3, 8)), jnp.ones((3, 8)), "spatial")
  with pytest.raises(ValueError, match=r"\(3, 8\) and \(3, 4\)"):
    emonext.batch_attention_weights(jnp.ones((3, 8)), jnp.ones((3, 4)))


@pytest.mark.parametrize("mode", ["batch", "feature"])
def test_self_attention_module_numpy_and_finite_gradients(mode):
  """LN (eps 1e-5) -> Q, K Dense(C) -> W -> L_SA, against NumPy; grads finite and non-zero."""
  reg = emonext.SelfAttentionRegulariser(mode)
  f = np.random.RandomState(2).randn(6, 24).astype(np.float32)
  shapes = jax.eval_shape(reg.init, jax.random.key(0), f)["params"]
  assert sorted(shapes) == ["key", "norm", "query"] and shapes["query"]["kernel"].shape == (24, 24)
  params = _random_like(shapes, 3, scale=0.5)
  loss, w = jax.jit(reg.apply)({"params": params}, f)
  g = f.astype(np.float64)
  n = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)
  n = n * params["norm"]["scale"] + params["norm"]["bias"]
  q = n @ params["query"]["kernel"] + params["query"]["bias"]
  k = n @ params["key"]["kernel"] + params["key"]["bias"]
  if mode == "batch":
    ref = _np_softmax(q @ k.T * 24 ** -0.25)
  else:
    ref = _np_softmax(q[:, :, None] * k[:, None, :] / math.sqrt(24))
  np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(loss), np.mean((ref - ref.mean()) ** 2), rtol=1e-4)

  def total(p, x):
    return reg.apply({"params": p}, x)[0]
  gp, gx = jax.jit(jax.grad(total, argnums=(0, 1)))(params, jnp.asarray(f))
  for leaf in jax.tree.leaves((gp, gx)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert np.abs(np.asarray(gp["query"]["kernel"])).max() > 0
  assert np.abs(np.asarray(gx)).max() > 0  # the regulariser reaches the backbone features


# ----------------------------------------------------------------------------- model structure


def test_plain_options_are_parameter_identical_to_convnext():
  """use_stn=False, se_placement='none', sa_mode=None: ConvNeXt's tree (tiny, 224) and outputs."""
  plain = dict(use_stn=False, se_placement="none", sa_mode=None)
  a = _shapes(emonext.EmoNeXtTiny(num_classes=7, **plain), 224)
  b = _shapes(convnext.ConvNeXtTiny(num_classes=7), 224)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert jax.tree.map(lambda s: s.shape, a) == jax.tree.map(lambda s: s.shape, b)
  # Same outputs on a small size; and a freshly initialised STN is an exact identity warp.
  ours = emonext.EmoNeXt(num_classes=5, stem_patch_size=2, **SMALL, **plain)
  ref = convnext.ConvNeXt(num_classes=5, stem_patch_size=2, **SMALL)
  x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3))
  params = _random_like(_shapes(ref, 32)["params"], 0)
  want, feats = _jit_apply(ref)({"params": params}, x, return_features=True)
  got, aux = _jit_apply(ours)({"params": params}, x, return_features=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(aux["features"]), np.asarray(feats))
  assert float(aux["sa_loss"]) == 0.0 and aux["attention"] is None
  # With an identity-initialised STN (kernel 0, bias [1, 0, 0, 0, 1, 0] as at init), the warp is
  # an exact identity: same logits as ConvNeXt.
  with_stn = ours.clone(use_stn=True)
  variables = _random_like(_shapes(with_stn, 32), 3)
  variables["params"].update(params)
  variables["params"]["stn"]["fc_loc_1"] = {"kernel": np.zeros((32, 6), np.float32),
                                            "bias": np.asarray([1, 0, 0, 0, 1, 0], np.float32)}
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  got = _jit_apply(with_stn)(variables, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_se_placement_and_config_errors():
  def tree(**kw):
    return _shapes(emonext.EmoNeXt(num_classes=3, stem_patch_size=2, use_stn=False, **SMALL,
                                   **kw), 16)["params"]
  down = tree(se_placement="downsample", se_reduction=8, sa_mode=None)
  assert [i for i in range(4) if "downsample_se" in down[f"stage_{i}"]] == [1, 2, 3]
  assert down["stage_2"]["downsample_se"]["fc1"]["kernel"].shape == (32, 4)
  stage = tree(se_placement="stage", se_reduction=8, sa_mode="feature")
  assert [i for i in range(4) if "stage_se" in stage[f"stage_{i}"]] == [0, 1, 2, 3]
  assert not any("downsample_se" in stage[f"stage_{i}"] for i in range(4))
  assert stage["attention"]["key"]["kernel"].shape == (48, 48)
  model = emonext.EmoNeXt(num_classes=3, **SMALL)
  x = jnp.zeros((1, 32, 32, 3))
  # bfloat16 compute: params and BN statistics stay float32; logits, features and L_SA are float32.
  bf = model.clone(dtype=jnp.bfloat16)
  variables = jax.eval_shape(bf.init, jax.random.key(0), x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, aux = jax.eval_shape(functools.partial(bf.apply, return_features=True), variables, x)
  assert logits.dtype == aux["features"].dtype == aux["sa_loss"].dtype == jnp.float32
  for kw, msg in ((dict(se_placement="after"), r"se_placement must be one of .*'after'"),
                  (dict(sa_mode="paper"), r"sa_mode must be one of .*'paper'"),
                  (dict(se_reduction=32), r"24 channels and reduction 32"),
                  (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\), got 1.0")):
    with pytest.raises(ValueError, match=msg):
      jax.eval_shape(model.clone(**kw).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"input spatial size \(16, 16\).*32 px"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_emonext_loss_is_smoothed_ce_plus_weighted_sa():
  logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  labels = jnp.asarray([0, 1])
  aux = {"sa_loss": jnp.asarray(0.25)}
  loss, parts = emonext.emonext_loss(logits, aux, labels, sa_weight=2.0, label_smoothing=0.3)
  lp = np.asarray(jax.nn.log_softmax(logits))
  t = np.full((2, 3), 0.1) + 0.7 * np.eye(3)[[0, 1]]
  ce = -(t * lp).sum(-1).mean()
  np.testing.assert_allclose(float(parts["ce"]), ce, rtol=1e-6)
  np.testing.assert_allclose(float(loss), ce + 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="label_smoothing.*1.0"):
    emonext.emonext_loss(logits, aux, labels, label_smoothing=1.0)


# ----------------------------------------------------------------------------- parameter counts


def test_stn_closed_form_at_224():
  # conv 7x7x3->8 + BN, conv 5x5x8->10 + BN, Dense 27040 -> 32, Dense 32 -> 6 (BN stats excluded)
  want = (7 * 7 * 3 * 8 + 8) + 2 * 8 + (5 * 5 * 8 * 10 + 10) + 2 * 10 + 27040 * 32 + 32 + 32 * 6 + 6
  assert emonext.stn_param_count(224) == want == 868_740
  assert emonext.stn_param_count(64) == want - 27040 * 32 + 10 * 12 * 12 * 32
  # tiny (C = 96..768, r = 16): SE 2 C (C / 16) = C^2 / 8; attention 2C + 2 (C^2 + C).
  assert emonext.se_param_count((96, 192, 384, 768), "downsample") == (192**2 + 384**2 + 768**2) // 8
  assert emonext.se_param_count((96, 192, 384, 768), "stage") == (96**2 + 192**2 + 384**2 + 768**2) // 8
  assert emonext.attention_param_count(768) == 4 * 768 + 2 * 768**2
  assert emonext.convnext_param_count((3, 3, 9, 3), (96, 192, 384, 768), 1000) == 28_589_128  # timm


def test_param_count_table_matches_models():
  """Closed forms == eval_shape counts for every tiny variant at 224 and every Table II size."""
  rows = emonext.param_count_table(num_classes=7, image_size=224)
  assert len(rows) == 5 * 7
  kw_of = {"convnext": dict(use_stn=False, se_placement="none", sa_mode=None),
           "+stn": dict(use_stn=True, se_placement="none", sa_mode=None),
           "+se(downsample)": dict(use_stn=False, se_placement="downsample", sa_mode=None),
           "+se(stage)": dict(use_stn=False, se_placement="stage", sa_mode=None),
           "+sa": dict(use_stn=False, se_placement="none", sa_mode="batch"),
           "emonext(code)": dict(use_stn=True, se_placement="downsample", sa_mode="batch"),
           "emonext(paper)": dict(use_stn=True, se_placement="stage", sa_mode="feature")}
  by_key = {(r["size"], r["variant"]): r for r in rows}
  for size, variant in (("tiny", "convnext"), ("tiny", "emonext(code)"), ("tiny", "emonext(paper)"),
                        ("xlarge", "emonext(code)")):
    r = by_key[size, variant]
    model = emonext.VARIANTS[f"emonext_{size}"](num_classes=7, **kw_of[variant])
    variables = _shapes(model, 224)
    p = variables["params"]
    assert _count(p) == r["total"], r
    assert _count(variables.get("batch_stats", {})) == (36 if r["stn"] else 0)  # BN mean + var
    assert _count(p.get("stn", {})) == r["stn"]
    assert _count(p.get("attention", {})) == r["attention"]
    assert _count([p[s].get(n, {}) for s in p if s.startswith("stage_")
                   for n in ("downsample_se", "stage_se")]) == r["se"]
    assert _count(backbone_of(p)) == r["convnext"]
  tiny = {r["variant"]: r for r in rows if r["size"] == "tiny"}
  assert tiny["convnext"]["total"] == 28_589_128 - 993 * 769  # 1000 -> 7 classes
  assert tiny["emonext(code)"]["total"] == (tiny["convnext"]["total"] + 868_740
                                            + (192**2 + 384**2 + 768**2) // 8
                                            + 4 * 768 + 2 * 768**2)
  assert "xlarge" in emonext.format_param_count_table(rows)


# ----------------------------------------------------------------------------- PyTorch parity


@pytest.fixture(scope="module")
def tt():
  try:
    torch, timm = testing.import_timm()
  except ImportError as e:
    pytest.skip(str(e))
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
  import emonext_torch_reference as reference  # pylint: disable=import-outside-toplevel
  return torch, timm, reference


def _randomize(torch, m, seed):
  """Random weights that exercise every part: LN / BN scales 1 + 0.2 N, layer scale 0.3 + 0.2 N,
  biases 0.05 N (larger ones drown the image content), random BN running stats, an STN regressor
  giving a per-image theta off the identity, sharper attention."""
  g = torch.Generator().manual_seed(seed)
  rnd = lambda p, s: s * torch.randn(p.shape, generator=g)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if name == "fc_loc.2.weight":
        p.copy_(rnd(p, 0.02))
      elif name == "fc_loc.2.bias":
        p.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]) + rnd(p, 0.1))
      elif name == "fc_loc.0.weight":
        p.mul_(10.0)
      elif name.startswith("attention.") and p.ndim == 2:
        p.mul_(10.0)
      elif name.endswith("gamma"):
        p.copy_(0.3 + rnd(p, 0.2))
      elif p.ndim == 1:
        p.copy_(float(name.endswith("weight")) + rnd(p, 0.2 if name.endswith("weight") else 0.05))
    for name, b in m.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(rnd(b, 0.2))
      elif name.endswith("running_var"):
        b.copy_(1.0 + 0.5 * torch.rand(b.shape, generator=g))
  return m


def _nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _images(seed, n, size):
  """Noise times a per-image colour and a per-image gradient: images that differ after pooling."""
  rng = np.random.RandomState(seed)
  ramp = np.linspace(0, 1, size, dtype=np.float32)
  tilt = rng.uniform(-1, 1, (n, 1, 1, 1)) * (ramp[None, :, None, None] - 0.5)
  x = rng.rand(n, size, size, 3) * rng.uniform(0.2, 1.0, (n, 1, 1, 3)) + tilt
  return np.clip(x, 0, 1).astype(np.float32)


def _torch_run(torch, m, x, train):
  m.train(train)
  with torch.no_grad():
    out = m(_nchw(torch, x))
  return [None if o is None else o.numpy() for o in out]


def _to_official(sd):
  """Reference (timm-named) state dict -> yelboudouri/EmoNeXt naming, written independently."""
  out = {}
  for k, v in sd.items():
    k2 = (k.replace("stem.0", "downsample_layers.0.0").replace("stem.1", "downsample_layers.0.1")
          .replace("head.norm", "norm").replace("head.fc", "head").replace("conv_dw", "dwconv")
          .replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2").replace(".blocks.", "."))
    k2 = re.sub(r"stages\.(\d)\.downsample\.(\d)", r"downsample_layers.\1.\2", k2)
    if "pwconv" in k2 and v.ndim == 4:
      v = v[:, :, 0, 0]
    out["module." + k2] = v
  return out


@pytest.fixture(scope="module")
def atto_ref(tt):
  """Official-style EmoNeXt-atto at 64 px (STN, SE at downsampling, batch attention)."""
  torch, timm, reference = tt
  torch.manual_seed(0)
  m = reference.build_torch_emonext(timm, "convnext_atto", num_classes=7, image_size=64,
                                    se_placement="downsample", sa_mode="batch")
  return _randomize(torch, m, 1)


def test_atto_parity_with_torch_eval_and_train(tt, atto_ref):
  """Same random weights -> same logits, features, L_SA and W (eval: BN running stats; train: BN
  batch stats and the running-stat update), STN theta per image non-trivial."""
  torch, _, _ = tt
  sd = {k: v.clone() for k, v in atto_ref.state_dict().items()}
  model = emonext.EmoNeXtAtto(num_classes=7)  # defaults: STN, SE 'downsample', SA 'batch'
  variables = emonext_from_torch_state_dict(sd, target=_shapes(model, 64))
  x = _images(1, 4, 64)

  def run(v, x):
    ev = model.apply(v, x, train=False, return_features=True)
    tr, upd = model.apply(v, x, train=True, return_features=True,
                          rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
    return ev, tr, upd
  (ev_l, ev_aux), (tr_l, tr_aux), upd = jax.jit(run)(variables, jnp.asarray(x))
  for train, (logits, aux) in ((False, (ev_l, ev_aux)), (True, (tr_l, tr_aux))):
    want_l, want_f, want_sa, want_w = _torch_run(torch, atto_ref, x, train)
    assert np.abs(want_l).max() > 0.3 and np.abs(want_l - want_l[:1]).max() > 0.05
    assert np.abs(np.asarray(logits) - want_l).max() < ATOL, train
    assert np.abs(np.asarray(aux["features"]) - want_f).max() < ATOL
    assert want_sa > 1e-3  # a non-uniform (B, B) attention
    np.testing.assert_allclose(float(aux["sa_loss"]), want_sa, rtol=1e-3)
    assert np.abs(np.asarray(aux["attention"]) - want_w).max() < ATOL
  # torch's train forward above updated its running stats (momentum 0.1, unbiased var): ours
  # match (Flax uses the biased var, a relative n/(n-1) ~ 3e-4 difference at n = 4*29*29).
  new_sd = atto_ref.state_dict()
  stn_stats = upd["batch_stats"]["stn"]
  np.testing.assert_allclose(np.asarray(stn_stats["loc_bn_0"]["mean"]),
                             new_sd["localization.1.running_mean"].numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stn_stats["loc_bn_1"]["var"]),
                             new_sd["localization.5.running_var"].numpy(), rtol=1e-3)
  atto_ref.load_state_dict(sd)  # restore for the other tests
  # the STN really warps, differently per image.
  with torch.no_grad():
    theta = atto_ref.eval().fc_loc(torch.flatten(atto_ref.localization(_nchw(torch, x)), 1))
  theta = theta.numpy()
  assert np.abs(theta - [1, 0, 0, 0, 1, 0]).max() > 0.05 and np.abs(theta - theta[:1]).max() > 0.003


def test_paper_variant_parity_with_torch(tt):
  """SE after every stage, 'feature' attention, reduction 8, small custom size at 48 px, eval."""
  torch, timm, reference = tt
  torch.manual_seed(3)
  m = reference.build_torch_emonext(timm, "convnext_atto", num_classes=5, image_size=48,
                                    timm_kwargs=SMALL, se_placement="stage", se_reduction=8,
                                    sa_mode="feature")
  m = _randomize(torch, m, 4)
  sd = m.state_dict()
  assert "stages.0.se.fc.0.weight" in sd and "attention.value.weight" in sd
  config = infer_emonext_config(sd)
  assert config == dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), stem_patch_size=4,
                        layer_scale_init_value=1e-6, num_classes=5, use_stn=True,
                        se_placement="stage", se_reduction=8, sa_mode="batch")
  model = emonext.EmoNeXt(**{**config, "sa_mode": "feature"})
  variables = emonext_from_torch_state_dict(sd, target=_shapes(model, 48))
  x = _images(2, 3, 48)
  logits, aux = _jit_apply(model)(variables, jnp.asarray(x), return_features=True)
  want_l, want_f, want_sa, want_w = _torch_run(torch, m, x, False)
  assert np.abs(want_l - want_l[:1]).max() > 0.05
  assert np.abs(np.asarray(logits) - want_l).max() < ATOL
  assert np.abs(np.asarray(aux["features"]) - want_f).max() < ATOL
  assert aux["attention"].shape == (3, 48, 48)
  assert np.abs(np.asarray(aux["attention"]) - want_w).max() < 1e-6
  np.testing.assert_allclose(float(aux["sa_loss"]), want_sa, rtol=1e-3)


def test_official_naming_converts_identically(tt, atto_ref):
  sd = {k: v.numpy() for k, v in atto_ref.state_dict().items()}
  official = _to_official(sd)
  for key in ("module.downsample_layers.2.2.fc.0.weight", "module.downsample_layers.3.1.weight",
              "module.stages.2.5.pwconv1.weight", "module.localization.5.running_var",
              "module.fc_loc.0.weight", "module.attention.query.weight", "module.norm.weight"):
    assert key in official, key
  a = emonext_from_torch_state_dict(sd)
  b = emonext_from_torch_state_dict(official)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert a["params"]["stage_1"]["downsample_se"]["fc1"]["kernel"].shape == (80, 5)
  np.testing.assert_array_equal(a["params"]["attention"]["query"]["kernel"],
                                sd["attention.query.weight"].T)
  # Errors name the offending keys.
  bad = {k: v for k, v in official.items() if "downsample_layers.3.2.fc.2" not in k}
  with pytest.raises(ValueError, match=r"missing.*stage_3/downsample_se/fc2/kernel"):
    emonext_from_torch_state_dict(bad, target=_shapes(emonext.EmoNeXtAtto(num_classes=7), 64))
  bad = dict(official, **{"module.extra.weight": np.zeros((2, 2))})
  with pytest.raises(ValueError, match=r"unexpected torch keys: \['extra.weight'\]"):
    emonext_from_torch_state_dict(bad)
  with pytest.raises(ValueError, match=r"fc_loc_0/kernel: checkpoint \(1440, 32\) vs model "
                     r"\(27040, 32\)"):
    emonext_from_torch_state_dict(official, target=_shapes(emonext.EmoNeXtAtto(num_classes=7), 224))


def test_pretrained_convnext_backbone_loading(tt, atto_ref):
  """timm ConvNeXt weights replace the backbone only; STN / SE / attention / head untouched."""
  torch, timm, _ = tt
  torch.manual_seed(5)
  timm_sd = timm.create_model("convnext_atto", pretrained=False, num_classes=1000).state_dict()
  model = emonext.EmoNeXtAtto(num_classes=7)
  fresh = _random_like(_shapes(model, 64), 6)
  loaded = load_convnext_backbone(fresh, timm_sd)
  want = convnext_from_torch_state_dict(timm_sd, include_head=False)
  jax.tree.map(np.testing.assert_array_equal, backbone_of({k: v for k, v in loaded["params"].items()
                                                           if k != "head"}), want)
  for path in (("stn",), ("attention",), ("head",), ("stage_1", "downsample_se")):
    a, b = loaded["params"], fresh["params"]
    for p in path:
      a, b = a[p], b[p]
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert loaded["batch_stats"] is fresh["batch_stats"]
  assert not np.array_equal(fresh["params"]["stem_conv"]["kernel"], loaded["params"]["stem_conv"]["kernel"])
  with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(320, 1000\) vs model \(320, 7\)"):
    load_convnext_backbone(fresh, timm_sd, include_head=True)
  # An EmoNeXt checkpoint's backbone, dropping its extras by regex.
  emo_sd = atto_ref.state_dict()
  loaded = load_convnext_backbone(fresh, emo_sd, include_head=True, ignore_keys=[
      r"(localization|fc_loc|attention)\..*", r"stages\.\d\.downsample\.2\..*"])
  np.testing.assert_allclose(loaded["params"]["head"]["kernel"], emo_sd["head.fc.weight"].numpy().T)


def test_loaders_roundtrip_and_refuse_pickled_objects(tt, atto_ref, tmp_path):
  torch, _, _ = tt
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  sd = atto_ref.state_dict()
  want = emonext_from_torch_state_dict(sd)
  torch.save({"model": sd, "epoch": 3}, tmp_path / "emonext.pth")
  save_file({k: v.numpy() for k, v in sd.items()}, str(tmp_path / "emonext.safetensors"))
  for name in ("emonext.pth", "emonext.safetensors"):
    jax.tree.map(np.testing.assert_array_equal, want, load_emonext_variables(tmp_path / name))
  torch.save({"model": sd, "obj": _Unsafe()}, tmp_path / "evil.pth")
  with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
    load_torch_weights(tmp_path / "evil.pth")


class _Unsafe:
  pass


@pytest.mark.slow
def test_tiny_224_parity_with_torch(tt):
  """EmoNeXt-T at 224 px, official configuration, eval mode (slow: ~1 min on 2 cores)."""
  torch, timm, reference = tt
  torch.manual_seed(0)
  m = _randomize(torch, reference.build_torch_emonext(timm, "convnext_tiny", num_classes=7,
                                                      image_size=224), 2)
  model = emonext.EmoNeXtTiny(num_classes=7)
  variables = emonext_from_torch_state_dict(m.state_dict(), target=_shapes(model, 224))
  x = _images(0, 2, 224)
  logits, aux = _jit_apply(model)(variables, jnp.asarray(x), return_features=True)
  want_l, want_f, want_sa, _ = _torch_run(torch, m, x, False)
  assert np.abs(np.asarray(logits) - want_l).max() < ATOL
  assert np.abs(np.asarray(aux["features"]) - want_f).max() < ATOL
  np.testing.assert_allclose(float(aux["sa_loss"]), want_sa, rtol=1e-3)
