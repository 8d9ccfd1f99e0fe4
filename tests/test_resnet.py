"""fer_jax.models.resnet against a PyTorch ResNet assembled from timm's ``BasicBlock`` (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.models import resnet
from fer_jax.registry import BACKBONES
from fer_jax.testing import RTOL64, assert_within, import_timm, to_float64

torch, timm = import_timm()
tnn = torch.nn
from timm.models.resnet import BasicBlock as TimmBasicBlock  # noqa: E402


def torch_resnet(stem_widths, stem_strides, widths, depths, in_chans):
  """The reference: conv-BN-ReLU stem, then timm BasicBlocks with conv1x1-BN downsample shortcuts."""
  layers, c = [], in_chans
  for w, s in zip(stem_widths, stem_strides):
    layers += [tnn.Conv2d(c, w, 3, s, 1, bias=False), tnn.BatchNorm2d(w), tnn.ReLU()]
    c = w
  for si, (w, d) in enumerate(zip(widths, depths)):
    for b in range(d):
      stride = 2 if (b == 0 and si > 0) else 1
      down = None
      if stride != 1 or c != w:
        down = tnn.Sequential(tnn.Conv2d(c, w, 1, stride, bias=False), tnn.BatchNorm2d(w))
      layers.append(TimmBasicBlock(c, w, stride=stride, downsample=down))
      c = w
  return tnn.Sequential(*layers)


def _bn_pairs(tmodel):
  return [m for m in tmodel.modules() if isinstance(m, tnn.BatchNorm2d)]


def _conv_pairs(tmodel):
  return [m for m in tmodel.modules() if isinstance(m, tnn.Conv2d)]


def _ours_in_torch_order(params, stem_n, widths, depths):
  """([conv paths], [bn paths]) of our tree, in the order torch's modules() visits its convs / BNs."""
  convs, bns = [], []
  for i in range(stem_n):
    convs.append((f"stem_conv{i}",))
    bns.append((f"stem_bn{i}",))
  for si, d in enumerate(depths):
    for b in range(d):
      blk = f"stage{si}_block{b}"
      convs += [(blk, "conv1"), (blk, "conv2")]
      bns += [(blk, "bn1"), (blk, "bn2")]
      if "downsample_conv" in params[blk]:
        convs.append((blk, "downsample_conv"))
        bns.append((blk, "downsample_bn"))
  return convs, bns


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def copy_to_torch(variables, tmodel, spec):
  stem_w, _, widths, depths = spec
  convs, bns = _ours_in_torch_order(variables["params"], len(stem_w), widths, depths)
  tconvs, tbns = _conv_pairs(tmodel), _bn_pairs(tmodel)
  assert len(convs) == len(tconvs) and len(bns) == len(tbns)
  with torch.no_grad():
    for path, m in zip(convs, tconvs):
      k = np.asarray(_get(variables["params"], path)["kernel"], np.float64)  # HWIO
      assert k.shape == (m.kernel_size[0], m.kernel_size[1], m.in_channels, m.out_channels), path
      m.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
    for path, m in zip(bns, tbns):
      p, s = _get(variables["params"], path), _get(variables["batch_stats"], path)
      m.weight.copy_(torch.from_numpy(np.asarray(p["scale"], np.float64)))
      m.bias.copy_(torch.from_numpy(np.asarray(p["bias"], np.float64)))
      m.running_mean.copy_(torch.from_numpy(np.asarray(s["mean"], np.float64)))
      m.running_var.copy_(torch.from_numpy(np.asarray(s["var"], np.float64)))
  return convs, bns


def random_variables(model, x, seed):
  """Initialised variables with every BN scale / bias / statistic randomised (zero-init would hide bugs)."""
  v = jax.tree.map(np.asarray, model.init(jax.random.key(seed), x, train=False))
  rng = np.random.default_rng(seed)
  def perturb(path, a):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return rng.uniform(0.5, 1.5, a.shape)
    if "bias" in name or "mean" in name:
      return rng.normal(0, 0.2, a.shape)
    if "var" in name:
      return rng.uniform(0.5, 2.0, a.shape)
    return a
  return jax.tree_util.tree_map_with_path(perturb, v)


SPECS = {
    "fer_xs": resnet.SIZES["fer_xs"],
    "custom_two_stage_depth2": ((8,), (2,), (8, 12), (2, 1)),  # identity shortcuts and a stride-2 stem
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_matches_torch_basic_block_resnet_eval_and_train(name):
  spec = SPECS[name]
  model = (resnet.ResNetBackbone(size=name) if name in resnet.SIZES else
           resnet.ResNetBackbone(stem_widths=spec[0], stem_strides=spec[1], widths=spec[2], depths=spec[3]))
  in_chans = 1 if name == "fer_xs" else 3
  x = np.random.default_rng(0).normal(size=(3, 44 if name == "fer_xs" else 17, 44 if name == "fer_xs" else 19,
                                            in_chans))
  variables = random_variables(model, jnp.asarray(x, jnp.float32), seed=1)
  tmodel = torch_resnet(*spec, in_chans).double()
  convs, _ = copy_to_torch(variables, tmodel, spec)
  n_params = sum(np.size(a) for a in jax.tree.leaves(variables["params"]))
  assert n_params == sum(p.numel() for p in tmodel.parameters())
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with jax.enable_x64(True):
    v64 = to_float64(variables)
    got_eval = model.apply(v64, x, train=False)["features"]
    got_train, updates = model.apply(v64, x, train=True, mutable=["batch_stats"])
  with torch.no_grad():
    want_eval = tmodel.eval()(tx).mean((2, 3)).numpy()
    want_train = tmodel.train()(tx).mean((2, 3)).numpy()  # batch statistics; updates running stats
  # Features are float32 at the output of the backbone: one float32 rounding of a float64 value.
  tol = lambda w: RTOL64 * np.abs(w).max() + 2.0 ** -24 * np.abs(w)  # noqa: E731
  assert_within(got_eval, want_eval, tol(want_eval), "eval features")
  assert_within(got_train["features"], want_train, tol(want_train), "train features")
  # Running means after one training step (flax momentum 0.9 = torch's 0.1; the variances differ by
  # design: torch keeps the unbiased batch variance, flax the biased one, see the closed-form test below).
  _, bns = _ours_in_torch_order(variables["params"], len(spec[0]), spec[2], spec[3])
  assert len(bns) == len(_bn_pairs(tmodel))
  for path, m in zip(bns, _bn_pairs(tmodel)):
    want = m.running_mean.numpy()
    assert_within(_get(updates["batch_stats"], path)["mean"], want, RTOL64 * (1 + np.abs(want).max()),
                  f"{path} running mean")


def test_running_variance_update_matches_closed_form():
  """flax's BatchNorm running var (momentum 0.9) = 0.9 var0 + 0.1 * biased batch var (NumPy)."""
  model = resnet.ResNetBackbone(stem_widths=(4,), stem_strides=(1,), widths=(4,), depths=(1,))
  x = np.random.default_rng(2).normal(size=(2, 6, 6, 1)).astype(np.float32)
  v = model.init(jax.random.key(0), x, train=False)
  _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
  y = jax.lax.conv_general_dilated(x, v["params"]["stem_conv0"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = np.asarray(y, np.float64)
  np.testing.assert_allclose(upd["batch_stats"]["stem_bn0"]["mean"], 0.1 * y.mean((0, 1, 2)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["stem_bn0"]["var"], 0.9 + 0.1 * y.var((0, 1, 2)), rtol=1e-5)


def test_zero_init_residual_makes_blocks_identity_at_init():
  block = resnet.BasicBlock(6)
  x = jnp.asarray(np.abs(np.random.default_rng(3).normal(size=(2, 5, 5, 6))), jnp.float32)  # ReLU-range
  v = block.init(jax.random.key(0), x)
  np.testing.assert_array_equal(block.apply(v, x), x)  # relu(x + 0) = x for x >= 0


def test_sizes_param_counts_closed_form():
  def count(stem_w, stem_s, widths, depths, cin=1):
    n, c = 0, cin
    for w in stem_w:
      n += 9 * c * w + 2 * w
      c = w
    for si, (w, d) in enumerate(zip(widths, depths)):
      for b in range(d):
        n += 9 * c * w + 9 * w * w + 4 * w
        if c != w or (b == 0 and si > 0):
          n += c * w + 2 * w
        c = w
    return n
  for size, spec in resnet.SIZES.items():
    v = jax.eval_shape(lambda: resnet.ResNetBackbone(size=size).init(jax.random.key(0), jnp.zeros((1, 48, 48, 1))))
    assert sum(np.size(a) for a in jax.tree.leaves(v["params"])) == count(*spec), size


def test_bad_configs_are_named():
  x = jnp.zeros((1, 16, 16, 1))
  with pytest.raises(ValueError, match=r"resnet size='fer_q'; expected one of"):
    resnet.ResNetBackbone(size="fer_q").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="give either a size or those four fields"):
    resnet.ResNetBackbone(size="fer_s", widths=(8,)).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"resnet depths=\(1,\); expected a sequence of 2 positive ints"):
    resnet.ResNetBackbone(stem_widths=(4,), stem_strides=(1,), widths=(4, 8), depths=(1,)).init(
        jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"expects images \(B, H, W, C\); got shape \(16, 16, 1\)"):
    resnet.ResNetBackbone(size="fer_xs").init(jax.random.key(0), x[0])
  assert BACKBONES.get("resnet") is resnet.ResNetBackbone
