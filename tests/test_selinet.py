"""The EMOTIC baseline (fer_jax.models.emotic_baseline) against timm's ResNet-18 and a NumPy fusion, SeLiNet's
modules (fer_jax.models.selinet: gated fusion, aesthetics CNN, the whole backbone) against NumPy, the
parameter table against timm's models, the pretrained importers, and the two-input TFLite export."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.models import composite, emotic_baseline, resnext, selinet  # noqa: F401  (registers the baseline)
from fer_jax.registry import BACKBONES, PRETRAINED
from fer_jax.testing import import_timm, randomise_torch_batchnorm

torch, timm = import_timm()

TINY_RESNET = dict(name="resnext", block="basic", depths=(1, 1), widths=(8, 16), stem_width=8)


def _randomise_bn(model, seed=0):
  return randomise_torch_batchnorm(model, torch, seed)


def _timm_pooled(tmodel, x):
  with torch.no_grad():
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return tmodel.forward_head(tmodel.forward_features(tx), pre_logits=True).numpy()


def _init(model, inputs, seed=0):
  return jax.jit(functools.partial(model.init, train=False))({"params": jax.random.key(seed)}, **inputs)


def _random_variables(model, inputs, rng, scale=0.5):
  """Variables of ``model`` drawn with NumPy (no init compilation): N(0, scale^2) parameters, BatchNorm
  statistics away from the identity."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), {"params": jax.random.key(0)}, **inputs)
  params = jax.tree.map(lambda t: (rng.normal(size=t.shape) * scale).astype(np.float32), shapes["params"])
  stats = jax.tree.map(lambda t: np.zeros(t.shape, np.float32), shapes.get("batch_stats", {}))

  def randomise(tree):
    return {k: _randomise_stats(rng, v) if "mean" in v else randomise(v) for k, v in tree.items()}
  return params, randomise(stats)


def _np_bn(x, p, s, eps=1e-5):
  return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


def _randomise_stats(rng, stats):
  return {"mean": 0.3 * rng.normal(size=stats["mean"].shape).astype(np.float32),
          "var": (0.5 + rng.random(stats["var"].shape)).astype(np.float32)}


# ----------------------------------------------------------------------------------------------- baseline


def test_baseline_branches_reproduce_timm_resnet18_and_the_fusion_numpy():
  torch.manual_seed(0)
  tmodel = _randomise_bn(timm.create_model("resnet18", pretrained=False)).eval()
  model = composite.build_model(dict(backbone=dict(name="emotic_baseline", branch="resnet18"),
                                     head=selinet.baseline_heads()))
  rng = np.random.default_rng(0)
  x = {"body": rng.normal(size=(2, 32, 32, 3)).astype(np.float32),
       "context": rng.normal(size=(2, 48, 48, 3)).astype(np.float32)}
  shapes = jax.eval_shape(functools.partial(model.init, train=False), {"params": jax.random.key(0)}, **x)
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  imported = PRETRAINED.get("emotic_baseline")(fresh["params"]["backbone"], tmodel.state_dict(),
                                               batch_stats=fresh["batch_stats"]["backbone"])
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.05, fresh["params"])
  params["backbone"] = dict(imported.params)
  params["backbone"]["fuse_bn"] = {"scale": (0.5 + rng.random(256)).astype(np.float32),
                                   "bias": (0.1 * rng.normal(size=256)).astype(np.float32)}
  stats = {"backbone": dict(imported.batch_stats)}
  stats["backbone"]["fuse_bn"] = _randomise_stats(rng, fresh["batch_stats"]["backbone"]["fuse_bn"])
  out = jax.jit(functools.partial(model.apply, train=False))({"params": params, "batch_stats": stats}, **x)
  want_body, want_ctx = _timm_pooled(tmodel, x["body"]), _timm_pooled(tmodel, x["context"])
  assert np.abs(want_body).max() > 0.5
  np.testing.assert_allclose(out["body_features"], want_body, rtol=0, atol=1e-4)
  np.testing.assert_allclose(out["context_features"], want_ctx, rtol=0, atol=1e-4)
  # Fusion: concat (context first) -> Dense 256 -> BN (running statistics) -> ReLU (-> dropout: off at test).
  p, s = params["backbone"], stats["backbone"]
  h = np.concatenate([want_ctx, want_body], -1) @ p["fuse"]["kernel"] + p["fuse"]["bias"]
  h = np.maximum(_np_bn(h, p["fuse_bn"], s["fuse_bn"]), 0)
  np.testing.assert_allclose(out["features"], h, rtol=1e-4, atol=1e-4)
  heads = params["head"]
  np.testing.assert_allclose(out["multilabel_logits"], h @ heads["categories"]["dense"]["kernel"]
                             + heads["categories"]["dense"]["bias"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["vad"], h @ heads["vad"]["dense"]["kernel"] + heads["vad"]["dense"]["bias"],
                             rtol=1e-4, atol=1e-4)


def test_baseline_bad_branch_is_named():
  x = {"body": jnp.ones((1, 16, 16, 3)), "context": jnp.ones((1, 16, 16, 3))}
  with pytest.raises(ValueError, match=r"branch='resnet19'; expected a ResNet / ResNeXt size"):
    _init(BACKBONES.build("emotic_baseline", branch="resnet19"), x)
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['width'\]"):
    _init(BACKBONES.build("emotic_baseline", branch=dict(block="basic", depths=(1,), width=(8,))), x)


# ----------------------------------------------------------------------------------------------- SeLiNet


def _np_gmu(a, b, p):
  sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
  ha, hb = np.tanh(a @ p["proj_a"]["kernel"]), np.tanh(b @ p["proj_b"]["kernel"])
  z = sig(np.concatenate([a, b], -1) @ p["gate"]["kernel"] + p["gate"]["bias"])
  return z * ha + (1 - z) * hb


def test_gated_fusion_matches_numpy():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(4, 7)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
  m = selinet.GatedFusion(6)
  v = jax.eval_shape(m.init, jax.random.key(0), a, b)
  p = jax.tree.map(lambda t: rng.normal(size=t.shape).astype(np.float32), v["params"])
  # z -> 1 (a large gate bias) passes the first input's projection through; z -> 0 the second's.
  apply = jax.jit(m.apply)
  np.testing.assert_allclose(apply({"params": p}, a, b), _np_gmu(a, b, p), rtol=1e-5, atol=1e-6)
  for bias, want in ((30.0, np.tanh(a @ p["proj_a"]["kernel"])), (-30.0, np.tanh(b @ p["proj_b"]["kernel"]))):
    q = jax.tree.map(np.copy, p)
    q["gate"]["bias"][:] = bias
    q["gate"]["kernel"][:] = 0
    np.testing.assert_allclose(apply({"params": q}, a, b), want, rtol=1e-5, atol=1e-6)


def _np_conv(x, k, stride, pad, depthwise=False):
  """NHWC convolution by explicit taps (k: (kh, kw, cin or 1, cout)), zero padding."""
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = k.shape[:2]
  ho = (x.shape[1] + 2 * pad - kh) // stride + 1
  wo = (x.shape[2] + 2 * pad - kw) // stride + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out = out + (patch * k[i, j, 0] if depthwise else patch @ k[i, j])
  return out


def _np_aesthetics_net(x, p, s):
  relu = lambda z: np.maximum(z, 0)  # noqa: E731
  h = relu(_np_bn(_np_conv(x, p["stem"]["kernel"], 2, 1), p["stem_bn"], s["stem_bn"]))
  i = 0
  while f"block{i}_dw" in p:
    h = relu(_np_bn(_np_conv(h, p[f"block{i}_dw"]["kernel"], 2, 1, depthwise=True), p[f"block{i}_dw_bn"],
                    s[f"block{i}_dw_bn"]))
    h = relu(_np_bn(h @ p[f"block{i}_pw"]["kernel"], p[f"block{i}_pw_bn"], s[f"block{i}_pw_bn"]))
    i += 1
  f = h.mean((1, 2))
  return f, 1 / (1 + np.exp(-(f @ p["head"]["kernel"] + p["head"]["bias"])))


def test_selinet_matches_numpy_branch_by_branch():
  """SeLiNet (tiny ResNet body, 2-block aesthetics CNN) at inference: the body branch is the registered
  backbone with the same parameters, the aesthetics branch and the fusion / hidden layers equal NumPy."""
  spec = dict(name="selinet", body=TINY_RESNET, aesthetics_widths=(4, 8, 12), fusion_width=6, hidden_width=5)
  model = BACKBONES.build(**spec)
  rng = np.random.default_rng(2)
  x = {"body": rng.normal(size=(3, 16, 16, 3)).astype(np.float32),
       "context": rng.normal(size=(3, 20, 20, 3)).astype(np.float32)}
  params, stats = _random_variables(model, x, rng)
  body_net = BACKBONES.build(**TINY_RESNET)

  @jax.jit
  def run(params, stats, x):
    out = model.apply({"params": params, "batch_stats": stats}, **x, train=False)
    body = body_net.apply({"params": params["body"], "batch_stats": stats["body"]}, x["body"])["features"]
    return out, body

  out, fb = run(params, stats, x)
  fb = np.asarray(fb)
  fa, aes = _np_aesthetics_net(x["context"].astype(np.float64), params["aesthetics"], stats["aesthetics"])
  np.testing.assert_allclose(out["aesthetics"], aes, rtol=1e-4, atol=1e-5)
  h = np.maximum(_np_gmu(fb, fa, params["fusion"]) @ params["hidden"]["kernel"] + params["hidden"]["bias"], 0)
  np.testing.assert_allclose(out["features"], h, rtol=1e-4, atol=1e-5)
  assert set(out) == {"features", "aesthetics"}


def test_selinet_rejects_a_two_input_body():
  x = {"body": jnp.ones((1, 16, 16, 3)), "context": jnp.ones((1, 16, 16, 3))}
  with pytest.raises(ValueError, match="the body branch must be an image backbone"):
    _init(BACKBONES.build("selinet", body=dict(name="emotic_baseline")), x)


def test_parameter_table_counts_match_timm_models():
  table = selinet.parameter_table()

  def timm_count(name, drop=("fc.", "classifier.")):
    m = timm.create_model(name, pretrained=False)
    return sum(p.numel() for k, p in m.named_parameters() if not k.startswith(drop))

  r18 = timm_count("resnet18")
  assert r18 == 11_176_512
  # two branches + Dense 1024 -> 256 + BN (scale, bias) + Dense 256 -> 26 + Dense 256 -> 3
  assert table["baseline"]["params"] == 2 * r18 + 1024 * 256 + 256 + 2 * 256 + 257 * 26 + 257 * 3
  for name, size in (("selinet", "mobilenetv3_large_075"), ("ondevice", "mobilenetv3_small_050")):
    assert table[name]["parts"]["backbone/body"] == timm_count(size), name
    assert table[name]["params"] == sum(table[name]["parts"].values())
  assert table["selinet"]["reduction_vs_baseline"] > 0.85  # the paper's ">85% smaller"
  assert table["ondevice"]["reduction_vs_baseline"] > 0.93  # ">93% smaller"
  text = selinet.format_parameter_table(table)
  assert f"| baseline | {table['baseline']['params']:,} |" in text


def test_selinet_importer_loads_the_body_family():
  """'selinet' imports a body checkpoint with its family's importer; the other branches stay as they were."""
  from timm.models.resnet import BasicBlock, ResNet
  torch.manual_seed(0)
  tmodel = ResNet(BasicBlock, [1, 1], channels=(8, 16), num_classes=5)  # timm's stem: 64 channels
  body = dict(name="resnext", block="basic", depths=(1, 1), widths=(8, 16), stem_width=64)
  model = BACKBONES.build("selinet", body=body, aesthetics_widths=(4, 8), fusion_width=6, hidden_width=5)
  x = {"body": jnp.ones((1, 16, 16, 3)), "context": jnp.ones((1, 16, 16, 3))}
  params, stats = _random_variables(model, x, np.random.default_rng(0))
  v = {"params": params, "batch_stats": stats}
  got = PRETRAINED.get("selinet")(v["params"], tmodel.state_dict(), batch_stats=v["batch_stats"])
  want = resnext.load_pretrained(v["params"]["body"], tmodel.state_dict())
  jax.tree.map(np.testing.assert_array_equal, got.params["body"], want.params)
  jax.tree.map(np.testing.assert_array_equal, got.batch_stats["body"], want.batch_stats)
  for part in ("aesthetics", "fusion", "hidden"):
    jax.tree.map(np.testing.assert_array_equal, got.params[part], v["params"][part])
  assert selinet.body_family(v["params"]["body"]) == "resnext"
  for name, size in (("mobilenetv3", "small_050"), ("efficientnet", "b0")):
    shapes = jax.eval_shape(functools.partial(BACKBONES.build(name, size=size).init, train=False),
                            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert selinet.body_family(shapes["params"]) == name
  with pytest.raises(ValueError, match="cannot tell the body branch's family"):
    selinet.body_family({"stem": {}})


@pytest.mark.slow
def test_selinet_importer_reproduces_timm_mobilenetv3_features():
  torch.manual_seed(0)
  tmodel = _randomise_bn(timm.create_model("mobilenetv3_small_050", pretrained=False)).eval()
  model = BACKBONES.build("selinet", **selinet.ARCHS["ondevice"])
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  v = jax.tree.map(np.asarray, _init(model, {"body": x, "context": x}))
  got = PRETRAINED.get("selinet")(v["params"], tmodel.state_dict(), batch_stats=v["batch_stats"])
  body = BACKBONES.build("mobilenetv3", size="small_050")
  feats = jax.jit(functools.partial(body.apply, train=False))(
      {"params": got.params["body"], "batch_stats": got.batch_stats["body"]}, x)["features"]
  np.testing.assert_allclose(feats, _timm_pooled(tmodel, x), rtol=0, atol=2e-4)


# ----------------------------------------------------------------------------------------------- export


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_two_input_tflite_export_matches_jax(int8):
  """A tiny SeLiNet (MobileNetV3-Small body at 32 px) through fer_jax.export.tflite with named inputs and
  outputs, run with ai_edge_litert directly."""
  from ai_edge_litert.interpreter import Interpreter
  from fer_jax.export import tflite
  body = dict(name="mobilenetv3", size="small_050", depthwise_impl="xla")
  config = dict(backbone=dict(name="selinet", body=body, aesthetics_widths=(8, 16), fusion_width=16,
                              hidden_width=16, conv_impl="xla", depthwise_impl="xla"), head=selinet.heads())
  model = composite.build_model(config)
  rng = np.random.default_rng(4)
  x = {"body": rng.normal(size=(60, 32, 32, 3)).astype(np.float32),
       "context": rng.normal(size=(60, 40, 40, 3)).astype(np.float32)}
  v = _init(model, {k: a[:1] for k, a in x.items()})

  def fn(body, context):
    out = model.apply(v, body=body, context=context, train=False)
    return {"categories": out["multilabel_logits"], "sentiment": jax.nn.softmax(out["sentiment_logits"])}

  want = jax.jit(fn)(**x)
  shapes = {"body": (1, 32, 32, 3), "context": (1, 40, 40, 3)}
  with pytest.raises(ValueError, match="named inputs need one fixed batch size"):
    tflite.convert(fn, {"body": (None, 32, 32, 3), "context": (None, 40, 40, 3)})
  if int8:
    with pytest.raises(ValueError, match=r"calibration data as a mapping with those names; got ndarray"):
      tflite.convert(fn, shapes, int8=True, calibration=x["body"][:8])
  data = tflite.convert(fn, shapes, int8=int8,
                        calibration={k: a[:40] for k, a in x.items()} if int8 else None)
  got = tflite.Runner(data)(x)
  assert set(got) == {"categories", "sentiment"}
  # Independently: ai_edge_litert's signature runner on one example.
  runner = Interpreter(model_content=data).get_signature_runner()
  one = runner(body=x["body"][:1], context=x["context"][:1])
  np.testing.assert_allclose(one["categories"], got["categories"][:1], rtol=1e-6)
  if not int8:
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-4, err_msg=k)
    return
  ops = tflite.op_names(data)
  assert ops.count("CONV_2D") >= 2 and "DEQUANTIZE" in ops
  held_out = slice(40, 60)
  scale = np.abs(np.asarray(want["categories"])).max()
  assert np.abs(got["categories"][held_out] - np.asarray(want["categories"])[held_out]).max() < 0.2 * scale
