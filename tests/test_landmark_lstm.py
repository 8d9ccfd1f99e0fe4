"""The landmark CNN + LSTM backbone (fer_jax.models.landmark_lstm): float and binarized forward passes
against a NumPy reference (whose LSTM is checked against torch.nn.LSTM with copied weights), packed
XNOR-popcount inference against the float simulation, R-EMO vs T-EMO updates through the trainer's
step, and a short training run on synthetic clips that learns one emotion vs the rest."""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.data import synthetic
from fer_jax.evaluators.binary import binary_scores
from fer_jax.layers import binary_inference as bi
from fer_jax.models import composite
from fer_jax.models import landmark_lstm as ll
from fer_jax.testing import random_variables
from fer_jax.train import optim, sharding, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
BN_EPS = 1e-5
STEPS = 80  # training steps of the (slow) learning test


# ------------------------------------------------------------------------------------ NumPy reference


def _sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def _same(n, k, s):
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2, out


def np_conv(x, w, stride, pad_value):
  """x (B, T, L, C), w (kt, kl, C, F), stride along L, XLA 'SAME' padding with pad_value."""
  kt, kl = w.shape[:2]
  t_lo, t_hi, t_out = _same(x.shape[1], kt, 1)
  l_lo, l_hi, l_out = _same(x.shape[2], kl, stride)
  xp = np.pad(x, ((0, 0), (t_lo, t_hi), (l_lo, l_hi), (0, 0)), constant_values=pad_value)
  out = np.zeros((x.shape[0], t_out, l_out, w.shape[3]))
  for t in range(t_out):
    for j in range(l_out):
      patch = xp[:, t:t + kt, j * stride:j * stride + kl]  # (B, kt, kl, C)
      out[:, t, j] = np.einsum("bijc,ijcf->bf", patch, w)
  return out


def np_bn(x, p, s):
  return (x - s["mean"]) / np.sqrt(s["var"] + BN_EPS) * p["scale"] + p["bias"]


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def np_lstm(x, p):
  """flax OptimizedLSTMCell over (B, T, D): gates i, f, g, o; biases on the recurrent dense layers."""
  b, t, _ = x.shape
  hdim = p["hi"]["kernel"].shape[0]
  h, c = np.zeros((b, hdim)), np.zeros((b, hdim))
  outs = []
  for k in range(t):
    gate = {g: x[:, k] @ p["i" + g]["kernel"] + h @ p["h" + g]["kernel"] + p["h" + g]["bias"] for g in "ifgo"}
    c = _sigmoid(gate["f"]) * c + _sigmoid(gate["i"]) * np.tanh(gate["g"])
    h = _sigmoid(gate["o"]) * np.tanh(c)
    outs.append(h)
  return np.stack(outs, 1)


def np_model(variables, x, cfg, binary, pooling="last"):
  """The whole model (backbone + linear head) at inference, in float64."""
  feats, kernel, strides, _, _ = cfg
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  st = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"])
  pb, sb = p["backbone"], st["backbone"]
  y = np.asarray(x, np.float64)
  for i, s in enumerate(strides):
    if binary:
      w = _sign(pb[f"conv{i}"]["latent_kernel"])
      y = np_conv(y if i == 0 else _sign(y), w, s, 0.0 if i == 0 else 1.0)
    else:
      y = np_conv(y, pb[f"conv{i}"]["kernel"], s, 0.0)
    y = np_bn(y, pb[f"conv{i}_bn"], sb[f"conv{i}_bn"])
    if not binary:
      y = np.maximum(y, 0)
  y = y.reshape(y.shape[0], y.shape[1], -1)
  y = _sign(y) @ _sign(pb["frame_dense"]["latent_kernel"]) if binary else y @ pb["frame_dense"]["kernel"]
  y = np_bn(y, pb["frame_bn"], sb["frame_bn"])
  if not binary:
    y = np.maximum(y, 0)
  h = np_lstm(y, pb["lstm"])
  f = h[:, -1] if pooling == "last" else h.mean(1)
  return f @ p["head"]["dense"]["kernel"] + p["head"]["dense"]["bias"], f


def _model(**backbone):
  return composite.build_model(dict(backbone=dict(name="landmark_cnn_lstm", **backbone),
                                    head=dict(name="linear", num_outputs=1)))


def _apply(model, v, x):
  return jax.jit(lambda v, x: model.apply(v, train=False, landmarks=x))(v, x)


def _variables(model, x, seed=0):
  """Random variables of the model's shapes (no init compile): kernels N(0, 1 / fan_in), random BN
  statistics and affine parameters, random biases, so that every term is exercised."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), train=False, landmarks=x))
  return random_variables(shapes, seed)


CASES = [  # (backbone fields, input shape (B, T, L, C))
    (dict(size="tiny"), (3, 5, 68, 4)),
    (dict(conv_features=(6, 5, 4), conv_kernel=(3, 4), conv_strides=(2, 1, 3), frame_features=7, lstm_hidden=5,
          pooling="mean"), (2, 4, 23, 2)),
]


SLOW = pytest.mark.slow


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("case", [pytest.param(0, marks=SLOW), 1])
def test_model_matches_numpy_reference(case, binary):
  fields, shape = CASES[case]
  model = _model(**fields, binary=binary)
  x = jax.random.normal(jax.random.key(case), shape)
  v = _variables(model, x, case)
  out = _apply(model, v, x)
  cfg = model.backbone.resolved()
  want_logits, want_features = np_model(v, np.asarray(x), cfg, binary, fields.get("pooling", "last"))
  np.testing.assert_allclose(np.asarray(out["features"]), want_features, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.asarray(out["logits"]), want_logits, rtol=2e-4, atol=2e-5)
  assert out["logits"].shape == (shape[0], 1) and out["features"].shape == (shape[0], cfg[4])
  names = set(v["params"]["backbone"])
  assert names == {f"conv{i}" for i in range(len(cfg[0]))} | {f"conv{i}_bn" for i in range(len(cfg[0]))} | {
      "frame_dense", "frame_bn", "lstm"}
  kernel = "latent_kernel" if binary else "kernel"
  assert all(kernel in v["params"]["backbone"][f"conv{i}"] for i in range(len(cfg[0])))


@SLOW
def test_numpy_lstm_matches_torch_lstm():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  d, hdim = 6, 4
  p = {g: {"kernel": rng.normal(0, 0.5, (d, hdim))} for g in ("ii", "if", "ig", "io")}
  p.update({g: {"kernel": rng.normal(0, 0.5, (hdim, hdim)), "bias": rng.normal(0, 0.5, hdim)}
            for g in ("hi", "hf", "hg", "ho")})
  x = rng.normal(size=(3, 7, d))
  lstm = torch.nn.LSTM(d, hdim, batch_first=True).double()
  with torch.no_grad():
    lstm.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([p["i" + g]["kernel"].T for g in "ifgo"])))
    lstm.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([p["h" + g]["kernel"].T for g in "ifgo"])))
    lstm.bias_ih_l0.zero_()
    lstm.bias_hh_l0.copy_(torch.from_numpy(np.concatenate([p["h" + g]["bias"] for g in "ifgo"])))
    want = lstm(torch.from_numpy(x))[0].numpy()
  np.testing.assert_allclose(np_lstm(x, p), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [pytest.param(0, marks=SLOW), 1])
def test_packed_model_equals_float_simulation(case):
  fields, shape = CASES[case]
  model = _model(**fields, binary=True)
  x = jax.random.normal(jax.random.key(10 + case), shape)
  v = _variables(model, x, case)
  packed_model, packed = ll.pack_landmark_model(model, v)
  assert packed_model.backbone.packed and packed_model.backbone.binary
  # Every binary layer holds packed words only; BN, LSTM and head variables are unchanged.
  pb = packed["params"]["backbone"]
  feats = model.backbone.resolved()[0]
  for name in [f"conv{i}" for i in range(len(feats))] + ["frame_dense"]:
    assert set(pb[name]) == {"kernel_packed"} and pb[name]["kernel_packed"].dtype == jnp.uint32
  np.testing.assert_array_equal(pb["conv1"]["kernel_packed"],
                                bi.pack_signs(v["params"]["backbone"]["conv1"]["latent_kernel"], axis=2))
  for name in ("conv0_bn", "frame_bn", "lstm"):
    assert jax.tree.all(jax.tree.map(np.array_equal, pb[name], v["params"]["backbone"][name]))
  run, run_packed = (jax.jit(lambda v, x, m=m: m.apply(v, train=False, landmarks=x))
                      for m in (model, packed_model))
  for key in range(3):
    xs = jax.random.normal(jax.random.key(100 + key), shape) * (1 + key)
    want, got = run(v, xs), run_packed(packed, xs)
    np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(want["logits"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["features"]), np.asarray(want["features"]), rtol=1e-6, atol=1e-6)
  # Memory: 1 bit per binary weight, each kernel's input axis padded to whole 32-bit words.
  kernels = [v["params"]["backbone"][n]["latent_kernel"].shape
             for n in [f"conv{i}" for i in range(len(feats))] + ["frame_dense"]]
  words = sum(int(np.prod(k[:-2])) * -(-k[-2] // 32) * k[-1] for k in kernels)
  nbytes = bi.packed_bytes(packed)
  assert nbytes["packed"] == 4 * words
  assert nbytes["float"] + 4 * sum(int(np.prod(k)) for k in kernels) == bi.packed_bytes(v)["float"]


def test_packing_refuses_float_and_packed_models():
  x = jnp.zeros((1, 3, 10, 2))
  model = _model(size="tiny")
  v = _variables(model, x)
  with pytest.raises(ValueError, match="must be binary=True"):
    ll.pack_landmark_model(model, v)
  with pytest.raises(ValueError, match="landmark_cnn_lstm backbone"):
    ll.pack_landmark_model(composite.build_model(dict(backbone=dict(name="resnet", size="fer_xs"),
                                                      head=dict(name="linear", num_outputs=1))), v)


def test_bad_configs_and_inputs_are_named():
  x = jnp.zeros((1, 3, 10, 2))
  with pytest.raises(ValueError, match=r"size='huge'; expected one of"):
    _model(size="huge").init(jax.random.key(0), landmarks=x)
  with pytest.raises(ValueError, match="fixes conv_features"):
    _model(size="tiny", lstm_hidden=3).init(jax.random.key(0), landmarks=x)
  with pytest.raises(ValueError, match=r"conv_strides=\(1,\); expected a sequence of 2 positive ints"):
    _model(conv_features=(4, 4), conv_kernel=(1, 3), conv_strides=(1,), frame_features=4,
           lstm_hidden=4).init(jax.random.key(0), landmarks=x)
  with pytest.raises(ValueError, match=r"expects landmarks \(B, T, L, C\), got shape \(3, 10, 2\)"):
    _model(size="tiny").init(jax.random.key(0), landmarks=x[0])
  with pytest.raises(ValueError, match="quantizer='magnitude_aware_sign' does not output"):
    _model(size="tiny", binary=True, quantizer="magnitude_aware_sign").init(jax.random.key(0), landmarks=x)
  with pytest.raises(ValueError, match="pooling='max'"):
    _model(size="tiny", pooling="max").init(jax.random.key(0), landmarks=x)


# ------------------------------------------------------------------------------------ R-EMO vs T-EMO


def _bank_config(arch, steps=50):
  cfg = config_utils.load_config_file(str(ROOT / "experiments" / "emotion_bank_synthetic.py") +
                                      f":emotion=surprise,arch={arch},size=tiny,steps={steps},batch=32")
  cfg.task_options.num_frames = 8
  return cfg


def _trainer_state(c):
  model = trainer.create_model(c)
  task = trainer.get_task(c)
  task.bind_model(model.input_names)
  tx = optim.create_optimizer(c, optim.create_schedule(c, c.num_train_steps))
  state, _ = trainer.create_train_state(c, model, tx, jax.random.key(c.seed), sharding.create_mesh(c.mesh), task)
  step = jax.jit(lambda s, b: trainer.train_step(s, b, jax.random.key(1), model=model, tx=tx, config=c,
                                                 task=task))
  return model, task, state, step


def _clips(split, count, frames=8, start=0):
  """Synthetic clips' landmarks (tiny 8-px renders: landmarks do not depend on the image size after
  normalisation) and labels."""
  d = synthetic.sample_sequences(0, split, start, count, num_frames=frames, size=8, chunk=256)
  return d["landmarks"], d["label"].astype(np.int32)


@pytest.fixture(scope="module")
def train_clips():
  return _clips("train", 512)


@pytest.fixture(scope="module")
def few_clips():
  return _clips("train", 96)


def _batch(clips, idx):
  lm, lab = clips
  return {"landmarks": jnp.asarray(lm[idx]), "label": jnp.asarray(lab[idx])}


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def tiny_variables():
  """One initialisation shared by the R-EMO / T-EMO variants (same parameter tree)."""
  c = _bank_config("temo")
  model = trainer.create_model(c)
  task = trainer.get_task(c)
  inputs = task.example_batch(model.input_names)
  return jax.device_get(jax.jit(lambda: model.init(jax.random.key(0), train=False, **inputs))())


def _front_end_after_steps(arch, clips, variables, steps=3):
  """The trainer's train_step (optimizer with latent clipping and ``optimizer.frozen``) on ``arch``."""
  c = _bank_config(arch)
  model = trainer.create_model(c)
  task = trainer.get_task(c)
  task.bind_model(model.input_names)
  tx = optim.create_optimizer(c, optim.create_schedule(c, c.num_train_steps))
  variables = dict(variables)
  params = variables.pop("params")
  state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             model_state=variables, ema_params={})
  step = jax.jit(lambda s, b: trainer.train_step(s, b, jax.random.key(1), model=model, tx=tx, config=c,
                                                 task=task))
  old = state
  for i in range(steps):
    state, metrics = step(state, _batch(clips, np.arange(32 * i, 32 * (i + 1))))
    assert bool(metrics["finite"])
  return old, jax.device_get(state)


@pytest.mark.parametrize("archs", [("remo", "temo"), pytest.param(("binary",), marks=SLOW)])
def test_remo_keeps_the_random_front_end_temo_trains_it(archs, few_clips, tiny_variables):
  for arch in archs:
    variables = tiny_variables
    if arch == "binary":  # its own tree: latent kernels
      variables = _variables(trainer.create_model(_bank_config(arch)), jnp.zeros((1, 8, 68, 4)))
    old, new = _front_end_after_steps(arch, few_clips, variables)
    convs = [k for k in old.params["backbone"] if k.startswith("conv") and not k.endswith("_bn")]
    assert convs == ["conv0", "conv1"]
    for name in convs:
      same = _equal(old.params["backbone"][name], new.params["backbone"][name])
      assert same == (arch == "remo"), (arch, name)
    # What trains in every variant: the front end's BatchNorm (affine and statistics), the rest.
    for name in ("conv0_bn", "frame_dense", "lstm"):
      assert not _equal(old.params["backbone"][name], new.params["backbone"][name]), (arch, name)
    assert not _equal(old.model_state["batch_stats"]["backbone"]["conv0_bn"],
                      new.model_state["batch_stats"]["backbone"]["conv0_bn"])
    if arch == "binary":  # latent kernels stay clipped to [-1, 1] by the optimizer
      latent = [np.abs(new.params["backbone"][n]["latent_kernel"]).max() for n in convs + ["frame_dense"]]
      assert max(latent) <= 1.0


def test_remo_regex_matches_only_the_conv_kernels():
  x = jnp.zeros((1, 4, 68, 4))
  v = jax.eval_shape(lambda: _model(size="base").init(jax.random.key(0), train=False, landmarks=x))
  mask = optim.frozen_mask(v["params"], ll.FRONT_END_FROZEN)
  frozen = {"/".join(k.key for k in p) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m}
  assert frozen == {"backbone/conv0/kernel", "backbone/conv1/kernel", "backbone/conv2/kernel"}


# ------------------------------------------------------------------------------------ it learns


@SLOW
@pytest.mark.parametrize("arch", ["temo", "remo", "binary"])
def test_short_training_learns_one_emotion_vs_rest(arch, train_clips):
  """Tiny models, surprise vs rest on 512 synthetic clips of 8 frames, balanced 50/50 batches (the default
  run of the same through the whole trainer: test_landmark_sequence_task.py)."""
  t0 = time.time()
  c = _bank_config(arch, steps=STEPS)
  model, task, state, step = _trainer_state(c)
  lm, lab = train_clips
  pos, neg = np.flatnonzero(lab == 5), np.flatnonzero(lab != 5)
  rng = np.random.default_rng(0)
  for _ in range(c.num_train_steps):
    idx = np.concatenate([rng.choice(pos, 16), rng.choice(neg, 16)])
    state, metrics = step(state, _batch(train_clips, idx))
  val_lm, val_lab = _clips("validation", 160)
  out = jax.jit(lambda s, b: trainer.eval_step(s.params, s.model_state, b, model=model, task=task))(
      state, {"landmarks": jnp.asarray(val_lm), "label": jnp.asarray(val_lab), "mask": jnp.ones(160, bool)})
  s = binary_scores(out["scores"], out["labels"], out["mask"])
  assert s["positives"] == int(np.sum(val_lab == 5)) >= 10
  assert s["balanced_accuracy"] > 0.85 and s["auc"] > 0.9, s
  assert time.time() - t0 < 120
