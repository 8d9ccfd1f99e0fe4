"""The AU module (fer_jax.models.au_autoencoder): decoder blocks against torch with copied weights, the
``reconstruction`` loss term against NumPy (directly and through the action-unit task, whose batch holds the
preprocessed image), the encoder against the 'resnext' backbone, the importer, the ``au_mlp`` head against
NumPy, the experiment config's stages, and a short training run on synthetic faces."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax import config_utils
from fer_jax.data import synthetic
from fer_jax.models import au_autoencoder as aua
from fer_jax.models import resnext
from fer_jax.registry import BACKBONES, HEADS, LOSSES, PRETRAINED
from fer_jax.testing import import_timm
from fer_jax.train import trainer

torch, timm = import_timm()
F = torch.nn.functional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "au_autoencoder_synthetic.py")
TINY = dict(block="basic", depths=(1, 1), widths=(8, 16), stem_width=8)  # stride 8: 32 px -> 4x4


def _random_tree(shapes, seed):
  """Random NumPy values for an eval_shape tree: BN scales 1 + 0.2 N, variances in [0.5, 1.5), kernels
  N(0, 1 / fan_in), the rest 0.2 N (away from the init values, which would hide a dropped parameter)."""
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name, shape = str(getattr(path[-1], "key", path[-1])), tuple(leaf.shape)
    if name == "scale":
      return (1 + 0.2 * rng.randn(*shape)).astype(np.float32)
    if name == "var":
      return (0.5 + rng.rand(*shape)).astype(np.float32)
    if len(shape) >= 2:
      return (rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    return (0.2 * rng.randn(*shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _init_random(module, seed, *args, **kwargs):
  shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
  return _random_tree(shapes, seed)


# ----------------------------------------------------------------------------- decoder vs torch


def _t(a):
  return torch.from_numpy(np.asarray(a, np.float64))


def _torch_conv(x, kernel, bias=None):
  k = _t(kernel).permute(3, 2, 0, 1)  # (kh, kw, cin, cout) -> (cout, cin, kh, kw)
  return F.conv2d(x, k, None if bias is None else _t(bias), padding=kernel.shape[0] // 2)


def _torch_bn(x, p, s, train):
  """torch BatchNorm2d (eps 1e-5, momentum 0.1) on copies of our statistics; returns (y, new mean)."""
  mean, var = _t(s["mean"]).clone(), _t(s["var"]).clone()
  y = F.batch_norm(x, mean, var, _t(p["scale"]), _t(p["bias"]), training=train, momentum=0.1, eps=1e-5)
  return y, mean.numpy()


def _torch_decoder(x, params, stats, size, train):
  """The decoder written with torch ops (NCHW, float64): reduce, blocks, F.interpolate, out."""
  h = _t(x).permute(0, 3, 1, 2)
  means = {}
  h, means["reduce_bn"] = _torch_bn(_torch_conv(h, params["reduce"]["kernel"]), params["reduce_bn"],
                                    stats["reduce_bn"], train)
  h = F.relu(h)
  i = 0
  while f"block{i}" in params:
    h = torch.nn.Upsample(scale_factor=2, mode="nearest")(h)
    b = f"block{i}"
    h, means[b] = _torch_bn(_torch_conv(h, params[b]["conv"]["kernel"]), params[b]["bn"], stats[b]["bn"], train)
    h = F.relu(h)
    i += 1
  if tuple(h.shape[2:]) != tuple(size):
    h = F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=False)
  h = _torch_conv(h, params["out"]["kernel"], params["out_bias"])
  return h.permute(0, 2, 3, 1).numpy(), means


@pytest.mark.parametrize("size", [(8, 8), (6, 6), (11, 9)], ids=["exact", "down", "up"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_decoder_matches_torch(size, train):
  """2x2 map -> reduce -> two 2x blocks (8x8) -> bilinear resize to ``size`` (none / down / up) -> out conv."""
  dec = aua.Decoder(widths=(6, 4), out_channels=3)
  x = np.random.RandomState(1).randn(3, 2, 2, 10).astype(np.float32)
  v = _init_random(dec, 2, jnp.asarray(x), size=size, train=False)
  if train:
    y, new = jax.jit(functools.partial(dec.apply, size=size, train=True, mutable=["batch_stats"]))(v, x)
  else:
    y = jax.jit(functools.partial(dec.apply, size=size))(v, x)
  want, means = _torch_decoder(x, v["params"], v["batch_stats"], size, train)
  assert y.shape == (3, *size, 3)
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  if train:  # running means: 0.9 old + 0.1 batch mean, as torch's momentum 0.1
    for name, m in means.items():
      got = new["batch_stats"][name]["mean"] if name == "reduce_bn" else new["batch_stats"][name]["bn"]["mean"]
      np.testing.assert_allclose(got, m, rtol=1e-4, atol=1e-5, err_msg=name)


def test_upsample_and_resize_match_torch():
  x = np.random.RandomState(0).randn(2, 3, 5, 4).astype(np.float32)
  tx = _t(x).permute(0, 3, 1, 2)
  np.testing.assert_array_equal(aua.upsample_nearest(x),
                                F.interpolate(tx, scale_factor=2, mode="nearest").permute(0, 2, 3, 1).numpy())
  for size in ((7, 11), (2, 3)):
    want = F.interpolate(tx, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(aua.resize_bilinear(jnp.asarray(x), size), want, rtol=1e-5, atol=1e-6)


def test_decoder_and_backbone_option_errors():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"decoder_widths=\(\); expected a non-empty sequence"):
    aua.AUAutoencoder(**TINY, decoder_widths=()).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"code_dim=-3; expected an int >= 0"):
    aua.AUAutoencoder(**TINY, code_dim=-3).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"code='mean'; expected one of \('flatten', 'pool'\)"):
    aua.AUAutoencoder(**TINY, code="mean").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"resnext size='resnet7'; expected one of"):
    aua.AUAutoencoder(size="resnet7").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"expects images \(B, H, W, C\); got shape \(32, 32, 3\)"):
    aua.AUAutoencoder(**TINY).init(jax.random.key(0), x[0])


# ----------------------------------------------------------------------------- the loss term


def test_reconstruction_term_matches_numpy_and_names_bad_inputs():
  r = np.random.RandomState(0)
  rec, img = r.randn(4, 6, 5, 3).astype(np.float32), r.randn(4, 6, 5, 3).astype(np.float32)
  term = LOSSES.get("reconstruction")
  want = np.mean((rec.astype(np.float64) - img) ** 2)
  np.testing.assert_allclose(term({"reconstruction": rec}, {"image": img}), want, rtol=1e-6)
  np.testing.assert_allclose(term({"r2": rec}, {"x": img}, prediction="r2", target="x"), want, rtol=1e-6)
  with pytest.raises(KeyError, match=r"needs the model output 'reconstruction'.*\['logits'\]"):
    term({"logits": rec}, {"image": img})
  with pytest.raises(KeyError, match=r"needs the batch field 'image'; the batch fields are \['label'\]"):
    term({"reconstruction": rec}, {"label": img})
  with pytest.raises(ValueError, match=r"'reconstruction' has shape \(4, 6, 5, 3\), the batch field 'image' "
                                       r"\(4, 6, 5, 1\)"):
    term({"reconstruction": rec}, {"image": img[..., :1]})


def _config(arg="stage=joint,recon=0.25,res=32"):
  return config_utils.load_config_file(f"{CONFIG}:{arg}")


def test_task_feeds_the_preprocessed_image_to_the_reconstruction_term():
  """Through ActionUnitTask.train_step_outputs: the target is the standardised grey -> RGB input."""
  c = _config()
  task = trainer.get_task(c)
  r = np.random.RandomState(3)
  img = r.randint(0, 256, (2, 32, 32, 1)).astype(np.uint8)
  au = r.uniform(size=(2, synthetic.NUM_AUS)).astype(np.float32)
  rec = r.randn(2, 32, 32, 3).astype(np.float32)
  pred = r.uniform(size=(2, synthetic.NUM_AUS)).astype(np.float32)
  seen = {}

  def apply_fn(batch):
    seen.update(batch)
    return {"reconstruction": jnp.asarray(rec), "au_intensity": jnp.asarray(pred)}

  loss, metrics = task.train_step_outputs(apply_fn, {"image": jnp.asarray(img), "au_intensity": jnp.asarray(au)})
  x = img.astype(np.float64) / 255.0  # tf.image.per_image_standardization, then grey -> 3 channels
  x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
  x = np.repeat(x, 3, axis=-1)
  np.testing.assert_allclose(seen["image"], x, rtol=1e-5, atol=1e-5)
  want_rec, want_au = np.mean((rec - x) ** 2), np.mean((pred - au) ** 2)
  np.testing.assert_allclose(metrics["loss/reconstruction"], want_rec, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/au_mse"], want_au, rtol=1e-5)
  np.testing.assert_allclose(loss, want_au + 0.25 * want_rec, rtol=1e-5)


# ----------------------------------------------------------------------------- encoder = resnext


def test_encoder_is_the_resnext_backbone():
  """Same params -> the code equals the 'resnext' backbone's features (eval and train mode, and the same
  BN statistics), the feature map averages to them, and 'resnext' without the option is unchanged."""
  x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))
  ae = aua.AUAutoencoder(**TINY, code="pool", decoder_widths=(8, 4, 4))
  v = _init_random(ae, 1, x, train=False)
  enc = {k: t["encoder"] for k, t in v.items()}
  plain = resnext.ResNeXtBackbone(**TINY)
  with_map = resnext.ResNeXtBackbone(**TINY, return_feature_map=True)
  out = jax.jit(ae.apply)(v, x)
  ref = jax.jit(plain.apply)(enc, x)
  assert set(ref) == {"features"}
  np.testing.assert_allclose(out["features"], ref["features"], rtol=1e-6, atol=1e-6)
  m = jax.jit(with_map.apply)(enc, x)
  assert m["feature_map"].shape == (3, 4, 4, 16)
  np.testing.assert_allclose(m["feature_map"].mean(axis=(1, 2)), ref["features"], rtol=1e-5, atol=1e-6)
  flat = jax.jit(ae.clone(code="flatten").apply)(v, x)  # the default code: the map, flattened
  np.testing.assert_allclose(flat["features"], m["feature_map"].reshape(3, 256), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(flat["reconstruction"], out["reconstruction"], rtol=1e-6, atol=1e-6)
  (out_t, new_ae), (ref_t, new_ref) = (
      jax.jit(functools.partial(mod.apply, train=True, mutable=["batch_stats"]))(var, x)
      for mod, var in ((ae, v), (plain, enc)))
  np.testing.assert_allclose(out_t["features"], ref_t["features"], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_ae["batch_stats"]["encoder"], new_ref["batch_stats"])


def test_resnet50_encoder_has_the_resnext_tree():
  x = jnp.zeros((1, 64, 64, 3))
  got = jax.eval_shape(functools.partial(aua.AUAutoencoder(size="resnet50", code_dim=32).init, train=False),
                       jax.random.key(0), x)
  want = jax.eval_shape(functools.partial(resnext.ResNeXtBackbone(size="resnet50").init, train=False),
                        jax.random.key(0), x)
  shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
  assert shapes(got["params"]["encoder"]) == shapes(want["params"])
  assert shapes(got["batch_stats"]["encoder"]) == shapes(want["batch_stats"])
  assert got["params"]["code"]["kernel"].shape == (2 * 2 * 2048, 32)  # the flattened 2x2 map
  assert got["params"]["decoder"]["reduce"]["kernel"].shape == (1, 1, 2048, aua.DECODER_WIDTHS[0])
  out = jax.eval_shape(aua.AUAutoencoder(size="resnet50", code_dim=32).apply, got, x)
  assert out["features"].shape == (1, 32) and out["reconstruction"].shape == (1, 64, 64, 3)


def test_registered_names():
  assert BACKBONES.get("au_autoencoder") is aua.AUAutoencoder
  assert HEADS.get("au_mlp") is aua.AUMLPHead
  assert LOSSES.get("reconstruction") is aua.reconstruction_term
  assert PRETRAINED.get("au_autoencoder") is aua.load_pretrained


# ----------------------------------------------------------------------------- importer


def test_importer_takes_timm_resnet18_into_the_encoder_only():
  ae = aua.AUAutoencoder(size="resnet18", decoder_widths=(8, 4, 4, 4, 4))
  v = _init_random(ae, 4, jnp.zeros((1, 32, 32, 3)), train=False)
  torch.manual_seed(0)
  sd = {k: t.numpy() for k, t in timm.create_model("resnet18", pretrained=False).state_dict().items()}
  got = aua.load_pretrained(v["params"], sd, batch_stats=v["batch_stats"])
  np.testing.assert_array_equal(got.params["encoder"]["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got.params["encoder"]["layer4_1"]["bn2"]["scale"], sd["layer4.1.bn2.weight"])
  np.testing.assert_array_equal(got.batch_stats["encoder"]["bn1"]["var"], sd["bn1.running_var"])
  jax.tree.map(np.testing.assert_array_equal, got.params["decoder"], v["params"]["decoder"])
  jax.tree.map(np.testing.assert_array_equal, got.batch_stats["decoder"], v["batch_stats"]["decoder"])
  with pytest.raises(ValueError, match=r"the checkpoint is resnet18 .*; the model is resnet34"):
    aua.load_pretrained(jax.eval_shape(
        functools.partial(aua.AUAutoencoder(size="resnet34", decoder_widths=(4,)).init, train=False),
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"], sd)


def test_importer_round_trips_a_whole_autoencoder_and_names_mismatches():
  x = jnp.zeros((1, 32, 32, 3))
  ae = aua.AUAutoencoder(**TINY, decoder_widths=(8, 4, 4))
  fresh, stage1 = _init_random(ae, 5, x, train=False), _init_random(ae, 6, x, train=False)
  got = aua.load_pretrained(fresh["params"], stage1, batch_stats=fresh["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, got.params, stage1["params"])
  jax.tree.map(np.testing.assert_array_equal, got.batch_stats, stage1["batch_stats"])
  other = _init_random(aua.AUAutoencoder(**TINY, decoder_widths=(8, 4, 2)), 6, x, train=False)
  with pytest.raises(ValueError, match=r"au_autoencoder weights do not match the model:[\s\S]*"
                                       r"decoder/block2/conv/kernel: checkpoint \(3, 3, 4, 2\) vs model"):
    aua.load_pretrained(fresh["params"], other)


# ----------------------------------------------------------------------------- the MLP head


def test_au_mlp_head_matches_numpy():
  head = aua.AUMLPHead(num_outputs=5, hidden=(7, 6))
  f = np.random.RandomState(0).randn(4, 9).astype(np.float32)
  v = _init_random(head, 7, {"features": jnp.asarray(f)})
  out = head.apply(v, {"features": f})
  p = v["params"]
  h = f.astype(np.float64)
  for i in range(2):
    h = np.maximum(h @ p[f"hidden{i}"]["kernel"] + p[f"hidden{i}"]["bias"], 0)
  want = 1 / (1 + np.exp(-(h @ p["out"]["kernel"] + p["out"]["bias"])))
  assert set(out) == {"au_intensity"}
  np.testing.assert_allclose(out["au_intensity"], want, rtol=1e-5)
  with pytest.raises(ValueError, match=r"au_mlp head hidden=\(0,\); expected positive ints"):
    aua.AUMLPHead(num_outputs=5, hidden=(0,)).init(jax.random.key(0), {"features": f})


# ----------------------------------------------------------------------------- the experiment config


def test_config_stages():
  joint = _config("size=resnet18,recon=0.5,code=pool,code_dim=64,res=44")
  assert joint.loss.to_dict() == {"au_mse": {"weight": 1.0}, "reconstruction": {"weight": 0.5}}
  assert joint.model.backbone.to_dict() == {"name": "au_autoencoder", "size": "resnet18", "code": "pool",
                                            "code_dim": 64}
  assert _config("size=small_custom").model.backbone.to_dict() == {
      "name": "au_autoencoder", "block": "basic", "depths": (1, 1, 1, 1), "widths": (32, 64, 128, 256),
      "stem_width": 32, "decoder_widths": (96, 48, 24, 12), "code": "flatten", "code_dim": 0}
  assert (joint.input.resize, joint.input.crop, joint.input.hflip) == (48, 44, False)
  assert joint.task == "action_units" and joint.dataset.name == "synthetic_expressions/grey48"
  ae = _config("stage=ae")
  assert ae.loss.to_dict() == {"reconstruction": {"weight": 1.0}} and ae.init_weights is None
  mlp = _config("stage=mlp,ae=runs/x.json")
  assert mlp.loss.to_dict() == {"au_mse": {"weight": 1.0}} and mlp.init_weights == "runs/x.json"
  assert mlp.model.backbone_frozen and mlp.optimizer.frozen == "^backbone/"
  with pytest.raises(ValueError, match=r"stage=mlp trains the MLP on a frozen stage-1 autoencoder: give ae=PATH"):
    _config("stage=mlp")
  with pytest.raises(ValueError, match=r"ae='a.json' and stage=joint contradict each other"):
    _config("ae=a.json")
  with pytest.raises(ValueError, match=r"Config option stage='both'; expected one of"):
    _config("stage=both")
  with pytest.raises(ValueError, match=r"Config option size='resnet7'; expected one of"):
    _config("size=resnet7")


def test_config_ckplus():
  c = _config("data=ckplus,fold=3,size=resnet18,res=64")
  assert (c.dataset.name, c.dataset.image_key, c.task) == ("ckplus/crop_96_fold3", "frames", "action_units_apex")
  assert c.input.hflip and (c.input.resize, c.input.crop) == (70, 64)
  assert {k: (v.split, v.every_steps) for k, v in c.evals.items()} == {"test": ("test", 500)}
  assert _config("data=ckplus").dataset.name == "ckplus/crop_96"
  with pytest.raises(ValueError, match=r"fold=3 and data=synthetic contradict each other"):
    _config("fold=3")
  with pytest.raises(ValueError, match=r"fold=10; expected 0..9"):
    _config("data=ckplus,fold=10")


def test_apex_task_reads_the_last_frame_only():
  """Frame t of the clip is filled with 10 t: the image after resize + crop is all 10 (T - 1)."""
  from fer_jax.data import pipeline
  c = _config("data=ckplus,res=44")
  task = trainer.get_task(c)
  assert task.name == "action_units_apex" and isinstance(task.fields()["image"], aua.LastFrameField)
  frames = np.repeat(10 * np.arange(16, dtype=np.uint8)[:, None, None, None], 96, axis=1).repeat(96, axis=2)
  record = {"frames": frames, "action_units": np.linspace(0, 1, 20, dtype=np.float32), "label": 3}
  aug = pipeline.aug_from_config(c.input)
  ev = task.eval_transform(aug).map(record)
  tr = task.train_transform(aug).random_map(record, np.random.default_rng(0))
  for ex in (ev, tr):
    assert ex["image"].shape == (44, 44, 1) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["au_intensity"], record["action_units"])
  assert np.all(ev["image"] == 150)
  assert np.all(tr["image"][12:32, 12:32] == 150)  # away from the corners the training rotation fills
  with pytest.raises(ValueError, match=r"Record field 'frames' has shape \(96, 96, 1\); expected a clip \(T, H, W, C\)"):
    task.eval_transform(aug).map(dict(record, frames=frames[-1]))
  with pytest.raises(KeyError, match=r"Record has no field 'frames'; it has \['action_units', 'image', 'label'\]"):
    task.eval_transform(aug).map({"image": frames[-1], "action_units": record["action_units"], "label": 3})


# ----------------------------------------------------------------------------- a short training run


def test_short_joint_training_reduces_reconstruction_and_au_errors():
  """A tiny encoder on 32-px synthetic faces through the task's loss (au_mse + reconstruction): 40 steps of
  batch 32 cut the held-out reconstruction MSE and AU MSE well below their values at initialisation
  (measured: 1.01 -> 0.48 and 0.209 -> 0.059; predicting the training mean gives 0.060)."""
  c = _config("stage=joint,recon=1.0,res=32")
  c.model.backbone = dict(name="au_autoencoder", **TINY, decoder_widths=(16, 8, 8))
  c.model.head = dict(name="au_mlp", num_outputs=synthetic.NUM_AUS, hidden=(32,))
  task = trainer.get_task(c)
  model = trainer.create_model(c)
  train = synthetic.sample_examples(0, "train", 0, 320, size=32)
  test = synthetic.sample_examples(0, "test", 0, 128, size=32)
  batch = lambda d, sl: {"image": jnp.asarray(d["image"][sl]), "au_intensity": jnp.asarray(d["action_units"][sl])}  # noqa: E731
  inputs = task.model_inputs(task.preprocess(batch(test, slice(0, 2))), model.input_names)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), **inputs)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt, b):
    def loss_fn(p):
      fn, new_state = trainer.make_apply_fn(model, task, p, state, True, jax.random.key(0))
      loss, metrics = task.train_step_outputs(fn, b)
      return loss, new_state()
    (loss, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), new_state, opt

  @jax.jit
  def errors(params, state, b):
    fn, _ = trainer.make_apply_fn(model, task, params, state, False)
    b = task.preprocess(b)
    out = fn(b)
    return (jnp.mean((out["reconstruction"] - b["image"]) ** 2),
            jnp.mean((out["au_intensity"] - b["au_intensity"]) ** 2))

  before = np.array(errors(params, state, batch(test, slice(None))))
  for i in range(40):
    sl = slice(32 * (i % 10), 32 * (i % 10) + 32)
    params, state, opt = step(params, state, opt, batch(train, sl))
  after = np.array(errors(params, state, batch(test, slice(None))))
  mean_mse = np.mean((test["action_units"] - train["action_units"].mean(0)) ** 2)
  assert after[0] < 0.6 * before[0], (before, after)
  assert after[1] < 0.5 * before[1], (before, after)
  assert after[1] < 1.2 * mean_mse, (after, mean_mse)  # near or below predicting the training mean
