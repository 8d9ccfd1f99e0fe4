"""fer_jax.models.efficientnet against timm's ``efficientnet_b0`` / ``efficientnet_b2`` (float32).

The timm models are built with ``pretrained=False`` and randomised BatchNorm affine parameters, running
statistics and conv biases (so that eval-mode BN is not the identity and a mis-mapped statistic shows);
their state dicts go through our importer, so it is tested on the way. Tolerance: features and logits
within 1e-4 (max abs) of timm's in float32 (measured: ~5e-7 at |features| ~ 1-2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.models import efficientnet as E
from fer_jax.registry import BACKBONES, MODELS, PRETRAINED
from fer_jax.testing import import_timm

torch, timm = import_timm()
ATOL = 1e-4


def timm_model(name, seed=0, num_classes=1000):
  """timm's model with random weights and randomised BN parameters / statistics and SE biases."""
  torch.manual_seed(seed)
  m = timm.create_model(name, pretrained=False, num_classes=num_classes)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for mod in m.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
        mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
        mod.running_mean.copy_(0.2 * torch.randn(mod.running_mean.shape, generator=g))
        mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
      elif isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and mod.bias is not None:
        mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
  return m.eval()


def images(n=2, size=64, seed=0):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def shapes_of(model, size=64):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def imported(model, tm):
  """Our variables of ``model`` from timm model ``tm``'s state dict, through the importer."""
  shapes = shapes_of(model)
  v = E.from_timm_state_dict(tm.state_dict(), shapes["params"], shapes["batch_stats"])
  return {"params": v.params, "batch_stats": v.batch_stats}


def max_diff(a, b):
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ----------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("size", ["b0", "b1", "b2", "b3"])
def test_resolved_architecture_is_timms(size):
  """Widths (make_divisible), repeats (ceil), kernels, strides, expansion and SE widths of every block,
  stem and head, read off timm's instantiated model."""
  tm = timm.create_model(f"efficientnet_{size}", pretrained=False)
  want_blocks = []
  for stage in tm.blocks:
    blocks = []
    for b in stage:
      ds = not hasattr(b, "conv_pwl")
      c_in = b.conv_dw.in_channels if ds else b.conv_pw.in_channels
      mid = b.conv_dw.out_channels
      c_out = (b.conv_pw if ds else b.conv_pwl).out_channels
      blocks.append(("ds" if ds else "ir", c_in, mid, c_out, b.conv_dw.kernel_size[0],
                     b.conv_dw.stride[0], b.se.conv_reduce.out_channels))
      assert b.conv_dw.padding == (b.conv_dw.kernel_size[0] // 2,) * 2  # symmetric k // 2
    want_blocks.append(tuple(blocks))
  want = (tm.conv_stem.out_channels, tuple(want_blocks), tm.conv_head.out_channels)
  assert BACKBONES.get("efficientnet")(size=size).resolved() == want
  assert E.build_arch(*E.SIZES[size][:2]) == want


def test_b2_widths_and_depths_by_hand():
  """Tan & Le's B2 (width 1.1, depth 1.2): 16*1.1 -> 16, 112*1.1 = 123.2 -> 120, 192*1.1 -> 208,
  1280*1.1 = 1408; repeats ceil(1.2 r) of (1, 2, 2, 3, 3, 4, 1)."""
  stem, stages, head = E.build_arch(1.1, 1.2)
  assert (stem, head) == (32, 1408)
  assert [len(s) for s in stages] == [2, 3, 3, 4, 4, 5, 2]
  assert [s[-1][3] for s in stages] == [16, 24, 48, 88, 120, 208, 352]
  assert [E.make_divisible(v) for v in (35.2, 17.6, 44.0, 123.2, 211.2, 12.0, 3.0)] == \
         [32, 16, 48, 120, 208, 16, 8]


def test_sizes_and_fields_describe_the_same_network_and_bad_values_are_named():
  by_size = E.EfficientNetBackbone(size="b2").resolved()
  by_fields = E.EfficientNetBackbone(width_multiplier=1.1, depth_multiplier=1.2).resolved()
  assert by_size == by_fields
  with pytest.raises(ValueError, match=r"size='b9'; expected one of \['b0', 'b1'"):
    E.EfficientNetBackbone(size="b9").resolved()
  with pytest.raises(ValueError, match="fixes width_multiplier and depth_multiplier"):
    E.EfficientNetBackbone(size="b0", width_multiplier=1.0).resolved()
  with pytest.raises(ValueError, match=r"width_multiplier=None; expected a positive number"):
    E.EfficientNetBackbone().resolved()
  with pytest.raises(ValueError, match=r"depth_multiplier=-1.0; expected a positive number"):
    E.EfficientNetBackbone(width_multiplier=1.0, depth_multiplier=-1.0).resolved()
  tiny = E.EfficientNetBackbone(width_multiplier=0.25, depth_multiplier=0.1, drop_path_rate=1.0)
  with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.0"):
    tiny.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"images \(B, H, W, C\); got shape \(32, 32, 3\)"):
    E.EfficientNetBackbone(size="b0").init(jax.random.key(0), jnp.zeros((32, 32, 3)))
  assert {"efficientnet_b0", "efficientnet_b2"} <= set(MODELS.names())
  assert "efficientnet" in PRETRAINED.names()


# ----------------------------------------------------------------------------- timm parity


@pytest.mark.parametrize("size", ["b0", "b2"])
def test_eval_features_and_logits_match_timm(size):
  tm = timm_model(f"efficientnet_{size}")
  model = MODELS.get(f"efficientnet_{size}")()  # depthwise_impl 'auto': the 'shift' kernels on CPU
  variables = imported(model, tm)
  x = images()
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
  with torch.no_grad():
    t_feats = tm.forward_head(tm.forward_features(nchw(x)), pre_logits=True).numpy()
    t_logits = tm(nchw(x)).numpy()
  assert feats.shape == (2, 1280 if size == "b0" else 1408) and logits.shape == (2, 1000)
  assert np.abs(t_feats).max() > 0.5 and np.abs(t_logits).max() > 0.1  # not trivially small
  assert max_diff(feats, t_feats) < ATOL
  assert max_diff(logits, t_logits) < ATOL
  # The backbone's features: test_init_weights_from_a_safetensors_file.


def test_train_mode_batchnorm_matches_timm():
  """train=True: BN on batch statistics (as torch's train mode), drop path 0; running means updated as
  torch's (momentum 0.1). Running variances: torch stores the unbiased batch variance (n / (n - 1)),
  flax the biased one -- checked at the stem BN with that factor undone."""
  tm = timm_model("efficientnet_b0", seed=3).train()
  model = E.EfficientNet(size="b0")
  variables = imported(model, tm)
  x = images(4, 64, seed=1)
  old_mean = tm.bn1.running_mean.clone().numpy()
  old_var = tm.bn1.running_var.clone().numpy()
  with torch.no_grad():
    t_logits = tm(nchw(x)).numpy()
  (logits, feats), new = jax.jit(lambda v, x: model.apply(v, x, train=True, return_features=True,
                                                          mutable=["batch_stats"]))(variables, x)
  assert max_diff(logits, t_logits) < ATOL
  sd = tm.state_dict()
  stats = new["batch_stats"]
  for ours, key in [(stats["bn1"], "bn1"), (stats["block_3_1"]["bn2"], "blocks.3.1.bn2"),
                    (stats["bn2"], "bn2")]:
    np.testing.assert_allclose(ours["mean"], sd[f"{key}.running_mean"].numpy(), atol=1e-5, rtol=1e-5)
  n = 4 * 32 * 32  # values per channel at the stem BN (64 px / 2)
  batch_var_unbiased = (sd["bn1.running_var"].numpy() - 0.9 * old_var) / 0.1
  want_var = 0.9 * old_var + 0.1 * batch_var_unbiased * (n - 1) / n
  np.testing.assert_allclose(stats["bn1"]["var"], want_var, rtol=1e-4, atol=1e-5)
  assert not np.allclose(stats["bn1"]["mean"], old_mean)


@pytest.mark.slow
def test_gradients_match_timm():
  """Every parameter gradient of a train-mode loss equals torch's (b0 at 64 px, batch 4; the 'shift'
  depthwise kernels, stride 1 and 2, on CPU). Torch's gradients are mapped by the importer's key map."""
  from fer_jax.models import convert

  tm = timm_model("efficientnet_b0", seed=5, num_classes=7).train()
  model = E.EfficientNet(size="b0", num_classes=7)
  variables = imported(model, tm)
  x, y = images(4, 64, seed=2), np.array([0, 3, 6, 2])
  torch.nn.functional.cross_entropy(tm(nchw(x)), torch.from_numpy(y)).backward()
  want, unexpected = convert.map_state_dict({k: p.grad for k, p in tm.named_parameters()}, E.map_timm_key)
  assert not unexpected

  def loss(p):
    logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  grads = jax.jit(jax.grad(loss))(variables["params"])
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want["params"]))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    w = flat_want[path]
    assert max_diff(g, w) < 1e-4 * max(1.0, float(np.abs(w).max())), jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------- blocks


def test_drop_path_per_sample_in_training_only():
  """An MBConv block with a residual: train output = x + mask / keep * branch per sample, where branch is
  the same block's train-mode residual without drop path; eval ignores the rate."""
  spec = ("ir", 8, 48, 8, 3, 1, 2)
  x = jax.random.normal(jax.random.key(0), (16, 5, 5, 8))
  variables = jax.jit(E.EfficientNetBlock(spec).init)(jax.random.key(1), x)

  def run(rate, train, key=0):
    block = E.EfficientNetBlock(spec, drop_path_rate=rate)
    apply = jax.jit(lambda v, x, k: block.apply(v, x, train=train, mutable=["batch_stats"],
                                                 rngs={"dropout": k})[0])
    return np.asarray(apply(variables, x, jax.random.key(key)))

  branch = run(0.0, True) - np.asarray(x)
  tr = run(0.5, True, key=7)
  kept = [np.allclose(tr[b], x[b] + 2.0 * branch[b], atol=1e-5) for b in range(16)]
  dropped = [np.array_equal(tr[b], np.asarray(x[b])) for b in range(16)]
  assert all(k != d for k, d in zip(kept, dropped)) and 0 < sum(kept) < 16
  assert np.abs(branch).max() > 0.1
  np.testing.assert_array_equal(run(0.5, False, key=7), run(0.0, False))


def test_bf16_compute_dtype_keeps_float32_params():
  """dtype=bfloat16: float32 parameters and statistics, float32 features (shapes by eval_shape); a bf16
  MBConv block with SE, stride-2 depthwise conv and BN agrees with float32 to bf16 precision."""
  bb = E.EfficientNetBackbone(size="b0", dtype=jnp.bfloat16)
  shapes = shapes_of(bb)
  assert {a.dtype for a in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(bb.apply, shapes, jnp.zeros((2, 64, 64, 3)))
  assert out["features"].dtype == jnp.float32 and out["features"].shape == (2, 1280)
  spec = ("ir", 16, 96, 24, 5, 2, 4)
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 16))
  variables = jax.jit(E.EfficientNetBlock(spec).init)(jax.random.key(1), x)
  want = jax.jit(E.EfficientNetBlock(spec).apply)(variables, x)
  got = jax.jit(E.EfficientNetBlock(spec, dtype=jnp.bfloat16).apply)(variables, x)
  assert got.dtype == jnp.bfloat16 and got.shape == (2, 5, 5, 24)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.03 * float(jnp.abs(want).max()))


# ----------------------------------------------------------------------------- importer


def test_importer_names_missing_unexpected_and_misshaped_keys():
  tm = timm.create_model("efficientnet_b0", pretrained=False)
  shapes = shapes_of(E.EfficientNetBackbone(size="b0"))
  sd = {f"module.{k}": v for k, v in tm.state_dict().items()}  # DataParallel prefix, stripped
  importer = PRETRAINED.get("efficientnet")
  v = importer(shapes["params"], sd, batch_stats=shapes["batch_stats"])  # classifier dropped silently
  np.testing.assert_array_equal(v.params["block_1_0"]["conv_dw"]["kernel"][:, :, 0, 5],
                                sd["module.blocks.1.0.conv_dw.weight"][5, 0].numpy())
  np.testing.assert_array_equal(v.params["block_1_0"]["conv_pwl"]["kernel"],
                                sd["module.blocks.1.0.conv_pwl.weight"][:, :, 0, 0].numpy().T)
  np.testing.assert_array_equal(v.batch_stats["block_6_0"]["bn3"]["var"],
                                sd["module.blocks.6.0.bn3.running_var"].numpy())
  # Our own {'params', 'batch_stats'} (a shipped fer_jax backbone, config.init_weights='pretrained:NAME').
  again = importer(shapes["params"], {"params": v.params, "batch_stats": v.batch_stats},
                   batch_stats=shapes["batch_stats"])
  assert again.params is v.params and again.batch_stats is v.batch_stats
  with pytest.raises(ValueError, match="the pretrained weights have no batch_stats"):
    importer(shapes["params"], {"params": v.params}, batch_stats=shapes["batch_stats"])
  bad = dict(sd)
  del bad["module.blocks.2.1.se.conv_reduce.bias"]
  del bad["module.bn2.running_mean"]
  bad["module.blocks.7.0.conv_dw.weight"] = bad["module.blocks.6.0.conv_dw.weight"]
  bad["module.blocks.0.0.conv_xx.weight"] = bad["module.blocks.6.0.conv_dw.weight"]
  bad["module.conv_head.weight"] = torch.zeros(1280, 300, 1, 1)
  with pytest.raises(ValueError) as e:
    importer(shapes["params"], bad, batch_stats=shapes["batch_stats"])
  msg = str(e.value)
  assert "The timm EfficientNet weights do not match the model" in msg
  assert "params/block_2_1/se/conv_reduce/bias" in msg and "batch_stats/bn2/mean" in msg
  assert "unexpected torch keys: ['module.blocks.0.0.conv_xx.weight']" in msg
  assert "in the checkpoint but not in the model (our names): ['params/block_7_0/conv_dw/kernel']" in msg
  assert "params/conv_head/kernel: checkpoint (300, 1280) vs model (320, 1280)" in msg
  with pytest.raises(ValueError, match=r"conv_stem.weight: expected a 4-D conv weight"):
    importer(shapes["params"], dict(sd, **{"module.conv_stem.weight": torch.zeros(32, 27)}))
  with pytest.raises(ValueError, match=r"expected a state dict \(name -> tensor\), got list"):
    importer(shapes["params"], [1, 2])
  # A whole classifier (MODELS) takes timm's classifier too; a 7-class one reports its shape.
  cls_shapes = shapes_of(E.EfficientNet(size="b0", num_classes=7))
  with pytest.raises(ValueError, match=r"params/classifier/kernel: checkpoint \(1280, 1000\) vs model "
                                       r"\(1280, 7\)"):
    E.from_timm_state_dict(sd, cls_shapes["params"], cls_shapes["batch_stats"])


@pytest.mark.slow  # the trainer path is covered by test_resnext / test_iresnet; this one compiles B0 (10 s)
def test_init_weights_from_a_safetensors_file(tmp_path):
  """config.init_weights = a timm state dict saved as .safetensors -> the trainer's backbone (params and
  BatchNorm statistics) gives timm's features; the head stays fresh."""
  from safetensors.torch import save_file

  from fer_jax import config_utils
  from fer_jax.train import optim, sharding, trainer

  tm = timm_model("efficientnet_b0", seed=7)
  path = str(tmp_path / "efficientnet_b0.safetensors")
  save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, path)
  c = config_utils.base_config()
  c.dataset.num_classes = 3
  c.input.update(resize=64, crop=64, channels=3)
  c.model.backbone = dict(name="efficientnet", size="b0")
  c.model.head = dict(name="linear", num_outputs=3)
  c.init_weights = path
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  fresh, shardings = trainer.create_train_state(c, model, tx, jax.random.key(0),
                                                sharding.create_mesh(c.mesh))
  state = trainer.load_init_weights(fresh, c, shardings)
  x = images(2, 64, seed=4)
  got = jax.jit(lambda v, x: model.apply(v, image=x, train=False))(
      {"params": state.params, **state.model_state}, x)["features"]
  with torch.no_grad():
    want = tm.forward_head(tm.forward_features(nchw(x)), pre_logits=True).numpy()
  assert max_diff(got, want) < ATOL
  np.testing.assert_array_equal(state.model_state["batch_stats"]["backbone"]["bn2"]["var"],
                                tm.bn2.running_var.numpy())
  np.testing.assert_array_equal(state.params["head"]["dense"]["kernel"],
                                fresh.params["head"]["dense"]["kernel"])
