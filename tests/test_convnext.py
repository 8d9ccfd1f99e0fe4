"""ConvNeXt: parity with timm (PyTorch), the torch -> Flax converter, and stochastic depth.

The torch tests need torch + timm. timm 1.0.31 imports torchvision; on CPU torch the PyPI
torchvision wheel is CUDA-linked, so its C++ ops (nms, roi_align, ...) cannot load and torchvision's
fake/autograd registrations for them fail. ``_import_timm`` then stubs those two registration
modules (ConvNeXt uses none of the ops) and retries; if torch or timm is missing the tests skip.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import testing
from fer_jax.models import convnext
from fer_jax.models.convert import (convnext_from_torch_state_dict, infer_convnext_config,
                                    load_convnext_params, load_torch_weights, map_torch_params)
from fer_jax.testing import timm_to_official_convnext, fast_depthwise64, RTOL64, to_float64, U32

# timm parity runs both sides in float64 (x64 on, float64 params and images; torch .double()). In
# float32 the two differ by ~1e-5 after the LayerNorms and GELUs of a few blocks, by an amount that
# depends on the machine's summation order and vector width. Float64's unit roundoff is 2^29 ~ 5e8
# times smaller, so the same computation differs by ~1e-13 (measured: ~1e-15); RTOL64 (relative to
# the largest reference magnitude) has a wide margin on any machine, while a parameter off by 1e-3
# moves outputs by >~1e-5 of their size. The model returns logits / features rounded to float32:
# exactly one more rounding, <= U32 |value|.


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=("train", "return_features"))


def _jit_init(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)["params"]


def _import_timm():
  """Returns (torch, timm) or skips with the reason (see fer_jax.testing.import_timm)."""
  try:
    return testing.import_timm()
  except ImportError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def tt():
  return _import_timm()


def _randomize(torch, module, seed):
  """Random 1-D params (LN scale ~ 1 + 0.2 N, biases/LN shift ~ 0.2 N, gamma ~ 1 + 0.2 N).

  Init values (LN 1/0, gamma 1e-6, zero biases) would hide mistakes in those parameters.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1:
        one = name.endswith("gamma") or (name.endswith("weight") and p.ndim == 1)
        p.copy_(float(one) + 0.2 * torch.randn(p.shape, generator=g))
  return module


def _timm_atto(torch, timm, patch, num_classes=7, seed=0):
  torch.manual_seed(seed)
  m = timm.create_model("convnext_atto", pretrained=False, num_classes=num_classes,
                        patch_size=patch)
  return _randomize(torch, m, seed).eval()


def _nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _assert_parity64(got, want, what=""):
  """JAX value computed in float64 vs float64 torch: RTOL64 of the largest magnitude, plus
  U32 |want| if the model returned it rounded to float32. Returns the max abs difference."""
  rounded = np.asarray(got).dtype == np.float32
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  tol = RTOL64 * np.abs(want).max() + (U32 * np.abs(want) if rounded else 0.0)
  err = np.abs(got - want)
  assert np.all(err <= tol), f"{what}: max abs diff {err.max():.3g} (bound {tol.max():.3g})"
  return err.max()


# ----------------------------------------------------------------------------- drop path


def test_drop_path_hand_computed():
  x = jnp.ones((8, 2, 2, 3)) * jnp.arange(1, 9, dtype=jnp.float32)[:, None, None, None]
  key = jax.random.key(3)
  y = np.asarray(convnext.drop_path(x, 0.25, key))
  keep = np.asarray(jax.random.bernoulli(key, 0.75, (8, 1, 1, 1)))
  expected = np.where(keep, np.asarray(x) / 0.75, 0.0)
  np.testing.assert_allclose(y, expected, rtol=1e-6)
  # Per sample: either all zeros or exactly x * 4/3.
  for b in range(8):
    assert np.all(y[b] == 0) or np.allclose(y[b], (b + 1) * 4.0 / 3.0, rtol=1e-6)
  assert 0 < keep.sum() < 8  # this key drops some samples and keeps others.
  # Statistics over many samples: drop fraction ~ rate, mean preserved (unbiased).
  big = np.asarray(convnext.drop_path(jnp.ones((20000, 1)), 0.25, jax.random.key(0)))
  assert abs(np.mean(big == 0) - 0.25) < 0.015
  assert abs(big.mean() - 1.0) < 0.02
  np.testing.assert_array_equal(np.asarray(convnext.drop_path(x, 0.0, key)), np.asarray(x))
  with pytest.raises(ValueError, match="1.0"):
    convnext.drop_path(x, 1.0, key)


def test_drop_path_schedule_is_linear_over_all_blocks():
  assert convnext.drop_path_schedule((2, 1), 0.2) == ((0.0, 0.1), (0.2,))
  rates = convnext.drop_path_schedule((2, 2, 6, 2), 0.11)
  np.testing.assert_allclose(np.concatenate(rates), 0.01 * np.arange(12), atol=1e-12)
  assert [len(r) for r in rates] == [2, 2, 6, 2]


def test_block_drop_path_train_vs_eval():
  """Train output = x + mask/keep * (eval residual), mask per sample; eval ignores the rng."""
  block = convnext.ConvNeXtBlock(drop_path_rate=0.5, layer_scale_init_value=1.0)
  x = jax.random.normal(jax.random.key(0), (16, 5, 5, 8))
  shapes = jax.eval_shape(block.init, jax.random.key(1), x)
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda s: (0.2 * rng.randn(*s.shape)).astype(np.float32), shapes)
  apply = _jit_apply(block)
  ev = apply(variables, x, train=False, rngs={"dropout": jax.random.key(1)})
  ev2 = apply(variables, x, train=False, rngs={"dropout": jax.random.key(9)})
  np.testing.assert_array_equal(np.asarray(ev), np.asarray(ev2))
  branch = np.asarray(ev - x)
  key = jax.random.key(7)
  tr = np.asarray(apply(variables, x, train=True, rngs={"dropout": key}))
  kept = [np.allclose(tr[b], x[b] + 2.0 * branch[b], atol=1e-5) for b in range(16)]
  dropped = [np.array_equal(tr[b], np.asarray(x[b])) for b in range(16)]
  assert all(k != d for k, d in zip(kept, dropped))
  assert 0 < sum(kept) < 16
  tr_same = apply(variables, x, train=True, rngs={"dropout": key})
  np.testing.assert_array_equal(tr, np.asarray(tr_same))
  tr_other = apply(variables, x, train=True, rngs={"dropout": jax.random.key(8)})
  assert not np.array_equal(tr, np.asarray(tr_other))


# ----------------------------------------------------------------------------- timm parity


def test_block_parity_with_timm(tt):
  torch, timm = tt
  from timm.models.convnext import ConvNeXtBlock as TimmBlock
  torch.manual_seed(0)
  ref = _randomize(torch, TimmBlock(in_chs=24, conv_mlp=False, ls_init_value=1e-6), 1).double()
  ref = fast_depthwise64(ref, torch)
  sd = {f"stages.0.blocks.0.{k}": v for k, v in ref.state_dict().items()}
  params, unexpected = map_torch_params(sd)
  assert not unexpected
  x = np.random.RandomState(0).randn(2, 9, 9, 24)
  ours = convnext.ConvNeXtBlock()
  variables = {"params": to_float64(params["stage_0"]["block_0"])}
  for train in (False, True):  # drop path rate 0: train mode equals eval mode in both.
    ref.train(train)
    with torch.no_grad():
      want = ref(_nchw(torch, x)).permute(0, 2, 3, 1).numpy()
    with jax.enable_x64(True):
      got = _jit_apply(ours)(variables, x, train=train, rngs={"dropout": jax.random.key(0)})
    assert got.dtype == np.float64
    _assert_parity64(got, want, f"block train={train}")
  assert np.abs(want - x).max() > 0.1  # the residual branch is not negligible.


@pytest.mark.parametrize("patch,size", [(4, 64), (1, 32)])
def test_convnext_atto_parity_with_timm(tt, patch, size):
  """Random timm weights -> converter -> same logits and pooled features (eval and train, dp 0),
  float64 on both sides (see RTOL64)."""
  torch, timm = tt
  ref = _timm_atto(torch, timm, patch)
  params = to_float64(convnext_from_torch_state_dict(ref.state_dict()))
  ref = fast_depthwise64(ref.double(), torch)
  x = np.random.RandomState(1).rand(3, size, size, 3)
  model = convnext.ConvNeXtAtto(num_classes=7, stem_patch_size=patch)
  with torch.no_grad():  # (timm's float64 convs are slow on CPU: one eval forward, head split)
    want_feat = ref.forward_head(ref.forward_features(_nchw(torch, x)), pre_logits=True)
    want = ref.head.fc(want_feat).numpy()
    want_feat = want_feat.numpy()
  apply = _jit_apply(model)
  with jax.enable_x64(True):
    logits, feats = apply({"params": params}, x, return_features=True,
                          rngs={"dropout": jax.random.key(0)})
    if patch == 4:  # drop path rate 0: train mode matches timm's train mode (one compile only).
      train_logits = apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)})
      with torch.no_grad():
        want_train = ref.train()(_nchw(torch, x)).numpy()
      _assert_parity64(train_logits, want_train, "train logits")
  assert np.abs(want).max() > 0.1
  _assert_parity64(logits, want, "logits")
  _assert_parity64(feats, want_feat, "features")
  # features feed the classifier: logits = features @ W + b, both returned rounded to float32 from
  # float64 values (U32 relative each): |diff| <= U32 (|f| |W| + |logits|), doubled for margin.
  k, b = params["head"]["kernel"], params["head"]["bias"]
  f = np.asarray(feats, np.float64)
  np.testing.assert_array_less(np.abs(np.asarray(logits, np.float64) - (f @ k + b)),
                               2 * U32 * (np.abs(f) @ np.abs(k) + np.abs(want)) + RTOL64)


def test_official_naming_converts_identically(tt):
  torch, timm = tt
  sd = _timm_atto(torch, timm, 4).state_dict()
  official = timm_to_official_convnext(sd)
  assert "downsample_layers.2.1.weight" in official and "stages.2.5.pwconv1.weight" in official
  a = convnext_from_torch_state_dict(sd)
  b = convnext_from_torch_state_dict({"module." + k: v for k, v in official.items()})
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_loaders_roundtrip_and_refuse_pickled_objects(tt, tmp_path):
  torch, timm = tt
  from safetensors.numpy import save_file
  sd = _timm_atto(torch, timm, 4).state_dict()
  want = convnext_from_torch_state_dict(sd)
  torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
  save_file({k: v.numpy() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
  for name in ("ckpt.pth", "w.safetensors"):
    got = load_convnext_params(tmp_path / name)
    jax.tree.map(np.testing.assert_array_equal, want, got)
  torch.save({"model": sd, "obj": _Unsafe()}, tmp_path / "evil.pth")
  with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
    load_torch_weights(tmp_path / "evil.pth")
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    load_torch_weights(tmp_path / "nope.pth")


class _Unsafe:
  pass


# ----------------------------------------------------------------------------- converter (no torch)


def _to_timm_layout(params):
  """Our params -> timm-named NumPy state dict (inverse mapping written independently)."""
  sd = {}
  def put(prefix, node, kind):
    for leaf, v in node.items():
      v = np.asarray(v)
      name = {"scale": "weight", "kernel": "weight", "bias": "bias"}[leaf]
      if leaf == "kernel":
        v = np.transpose(v, (3, 2, 0, 1)) if kind == "conv" else v.T
      sd[f"{prefix}.{name}"] = v
  put("stem.0", params["stem_conv"], "conv")
  put("stem.1", params["stem_norm"], "norm")
  for s, stage in ((k, v) for k, v in params.items() if k.startswith("stage_")):
    i = s.split("_")[1]
    for name, node in stage.items():
      if name == "downsample_norm":
        put(f"stages.{i}.downsample.0", node, "norm")
      elif name == "downsample_conv":
        put(f"stages.{i}.downsample.1", node, "conv")
      else:
        j = name.split("_")[1]
        p = f"stages.{i}.blocks.{j}"
        put(f"{p}.conv_dw", node["dwconv"], "conv")
        put(f"{p}.norm", node["norm"], "norm")
        put(f"{p}.mlp.fc1", node["pwconv1"], "linear")
        put(f"{p}.mlp.fc2", node["pwconv2"], "linear")
        if "gamma" in node:
          sd[f"{p}.gamma"] = np.asarray(node["gamma"])
  put("head.norm", params["head_norm"], "norm")
  if "head" in params:
    put("head.fc", params["head"], "linear")
  return sd


@pytest.fixture(scope="module")
def tiny_model_params():
  """A small ConvNeXt and random params of its shapes (no init compile: keeps the file fast)."""
  model = convnext.ConvNeXt(num_classes=5, depths=(1, 2), dims=(8, 16), stem_patch_size=2)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: (0.3 * rng.randn(*s.shape)).astype(np.float32), shapes)
  return model, params


def test_converter_roundtrip_and_config_inference(tiny_model_params):
  _, params = tiny_model_params
  sd = _to_timm_layout(params)
  assert sd["stem.0.weight"].shape == (8, 3, 2, 2) and sd["head.fc.weight"].shape == (5, 16)
  got = convnext_from_torch_state_dict(sd)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), got)
  assert infer_convnext_config(got) == dict(
      depths=(1, 2), dims=(8, 16), stem_patch_size=2, in_channels=3, layer_scale_init_value=1e-6,
      num_classes=5)
  no_head = convnext_from_torch_state_dict(sd, include_head=False)
  assert "head" not in no_head and "head_norm" in no_head
  other = convnext.ConvNeXt(num_classes=7, depths=(1, 2), dims=(8, 16), stem_patch_size=2)
  target = jax.eval_shape(other.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  convnext_from_torch_state_dict(sd, target=target, include_head=False)
  with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(16, 5\) vs model \(16, 7\)"):
    convnext_from_torch_state_dict(sd, target=target)


def test_converter_errors_name_the_bad_keys(tiny_model_params):
  _, params = tiny_model_params
  sd = _to_timm_layout(params)
  bad = dict(sd)
  del bad["stages.1.blocks.0.mlp.fc2.bias"]
  with pytest.raises(ValueError, match=r"missing.*stage_1/block_0/pwconv2/bias"):
    convnext_from_torch_state_dict(bad)
  bad = dict(sd, **{"stages.1.blocks.0.se.fc.weight": np.zeros((2, 2)), "foo": np.zeros(1)})
  with pytest.raises(ValueError, match=r"unexpected torch keys: \['foo', 'stages.1.blocks.0.se"):
    convnext_from_torch_state_dict(bad)
  convnext_from_torch_state_dict(bad, ignore_keys=[r"foo", r".*\.se\..*"])
  bad = dict(sd, **{"stages.0.blocks.0.conv_dw.weight": np.zeros((8, 1, 5, 5))})
  with pytest.raises(ValueError, match=r"stage_0/block_0/dwconv/kernel: checkpoint \(5, 5, 1, 8\) "
                     r"vs model \(7, 7, 1, 8\)"):
    convnext_from_torch_state_dict(bad)
  bad = dict(sd, **{"stem.0.weight": np.zeros((8, 3))})
  with pytest.raises(ValueError, match=r"stem.0.weight: expected a 4-D conv weight"):
    convnext_from_torch_state_dict(bad)
  bad = {k: v for k, v in sd.items() if not k.startswith("stages.1.blocks.1.")}
  bad["stages.1.blocks.2.gamma"] = np.zeros(16)  # a hole in the block indices
  with pytest.raises(ValueError, match=r"missing.*stage_1/block_1/dwconv/bias"):
    convnext_from_torch_state_dict(bad)


# ----------------------------------------------------------------------------- model options


def test_features_only_bf16_and_config_errors(tiny_model_params):
  model, params = tiny_model_params
  x = jax.random.uniform(jax.random.key(1), (2, 12, 12, 3))
  logits, feats = _jit_apply(model)({"params": params}, x, return_features=True)
  # num_classes=0: the model is a feature extractor (no head params needed).
  body = {k: v for k, v in params.items() if k != "head"}
  feats_only = _jit_apply(model.clone(num_classes=0))({"params": body}, x)
  np.testing.assert_allclose(np.asarray(feats_only), np.asarray(feats), atol=1e-6)
  # The head LayerNorm output has zero mean / unit variance before its affine part.
  hn = params["head_norm"]
  z = (np.asarray(feats) - np.asarray(hn["bias"])) / np.asarray(hn["scale"])
  np.testing.assert_allclose(z.mean(-1), 0, atol=1e-4)
  np.testing.assert_allclose(z.var(-1), 1, atol=1e-3)
  # bfloat16 compute: params stay float32, outputs float32 and close to the float32 model.
  bf = model.clone(dtype=jnp.bfloat16)
  bf_params = jax.eval_shape(bf.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf_params))
  bf_logits = _jit_apply(bf)({"params": params}, x)
  assert bf_logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf_logits), np.asarray(logits), atol=0.05)
  with pytest.raises(ValueError, match=r"depths \(1, 2\) and dims \(8,\)"):
    jax.eval_shape(model.clone(dims=(8,)).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"input spatial size \(3, 3\).*4 px"):
    jax.eval_shape(model.apply, {"params": params}, x[:, :3, :3])
  with pytest.raises(ValueError, match="depthwise impl 'nope'"):  # depthwise_impl is passed on
    jax.eval_shape(model.clone(depthwise_impl="nope").init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="drop_path_rate.*1.5"):
    jax.eval_shape(model.clone(drop_path_rate=1.5).init, jax.random.key(0), x)


def test_init_layer_scale_and_head_init_scale():
  m = convnext.ConvNeXt(num_classes=4, depths=(1,), dims=(8,), layer_scale_init_value=None)
  p = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
  assert "gamma" not in p["stage_0"]["block_0"]
  m = convnext.ConvNeXt(num_classes=4, depths=(1,), dims=(8,), layer_scale_init_value=0.5,
                        head_init_scale=0.0)
  p = _jit_init(m, jnp.zeros((1, 4, 4, 3)))
  np.testing.assert_array_equal(np.asarray(p["head"]["kernel"]), 0.0)
  np.testing.assert_array_equal(np.asarray(p["stage_0"]["block_0"]["gamma"]), 0.5)
  # trunc-normal(0.02) kernels and zero biases, like the reference init.
  k = np.asarray(p["stage_0"]["block_0"]["pwconv1"]["kernel"])
  assert 0.01 < k.std() < 0.03 and np.abs(k).max() <= 2 * 0.02 / 0.8796 + 1e-6
  np.testing.assert_array_equal(np.asarray(p["stage_0"]["block_0"]["pwconv1"]["bias"]), 0.0)
