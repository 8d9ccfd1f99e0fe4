"""fer_jax.models.mobilenetv3 against timm 1.0.31's ``mobilenetv3_*`` (float32).

The timm models are built with ``pretrained=False`` and randomised BatchNorm affine parameters, running
statistics and conv biases (tests/test_efficientnet.py's ``timm_model``), so that eval-mode BN is not the
identity and a mis-mapped statistic shows; their state dicts go through our importer, so it is tested on
the way. For the eval-mode comparisons the running statistics are then set to the batch statistics of a
calibration batch (``calibrated``): with arbitrary statistics the input-dependent part of MobileNetV3's
activations fades through the blocks without a shortcut (two images' small_100 features differed by 0.016
at |f| ~ 1), with calibrated ones it stays O(1) (3.0 at |f| ~ 3.5). Tolerance: features and logits within
1e-4 (max abs) of timm's in float32 (measured: small_100 3.5e-6 / 1.3e-6, large_100 3.9e-5 / 1.5e-5 at
|features| <= 6.8, i.e. ~6e-6 relative: float32 rounding over 16 blocks).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.models import efficientnet as E
from fer_jax.models import mobilenetv3 as M
from fer_jax.registry import BACKBONES, PRETRAINED
from fer_jax.testing import import_timm
from test_efficientnet import images, max_diff, nchw, timm_model  # (tests/test_efficientnet.py)

torch, timm = import_timm()
ATOL = 1e-4
# timm 1.0.31 create_model(name), sum(p.numel() for p in model.parameters()); 1000 classes.
TIMM_PARAMS = {"mobilenetv3_large_100": 5_483_032, "mobilenetv3_large_075": 3_993_528,
               "mobilenetv3_small_100": 2_542_856, "mobilenetv3_small_075": 2_041_872,
               "mobilenetv3_small_050": 1_593_224}


def calibrated(name, seed=0, num_classes=1000, size=64):
  """``timm_model`` in eval mode with its BN running statistics = the (unbiased) batch statistics of 8
  other random ``size`` px images (momentum 1 for one train-mode forward)."""
  tm = timm_model(name, seed, num_classes)
  bns = [m for m in tm.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  with torch.no_grad():
    tm.train()(nchw(images(8, size, seed=100 + seed)))
  for m in bns:
    m.momentum = 0.1
  return tm.eval()


def shapes_of(model, size=64):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def imported(model, tm):
  """Our variables of ``model`` from timm model ``tm``'s state dict, through the importer."""
  shapes = shapes_of(model)
  v = M.from_timm_state_dict(tm.state_dict(), shapes["params"], shapes["batch_stats"])
  return {"params": v.params, "batch_stats": v.batch_stats}


def timm_arch(tm):
  """``resolved()`` read off an instantiated timm model: per block (type, in, mid, out, kernel, stride, SE
  width, activation), asserting along the way timm's symmetric k // 2 padding and SE ReLU / hard sigmoid."""
  acts = {"ReLU": "relu", "Hardswish": "hard_swish"}
  stages = []
  for stage in tm.blocks:
    blocks = []
    for b in stage:
      if type(b).__name__ == "ConvBnAct":
        assert b.conv.kernel_size == (1, 1) and b.conv.bias is None
        c = b.conv.out_channels
        blocks.append(("cn", b.conv.in_channels, c, c, 1, 1, 0, acts[type(b.bn1.act).__name__]))
        continue
      ds = not hasattr(b, "conv_pwl")
      rd = 0
      if not isinstance(b.se, torch.nn.Identity):
        rd = b.se.conv_reduce.out_channels
        assert (type(b.se.act1).__name__, type(b.se.gate).__name__) == ("ReLU", "Hardsigmoid")
      k = b.conv_dw.kernel_size[0]
      assert b.conv_dw.padding == (k // 2,) * 2
      blocks.append(("ds" if ds else "ir", (b.conv_dw if ds else b.conv_pw).in_channels, b.conv_dw.out_channels,
                     (b.conv_pw if ds else b.conv_pwl).out_channels, k, b.conv_dw.stride[0], rd,
                     acts[type(b.bn1.act).__name__]))
    stages.append(tuple(blocks))
  assert type(tm.bn1.act).__name__ == "Hardswish" and type(tm.act2).__name__ == "Hardswish"
  assert tm.conv_head.bias is not None and isinstance(tm.norm_head, torch.nn.Identity)
  return tm.conv_stem.out_channels, tuple(stages), tm.conv_head.out_channels


# ----------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_resolved_architecture_and_parameter_count_are_timms(name):
  tm = timm.create_model(name, pretrained=False)
  size = name[len("mobilenetv3_"):]
  assert BACKBONES.get("mobilenetv3")(size=size).resolved() == timm_arch(tm)
  n_timm = sum(p.numel() for p in tm.parameters())
  assert n_timm == TIMM_PARAMS[name]
  shapes = shapes_of(M.VARIANTS[name]())
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == n_timm
  assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_widths_by_hand():
  """Howard et al. Table 1 / 2 at width 1, and timm's rounding at 0.5 / 0.75: make_divisible(c w, 8), SE
  make_divisible(mid / 4); the stem stays 16 below 0.75 (fix_stem)."""
  stem, stages, head = M.build_arch("large", 1.0)
  flat = [b for s in stages for b in s]
  assert (stem, head, len(flat)) == (16, 1280, 16)
  assert [b[2] for b in flat] == [16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960, 960]
  assert [b[3] for b in flat] == [16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160, 960]
  assert [b[6] for b in flat] == [0, 0, 0, 24, 32, 32, 0, 0, 0, 0, 120, 168, 168, 240, 240, 0]  # 72/4=18 -> 24
  assert [b[7] for b in flat].count("relu") == 6
  stem, stages, head = M.build_arch("small", 0.5)
  flat = [b for s in stages for b in s]
  assert (stem, head, len(flat)) == (16, 1024, 12)
  assert [b[3] for b in flat] == [8, 16, 16, 24, 24, 24, 24, 24, 48, 48, 48, 288]  # 48*.5 = 24, 40*.5 -> 24
  assert flat[0][:7] == ("ds", 16, 16, 8, 3, 2, 8)  # SE on the 16 input channels: make_divisible(4) = 8
  assert M.build_arch("small", 0.75)[0] == 16 and M.build_arch("large", 1.5)[0] == 24
  assert M.decode_block("ir_r3_k5_s2_e3_c40_se0.25_nre") == ("ir", 3, 5, 2, 3.0, 40, 0.25, "relu")
  assert M.decode_block("ir_r1_k3_s1_e3.67_c24") == ("ir", 1, 3, 1, 3.67, 24, 0.0, "hard_swish")


def test_sizes_and_fields_describe_the_same_network_and_bad_values_are_named():
  assert M.MobileNetV3Backbone(size="small_075").resolved() == \
      M.MobileNetV3Backbone(layout="small", width_multiplier=0.75).resolved()
  with pytest.raises(ValueError, match=r"size='large'; expected one of \['large_075', 'large_100'"):
    M.MobileNetV3Backbone(size="large").resolved()
  with pytest.raises(ValueError, match="fixes layout and width_multiplier"):
    M.MobileNetV3Backbone(size="small_100", width_multiplier=1.0).resolved()
  with pytest.raises(ValueError, match=r"layout=None; expected one of \['large', 'small'\]"):
    M.MobileNetV3Backbone().resolved()
  with pytest.raises(ValueError, match=r"layout='tiny'"):
    M.MobileNetV3Backbone(layout="tiny", width_multiplier=1.0).resolved()
  with pytest.raises(ValueError, match=r"width_multiplier=0; expected a positive number"):
    M.MobileNetV3Backbone(layout="small", width_multiplier=0).resolved()
  with pytest.raises(ValueError, match=r"'ir_r1_k3_s1_c24_nse': unknown option 'nse'"):
    M.decode_block("ir_r1_k3_s1_c24_nse")
  with pytest.raises(ValueError, match=r"'ir_r1_k3_s1_c24': expected type ds / ir / cn"):
    M.decode_block("ir_r1_k3_s1_c24")
  with pytest.raises(ValueError, match=r"only 1x1 'cn' blocks"):
    M.decode_block("cn_r1_k3_s1_c24")
  tiny = M.MobileNetV3Backbone(layout="small", width_multiplier=0.25, drop_path_rate=1.0)
  with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.0"):
    jax.eval_shape(tiny.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"images \(B, H, W, C\); got shape \(32, 32, 3\)"):
    jax.eval_shape(M.MobileNetV3Backbone(size="small_100").init, jax.random.key(0), jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match=r"num_classes=0; expected an int >= 1"):
    jax.eval_shape(M.MobileNetV3(num_classes=0).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert "mobilenetv3" in PRETRAINED.names() and "mobilenetv3" in BACKBONES.names()


# ----------------------------------------------------------------------------- timm parity


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "mobilenetv3_large_100"])
def test_eval_features_and_logits_match_timm(name):
  tm = calibrated(name)
  model = M.VARIANTS[name]()  # depthwise_impl 'auto': the 'shift' kernels on CPU
  variables = imported(model, tm)
  x = images()
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
  with torch.no_grad():
    t_feats = tm.forward_head(tm.forward_features(nchw(x)), pre_logits=True).numpy()
    t_logits = tm(nchw(x)).numpy()
  assert feats.shape == (2, 1280 if "large" in name else 1024) and logits.shape == (2, 1000)
  assert np.abs(t_feats).max() > 0.5 and np.abs(t_logits).max() > 0.1  # not trivially small
  assert np.abs(t_feats[0] - t_feats[1]).max() > 0.5 and np.abs(t_logits[0] - t_logits[1]).max() > 0.3
  assert max_diff(feats, t_feats) < ATOL
  assert max_diff(logits, t_logits) < ATOL


def test_backbone_through_the_pretrained_importer_matches_timm_pre_logits():
  """BACKBONES 'mobilenetv3' (small_050: width 0.5, fixed stem; 96 px: odd 3x3 maps at the end) with
  PRETRAINED's import of a whole timm state dict (classifier dropped) gives timm's pre-logits, and its tree
  is the classifier's less 'classifier'."""
  tm = calibrated("mobilenetv3_small_050", seed=4, size=96)
  backbone = BACKBONES.build("mobilenetv3", size="small_050")
  shapes = shapes_of(backbone)
  whole = shapes_of(M.VARIANTS["mobilenetv3_small_050"]())
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(
      lambda a: a.shape, {"params": {k: v for k, v in whole["params"].items() if k != "classifier"},
                          "batch_stats": whole["batch_stats"]})
  v = PRETRAINED.get("mobilenetv3")(shapes["params"], tm.state_dict(), batch_stats=shapes["batch_stats"])
  x = images(3, 96, seed=2)
  got = jax.jit(lambda v, x: backbone.apply(v, image=x))({"params": v.params, "batch_stats": v.batch_stats}, x)
  with torch.no_grad():
    want = tm.forward_head(tm.forward_features(nchw(x)), pre_logits=True).numpy()
  assert got["features"].dtype == jnp.float32 and got["features"].shape == (3, 1024)
  assert np.abs(want).max() > 0.5 and np.abs(want[0] - want[1]).max() > 0.5
  assert max_diff(got["features"], want) < ATOL


@pytest.mark.slow  # BN itself is efficientnet.py's, checked in train mode by tests/test_efficientnet.py
def test_train_mode_batchnorm_matches_timm():
  """train=True: BN on batch statistics (as torch's train mode) in small_100 at 64 px; running means of the
  stem BN, an SE block's BN and the cn block's BN updated as torch's (momentum 0.1)."""
  tm = timm_model("mobilenetv3_small_100", seed=3).train()
  model = M.VARIANTS["mobilenetv3_small_100"]()
  variables = imported(model, tm)
  x = images(4, 64, seed=1)
  old_mean = tm.bn1.running_mean.clone().numpy()
  with torch.no_grad():
    t_logits = tm(nchw(x)).numpy()
  logits, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert max_diff(logits, t_logits) < ATOL
  sd, stats = tm.state_dict(), new["batch_stats"]
  for ours, key in [(stats["bn1"], "bn1"), (stats["block_2_1"]["bn2"], "blocks.2.1.bn2"),
                    (stats["block_5_0"]["bn1"], "blocks.5.0.bn1")]:
    np.testing.assert_allclose(ours["mean"], sd[f"{key}.running_mean"].numpy(), atol=1e-5, rtol=1e-5)
  assert not np.allclose(stats["bn1"]["mean"], old_mean)


@pytest.mark.slow
def test_gradients_match_timm():
  """Every parameter gradient of a train-mode loss equals torch's (large_100 at 64 px, batch 4, 7 classes:
  the 'shift' depthwise kernels at 3x3 / 5x5, stride 1 and 2, ReLU and hard-swish blocks, the SE gate)."""
  from fer_jax.models import convert

  tm = timm_model("mobilenetv3_large_100", seed=5, num_classes=7).train()
  model = M.MobileNetV3(size="large_100", num_classes=7)
  variables = imported(model, tm)
  x, y = images(4, 64, seed=2), np.array([0, 3, 6, 2])
  torch.nn.functional.cross_entropy(tm(nchw(x)), torch.from_numpy(y)).backward()
  want, unexpected = convert.map_state_dict({k: p.grad for k, p in tm.named_parameters()}, M.map_timm_key)
  assert not unexpected

  def loss(p):
    logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  grads = jax.jit(jax.grad(loss))(variables["params"])
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want["params"]))
  assert len(flat_want) == len(jax.tree.leaves(grads))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    w = flat_want[path]
    assert max_diff(g, w) < 1e-4 * max(1.0, float(np.abs(w).max())), jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------- bf16, efficientnet's options


def test_bf16_compute_dtype_keeps_float32_params():
  """dtype=bfloat16: float32 parameters, statistics and features, the float32 tree (by eval_shape)."""
  bb = M.MobileNetV3Backbone(size="large_100", dtype=jnp.bfloat16)
  shapes = shapes_of(bb)
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(
      lambda a: a.shape, shapes_of(M.MobileNetV3Backbone(size="large_100")))
  assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(bb.apply, shapes, jnp.zeros((2, 64, 64, 3)))
  assert out["features"].dtype == jnp.float32 and out["features"].shape == (2, 1280)


@pytest.mark.slow  # two more compiles (10 s); the bf16 block path is efficientnet.py's, tested there
def test_bf16_features_track_float32_as_closely_as_torch_bf16():
  """A bf16 small_050 with imported timm weights agrees with float32 about as well as timm under torch's
  CPU bf16 autocast does (relative L2 error of the features; measured: ours 5.6%, torch's 5.3%, random
  weights with calibrated BN)."""
  tm = calibrated("mobilenetv3_small_050", seed=6)
  f32 = M.MobileNetV3Backbone(size="small_050")
  v = PRETRAINED.get("mobilenetv3")(shapes_of(f32)["params"], tm.state_dict())
  variables = {"params": v.params, "batch_stats": v.batch_stats}
  x = images(2, 64, seed=3)
  want = np.asarray(jax.jit(f32.apply)(variables, x)["features"])
  got = jax.jit(f32.clone(dtype=jnp.bfloat16).apply)(variables, x)["features"]
  with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    t_bf16 = tm.forward_head(tm.forward_features(nchw(x)), pre_logits=True).float().numpy()
  with torch.no_grad():
    t_f32 = tm.forward_head(tm.forward_features(nchw(x)), pre_logits=True).numpy()
  assert got.dtype == jnp.float32 and max_diff(want, t_f32) < ATOL
  rel, rel_torch = (np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b) for a, b in ((got, want), (t_bf16, t_f32)))
  assert np.abs(want).max() > 0.5 and 0 < rel < max(2 * rel_torch, 0.01), (rel, rel_torch)


def test_efficientnet_block_activation_and_se_options():
  """efficientnet.EfficientNetBlock's MobileNetV3 options against NumPy: an 'ir' block (1x1 -> BN -> act ->
  3x3 depthwise -> BN -> act -> SE (ReLU, hard sigmoid) -> 1x1 -> BN, + input) in eval mode; SE width 0
  builds no 'se'."""
  spec = ("ir", 4, 8, 4, 3, 1, 8)
  x = np.random.RandomState(0).randn(2, 5, 5, 4).astype(np.float32)
  block = E.EfficientNetBlock(spec, act=jax.nn.hard_swish, se_act=jax.nn.relu, se_gate=jax.nn.hard_sigmoid)
  v = jax.tree.map(lambda a: np.random.RandomState(a.size).rand(*a.shape).astype(np.float32) + 0.5,
                   jax.eval_shape(block.init, jax.random.key(0), x))
  got = np.asarray(block.apply(v, x))
  p, s = v["params"], v["batch_stats"]

  def bn(y, name):
    return (y - s[name]["mean"]) / np.sqrt(s[name]["var"] + 1e-5) * p[name]["scale"] + p[name]["bias"]

  def hswish(y):
    return y * np.clip(y + 3, 0, 6) / 6

  y = hswish(bn(x @ p["conv_pw"]["kernel"], "bn1"))
  yp, k = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0))), p["conv_dw"]["kernel"][:, :, 0]
  y = hswish(bn(sum(yp[:, i:i + 5, j:j + 5] * k[i, j] for i in range(3) for j in range(3)), "bn2"))
  se = np.maximum(y.mean((1, 2)) @ p["se"]["conv_reduce"]["kernel"] + p["se"]["conv_reduce"]["bias"], 0)
  se = se @ p["se"]["conv_expand"]["kernel"] + p["se"]["conv_expand"]["bias"]
  y = y * (np.clip(se + 3, 0, 6) / 6)[:, None, None]
  want = bn(y @ p["conv_pwl"]["kernel"], "bn3") + x
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  no_se = jax.eval_shape(E.EfficientNetBlock(spec[:6] + (0,)).init, jax.random.key(0), x)
  assert "se" not in no_se["params"] and "conv_dw" in no_se["params"]


# ----------------------------------------------------------------------------- importer


def test_importer_names_missing_unexpected_and_misshaped_keys():
  tm = timm.create_model("mobilenetv3_small_100", pretrained=False)
  shapes = shapes_of(M.MobileNetV3Backbone(size="small_100"))
  sd = {f"module.{k}": v for k, v in tm.state_dict().items()}  # DataParallel prefix, stripped
  importer = PRETRAINED.get("mobilenetv3")
  v = importer(shapes["params"], sd, batch_stats=shapes["batch_stats"])  # classifier dropped silently
  np.testing.assert_array_equal(v.params["block_2_0"]["conv_dw"]["kernel"][:, :, 0, 5],
                                sd["module.blocks.2.0.conv_dw.weight"][5, 0].numpy())
  np.testing.assert_array_equal(v.params["block_5_0"]["conv"]["kernel"],
                                sd["module.blocks.5.0.conv.weight"][:, :, 0, 0].numpy().T)
  np.testing.assert_array_equal(v.params["conv_head"]["bias"], sd["module.conv_head.bias"].numpy())
  np.testing.assert_array_equal(v.batch_stats["block_5_0"]["bn1"]["var"],
                                sd["module.blocks.5.0.bn1.running_var"].numpy())
  # Our own {'params', 'batch_stats'} (a shipped fer_jax backbone, config.init_weights='pretrained:NAME').
  again = importer(shapes["params"], {"params": v.params, "batch_stats": v.batch_stats},
                   batch_stats=shapes["batch_stats"])
  assert again.params is v.params and again.batch_stats is v.batch_stats
  with pytest.raises(ValueError, match="mobilenetv3 importer: the pretrained weights have no batch_stats"):
    importer(shapes["params"], {"params": v.params}, batch_stats=shapes["batch_stats"])
  bad = dict(sd)
  del bad["module.blocks.2.1.se.conv_reduce.bias"]
  del bad["module.blocks.5.0.bn1.running_mean"]
  bad["module.blocks.1.0.se.conv_reduce.weight"] = bad["module.blocks.2.1.se.conv_reduce.weight"]
  bad["module.blocks.0.0.conv_xx.weight"] = bad["module.blocks.2.0.conv_dw.weight"]
  bad["module.bn2.weight"] = torch.ones(1024)  # EfficientNet's head BN: MobileNetV3 has none
  bad["module.conv_head.weight"] = torch.zeros(1024, 300, 1, 1)
  with pytest.raises(ValueError) as e:
    importer(shapes["params"], bad, batch_stats=shapes["batch_stats"])
  msg = str(e.value)
  assert "The timm MobileNetV3 weights do not match the model" in msg
  assert "params/block_2_1/se/conv_reduce/bias" in msg and "batch_stats/block_5_0/bn1/mean" in msg
  assert "unexpected torch keys: ['module.blocks.0.0.conv_xx.weight', 'module.bn2.weight']" in msg
  assert "in the checkpoint but not in the model (our names): ['params/block_1_0/se/conv_reduce/kernel']" in msg
  assert "params/conv_head/kernel: checkpoint (300, 1024) vs model (576, 1024)" in msg
  with pytest.raises(ValueError, match=r"conv_stem.weight: expected a 4-D conv weight"):
    importer(shapes["params"], dict(sd, **{"module.conv_stem.weight": torch.zeros(16, 27)}))
  with pytest.raises(ValueError, match=r"mobilenetv3 importer: expected a state dict \(name -> tensor\), got list"):
    importer(shapes["params"], [1, 2])
  # A Large checkpoint into a Small backbone: every differing tensor is named.
  with pytest.raises(ValueError, match=r"params/block_6_0/conv/kernel"):
    importer(shapes["params"], timm.create_model("mobilenetv3_large_100").state_dict())
  # A whole classifier takes timm's classifier too; a 7-class one reports its shape.
  cls_shapes = shapes_of(M.MobileNetV3(size="small_100", num_classes=7))
  with pytest.raises(ValueError, match=r"params/classifier/kernel: checkpoint \(1024, 1000\) vs model "
                                       r"\(1024, 7\)"):
    M.from_timm_state_dict(sd, cls_shapes["params"], cls_shapes["batch_stats"])
