"""EmoNeXt: SE and self-attention vs NumPy, ConvNeXt identity, closed-form parameter counts, and
parity with a PyTorch EmoNeXt (timm ConvNeXt + our torch STN / SE / attention in
benchmarks/emonext_torch_reference.py) through the state-dict converters.

The torch tests need torch + timm (``fer_jax.testing.import_timm``) and skip without them.
"""

import copy
import functools
import math
import os
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
from fer_jax.testing import timm_to_official_convnext, assert_within, fast_depthwise64, RTOL64, to_float64, U32

# Torch parity runs both sides in float64 (x64 on, float64 variables and images; torch .double()).
# Float32 parity differs by up to ~2e-4 (train mode: the STN's batch-statistics BatchNorm, then the
# (B, B) softmax), machine-dependent. Float64's unit roundoff is 2^29 ~ 5e8 times smaller, so the
# same paths differ by ~1e-12 at most (measured ~1e-14); RTOL64 (relative to the largest reference
# magnitude) leaves a wide margin on any machine, while a parameter off by 1e-3 moves outputs by
# >~1e-5 of their size. Pieces the model computes in float32 whatever the input dtype (the STN's
# theta head, the attention softmax, L_SA; logits / features are returned rounded to float32) get
# tolerances derived from the float32 computation, in units of U32 (see _softmax_f32_tol etc.).
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


def _assert_parity64(got, want, what):
  """JAX value computed in float64 vs the float64 torch value: RTOL64 of the largest magnitude, plus
  U32 |want| when the model hands it back rounded to float32 (logits, features)."""
  rounded = np.asarray(got).dtype == np.float32
  want = np.asarray(want, np.float64)
  tol = RTOL64 * np.abs(want).max() + (U32 * np.abs(want) if rounded else 0.0)
  return assert_within(got, want, tol, what)


def _softmax_f32_tol(w, ds, scores):
  """Bound on |W32 - W| for W = softmax(S) over the last axis (float64) and W32 the float32 softmax
  (jax.nn.softmax: exp(S - max) / sum) of float32 scores S32 with |S32 - S| <= ds elementwise.

  * Score errors: W_j = e^S_j / sum_l e^S_l moves by a factor within [e^-2D, e^2D], D = the row's
    max ds, and so does 1 - W_j = sum_{l != j} W_l: |dW_j| <= min(W_j, 1 - W_j) expm1(2 D).
  * Evaluation in float32, relative to W_j: S - max rounded (U32 (max S - min S)), exp's own error
    (XLA's float32 exp is a polynomial approximation, <= 1.4 U32 measured on a dense grid of
    [-30, 30]; we allow 16 U32), the sum of n such terms ((n - 1) U32 plus their errors) and the
    division (U32): <= U32 (2 (max S - min S + 2 D) + n + 32).
  """
  d = ds.max(-1, keepdims=True)
  spread = scores.max(-1, keepdims=True) - scores.min(-1, keepdims=True) + 2 * d
  return (np.minimum(w, 1 - w) * np.expm1(2 * d)
          + w * np.exp(2 * d) * U32 * (2 * spread + w.shape[-1] + 32))


def _score_f32_err(q, k, mode):
  """|S32 - S| for the attention scores S computed by emonext's batch / feature attention weights in
  float32 from the float64 projections q, k (B, C) (the inputs rounded to float32: U32 each).

  batch: S = (q k^T) C^-1/4; a float32 dot product of length C has error <= gamma_C sum |q| |k| in
    any summation order (gamma_C = C U32 / (1 - C U32)); with the input roundings and the scaling
    (C^-1/4 rounded, product rounded): <= (C + 6) U32 C^-1/4 (|q| |k|^T).
  feature: S[b, i, j] = q_bi k_bj / sqrt(C), one product: q, k, the product, sqrt(C) and the
    division each rounded once: <= 6 U32 |S|.
  """
  c = q.shape[-1]
  if mode == "batch":
    return (c + 6) * U32 * c ** -0.25 * (np.abs(q) @ np.abs(k).T)
  return 6 * U32 * np.abs(q[:, :, None] * k[:, None, :]) / math.sqrt(c)


def _sa_loss_tol(w, tw):
  """Bound on |L32 - L|, L = mean((W - mean W)^2) over the N entries of the float64 W, L32 the
  float32 L_SA of W32 with |W32 - W| <= tw (emonext.attention_variance):
  * from W32 - W (T = max tw, so |d(W - mean W)| <= 2 T): <= 4 T mean|W - m| + 4 T^2;
  * float32 evaluation: mean W rounded ((N + 1) U32 m, all W >= 0) shifts every deviation, the
    deviations and squares are rounded (3 U32 relative), the final mean ((N + 1) U32 relative):
    <= 2 (N + 1) U32 m mean|W - m| + (N + 5) U32 L, plus second-order terms covered by doubling.
  """
  n, t = w.size, tw.max()
  m = w.mean()
  dev = np.abs(w - m).mean()
  loss = np.mean((w - m) ** 2)
  return 2 * (4 * t * dev + 4 * t * t + 2 * (n + 1) * U32 * m * dev + (n + 5) * U32 * loss)


def _parity_runs(torch, ref, model, variables, x, modes):
  """Runs the JAX EmoNeXt in float64 (x64 on, float64 variables and images) in each train mode of
  ``modes`` (one compile), capturing intermediates, and a float64 copy of the torch reference
  (``ref`` itself is left untouched) on the same images in the same modes, in that order.

  The STN's theta head runs in float32 in the JAX model whatever the input dtype; the torch copy
  gets the JAX theta through a forward hook on ``fc_loc`` (its own float64 theta, and the head's
  input, are recorded), so everything downstream of theta is compared in float64 and theta alone
  against a float32 bound (_check_parity). Returns [(train, jax (logits, aux), jax state, torch
  dict)]."""
  # (float32 matmuls at full float32 precision also on accelerators, where the default may be TF32.)
  with jax.enable_x64(True), jax.default_matmul_precision("highest"):
    def run(v, x):
      return [model.apply(v, x, train=train, return_features=True, capture_intermediates=True,
                          mutable=["batch_stats", "intermediates"],
                          rngs={"dropout": jax.random.key(0)}) for train in modes]
    outs = jax.jit(run)(to_float64(variables), np.asarray(x, np.float64))
  t64 = fast_depthwise64(copy.deepcopy(ref).double(), torch)
  results = []
  for train, ((logits, aux), state) in zip(modes, outs):
    theta = np.asarray(state["intermediates"]["stn"]["fc_loc_1"]["__call__"][0])
    rec = {}

    def hook(module, inputs, output, theta=theta, rec=rec):
      rec["theta"], rec["fc_loc_in"] = output, inputs[0]
      return torch.from_numpy(theta.astype(np.float64)).reshape(output.shape)

    handle = t64.fc_loc.register_forward_hook(hook)
    t64.train(train)
    with torch.no_grad():
      tl, tf, tsa, tw = t64(_nchw(torch, np.asarray(x, np.float64)))
      normed = t64.attention.norm(tf)
      want = dict(logits=tl, features=tf, sa_loss=tsa, attention=tw, theta=rec["theta"],
                  fc_loc_hidden=t64.fc_loc[1](t64.fc_loc[0](rec["fc_loc_in"])),
                  query=t64.attention.query(normed), key=t64.attention.key(normed),
                  state_dict=t64.state_dict())
    handle.remove()
    want = {k: (v if k == "state_dict" else v.numpy()) for k, v in want.items()}
    want["fc_loc_weight"] = t64.fc_loc[2].weight.detach().numpy()
    want["fc_loc_bias"] = t64.fc_loc[2].bias.detach().numpy()
    results.append((train, (logits, aux), state, want))
  return results


def _check_parity(jax_out, state, want, sa_mode):
  """Float64 parity of logits, features and the attention projections; float32 bounds for theta,
  W and L_SA. Returns the max abs differences."""
  logits, aux = jax_out
  inter = state["intermediates"]
  # The model really computed in float64 (its outputs are float32 copies).
  assert inter["head"]["__call__"][0].dtype == np.float64
  assert inter["attention"]["query"]["__call__"][0].dtype == np.float64
  err = {}
  # theta = fc_loc_1(h) in float32: h (float64, = torch's to RTOL64) rounded, a length-H dot product
  # (gamma_H), the bias added (weights and bias are float32 values, exact):
  # |dtheta| <= (H + 3) U32 (|W| |h| + |b|).
  h = want["fc_loc_hidden"]
  bound = (h.shape[-1] + 3) * U32 * (np.abs(h) @ np.abs(want["fc_loc_weight"]).T
                                      + np.abs(want["fc_loc_bias"]))
  err["theta"] = assert_within(inter["stn"]["fc_loc_1"]["__call__"][0], want["theta"],
                                bound + RTOL64 * np.abs(want["theta"]).max(), "theta")
  for name in ("logits", "features"):
    err[name] = _assert_parity64(jax_out[0] if name == "logits" else aux[name], want[name], name)
  for name in ("query", "key"):
    err[name] = _assert_parity64(inter["attention"][name]["__call__"][0], want[name], name)
  q, k, w = want["query"], want["key"], want["attention"]
  c = q.shape[-1]
  if sa_mode == "batch":
    scores = q @ k.T * c ** -0.25
  else:
    scores = q[:, :, None] * k[:, None, :] / math.sqrt(c)
  tw = _softmax_f32_tol(w, _score_f32_err(q, k, sa_mode), scores) + RTOL64
  err["attention"] = assert_within(aux["attention"], w, tw, "attention")
  err["sa_loss"] = assert_within(aux["sa_loss"], want["sa_loss"],
                                  _sa_loss_tol(w, tw) + RTOL64 * want["sa_loss"], "sa_loss")
  return err


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
  batch stats and the running-stat update), STN theta per image non-trivial. Float64 on both sides
  (see RTOL64), float32 bounds where the model computes in float32 (_check_parity)."""
  torch, _, _ = tt
  sd = {k: v.clone() for k, v in atto_ref.state_dict().items()}
  model = emonext.EmoNeXtAtto(num_classes=7)  # defaults: STN, SE 'downsample', SA 'batch'
  variables = emonext_from_torch_state_dict(sd, target=_shapes(model, 64))
  x = _images(1, 4, 64)
  runs = _parity_runs(torch, atto_ref, model, variables, x, modes=(False, True))
  for train, out, state, want in runs:
    want_l = want["logits"]
    assert np.abs(want_l).max() > 0.3 and np.abs(want_l - want_l[:1]).max() > 0.05
    assert want["sa_loss"] > 1e-3  # a non-uniform (B, B) attention
    _check_parity(out, state, want, "batch")
  # torch's train forward updated its running stats (momentum 0.1, unbiased batch variance); ours
  # (Flax momentum 0.9, biased variance v): torch_new - 0.9 old = (flax_new - 0.9 old) n / (n - 1),
  # n = batch * the BN input's spatial size; in float64.
  _, _, state, want = runs[-1]
  bn_sides = (("localization.1", 64 - 6), ("localization.5", (64 - 6) // 2 - 4))
  for i, (bn, side) in enumerate(bn_sides):
    n = x.shape[0] * side * side
    new = state["batch_stats"]["stn"][f"loc_bn_{i}"]
    _assert_parity64(new["mean"], want["state_dict"][f"{bn}.running_mean"].numpy(), f"{bn} mean")
    old = sd[f"{bn}.running_var"].numpy().astype(np.float64)
    _assert_parity64(0.9 * old + (np.asarray(new["var"]) - 0.9 * old) * n / (n - 1),
                     want["state_dict"][f"{bn}.running_var"].numpy(), f"{bn} var")
    assert np.abs(np.asarray(new["var"]) - old).max() > 1e-3  # the update is not a no-op
  # the STN really warps, differently per image.
  theta = want["theta"]
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
  [(_, out, state, want)] = _parity_runs(torch, m, model, variables, x, modes=(False,))
  assert np.abs(want["logits"] - want["logits"][:1]).max() > 0.05
  assert out[1]["attention"].shape == (3, 48, 48)
  _check_parity(out, state, want, "feature")


def test_official_naming_converts_identically(tt, atto_ref):
  sd = {k: v.numpy() for k, v in atto_ref.state_dict().items()}
  official = timm_to_official_convnext(sd, prefix="module.")
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
  [(_, out, state, want)] = _parity_runs(torch, m, model, variables, x, modes=(False,))
  _check_parity(out, state, want, "batch")
