"""Inception-ResNet valence / arousal models vs an independent PyTorch reference.

The reference below is written from the figures of Szegedy et al. 2016 (Inception-ResNet-v1:
stem fig. 14, A fig. 10, Reduction-A fig. 7 with k, l, m, n = 192, 192, 256, 384, B fig. 11,
Reduction-B fig. 12, C fig. 13) as tables of (name, channels, kernel, stride, "V"), with explicit
TF-style padding. Random weights, BN running statistics included, are copied from the Flax
variables into it; both run in eval mode in float64 and must agree to RTOL64 (float32 where the
model pools / applies tanh in float32, with bounds derived below). Parameter counts are
checked against a closed form and against the reference; the LSTM model against the frame backbone
run frame by frame followed by ``torch.nn.LSTM`` with copied weights.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from fer_jax.models import inception_resnet as irn
from fer_jax.registry import get_model
from fer_jax.testing import assert_within, RTOL64, to_float64, U32

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

# Torch parity runs both sides in float64 (x64 on, float64 variables and inputs; torch .double()).
# In float32 the two differ by up to ~1e-5 through a dozen conv-BN layers, by an amount that depends
# on the machine's summation order. Float64's unit roundoff is 2^29 ~ 5e8 times smaller, so the same
# paths differ by ~1e-13 (measured: ~1e-15); RTOL64 (relative to the largest reference magnitude)
# has a wide margin on any machine, while a parameter off by 1e-3 moves outputs by >~1e-5 of their
# size. The model pools its features and applies its tanh in float32 whatever the input dtype: those
# outputs get bounds derived from that float32 step, in units of U32.
# XLA's float32 tanh is a rational approximation: relative error <= 4.5 U32 measured on a dense
# grid of [-30, 30]; we allow 16 U32.
ACT_ERR = 16 * U32
EPS = 1e-3

# ----------------------------------------------------------------------------- torch reference
# Units: (name, channels, (kh, kw), stride, paper's "V" mark); "pool" = MaxPool 3x3 / 2 "V".
STEM = ["conv_0", 32, (3, 3), 2, True], ["conv_1", 32, (3, 3), 1, True], \
    ["conv_2", 64, (3, 3), 1, False], "pool", ["conv_3", 80, (1, 1), 1, False], \
    ["conv_4", 192, (3, 3), 1, True], ["conv_5", 256, (3, 3), 2, True]
BLOCK_A = [[("b0_1x1", 32, (1, 1), 1, False)],
           [("b1_1x1", 32, (1, 1), 1, False), ("b1_3x3", 32, (3, 3), 1, False)],
           [("b2_1x1", 32, (1, 1), 1, False), ("b2_3x3a", 32, (3, 3), 1, False),
            ("b2_3x3b", 32, (3, 3), 1, False)]]
BLOCK_B = [[("b0_1x1", 128, (1, 1), 1, False)],
           [("b1_1x1", 128, (1, 1), 1, False), ("b1_1x7", 128, (1, 7), 1, False),
            ("b1_7x1", 128, (7, 1), 1, False)]]
BLOCK_C = [[("b0_1x1", 192, (1, 1), 1, False)],
           [("b1_1x1", 192, (1, 1), 1, False), ("b1_1x3", 192, (1, 3), 1, False),
            ("b1_3x1", 192, (3, 1), 1, False)]]


def reduction_a(k=192, l=192, m=256, n=384):
  return ["pool", [("b1_3x3", n, (3, 3), 2, True)],
          [("b2_1x1", k, (1, 1), 1, False), ("b2_3x3", l, (3, 3), 1, False),
           ("b2_3x3s2", m, (3, 3), 2, True)]]


REDUCTION_B = ["pool", [("b1_1x1", 256, (1, 1), 1, False), ("b1_3x3", 384, (3, 3), 2, True)],
               [("b2_1x1", 256, (1, 1), 1, False), ("b2_3x3", 256, (3, 3), 2, True)],
               [("b3_1x1", 256, (1, 1), 1, False), ("b3_3x3a", 256, (3, 3), 1, False),
                ("b3_3x3b", 256, (3, 3), 2, True)]]


def tf_same_pad(x, kernel, stride, value=0.0):
  """Pads NCHW ``x`` so a ``kernel``/``stride`` window gives ceil(n / stride), extra at the end."""
  pads = []
  for n, k, s in zip(x.shape[2:], kernel, stride):
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  (t, b), (l, r) = pads
  return F.pad(x, (l, r, t, b), value=value)


class TUnit(tnn.Module):
  """Conv (no bias) -> BN -> ReLU; same-padded unless marked "V" in a 'VALID' network."""

  def __init__(self, cin, cout, kernel, stride, v, same_net):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, kernel, stride, bias=False)
    self.bn = tnn.BatchNorm2d(cout, eps=EPS)
    self.kernel, self.stride, self.pad = kernel, (stride, stride), (not v) or same_net

  def forward(self, x):
    if self.pad:
      x = tf_same_pad(x, self.kernel, self.stride)
    return F.relu(self.bn(self.conv(x)))


def t_pool(x, same_net):
  if same_net:
    x = tf_same_pad(x, (3, 3), (2, 2), value=-math.inf)
  return F.max_pool2d(x, 3, 2)


class TMulti(tnn.Module):
  """Parallel branches (or, with ``chain``, one sequence) of units / pools, concatenated."""

  def __init__(self, cin, branches, width, same_net, chain=False):
    super().__init__()
    self.same_net, self.chain = same_net, chain
    self.units = tnn.ModuleDict()
    self.paths, self.out_channels = [], 0
    ch = lambda c: max(1, round(c * width))  # noqa: E731
    for branch in ([branches] if chain else branches):
      if branch == "pool":
        self.paths.append(["pool"])
        self.out_channels += cin
        continue
      c, names = cin, []
      for item in branch:
        if item == "pool":
          names.append("pool")
          continue
        name, cout, k, s, v = item
        self.units[name] = TUnit(c, ch(cout), k, s, v, same_net)
        c = ch(cout)
        names.append(name)
      self.paths.append(names)
      self.out_channels += c

  def forward(self, x):
    outs = []
    for names in self.paths:
      y = x
      for name in names:
        y = t_pool(y, self.same_net) if name == "pool" else self.units[name](y)
      outs.append(y)
    return torch.cat(outs, 1)


class TResidual(TMulti):
  """relu?(x + scale * Up(concat(branches))), Up = 1x1 conv with bias (Szegedy et al. fig. 20)."""

  def __init__(self, cin, branches, width, same_net, scale, relu=True):
    super().__init__(cin, branches, width, same_net)
    self.units["up"] = tnn.Conv2d(self.out_channels, cin, 1, bias=True)
    self.scale, self.relu = scale, relu
    self.out_channels = cin

  def forward(self, x):
    y = x + self.scale * self.units["up"](super().forward(x))
    return F.relu(y) if self.relu else y


class TBackbone(tnn.Module):

  def __init__(self, num_a, num_b, num_c, width=1.0, same_net=False, scales=(0.17, 0.10, 0.20),
               klmn=(192, 192, 256, 384), multiscale=False, last_relu=False):
    super().__init__()
    self.blocks = tnn.ModuleDict()
    self.blocks["stem"] = TMulti(3, STEM, width, same_net, chain=True)
    c = self.blocks["stem"].out_channels
    for j in range(num_a):
      self.blocks[f"block_a_{j}"] = TResidual(c, BLOCK_A, width, same_net, scales[0])
    self.a_end = f"block_a_{num_a - 1}" if num_a else "stem"
    self.blocks["reduction_a"] = TMulti(c, reduction_a(*klmn), width, same_net)
    c_a, c = c, self.blocks["reduction_a"].out_channels
    for j in range(num_b):
      self.blocks[f"block_b_{j}"] = TResidual(c, BLOCK_B, width, same_net, scales[1])
    self.b_end = f"block_b_{num_b - 1}" if num_b else "reduction_a"
    self.blocks["reduction_b"] = TMulti(c, REDUCTION_B, width, same_net)
    c_b, c = c, self.blocks["reduction_b"].out_channels
    for j in range(num_c):
      self.blocks[f"block_c_{j}"] = TResidual(c, BLOCK_C, width, same_net, scales[2],
                                              relu=last_relu or j < num_c - 1)
    self.multiscale = multiscale
    self.out_channels = c_a + c_b + c if multiscale else c

  def forward(self, x):
    pooled, stats = [], []
    for name, block in self.blocks.items():
      x = block(x)
      if self.multiscale and name in (self.a_end, self.b_end):
        pooled.append(x.mean((2, 3)))
        stats.append((x.abs().mean((2, 3)), x.shape[2] * x.shape[3]))
    stats.append((x.abs().mean((2, 3)), x.shape[2] * x.shape[3]))
    # Per feature: mean |activation| and the H * W it pools (for the float32 pooling bound).
    self.pool_abs = torch.cat([a for a, _ in stats], 1).numpy()
    self.pool_hw = np.concatenate([np.full(a.shape[1], hw) for a, hw in stats])
    return torch.cat(pooled + [x.mean((2, 3))], 1)


class TFrameModel(tnn.Module):

  def __init__(self, num_outputs=2, **kw):
    super().__init__()
    self.backbone = TBackbone(**kw)
    self.head = tnn.Linear(self.backbone.out_channels, num_outputs)

  def forward(self, x):
    f = self.backbone(x)
    return torch.tanh(self.head(f)), f


# ----------------------------------------------------------------------------- weights


def random_variables(module, *args, seed=0, **kwargs):
  """Variables of ``module`` with random values everywhere (BN statistics too), no init compile."""
  shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)}, *args, **kwargs))
  rng = np.random.RandomState(seed)

  def fill(path, s):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    if name.endswith("kernel"):
      gain = 2.0 if "/conv/" in name else 1.0  # He for conv-BN-ReLU, LeCun for up / head / LSTM
      v = rng.randn(*s.shape) * math.sqrt(gain / fan_in)
    elif name.endswith("scale"):
      v = 1.0 + 0.2 * rng.randn(*s.shape)
    elif name.endswith("var"):
      v = rng.uniform(0.5, 1.5, s.shape)
    else:  # biases, BN offsets and means
      v = 0.1 * rng.randn(*s.shape)
    return jnp.asarray(v.astype(np.float32))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _t(a):
  return torch.from_numpy(np.array(a, np.float32, order="C", copy=True))


def _set(tensor, value):
  value = _t(value)
  assert tuple(tensor.shape) == tuple(value.shape), (tuple(tensor.shape), tuple(value.shape))
  tensor.data = value


def copy_block(variables, tblock):
  """Copies a Flax block's params + batch_stats into a TMulti / TResidual; returns #tensors."""
  n = 0
  stats = flatten_dict(variables.get("batch_stats", {}))
  for key, v in flatten_dict(variables["params"]).items():
    unit, rest = key[0], key[1:]
    tm = tblock.units[unit]
    if rest == ("kernel",):  # linear up projection
      _set(tm.weight, np.transpose(v, (3, 2, 0, 1)))
    elif rest == ("bias",):
      _set(tm.bias, v)
    elif rest == ("conv", "kernel"):
      _set(tm.conv.weight, np.transpose(v, (3, 2, 0, 1)))
    elif rest == ("bn", "scale"):
      _set(tm.bn.weight, v)
    elif rest == ("bn", "bias"):
      _set(tm.bn.bias, v)
    else:
      raise AssertionError(f"unexpected parameter {key}")
    n += 1
  for key, v in stats.items():
    bn = tblock.units[key[0]].bn
    assert key[1:] in (("bn", "mean"), ("bn", "var")), key
    _set(bn.running_mean if key[-1] == "mean" else bn.running_var, v)
    n += 1
  return n


def copy_frame_model(variables, tmodel):
  params, stats = variables["params"], variables["batch_stats"]
  n = 0
  for name, block in tmodel.backbone.blocks.items():
    n += copy_block({"params": params["backbone"][name],
                     "batch_stats": stats["backbone"][name]}, block)
  _set(tmodel.head.weight, np.asarray(params["head"]["kernel"]).T)
  _set(tmodel.head.bias, params["head"]["bias"])
  n += 2
  # Every Flax tensor went somewhere, and every torch tensor was written (ones / zeros otherwise).
  assert n == len(jax.tree.leaves(variables)) == len(list(tmodel.parameters())) + 2 * sum(
      isinstance(m, tnn.BatchNorm2d) for m in tmodel.modules())
  return tmodel.eval()


def nchw(x):
  """NHWC array -> NCHW tensor of the same dtype (float64 inputs for the float64 references)."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _input(shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).uniform(0.0, 1.0, shape).astype(np.float32))


def _parity64(got, want, what=""):
  """JAX value computed in float64 vs float64 torch / NumPy: RTOL64 of the largest magnitude, plus
  U32 |want| if the model returned it rounded to float32."""
  want = np.asarray(want, np.float64)
  tol = RTOL64 * np.abs(want).max()
  if np.asarray(got).dtype == np.float32:
    tol = tol + U32 * np.abs(want)
  return assert_within(got, want, tol, what)


def _tanh_f32_tol(y, out, tol_y):
  """Bound on |tanh_f32(fl32(y~)) - tanh(y)| given |y~ - y| <= tol_y: tanh is 1-Lipschitz; y~ is
  rounded to float32 (U32 |y|); the float32 tanh itself is within ACT_ERR |out|."""
  return tol_y + U32 * np.abs(y) + ACT_ERR * np.abs(out) + RTOL64


# ----------------------------------------------------------------------------- closed form


def closed_form_params(num_a, num_b, num_c, width=1.0, klmn=(192, 192, 256, 384),
                       multiscale=False, num_outputs=2, in_channels=3, lstm=None):
  """Parameter count read off the figures: conv-BN unit k*cin*cout + 2*cout (BN scale, offset),
  linear up conv cin*cout + cout, head F*K + K; LSTM layer 4 * (I*H + H*H + H) per direction."""
  c = lambda n: max(1, round(n * width))  # noqa: E731
  unit = lambda k, cin, cout: k * cin * cout + 2 * cout  # noqa: E731
  n = (unit(9, in_channels, c(32)) + unit(9, c(32), c(32)) + unit(9, c(32), c(64))
       + unit(1, c(64), c(80)) + unit(9, c(80), c(192)) + unit(9, c(192), c(256)))
  ca = c(256)
  block_a = 3 * unit(1, ca, c(32)) + 3 * unit(9, c(32), c(32)) + 3 * c(32) * ca + ca
  k, l, m, nn_ = (c(v) for v in klmn)
  red_a = unit(9, ca, nn_) + unit(1, ca, k) + unit(9, k, l) + unit(9, l, m)
  cb = ca + nn_ + m
  block_b = 2 * unit(1, cb, c(128)) + 2 * unit(7, c(128), c(128)) + 2 * c(128) * cb + cb
  red_b = (3 * unit(1, cb, c(256)) + unit(9, c(256), c(384)) + 2 * unit(9, c(256), c(256))
           + unit(9, c(256), c(256)))
  cc = cb + c(384) + 2 * c(256)
  block_c = 2 * unit(1, cc, c(192)) + 2 * unit(3, c(192), c(192)) + 2 * c(192) * cc + cc
  n += num_a * block_a + red_a + num_b * block_b + red_b + num_c * block_c
  feat = ca + cb + cc if multiscale else cc
  if lstm is not None:
    hidden, layers, directions = lstm
    for i in range(layers):
      inp = feat if i == 0 else directions * hidden
      n += directions * 4 * (inp * hidden + hidden * hidden + hidden)
    feat = directions * hidden
  return n + feat * num_outputs + num_outputs


# Default-configuration counts (input size does not matter: global pooling).
DEFAULT_COUNTS = {"inception_resnet_shallow": 8_043_650, "inception_resnet_deep": 20_966_914,
                  "inception_resnet_lstm": 12_761_730}


def test_closed_form_default_counts():
  assert closed_form_params(1, 1, 1) == DEFAULT_COUNTS["inception_resnet_shallow"]
  assert closed_form_params(5, 10, 5) == DEFAULT_COUNTS["inception_resnet_deep"]
  assert closed_form_params(1, 1, 1, lstm=(512, 1, 1)) == DEFAULT_COUNTS["inception_resnet_lstm"]


@pytest.mark.parametrize("name,kwargs,cf", [
    ("inception_resnet_shallow", {}, dict(num_a=1, num_b=1, num_c=1)),
    ("inception_resnet_deep", {}, dict(num_a=5, num_b=10, num_c=5)),
    ("inception_resnet_lstm", {}, dict(num_a=1, num_b=1, num_c=1, lstm=(512, 1, 1))),
    ("inception_resnet_deep", dict(multiscale=True, width_multiplier=0.5, num_outputs=7,
                                   reduction_a=(256, 256, 384, 384), in_channels=1),
     dict(num_a=5, num_b=10, num_c=5, multiscale=True, width=0.5, num_outputs=7,
          klmn=(256, 256, 384, 384), in_channels=1)),
    ("inception_resnet_lstm", dict(num_a=2, num_b=0, num_c=3, lstm_hidden=64, lstm_layers=2,
                                   bidirectional=True, multiscale=True),
     dict(num_a=2, num_b=0, num_c=3, multiscale=True, lstm=(64, 2, 2))),
])
def test_param_counts_match_closed_form(name, kwargs, cf):
  kwargs = dict(kwargs)
  ch = kwargs.pop("in_channels", 3)
  model = get_model(name, **kwargs)
  shape = (1, 2, 299, 299, ch) if "lstm" in name else (1, 299, 299, ch)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape)))
  assert count(shapes["params"]) == closed_form_params(**cf)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  if not kwargs:
    assert count(shapes["params"]) == DEFAULT_COUNTS[name]


# ----------------------------------------------------------------------------- sizes / errors


def test_feature_sizes_and_minimum_input():
  assert irn.feature_sizes(299) == (35, 17, 8)  # Szegedy et al. fig. 9 / 15
  assert irn.feature_sizes(75) == (7, 3, 1)
  assert irn.feature_sizes(74)[-1] == 0
  assert irn.feature_sizes(96) == (9, 4, 1)
  assert irn.feature_sizes(299, "SAME") == (38, 19, 10)
  assert irn.feature_sizes(64, "SAME") == (8, 4, 2)
  assert irn.min_input_size("VALID") == 75 and irn.min_input_size("SAME") == 32
  assert irn.feature_dim() == 1792 and irn.feature_dim(multiscale=True) == 256 + 896 + 1792


def test_bad_inputs_raise_clear_errors():
  model = get_model("inception_resnet_shallow")
  init = lambda m, x: jax.eval_shape(lambda: m.init({"params": jax.random.key(0)}, x))  # noqa
  with pytest.raises(ValueError, match=r"\(74, 80\).*75 px.*'SAME'"):
    init(model, jnp.zeros((1, 74, 80, 3)))
  with pytest.raises(ValueError, match=r"\(31, 31\).*32 px"):
    init(get_model("inception_resnet_shallow", padding="SAME"), jnp.zeros((1, 31, 31, 3)))
  init(get_model("inception_resnet_shallow", padding="SAME"), jnp.zeros((1, 32, 40, 3)))
  with pytest.raises(ValueError, match="padding"):
    init(get_model("inception_resnet_shallow", padding="same"), jnp.zeros((1, 75, 75, 3)))
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    init(model, jnp.zeros((1, 2, 75, 75, 3)))
  lstm = get_model("inception_resnet_lstm", num_frames=4)
  with pytest.raises(ValueError, match="num_frames=4.*T=3"):
    init(lstm, jnp.zeros((1, 3, 75, 75, 3)))
  with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
    init(lstm, jnp.zeros((1, 75, 75, 3)))
  with pytest.raises(ValueError, match="num_a"):
    init(get_model("inception_resnet_deep", num_a=-1), jnp.zeros((1, 75, 75, 3)))
  with pytest.raises(ValueError, match="dropout_rate"):
    init(get_model("inception_resnet_deep", dropout_rate=1.0), jnp.zeros((1, 75, 75, 3)))
  with pytest.raises(TypeError, match="takes num_outputs.*not num_classes=3"):
    get_model("inception_resnet_deep", num_classes=3)


def test_registry():
  m = get_model("inception_resnet_deep", num_outputs=5)
  assert isinstance(m, irn.InceptionResNetVA) and m.num_outputs == 5
  assert (m.num_a, m.num_b, m.num_c) == (5, 10, 5)
  s = get_model("inception_resnet_shallow", num_b=2)
  assert (s.num_a, s.num_b, s.num_c, s.num_outputs) == (1, 2, 1, 2)
  lstm = get_model("inception_resnet_lstm")
  assert isinstance(lstm, irn.InceptionResNetLSTM) and lstm.num_outputs == 2
  assert (lstm.num_a, lstm.num_b, lstm.num_c, lstm.lstm_hidden, lstm.bidirectional) == (
      1, 1, 1, 512, False)


# ----------------------------------------------------------------------------- block parity


_BLOCKS = {
    # name: (Flax module, torch builder(cin, same_net), input shape NHWC)
    "stem": (lambda p: irn.Stem(padding=p), lambda c, s: TMulti(c, STEM, 1.0, s, chain=True),
             (2, 75, 77, 3)),
    "a": (lambda p: irn.InceptionResNetA(padding=p),
          lambda c, s: TResidual(c, BLOCK_A, 1.0, s, 0.17), (2, 7, 6, 256)),
    "reduction_a": (lambda p: irn.ReductionA(padding=p),
                    lambda c, s: TMulti(c, reduction_a(), 1.0, s), (2, 8, 7, 256)),
    "b": (lambda p: irn.InceptionResNetB(padding=p),
          lambda c, s: TResidual(c, BLOCK_B, 1.0, s, 0.10), (2, 5, 8, 896)),
    "reduction_b": (lambda p: irn.ReductionB(padding=p),
                    lambda c, s: TMulti(c, REDUCTION_B, 1.0, s), (2, 5, 6, 896)),
    "c_no_relu": (lambda p: irn.InceptionResNetC(padding=p, activate=False),
                  lambda c, s: TResidual(c, BLOCK_C, 1.0, s, 0.20, relu=False), (2, 3, 4, 1792)),
}


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_blocks_match_torch_reference(padding):
  outs = {}
  for name, (make, tmake, shape) in _BLOCKS.items():
    if padding == "SAME" and name not in ("stem", "reduction_a", "reduction_b"):
      continue  # the residual blocks have no "V" layers
    block = make(padding)
    x = _input(shape, seed=1) * (1.0 if name == "stem" else 2.0)
    variables = random_variables(block, x, seed=3)
    x = np.asarray(x, np.float64)
    with jax.enable_x64(True):
      got = jax.jit(block.apply)(to_float64(variables), x)
    assert got.dtype == np.float64
    tblock = tmake(shape[-1], padding == "SAME")
    n = copy_block(variables, tblock)
    assert n == len(list(tblock.parameters())) + len(list(tblock.buffers())) - sum(
        isinstance(m, tnn.BatchNorm2d) for m in tblock.modules())  # minus num_batches_tracked
    assert count(variables["params"]) == sum(p.numel() for p in tblock.parameters())
    with torch.no_grad():
      want = nhwc(tblock.double().eval()(nchw(x)))
    outs[name] = (np.asarray(got), want)
  for name, (got, want) in outs.items():
    _parity64(got, want, name)
  if padding == "VALID":
    assert outs["stem"][0].shape == (2, 7, 7, 256)
    assert outs["reduction_b"][0].shape == (2, 2, 2, 896 + 384 + 256 + 256)
    assert outs["c_no_relu"][0].min() < 0  # no ReLU after the last C block
  else:
    assert outs["stem"][0].shape == (2, 10, 10, 256)  # 75 -> 38 -> 19 -> 10, 77 -> 39 -> 20 -> 10
    assert outs["reduction_b"][0].shape == (2, 3, 3, 1792)


# ----------------------------------------------------------------------------- model parity


def _frame_parity(name, size, seed=0, **kwargs):
  model = get_model(name, **kwargs)
  x = _input((2, size, size, 3), seed)
  variables = random_variables(model, x, seed=seed)
  x = np.asarray(x, np.float64)
  with jax.enable_x64(True):
    out, feats = jax.jit(model.apply, static_argnames=("train", "return_features"))(
        to_float64(variables), x, train=False, return_features=True)
  tm = TFrameModel(num_outputs=model.num_outputs, num_a=model.num_a, num_b=model.num_b,
                   num_c=model.num_c, width=model.width_multiplier,
                   same_net=model.padding == "SAME", multiscale=model.multiscale,
                   klmn=model.reduction_a)
  copy_frame_model(variables, tm).double()
  with torch.no_grad():
    t_out, t_feats = tm(nchw(x))
    t_y = tm.head(t_feats).numpy()
    t_out, t_feats = t_out.numpy(), t_feats.numpy()
  n = count(variables["params"])
  assert n == sum(p.numel() for p in tm.parameters())
  assert n == closed_form_params(model.num_a, model.num_b, model.num_c, model.width_multiplier,
                                 model.reduction_a, model.multiscale, model.num_outputs)
  # The trunk computes in float64 but pools its activations s in float32: s rounded (U32 |s|), a
  # float32 sum of H*W terms (gamma_HW) and the division: |df| <= (HW + 2) U32 mean|s| per feature.
  # The head then runs in float64 on those features (|dy| <= |df| |W|), then tanh in float32.
  tol_f = (tm.backbone.pool_hw + 2) * U32 * tm.backbone.pool_abs + RTOL64 * np.abs(t_feats).max()
  assert_within(feats, t_feats, tol_f, "features")
  tol_y = tol_f @ np.abs(np.asarray(variables["params"]["head"]["kernel"], np.float64))
  assert_within(out, t_out, _tanh_f32_tol(t_y, t_out, tol_y), "outputs")
  assert np.all(np.abs(np.asarray(out)) < 1.0)
  assert np.abs(t_out - t_out[:1]).max() > 1e-3  # not saturated: the comparison means something
  return np.asarray(out)


def test_shallow_matches_torch_reference():
  _frame_parity("inception_resnet_shallow", 75)


def test_shallow_multiscale_same_padding_small_width_matches_torch_reference():
  _frame_parity("inception_resnet_shallow", 64, seed=1, padding="SAME", multiscale=True,
                width_multiplier=0.25, num_b=2, reduction_a=(96, 128, 160, 192), num_outputs=3)


def test_deep_matches_torch_reference():
  _frame_parity("inception_resnet_deep", 75, seed=2)


@pytest.mark.slow
def test_deep_matches_torch_reference_at_299():
  _frame_parity("inception_resnet_deep", 299, seed=3)


# ----------------------------------------------------------------------------- LSTM


def _torch_lstm_from_flax(params, hidden, layers, bidirectional, in_dim):
  lstm = tnn.LSTM(in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
  gates = ("i", "f", "g", "o")  # PyTorch's row order of weight_ih / weight_hh, = Flax's names
  for i in range(layers):
    dirs = [(f"lstm_{i}_forward", ""), (f"lstm_{i}_backward", "_reverse")] if bidirectional \
        else [(f"lstm_{i}", "")]
    for flax_name, sfx in dirs:
      p = params[flax_name]
      w_ih = np.concatenate([p["i" + g]["kernel"] for g in gates], axis=1).T
      w_hh = np.concatenate([p["h" + g]["kernel"] for g in gates], axis=1).T
      b_hh = np.concatenate([p["h" + g]["bias"] for g in gates])
      _set(getattr(lstm, f"weight_ih_l{i}{sfx}"), w_ih)
      _set(getattr(lstm, f"weight_hh_l{i}{sfx}"), w_hh)
      _set(getattr(lstm, f"bias_hh_l{i}{sfx}"), b_hh)
      _set(getattr(lstm, f"bias_ih_l{i}{sfx}"), np.zeros(4 * hidden))  # Flax: one bias per gate
  return lstm


def _float64_carry(next_fun, args, kwargs, context):
  """Flax method interceptor for nn.RNN: with no initial carry given, nn.RNN starts from the cell's
  zero carry in its param_dtype (float32), but with float64 parameters under x64 the cell computes
  in float64 and the scan needs a float64 carry: pass the same zeros as float64."""
  if (isinstance(context.module, nn.RNN) and context.method_name == "__call__"
      and kwargs.get("initial_carry") is None and not context.module.time_major):
    inputs = args[0]  # (B, T, F)
    carry = context.module.cell.initialize_carry(jax.random.key(0),
                                                 inputs.shape[:1] + inputs.shape[2:])
    kwargs = dict(kwargs, initial_carry=jax.tree.map(lambda a: a.astype(jnp.float64), carry))
  return next_fun(*args, **kwargs)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_lstm_equals_per_frame_backbone_then_torch_lstm(layers, bidirectional):
  hidden, b, t = 16, 2, 3
  model = get_model("inception_resnet_lstm", width_multiplier=0.25, lstm_hidden=hidden,
                    lstm_layers=layers, bidirectional=bidirectional)
  x = np.asarray(_input((b, t, 75, 75, 3), seed=4), np.float64)
  variables = random_variables(model, x, seed=4)
  v64 = to_float64(variables)

  @jax.jit
  def apply(v, x):  # float64 throughout but the float32 pooling and tanh (see the top)
    with nn.intercept_methods(_float64_carry):
      return model.apply(v, x, train=False, return_features=True, capture_intermediates=True,
                         mutable=["intermediates"])

  backbone = irn.InceptionResNetV1(**model.backbone_kwargs())
  bvars = {"params": v64["params"]["backbone"], "batch_stats": v64["batch_stats"]["backbone"]}
  apply_b = jax.jit(backbone.apply)
  with jax.enable_x64(True):
    (out, lstm_out), state = apply(v64, x)
    # The backbone frame by frame.
    feats = np.stack([np.asarray(apply_b(bvars, x[:, i])) for i in range(t)], axis=1)  # (B, T, F)
  assert out.shape == (b, t, 2) and lstm_out.shape == (b, t, hidden * (1 + bidirectional))
  # The LSTM's input: the model's pooled (float32) features of all B * T frames at once. Its float64
  # trunk agrees with the per-frame one to float64 precision, and at 75 px the last map is 1 x 1, so
  # pooling is one rounding to float32: at most one flipped rounding apart, <= 2 U32 |f|.
  model_feats = np.asarray(state["intermediates"]["backbone"]["__call__"][0]).reshape(feats.shape)
  assert irn.feature_sizes(75)[-1] == 1 and model_feats.dtype == np.float32
  assert_within(feats, model_feats, 2 * U32 * np.abs(model_feats), "per-frame backbone")
  in_dim = feats.shape[-1]
  lstm = _torch_lstm_from_flax(variables["params"], hidden, layers, bidirectional, in_dim).double()
  with torch.no_grad():
    t_lstm = lstm(torch.from_numpy(model_feats.astype(np.float64)))[0].numpy()
  head = v64["params"]["head"]
  y = t_lstm @ head["kernel"] + head["bias"]
  want = np.tanh(y)
  _parity64(lstm_out, t_lstm, "lstm")  # the float64 LSTM's output, returned rounded to float32
  assert_within(out, want, _tanh_f32_tol(y, want, 0.0), "outputs")  # float64 head, float32 tanh
  assert np.all(np.abs(np.asarray(out)) < 1.0)
  assert np.abs(want[:, 1:] - want[:, :1]).max() > 1e-3  # frames differ
  # Parameter count: torch keeps two biases per gate, Flax one.
  n = count(variables["params"])
  n_torch_lstm = sum(p.numel() for p in lstm.parameters())
  directions = 1 + bidirectional
  assert n - count(variables["params"]["backbone"]) - count(head) == (
      n_torch_lstm - layers * directions * 4 * hidden)
  assert n == closed_form_params(1, 1, 1, width=0.25, lstm=(hidden, layers, directions))
  # Changing the last frame changes only the last output of a unidirectional LSTM, all of a
  # bidirectional one.
  with jax.enable_x64(True):
    y2 = np.asarray(apply(v64, np.concatenate([x[:, :-1], 1.0 - x[:, -1:]], axis=1))[0][0])
  changed = np.abs(y2 - np.asarray(out)).max(axis=(0, 2)) > 1e-5
  assert changed.tolist() == ([True] * t if bidirectional else [False] * (t - 1) + [True])


# ----------------------------------------------------------------------------- train mode


def test_convbn_train_mode_matches_numpy_batch_norm():
  """Train mode normalises with the batch's (biased) statistics and updates the running ones as
  running = momentum * running + (1 - momentum) * batch (Flax convention; PyTorch momentum 0.01)."""
  unit = irn.ConvBN(5, (3, 3), (2, 2), "VALID")
  x = _input((4, 9, 8, 3), seed=6)
  variables = to_float64(random_variables(unit, x, seed=6))
  x = np.asarray(x, np.float64)
  with jax.enable_x64(True):  # float64 on both sides (see RTOL64)
    y, upd = unit.apply(variables, x, train=True, mutable=["batch_stats"])
  w = variables["params"]["conv"]["kernel"]
  with torch.no_grad():
    z = nhwc(F.conv2d(nchw(x), torch.from_numpy(np.transpose(w, (3, 2, 0, 1)).copy()), stride=2))
  mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2))
  bn = variables["params"]["bn"]
  want = np.maximum((z - mean) / np.sqrt(var + EPS) * bn["scale"] + bn["bias"], 0.0)
  _parity64(y, want, "ConvBN")
  old = variables["batch_stats"]["bn"]
  _parity64(upd["batch_stats"]["bn"]["mean"], 0.99 * old["mean"] + 0.01 * mean, "running mean")
  _parity64(upd["batch_stats"]["bn"]["var"], 0.99 * old["var"] + 0.01 * var, "running var")


def test_train_mode_batch_stats_and_dropout():
  model = get_model("inception_resnet_shallow", width_multiplier=0.25, dropout_rate=0.5)
  x = _input((4, 75, 75, 3), seed=7)
  variables = random_variables(model, x, seed=7)

  @jax.jit
  def run(variables, key):
    ev = model.apply(variables, x, train=False, rngs={"dropout": key})
    tr, upd = model.apply(variables, x, train=True, rngs={"dropout": key},
                          mutable=["batch_stats"])
    return ev, tr, upd

  ev1, tr1, upd1 = run(variables, jax.random.key(1))
  ev2, tr2, upd2 = run(variables, jax.random.key(2))
  _, tr1b, _ = run(variables, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(ev1), np.asarray(ev2))  # eval ignores the rng
  np.testing.assert_array_equal(np.asarray(tr1), np.asarray(tr1b))  # same rng, same output
  assert np.abs(np.asarray(tr1) - np.asarray(tr2)).max() > 1e-3  # dropout uses the rng
  for y in (ev1, tr1, tr2):
    assert np.all(np.abs(np.asarray(y)) < 1.0) and y.shape == (4, 2)
  # Every BN layer's running statistics moved, identically for both rngs (dropout is after them).
  old, new1, new2 = (jax.tree.leaves(v) for v in (variables["batch_stats"], upd1["batch_stats"],
                                                  upd2["batch_stats"]))
  assert len(old) == 2 * 31  # 6 stem + 6 A + 4 Reduction-A + 4 B + 7 Reduction-B + 4 C units
  assert all(np.abs(np.asarray(a) - np.asarray(b)).max() > 0 for a, b in zip(old, new1))
  for a, b in zip(new1, new2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_close_to_float32():
  model = get_model("inception_resnet_shallow", width_multiplier=0.25)
  x = _input((2, 75, 75, 3), seed=8)
  variables = random_variables(model, x, seed=8)
  y32 = np.asarray(jax.jit(model.apply)(variables, x))
  y16 = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, x)
  assert y16.dtype == jnp.float32
  assert np.abs(np.asarray(y16) - y32).max() < 0.05
