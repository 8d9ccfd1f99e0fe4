"""Inception-ResNet valence / arousal regressors (Hasani & Mahoor, CVPRW 2017, arXiv 1705.07884).

Hasani & Mahoor build three networks from Inception-ResNet modules for the Aff-Wild challenge:
Shallow Inception-ResNet, Deep Inception-ResNet and Inception-ResNet with LSTMs; each regresses
valence and arousal in [-1, 1] for every frame. The paper does not give the depths, widths, input
size or LSTM size, so this module builds them from Inception-ResNet-v1 (Szegedy et al.,
"Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning", AAAI 2017,
arXiv 1602.07261) with everything configurable.

From Szegedy et al. (fixed by that paper, our defaults):

* stem (fig. 14): Conv3x3/2 32 V, Conv3x3 32 V, Conv3x3 64, MaxPool3x3/2 V, Conv1x1 80,
  Conv3x3 192 V, Conv3x3/2 256 V  (299 -> 35 x 35 x 256);
* Inception-ResNet-A (fig. 10): [1x1 32 | 1x1 32 -> 3x3 32 | 1x1 32 -> 3x3 32 -> 3x3 32] ->
  1x1 256 linear; Reduction-A (fig. 7, table 1: k=192, l=192, m=256, n=384)
  [MaxPool3x3/2 V | 3x3/2 n V | 1x1 k -> 3x3 l -> 3x3/2 m V]  (-> 17 x 17 x 896);
* Inception-ResNet-B (fig. 11): [1x1 128 | 1x1 128 -> 1x7 128 -> 7x1 128] -> 1x1 896 linear;
  Reduction-B (fig. 12): [MaxPool3x3/2 V | 1x1 256 -> 3x3/2 384 V | 1x1 256 -> 3x3/2 256 V |
  1x1 256 -> 3x3 256 -> 3x3/2 256 V]  (-> 8 x 8 x 1792);
* Inception-ResNet-C (fig. 13): [1x1 192 | 1x1 192 -> 1x3 192 -> 3x1 192] -> 1x1 1792 linear;
* residual blocks compute ReLU(x + s * Up(concat(branches))) (fig. 20, sec. 3.3: s in [0.1, 0.3]);
  BN only on the conventional layers, not on the summations (sec. 3.2); global average pooling,
  dropout (keep 0.8, i.e. rate 0.2) and a linear head (fig. 15); v1 depth 5 A, 10 B, 5 C.
  "V" convolutions are valid-padded, all others same-padded (sec. 3).

Our choices (common implementations, or not fixed by either paper):

* every conventional conv is Conv (no bias) -> BatchNorm (eps 1e-3, Flax momentum 0.99, i.e.
  PyTorch momentum 0.01; learned scale and offset) -> ReLU; the linear 1x1 "Up" conv has a bias
  and no BN;
* residual scales 0.17 (A), 0.10 (B), 0.20 (C) as in the TF-slim / facenet / timm implementations;
* no ReLU after the last C block (as in those implementations, whose extra final block also uses
  scale 1.0; here every C block uses ``scale_c``); ``last_block_relu=True`` restores it;
* ``width_multiplier`` scales every channel count (``max(1, round(c * w))``); ``reduction_a`` sets
  (k, l, m, n); depths ``num_a, num_b, num_c`` (shallow = 1, 1, 1; deep = v1's 5, 10, 5);
* head: tanh(Dense(num_outputs)) with num_outputs = 2 (valence, arousal): tanh keeps the outputs in
  [-1, 1], the range of the Aff-Wild labels;
* "multi-scale features": the paper says its networks "extract facial features in different
  scales", which the parallel 1x1 / 3x3 / 5x5-equivalent Inception branches already do. Our reading
  adds an option, ``multiscale=True``, that concatenates the globally average-pooled outputs of the
  A, B and C stages (256 + 896 + 1792 channels at width 1) before the head. Off by default;
* LSTM model: the frame backbone (default shallow) on all B * T frames, then ``lstm_layers`` LSTM
  layers of ``lstm_hidden`` units (1 x 512; unidirectional by default), dropout and the per-frame
  tanh head. T is the clip length of the input (``num_frames`` can pin it);
* input size: 299 x 299 is the default in configs (``DEFAULT_INPUT_SIZE``); the networks are
  fully convolutional with global pooling, so any size >= ``min_input_size(padding)`` works:
  75 px with the paper's valid padding (75 -> 7 -> 3 -> 1). ``padding='SAME'`` (ours) same-pads the
  "V" layers too, so every stride-2 layer gives ceil(n / 2) and any size >= 32 works
  (64 px -> 2 x 2 final grid); smaller inputs raise a ``ValueError``.

Kernels use He-normal (truncated) init for the conv-BN-ReLU units and LeCun-normal for the linear
convs and the heads; biases start at zero. Parameters are float32, ``dtype`` sets the compute dtype,
outputs and features are returned as float32. BN statistics live in the 'batch_stats' collection;
dropout uses the 'dropout' rng.

Parameter tree: ``backbone/{stem/conv_{0..5}, block_a_{j}, reduction_a, block_b_{j},
reduction_b, block_c_{j}}`` with units named after their branch (``b1_3x3``, ...), each unit
``{conv, bn}``, residual projections ``up``; ``head``; LSTM model: ``lstm_{i}`` (or
``lstm_{i}_forward`` and ``lstm_{i}_backward``), each with the LSTMCell parameters ii/if/ig/io
(kernels) and hi/hf/hg/ho (kernels + biases).

Backbones (registry ``BACKBONES``, for the backbone / head models): 'inception_resnet'
(``InceptionResNetBackbone``: images -> {'features': (B, F)}, the tree of the models' ``backbone``
subtree) and 'inception_resnet_lstm' (``InceptionResNetLSTMBackbone``: clips -> {'features':
(B, T, H')}, the LSTM model's tree minus ``head``). The registered whole models take
``num_outputs``; they refuse ``num_classes`` (a ``TypeError`` that names it).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.registry import BACKBONES, register

DEFAULT_INPUT_SIZE = 299
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
PADDINGS = ("VALID", "SAME")
# Our floor for 'SAME' (which would run on any size): one input stride of the final grid.
_SAME_MIN_SIZE = 32

he_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
lecun_init = nn.initializers.lecun_normal()


# ----------------------------------------------------------------------------- sizes


def _reduce(n: int, kernel: int, stride: int, padding: str) -> int:
  """Output side of a ``kernel``/``stride`` conv or pool ('VALID' or TF-style 'SAME')."""
  if padding == "SAME":
    return -(-n // stride)
  return (n - kernel) // stride + 1


def feature_sizes(size: int, padding: str = "VALID") -> Tuple[int, int, int]:
  """Grid sides after the stem, Reduction-A and Reduction-B (299 -> (35, 17, 8) when 'VALID')."""
  if padding not in PADDINGS:
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
  n = _reduce(size, 3, 2, padding)  # Conv3x3/2 V
  n = _reduce(n, 3, 1, padding)  # Conv3x3 V
  n = _reduce(n, 3, 2, padding)  # MaxPool3x3/2 V (Conv3x3 64 and Conv1x1 80 keep the size)
  n = _reduce(n, 3, 1, padding)  # Conv3x3 192 V
  stem = _reduce(n, 3, 2, padding)  # Conv3x3/2 256 V
  red_a = _reduce(stem, 3, 2, padding)
  red_b = _reduce(red_a, 3, 2, padding)
  return stem, red_a, red_b


def min_input_size(padding: str = "VALID") -> int:
  """Smallest accepted input side: 75 for 'VALID' (the paper's), 32 for 'SAME'."""
  if padding not in PADDINGS:
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
  if padding == "SAME":
    return _SAME_MIN_SIZE
  n = 1
  while feature_sizes(n, padding)[-1] < 1:
    n += 1
  return n


def _check_input_size(shape: Sequence[int], padding: str):
  m = min_input_size(padding)
  if shape[0] < m or shape[1] < m:
    hint = " (padding='SAME' accepts inputs down to 32 px)" if padding == "VALID" else ""
    raise ValueError(
        f"input spatial size {tuple(shape)} is smaller than the {m} px Inception-ResNet needs with "
        f"padding={padding!r}: the stem and Reduction-A/B shrink the input about 32x "
        f"(299 -> 35 -> 17 -> 8){hint}")


# ----------------------------------------------------------------------------- blocks


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU, the conventional layer of every figure."""

  features: int
  kernel_size: Tuple[int, int] = (1, 1)
  strides: Tuple[int, int] = (1, 1)
  padding: str = "SAME"
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides, padding=self.padding,
                use_bias=False, dtype=self.dtype, kernel_init=he_init, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class _Unit(nn.Module):
  """Shared fields of the blocks: ``width`` multiplier, BN settings, padding of "V" layers."""

  width: float = 1.0
  padding: str = "VALID"
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  dtype: Any = None

  def ch(self, c: int) -> int:
    return max(1, int(round(c * self.width)))

  def conv(self, c: int, k: Tuple[int, int], name: str, stride: int = 1, valid: bool = False):
    """A ConvBN of ``ch(c)`` channels; ``valid`` marks the paper's "V" (uses ``self.padding``)."""
    return ConvBN(features=self.ch(c), kernel_size=k, strides=(stride, stride),
                  padding=self.padding if valid else "SAME", bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dtype=self.dtype, name=name)

  def pool(self, x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=self.padding)


class _Residual(_Unit):
  """ReLU?(x + scale * Up(concat(branches))), Up a linear 1x1 conv with bias back to C_in."""

  scale: float = 1.0
  activate: bool = True

  def residual(self, x: jax.Array, branches: Sequence[jax.Array]) -> jax.Array:
    up = nn.Conv(x.shape[-1], (1, 1), use_bias=True, dtype=self.dtype, kernel_init=lecun_init,
                 name="up")(jnp.concatenate(branches, axis=-1))
    x = x + jnp.asarray(self.scale, up.dtype) * up
    return nn.relu(x) if self.activate else x


class Stem(_Unit):
  """Inception-ResNet-v1 stem (Szegedy et al. fig. 14): 299 x 299 x 3 -> 35 x 35 x 256."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.conv(32, (3, 3), "conv_0", stride=2, valid=True)(x, train)
    x = self.conv(32, (3, 3), "conv_1", valid=True)(x, train)
    x = self.conv(64, (3, 3), "conv_2")(x, train)
    x = self.pool(x)
    x = self.conv(80, (1, 1), "conv_3")(x, train)
    x = self.conv(192, (3, 3), "conv_4", valid=True)(x, train)
    return self.conv(256, (3, 3), "conv_5", stride=2, valid=True)(x, train)


class InceptionResNetA(_Residual):
  """Inception-ResNet-A (fig. 10), 35 x 35 grid: branches 1x1 | 1x1-3x3 | 1x1-3x3-3x3, 32 each."""

  scale: float = 0.17

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b0 = self.conv(32, (1, 1), "b0_1x1")(x, train)
    b1 = self.conv(32, (1, 1), "b1_1x1")(x, train)
    b1 = self.conv(32, (3, 3), "b1_3x3")(b1, train)
    b2 = self.conv(32, (1, 1), "b2_1x1")(x, train)
    b2 = self.conv(32, (3, 3), "b2_3x3a")(b2, train)
    b2 = self.conv(32, (3, 3), "b2_3x3b")(b2, train)
    return self.residual(x, [b0, b1, b2])


class InceptionResNetB(_Residual):
  """Inception-ResNet-B (fig. 11), 17 x 17 grid: branches 1x1 | 1x1-1x7-7x1, 128 each."""

  scale: float = 0.10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b0 = self.conv(128, (1, 1), "b0_1x1")(x, train)
    b1 = self.conv(128, (1, 1), "b1_1x1")(x, train)
    b1 = self.conv(128, (1, 7), "b1_1x7")(b1, train)
    b1 = self.conv(128, (7, 1), "b1_7x1")(b1, train)
    return self.residual(x, [b0, b1])


class InceptionResNetC(_Residual):
  """Inception-ResNet-C (fig. 13), 8 x 8 grid: branches 1x1 | 1x1-1x3-3x1, 192 each."""

  scale: float = 0.20

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b0 = self.conv(192, (1, 1), "b0_1x1")(x, train)
    b1 = self.conv(192, (1, 1), "b1_1x1")(x, train)
    b1 = self.conv(192, (1, 3), "b1_1x3")(b1, train)
    b1 = self.conv(192, (3, 1), "b1_3x1")(b1, train)
    return self.residual(x, [b0, b1])


class ReductionA(_Unit):
  """Reduction-A (fig. 7): [MaxPool/2 | 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m]; C -> C + n + m."""

  klmn: Tuple[int, int, int, int] = (192, 192, 256, 384)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k, l, m, n = self.klmn
    b0 = self.pool(x)
    b1 = self.conv(n, (3, 3), "b1_3x3", stride=2, valid=True)(x, train)
    b2 = self.conv(k, (1, 1), "b2_1x1")(x, train)
    b2 = self.conv(l, (3, 3), "b2_3x3")(b2, train)
    b2 = self.conv(m, (3, 3), "b2_3x3s2", stride=2, valid=True)(b2, train)
    return jnp.concatenate([b0, b1, b2], axis=-1)


class ReductionB(_Unit):
  """Reduction-B (fig. 12): [MaxPool/2 | 1x1 256 -> 3x3/2 384 | 1x1 256 -> 3x3/2 256 |
  1x1 256 -> 3x3 256 -> 3x3/2 256]; C -> C + 896."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b0 = self.pool(x)
    b1 = self.conv(256, (1, 1), "b1_1x1")(x, train)
    b1 = self.conv(384, (3, 3), "b1_3x3", stride=2, valid=True)(b1, train)
    b2 = self.conv(256, (1, 1), "b2_1x1")(x, train)
    b2 = self.conv(256, (3, 3), "b2_3x3", stride=2, valid=True)(b2, train)
    b3 = self.conv(256, (1, 1), "b3_1x1")(x, train)
    b3 = self.conv(256, (3, 3), "b3_3x3a")(b3, train)
    b3 = self.conv(256, (3, 3), "b3_3x3b", stride=2, valid=True)(b3, train)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


# ----------------------------------------------------------------------------- backbone + models


# Depth presets of Hasani & Mahoor's networks: blocks (num_a, num_b, num_c).
DEPTHS = {"shallow": dict(num_a=1, num_b=1, num_c=1), "deep": dict(num_a=5, num_b=10, num_c=5)}
SHALLOW_DEPTHS = DEPTHS["shallow"]
DEEP_DEPTHS = DEPTHS["deep"]


class _BackboneConfig(nn.Module):
  """Backbone fields shared by the backbone and the models (see the module docstring)."""

  num_a: int = 5
  num_b: int = 10
  num_c: int = 5
  width_multiplier: float = 1.0
  reduction_a: Tuple[int, int, int, int] = (192, 192, 256, 384)  # (k, l, m, n)
  scale_a: float = 0.17
  scale_b: float = 0.10
  scale_c: float = 0.20
  last_block_relu: bool = False
  multiscale: bool = False
  padding: str = "VALID"
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  dtype: Any = None

  def backbone_kwargs(self) -> Dict[str, Any]:
    """The ``InceptionResNetV1`` fields of this module."""
    return {f: getattr(self, f) for f in _BACKBONE_FIELDS}

  def check_backbone_config(self):
    kw = self.backbone_kwargs()
    for f in ("num_a", "num_b", "num_c"):
      v = kw[f]
      if not isinstance(v, int) or v < 0:
        raise ValueError(f"{f} must be an int >= 0, got {v!r}")
    if not self.width_multiplier > 0:
      raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}")
    if len(self.reduction_a) != 4 or any(int(c) < 1 for c in self.reduction_a):
      raise ValueError(f"reduction_a must be 4 positive channel counts (k, l, m, n), got "
                       f"{tuple(self.reduction_a)!r}")
    if self.padding not in PADDINGS:
      raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
    if not 0.0 <= self.bn_momentum < 1.0 or not self.bn_epsilon > 0:
      raise ValueError(f"need 0 <= bn_momentum < 1 and bn_epsilon > 0, got {self.bn_momentum!r}, "
                       f"{self.bn_epsilon!r}")


_BACKBONE_FIELDS = ("num_a", "num_b", "num_c", "width_multiplier", "reduction_a", "scale_a",
                    "scale_b", "scale_c", "last_block_relu", "multiscale", "padding",
                    "bn_momentum", "bn_epsilon", "dtype")


def feature_dim(width_multiplier: float = 1.0, reduction_a=(192, 192, 256, 384),
                multiscale: bool = False) -> int:
  """Width of the pooled features: 1792 at width 1 (2944 with ``multiscale``)."""
  ch = lambda c: max(1, int(round(c * width_multiplier)))  # noqa: E731
  a = ch(256)
  b = a + ch(reduction_a[3]) + ch(reduction_a[2])
  c = b + ch(384) + ch(256) + ch(256)
  return a + b + c if multiscale else c


class InceptionResNetV1(_BackboneConfig):
  """Inception-ResNet-v1 trunk: images (B, H, W, C) -> pooled features (B, F), float32.

  F = 1792 (x width), or 256 + 896 + 1792 with ``multiscale`` (pooled A, B and C stage outputs).
  """

  def _trunk(self, x: jax.Array, train: bool) -> jax.Array:
    """The layers, built in this module's scope (call from its ``@nn.compact`` method)."""
    self.check_backbone_config()
    kw = self.backbone_kwargs()
    if x.ndim != 4:
      raise ValueError(f"Inception-ResNet expects images (B, H, W, C), got shape {x.shape}")
    _check_input_size(x.shape[1:3], self.padding)
    common = dict(width=self.width_multiplier, padding=self.padding, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    x = x.astype(self.dtype) if self.dtype is not None else x
    x = Stem(**common, name="stem")(x, train)
    for j in range(kw["num_a"]):
      x = InceptionResNetA(**common, scale=self.scale_a, name=f"block_a_{j}")(x, train)
    stage_a = x
    x = ReductionA(**common, klmn=tuple(self.reduction_a), name="reduction_a")(x, train)
    for j in range(kw["num_b"]):
      x = InceptionResNetB(**common, scale=self.scale_b, name=f"block_b_{j}")(x, train)
    stage_b = x
    x = ReductionB(**common, name="reduction_b")(x, train)
    for j in range(kw["num_c"]):
      last = j == kw["num_c"] - 1
      x = InceptionResNetC(**common, scale=self.scale_c,
                           activate=self.last_block_relu or not last, name=f"block_c_{j}")(x, train)
    stages = (stage_a, stage_b, x) if self.multiscale else (x,)
    pooled = [jnp.mean(s.astype(jnp.float32), axis=(1, 2)) for s in stages]
    return jnp.concatenate(pooled, axis=-1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self._trunk(x, train)


class InceptionResNetBackbone(InceptionResNetV1):
  """Registered backbone 'inception_resnet': images (B, H, W, C) -> {'features': (B, F) float32}.

  The ``InceptionResNetV1`` trunk with its flat parameter tree (stem, block_a_{j}, reduction_a,
  ...: the ``backbone`` subtree of the ``inception_resnet_shallow`` / ``_deep`` models).
  ``depth`` ('shallow' = 1/1/1, 'deep' = 5/10/5 A/B/C blocks) sets ``num_a``, ``num_b`` and
  ``num_c`` that are not given; the other fields are ``InceptionResNetV1``'s. BN statistics live in
  'batch_stats' (a train-mode apply needs ``mutable=['batch_stats']``).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  depth: str = "deep"
  num_a: Optional[int] = None
  num_b: Optional[int] = None
  num_c: Optional[int] = None

  def backbone_kwargs(self) -> Dict[str, Any]:
    if self.depth not in DEPTHS:
      raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {self.depth!r}")
    kw = super().backbone_kwargs()
    return {**kw, **{k: v for k, v in DEPTHS[self.depth].items() if kw[k] is None}}

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    return {"features": self._trunk(image, train)}


def lstm_clip_features(m, x: jax.Array, train: bool, what: str) -> jax.Array:
  """Clips (B, T, H, W, C) -> frame trunk on all B * T frames -> LSTM layers -> (B, T, H').

  Call from the ``@nn.compact`` method of ``m`` (fields: the backbone ones via
  ``m.backbone_kwargs()``, lstm_hidden, lstm_layers, bidirectional, num_frames, dtype); creates
  ``backbone`` (an ``InceptionResNetV1``) and ``lstm_{i}`` (or ``lstm_{i}_forward`` /
  ``lstm_{i}_backward``) in m's scope. Returns the LSTM outputs in the compute dtype.
  """
  if not isinstance(m.lstm_hidden, int) or m.lstm_hidden < 1:
    raise ValueError(f"lstm_hidden must be an int >= 1, got {m.lstm_hidden!r}")
  if not isinstance(m.lstm_layers, int) or m.lstm_layers < 1:
    raise ValueError(f"lstm_layers must be an int >= 1, got {m.lstm_layers!r}")
  if x.ndim != 5:
    raise ValueError(f"{what} expects clips (B, T, H, W, C), got shape {x.shape}")
  b, t = x.shape[:2]
  if m.num_frames is not None and t != m.num_frames:
    raise ValueError(f"clips must have num_frames={m.num_frames} frames, got T={t} "
                     f"(shape {x.shape})")
  feats = InceptionResNetV1(**m.backbone_kwargs(), name="backbone")(
      x.reshape((b * t,) + x.shape[2:]), train)
  h = feats.reshape(b, t, -1)
  h = h if m.dtype is None else h.astype(m.dtype)
  for i in range(m.lstm_layers):
    cell = lambda name: nn.OptimizedLSTMCell(  # noqa: E731
        m.lstm_hidden, dtype=m.dtype, kernel_init=lecun_init, name=name)
    if m.bidirectional:
      h = nn.Bidirectional(nn.RNN(cell(f"lstm_{i}_forward")),
                           nn.RNN(cell(f"lstm_{i}_backward")))(h)
    else:
      h = nn.RNN(cell(f"lstm_{i}"))(h)
  return h


class InceptionResNetLSTMBackbone(InceptionResNetBackbone):
  """Registered backbone 'inception_resnet_lstm': clips (B, T, H, W, C) -> {'features': (B, T, H')}.

  Per-frame Inception-ResNet features -> ``lstm_layers`` LSTM layers (the LSTM of
  ``InceptionResNetLSTM``; H' = lstm_hidden, doubled when ``bidirectional``), float32. Parameter
  tree: ``InceptionResNetLSTM``'s minus ``head`` (``backbone`` = the frame trunk, ``lstm_{i}``).
  ``depth`` defaults to 'shallow', as the registered 'inception_resnet_lstm' model.
  """

  input_names: ClassVar[Tuple[str, ...]] = ("frames",)

  depth: str = "shallow"
  lstm_hidden: int = 512
  lstm_layers: int = 1
  bidirectional: bool = False
  num_frames: Optional[int] = None

  @nn.compact
  def __call__(self, frames: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    h = lstm_clip_features(self, frames, train, "the inception_resnet_lstm backbone")
    return {"features": h.astype(jnp.float32)}


BACKBONES.register("inception_resnet", InceptionResNetBackbone)
BACKBONES.register("inception_resnet_lstm", InceptionResNetLSTMBackbone)


def _check_head(num_outputs, dropout_rate):
  if not isinstance(num_outputs, int) or num_outputs < 1:
    raise ValueError(f"num_outputs must be an int >= 1, got {num_outputs!r}")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")


class InceptionResNetVA(_BackboneConfig):
  """Frame model (Shallow / Deep Inception-ResNet): images (B, H, W, C) -> tanh outputs (B, 2).

  Attributes (besides the backbone fields of the module docstring):
    num_outputs: outputs per image (2: valence, arousal).
    dropout_rate: dropout on the pooled features before the head (0.2 = the paper's keep 0.8).
  """

  num_outputs: int = 2
  dropout_rate: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    """Returns tanh outputs (B, num_outputs), or ``(outputs, pooled features)``.

    Args:
      x: float images (B, H, W, C), H and W >= ``min_input_size(padding)``.
      train: batch statistics in BN (pass ``mutable=['batch_stats']``) and dropout ('dropout' rng).
      return_features: also return the pooled backbone features (B, F), float32.
    """
    _check_head(self.num_outputs, self.dropout_rate)
    features = InceptionResNetV1(**self.backbone_kwargs(), name="backbone")(x, train)
    y = features if self.dtype is None else features.astype(self.dtype)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.Dense(self.num_outputs, dtype=self.dtype, kernel_init=lecun_init, name="head")(y)
    out = jnp.tanh(y.astype(jnp.float32))
    return (out, features) if return_features else out


class InceptionResNetLSTM(_BackboneConfig):
  """Inception-ResNet with LSTMs: clips (B, T, H, W, C) -> per-frame tanh outputs (B, T, 2).

  The frame backbone runs on all B * T frames at once (BN statistics in train mode are over them
  all), its pooled features go through ``lstm_layers`` LSTM layers (``nn.RNN`` over
  ``nn.OptimizedLSTMCell``, zero initial state, gates i, f, g, o as in PyTorch, one bias per gate),
  then dropout and a per-frame Dense + tanh.

  Attributes (besides the backbone fields; the backbone defaults to the deep depths here, the
  registered 'inception_resnet_lstm' uses the shallow one):
    num_outputs: outputs per frame.
    dropout_rate: dropout on the LSTM outputs before the head.
    lstm_hidden: LSTM units per layer (and direction).
    lstm_layers: stacked LSTM layers.
    bidirectional: run each layer in both directions and concatenate (output 2 * lstm_hidden).
    num_frames: if set, clips must have exactly this many frames.
  """

  num_outputs: int = 2
  dropout_rate: float = 0.2
  lstm_hidden: int = 512
  lstm_layers: int = 1
  bidirectional: bool = False
  num_frames: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    """Returns (B, T, num_outputs), or ``(outputs, LSTM outputs (B, T, H'))``."""
    _check_head(self.num_outputs, self.dropout_rate)
    h = lstm_clip_features(self, x, train, "InceptionResNetLSTM")
    lstm_out = h.astype(jnp.float32)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    y = nn.Dense(self.num_outputs, dtype=self.dtype, kernel_init=lecun_init, name="head")(y)
    out = jnp.tanh(y.astype(jnp.float32))
    return (out, lstm_out) if return_features else out


# ----------------------------------------------------------------------------- registry


def _whole_model(name: str, cls, depth: str, kwargs: Dict[str, Any]):
  """``cls`` with the ``depth`` preset and ``kwargs``; refuses the classifier-style ``num_classes``."""
  if "num_classes" in kwargs:
    raise TypeError(
        f"{name} takes num_outputs (regression outputs per image or frame; 2 = valence, arousal), "
        f"not num_classes={kwargs['num_classes']!r}: pass num_outputs={kwargs['num_classes']!r}")
  return cls(**{**DEPTHS[depth], **kwargs})


@register("inception_resnet_shallow")
def inception_resnet_shallow(**kwargs) -> InceptionResNetVA:
  """Shallow Inception-ResNet: stem, 1 A, Reduction-A, 1 B, Reduction-B, 1 C, tanh head (2)."""
  return _whole_model("inception_resnet_shallow", InceptionResNetVA, "shallow", kwargs)


@register("inception_resnet_deep")
def inception_resnet_deep(**kwargs) -> InceptionResNetVA:
  """Deep Inception-ResNet: Inception-ResNet-v1 depths (5 A, 10 B, 5 C), tanh head (2)."""
  return _whole_model("inception_resnet_deep", InceptionResNetVA, "deep", kwargs)


@register("inception_resnet_lstm")
def inception_resnet_lstm(**kwargs) -> InceptionResNetLSTM:
  """Inception-ResNet with LSTMs: shallow frame backbone -> LSTM(512) -> per-frame tanh head (2)."""
  return _whole_model("inception_resnet_lstm", InceptionResNetLSTM, "shallow", kwargs)
