"""fer_jax.models.iresnet against tests/iresnet_reference.py (a PyTorch iResNet written from insightface's
ArcFace architecture, with its state-dict keys), through the 'iresnet' PRETRAINED importer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.models import convert, iresnet
from fer_jax.registry import BACKBONES, PRETRAINED
from fer_jax.testing import RTOL64, assert_within, import_timm, to_float64

torch, _ = import_timm()
import iresnet_reference as ref  # noqa: E402  (tests/iresnet_reference.py; needs torch)

# A tiny iResNet: two layers, an odd final map (18 -> 9 -> 5), a 12-d embedding.
TINY = dict(depths=(2, 1), widths=(8, 16), input_size=18, embedding_size=12)


def torch_model(depths, widths=iresnet.WIDTHS, input_size=112, embedding_size=512, seed=0, calibration=8):
  torch.manual_seed(seed)
  m = ref.IResNetReference(depths, widths, input_size, embedding_size)
  calib = torch.from_numpy(images(calibration, input_size, seed=seed + 100).transpose(0, 3, 1, 2).copy())
  return ref.randomize_(m, calib, seed)


def tiny_torch(seed=0, **kw):
  t = dict(TINY, **kw)
  return torch_model(t["depths"], t["widths"], t["input_size"], t["embedding_size"], seed=seed)


def images(n, side, seed=0):
  """Noise faces in [-1, 1] whose contrast and brightness vary per image, so that the embeddings of a
  batch differ as much as real faces' do (BN statistics calibrated on them keep eval outputs O(1))."""
  rng = np.random.default_rng(seed)
  contrast, brightness = rng.uniform(0.2, 0.6, (n, 1, 1, 1)), rng.uniform(-0.4, 0.4, (n, 1, 1, 1))
  return (brightness + contrast * rng.uniform(-1, 1, (n, side, side, 3))).astype(np.float32)


def torch_embed(tmodel, x, train=False):
  with torch.no_grad():
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return tmodel.train(train)(tx.to(next(tmodel.parameters()).dtype)).numpy()


def imported(model, state_dict, x):
  """Our variables from a torch state dict via the registered importer (shapes from jax.eval_shape)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  got = PRETRAINED.get("iresnet")(shapes["params"], state_dict, batch_stats=shapes["batch_stats"])
  assert isinstance(got, convert.BackboneVariables)
  return {"params": got.params, "batch_stats": got.batch_stats}


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("size", ["r50", pytest.param("r100", marks=pytest.mark.slow)])
def test_named_size_matches_torch_float32(size):
  tmodel = torch_model(ref.DEPTHS[size])
  x = images(2, 112)  # batch 2: the eval embedding needs no batch, but two faces check they differ
  want = torch_embed(tmodel, x)
  model = BACKBONES.build("iresnet", size=size)
  variables = imported(model, tmodel.state_dict(), jnp.asarray(x))
  # ours has no 'features' scale (fixed to 1 in insightface): one 512-vector fewer.
  assert count(variables["params"]) + 512 == sum(p.numel() for p in tmodel.parameters())
  got = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x)["features"])
  assert got.shape == (2, 512) and got.dtype == np.float32
  err = np.abs(got - want).max()
  assert err < 1e-4, f"{size}: max |ours - torch| = {err:.3g}"
  assert np.abs(want).max() > 0.5 and np.abs(want[0] - want[1]).max() > 0.1  # a non-trivial embedding


def test_tiny_matches_torch_train_and_eval_float64():
  """Eval and train mode (batch statistics, running-mean updates) against torch in float64."""
  tmodel = tiny_torch()
  x = images(4, 18, seed=1)
  model = iresnet.IResNet(**TINY)
  variables = imported(model, tmodel.state_dict(), jnp.asarray(x))
  tmodel = tmodel.double()  # the same (float32-representable) weights, float64 compute
  want_eval = torch_embed(tmodel, x.astype(np.float64))
  want_train = torch_embed(tmodel, x.astype(np.float64), train=True)  # updates the running stats
  with jax.enable_x64(True):
    v64, x64 = to_float64(variables), x.astype(np.float64)
    got_eval = model.apply(v64, x64, train=False, mutable=False)["features"]
    got_train, updates = model.apply(v64, x64, train=True, mutable=["batch_stats"])
  # Features come back as float32: one float32 rounding of the float64 value.
  tol = lambda w: RTOL64 * np.abs(w).max() + 2.0 ** -24 * np.abs(w)  # noqa: E731
  assert_within(got_eval, want_eval, tol(want_eval), "eval features")
  assert_within(got_train["features"], want_train, tol(want_train), "train features")
  assert np.abs(want_train - want_eval).max() > 0.1
  # Running means after the step (momentum 0.9 = torch's 0.1). Running variances differ by design (flax
  # averages the biased batch variance, torch the unbiased one).
  n = 0
  for name, m in tmodel.named_modules():
    if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
      _, path, leaf, _ = iresnet.map_key(f"{name}.running_mean")
      got = functools.reduce(lambda t, k: t[k], path + (leaf,), updates["batch_stats"])
      want = m.running_mean.numpy()
      assert_within(got, want, RTOL64 * (1 + np.abs(want).max()), f"{name} running mean")
      n += 1
  assert n == sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in tmodel.modules())


def test_torch_saved_backbone_pth_through_the_file_loader(tmp_path):
  """A DataParallel-style ('module.' prefix) state dict with num_batches_tracked, torch.save'd, read by
  convert.load_torch_weights (torch.load(weights_only=True))."""
  tmodel = tiny_torch(seed=2)
  path = tmp_path / "backbone.pth"
  torch.save({f"module.{k}": v for k, v in tmodel.state_dict().items()}, path)
  weights = convert.load_torch_weights(path)
  assert any(k.endswith("num_batches_tracked") for k in weights) and "module.features.weight" in weights
  x = images(2, 18, seed=3)
  model = iresnet.IResNet(**TINY)
  got = model.apply(imported(model, weights, jnp.asarray(x)), x, train=False)["features"]
  want = torch_embed(tmodel, x)
  assert np.abs(np.asarray(got) - want).max() < 1e-5 * max(1.0, np.abs(want).max())


def test_trainer_init_weights_loads_backbone_and_batch_stats(tmp_path):
  from fer_jax.train import optim, sharding, trainer
  tmodel = tiny_torch(seed=4)
  path = tmp_path / "backbone.pth"
  torch.save(tmodel.state_dict(), path)
  c = config_utils.base_config()
  c.dataset.num_classes = 3
  c.input.update(resize=18, crop=18, channels=3)
  c.model.backbone = dict(name="iresnet", **TINY)
  c.model.head = dict(name="linear", num_outputs=3)
  c.init_weights = str(path)
  model = trainer.create_model(c)
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10))
  fresh, shardings = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh))
  state = trainer.load_init_weights(fresh, c, shardings)
  x = images(2, 18, seed=5)
  got = model.apply({"params": state.params, **state.model_state}, image=x, train=False)["features"]
  want = torch_embed(tmodel, x)
  assert np.abs(np.asarray(got) - want).max() < 1e-5 * max(1.0, np.abs(want).max())
  np.testing.assert_array_equal(state.model_state["batch_stats"]["backbone"]["features"]["var"],
                                tmodel.features.running_var.numpy())
  np.testing.assert_array_equal(state.params["head"]["dense"]["kernel"], fresh.params["head"]["dense"]["kernel"])


def test_sizes_resolve_and_count_in_closed_form():
  def closed_form(depths, widths=iresnet.WIDTHS, side=7, emb=512, cin=3):
    n = 9 * cin * widths[0] + 3 * widths[0]  # stem conv, BN, PReLU
    c = widths[0]
    for w, d in zip(widths, depths):
      for i in range(d):
        n += 9 * c * w + 9 * w * w + 2 * c + 5 * w  # convs, bn1 (c), bn2 + bn3 + prelu (w)
        n += (c * w + 2 * w) if i == 0 else 0  # downsample conv + BN
        c = w
    return n + 2 * c + c * side * side * emb + emb + emb  # bn2, fc, features bias (no scale)

  for size, depths in iresnet.SIZES.items():
    model = iresnet.IResNet(size=size)
    assert model.resolved() == iresnet.IResNet(depths=depths).resolved() == (depths, iresnet.WIDTHS, 112, 512)
    v = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
    assert count(v["params"]) == closed_form(depths), size
    assert "scale" not in v["params"]["features"] and set(v["batch_stats"]["features"]) == {"mean", "var"}
  # insightface's published sizes: r50 43.6 M, r100 65.2 M parameters (with the fixed features scale).
  assert round((closed_form(iresnet.SIZES["r50"]) + 512) / 1e6, 1) == 43.6
  assert round((closed_form(iresnet.SIZES["r100"]) + 512) / 1e6, 1) == 65.2


def test_bf16_compute_and_dropout():
  tmodel = tiny_torch(seed=6)
  x = images(4, 18, seed=7)
  model = iresnet.IResNet(**TINY)
  variables = imported(model, tmodel.state_dict(), jnp.asarray(x))
  drop = model.clone(dropout_rate=0.5)

  @jax.jit
  def run(v, x):  # one compile for all variants
    train = lambda seed: drop.apply(v, x, train=True, mutable=["batch_stats"],  # noqa: E731
                                    rngs={"dropout": jax.random.key(seed)})[0]["features"]
    return (model.apply(v, x)["features"], model.clone(dtype=jnp.bfloat16).apply(v, x)["features"],
            drop.apply(v, x)["features"], train(0), train(1), train(0))

  want, low, drop_eval, drop0, drop1, drop0_again = run(variables, x)
  assert low.dtype == jnp.float32
  assert np.abs(np.asarray(low) - np.asarray(want)).max() < 0.05 * np.abs(want).max()
  np.testing.assert_array_equal(drop_eval, want)  # eval: no dropout
  assert np.abs(np.asarray(drop0) - np.asarray(drop1)).max() > 1e-2
  np.testing.assert_array_equal(drop0, drop0_again)


def test_importer_errors_name_the_keys_and_sizes():
  x = jnp.zeros((2, 18, 18, 3))
  model = iresnet.IResNet(**TINY)
  good = {k: v for k, v in tiny_torch(seed=8).state_dict().items()}

  def load(sd, m=model, xx=x):
    return imported(m, sd, xx)

  sd = dict(good)
  del sd["layer1.1.bn2.running_var"]
  sd["head.weight"] = torch.zeros(3)
  with pytest.raises(ValueError) as e:
    load(sd)
  msg = str(e.value)
  assert "the checkpoint is custom (depths (2, 1), widths (8, 16), fc (12, 400)" in msg
  assert "missing (our names): ['batch_stats/layer1_1/bn2/var']" in msg
  assert "unexpected torch keys: ['head.weight']" in msg
  with pytest.raises(ValueError, match=r"wrong shape \(our layout\): .*'params/fc/kernel: checkpoint \(400, 12\) "
                                       r"vs model \(400, 16\)'"):
    load(good, iresnet.IResNet(**dict(TINY, embedding_size=16)))
  # An r18 checkpoint for an r50 model: both sizes named, the blocks r18 lacks listed.
  r18 = ref.IResNetReference(ref.DEPTHS["r18"]).state_dict()
  with pytest.raises(ValueError, match=r"(?s)the checkpoint is r18 \(depths \(2, 2, 2, 2\), widths \(64, 128, "
                                       r"256, 512\), fc \(512, 25088\) \(512-d embedding of a 7x7 final map\)\); "
                                       r"the model is r50 .*missing .*'params/layer1_2/bn1/bias'"):
    load(r18, iresnet.IResNet(size="r50"), jnp.zeros((1, 112, 112, 3)))
  with pytest.raises(ValueError, match=r"features.weight holds values other than 1 \(range \[0.5, 1\]\)"):
    load({**good, "features.weight": torch.tensor([0.5] + [1.0] * 11)})
  with pytest.raises(ValueError, match=r"layer1.0.conv1.weight has shape \(8, 72\); expected a 4-D tensor"):
    load({**good, "layer1.0.conv1.weight": good["layer1.0.conv1.weight"].reshape(8, 72)})
  with pytest.raises(ValueError, match=r"module.conv1.weight maps to conv1/kernel, which another key already set"):
    load({**good, "module.conv1.weight": good["conv1.weight"]})
  with pytest.raises(ValueError, match="expected a state dict"):
    PRETRAINED.get("iresnet")({}, [1, 2])
  # fer_jax's own variables are accepted as they are.
  ours = load(good)
  again = load(ours)
  jax.tree.map(np.testing.assert_array_equal, again, ours)


def test_bad_configs_and_inputs_are_named():
  init = lambda m, shape, train=False: jax.eval_shape(  # noqa: E731
      functools.partial(m.init, train=train), jax.random.key(0), jnp.zeros(shape))
  with pytest.raises(ValueError, match=r"expects images \(B, 112, 112, C\) \(its fc is tied to the 7x7 final "
                                       r"map\); got shape \(2, 96, 96, 3\)"):
    init(iresnet.IResNet(size="r50"), (2, 96, 96, 3))
  with pytest.raises(ValueError, match=r"iresnet size='r42'; expected one of \['r18', 'r34', 'r50', 'r100', "
                                       r"'r200'\]"):
    init(iresnet.IResNet(size="r42"), (1, 112, 112, 3))
  with pytest.raises(ValueError, match="fixes depths and widths"):
    init(iresnet.IResNet(size="r50", depths=(1, 1, 1, 1)), (1, 112, 112, 3))
  with pytest.raises(ValueError, match="needs a size"):
    init(iresnet.IResNet(), (1, 112, 112, 3))
  with pytest.raises(ValueError, match=r"iresnet widths=\(8,\); expected a sequence of 2 positive ints"):
    init(iresnet.IResNet(depths=(1, 1), widths=(8,)), (1, 112, 112, 3))
  with pytest.raises(ValueError, match=r"train mode needs a batch of at least 2"):
    init(iresnet.IResNet(**TINY), (1, 18, 18, 3), train=True)
  with pytest.raises(ValueError, match=r"dropout_rate=1.0"):
    init(iresnet.IResNet(**TINY, dropout_rate=1.0), (2, 18, 18, 3))
  assert BACKBONES.get("iresnet") is iresnet.IResNet and PRETRAINED.get("iresnet") is iresnet.load_pretrained
