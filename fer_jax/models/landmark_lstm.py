"""Landmark-sequence CNN + LSTM: one binary (emotion vs rest) model per emotion (Di Luzio, Rosato &
Panella, "An explainable fast deep neural network for emotion recognition", arXiv 2407.14865, 2024),
with optional binarized layers (weights and activations in {-1, +1}, straight-through estimators).

Backbone ``landmark_cnn_lstm`` (``LandmarkCNNLSTM``): landmark clips (B, T, L, C) -> {'features':
(B, lstm_hidden)}. C is 2 (normalised x, y; ``fer_jax.train.tasks.landmark_sequence``) or 4 (plus
the displacement from the first, neutral frame); L is 68 (iBUG order) or the kept landmarks after
pruning. With the ``linear`` head of 1 output it is one per-emotion model:
``model.apply(variables, train=False, landmarks=x) -> {'logits': (B, 1), 'features': (B, H)}``.

Layout (``i`` over ``conv_features``; each frame is a 1-row "image" of L landmarks with C channels,
so the 2-D convs below are 1-D convs along the landmark index when ``conv_kernel[0] == 1``)::

  conv{i}:     Conv(conv_features[i], kernel conv_kernel = (time, landmark), strides (1,
               conv_strides[i]), 'SAME', no bias) -> conv{i}_bn (BatchNorm) -> ReLU
  frame_dense: per frame, flatten (L_out * F) -> Dense(frame_features, no bias) -> frame_bn -> ReLU
  lstm:        nn.RNN(OptimizedLSTMCell(lstm_hidden)) over the T frames (zero initial state;
               gates i, f, g, o as in PyTorch)
  features:    the last hidden state (``pooling='last'``) or the mean over frames ('mean'), float32

``binary=True`` (BNN practice: Courbariaux, Hubara et al. 2016; Rastegari et al. 2016):
  * ``conv0`` is a ``QuantConv`` with a real input and a sign kernel (zero padding);
  * ``conv{i>0}`` and ``frame_dense`` are ``QuantConv`` / ``QuantDense`` with sign input AND sign
    kernel (``quantizer``, default ``ste_sign``; +1 padding, larq's recommendation, exact on the
    packed path); the BatchNorm before each of them centres and scales what its sign sees, so no
    ReLU and no XNOR-Net scale (BN absorbs it);
  * the LSTM (and the ``linear`` head) stay float by default: the LSTM input is the real output of
    ``frame_bn``. ``binary_lstm=True`` binarizes it too (``fer_jax.layers.binary_lstm.BinaryLSTM``: +-1
    inputs, +-1 state and +-1 kernels in the gates' products, learned per-gate scales, float gates and
    cell state), so that every product of the model but the 1-output head is an XNOR-popcount.
  Latent kernels are named ``latent_kernel`` and clipped to [-1, 1] by every optimizer of
  ``fer_jax.train.optim`` (``quant.clip_latent_kernels``).

``pack_landmark_model(model, variables)`` freezes a trained binary model: ``conv{i>0}`` and
``frame_dense`` become the XNOR-popcount ``BinaryConvInference`` / ``BinaryDenseInference``
(``binary_inference.pack_quant_conv`` / ``pack_quant_dense``), ``conv0`` keeps its real input and
reads its sign kernel from packed bits (``SignKernelConvInference``); the outputs equal the float
simulation (tests/test_landmark_lstm.py).

R-EMO / T-EMO. The paper's R-EMO keeps the convolutional weights random and frozen (a randomised
network, fast to train); T-EMO trains everything. Here R-EMO = ``random_front_end=True`` (the conv
kernels get no gradient: ``stop_gradient`` on them, so the backward pass skips their kernel
gradients) plus ``config.optimizer.frozen = FRONT_END_FROZEN`` (no update, weight decay included,
touches them). We chose to keep the BatchNorm layers after the random convs trainable, their
statistics tracking: the trainer runs BN on batch statistics in training, so frozen initial
statistics (mean 0, variance 1) would normalise differently at evaluation than in training; a
learned per-channel affine after a random conv is what random-feature networks usually keep.

Paper says / we chose:

  ===============================  ===========================================================
  paper (summary, PAPERS.md s. 4)  ours
  ===============================  ===========================================================
  landmarks per frame -> binary    (B, T, L, C) normalised landmarks; one logit per model, BCE
  (emotion vs rest) deep models    (``bce`` term of the ``landmark_sequence`` task)
  CNN + LSTM over the frames       convs along the landmark index (iBUG order follows the
                                   facial contours, so neighbours are mostly neighbours on the
                                   face), optional temporal extent (``conv_kernel[0] > 1``),
                                   then one LSTM layer; sizes below (the paper gives none)
  R-EMO: random frozen conv        ``random_front_end`` + ``FRONT_END_FROZEN``; BN trainable
  weights; T-EMO: all trained
  (brief) binarized layers, STE    ``binary=True`` (above); LSTM and head float, or
                                   ``binary_lstm=True``: the LSTM's products binarized too
  ===============================  ===========================================================

Sizes (``SIZES``: conv_features, conv_kernel, conv_strides, frame_features, lstm_hidden):
``tiny`` (16, 32), (1, 5), (1, 2), 64, 32; ``small`` (32, 64), (1, 5), (1, 2), 128, 64; ``base``
(64, 128, 128), (1, 5), (1, 2, 2), 256, 128. Kernels: He-normal (float convs / dense), LeCun-normal
(latent binary kernels), LSTM as flax (LeCun-normal input, orthogonal recurrent, zero biases).
BatchNorm: Flax momentum 0.9, eps 1e-5, statistics in 'batch_stats'.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fer_jax.layers import binary_inference as bi
from fer_jax.layers import binary_lstm, quant
from fer_jax.registry import BACKBONES

__all__ = ["SIZES", "FRONT_END_FROZEN", "LandmarkCNNLSTM", "SignKernelConvInference", "ConvNoGrad",
           "QuantConvNoGrad", "conv_layer", "dense_layer", "pack_landmark_model", "front_end_names"]

BN_MOMENTUM = 0.9
BN_EPS = 1e-5
# R-EMO: the random front end, as a ``config.optimizer.frozen`` regex over parameter paths (the conv
# kernels only; their BatchNorm layers ``conv{i}_bn`` keep training, see the module docstring).
FRONT_END_FROZEN = r"^backbone/conv\d+/"
POOLINGS = ("last", "mean")

# name -> (conv_features, conv_kernel (time, landmark), conv_strides (landmark axis), frame_features,
# lstm_hidden)
SIZES: Dict[str, Tuple[Tuple[int, ...], Tuple[int, int], Tuple[int, ...], int, int]] = {
    "tiny": ((16, 32), (1, 5), (1, 2), 64, 32),
    "small": ((32, 64), (1, 5), (1, 2), 128, 64),
    "base": ((64, 128, 128), (1, 5), (1, 2, 2), 256, 128),
}

he_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
lecun_init = nn.initializers.lecun_normal()


def _ints(name: str, value: Any, length: Optional[int] = None) -> Tuple[int, ...]:
  t = tuple(value) if isinstance(value, (list, tuple)) else None
  if not t or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in t) or (
      length is not None and len(t) != length):
    want = f"{length} " if length is not None else ""
    raise ValueError(f"landmark_cnn_lstm {name}={value!r}; expected a sequence of {want}positive ints")
  return t


def _int(name: str, value: Any) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"landmark_cnn_lstm {name}={value!r}; expected a positive int")
  return value


def front_end_names(num_convs: int) -> Tuple[str, ...]:
  """Module names of the convolutional front end (``conv0`` ... ``conv{n-1}``)."""
  return tuple(f"conv{i}" for i in range(num_convs))


class SignKernelConvInference(nn.Module):
  """Frozen first binary conv: real input, kernel sign bits packed in uint32 words.

  ``y = conv(pad(x, pad_value), unpack(kernel_packed))`` with the same padding and dimension
  numbers as ``QuantConv``, so it computes ``QuantConv(input_quantizer=None, kernel_quantizer=sign)``
  from 32x smaller weights (one word per 32 input channels of each tap and output channel).
  Params: ``kernel_packed`` (kh, kw, ceil(C / 32), features) uint32.
  """

  features: int
  kernel_size: Tuple[int, int]
  in_features: int
  strides: Tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  pad_value: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    wp = self.param("kernel_packed", nn.initializers.zeros_init(),
                    (kh, kw, -(-self.in_features // bi.WORD_BITS), self.features), jnp.uint32)
    if x.shape[-1] != self.in_features:
      raise ValueError(f"SignKernelConvInference {self.name!r}: expected {self.in_features} input "
                       f"channels, got shape {x.shape}")
    kernel = bi.unpack_signs(wp, self.in_features, axis=2, dtype=self.dtype)
    batch_shape = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:]).astype(self.dtype)
    pads = quant.conv_padding(self.padding, x.shape[1:3], (kh, kw), self.strides, (1, 1))
    if any(lo or hi for lo, hi in pads):
      x = jnp.pad(x, ((0, 0),) + pads + ((0, 0),), constant_values=self.pad_value)
    y = lax.conv_general_dilated(x, kernel, self.strides, "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(batch_shape + y.shape[1:])


class LandmarkCNNLSTM(nn.Module):
  """Registered backbone 'landmark_cnn_lstm': landmarks (B, T, L, C) -> {'features': (B, H)}.

  Attributes:
    size: a ``SIZES`` name, or None to give the five fields below.
    conv_features: output channels of each conv of the front end.
    conv_kernel: (time, landmark) extent of every conv ((1, k): per-frame 1-D convs).
    conv_strides: stride of each conv along the landmark axis.
    frame_features: width of the per-frame dense layer before the LSTM.
    lstm_hidden: LSTM units (the feature width).
    pooling: 'last' (the last hidden state) or 'mean' (over frames).
    binary: binarized convs and frame dense (see the module docstring).
    binary_lstm: also a binarized LSTM (needs ``binary``; ``fer_jax.layers.binary_lstm``).
    quantizer: the sign quantizer of the binary layers (a ``fer_jax.layers.quant`` name).
    random_front_end: R-EMO: no gradient into the conv kernels (pair with ``FRONT_END_FROZEN``).
    packed: inference with packed XNOR-popcount layers (built by ``pack_landmark_model``).
    method: the packed product's formulation (``binary_inference.METHODS``).
    dtype: compute dtype (parameters and BN statistics stay float32).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("landmarks",)

  size: Optional[str] = None
  conv_features: Optional[Sequence[int]] = None
  conv_kernel: Optional[Sequence[int]] = None
  conv_strides: Optional[Sequence[int]] = None
  frame_features: Optional[int] = None
  lstm_hidden: Optional[int] = None
  pooling: str = "last"
  binary: bool = False
  binary_lstm: bool = False
  quantizer: str = "ste_sign"
  random_front_end: bool = False
  packed: bool = False
  method: str = "tiled"
  dtype: Any = None

  def resolved(self) -> Tuple[Tuple[int, ...], Tuple[int, int], Tuple[int, ...], int, int]:
    """(conv_features, conv_kernel, conv_strides, frame_features, lstm_hidden), validated."""
    custom = (self.conv_features, self.conv_kernel, self.conv_strides, self.frame_features,
              self.lstm_hidden)
    if self.size is not None:
      if self.size not in SIZES:
        raise ValueError(f"landmark_cnn_lstm size={self.size!r}; expected one of {sorted(SIZES)} or None")
      if any(v is not None for v in custom):
        raise ValueError(f"landmark_cnn_lstm size={self.size!r} fixes conv_features, conv_kernel, "
                         "conv_strides, frame_features and lstm_hidden; give a size or those five fields")
      return SIZES[self.size]
    feats = _ints("conv_features", self.conv_features)
    return (feats, _ints("conv_kernel", self.conv_kernel, 2), _ints("conv_strides", self.conv_strides, len(feats)),
            _int("frame_features", self.frame_features), _int("lstm_hidden", self.lstm_hidden))

  def _check(self) -> None:
    if self.pooling not in POOLINGS:
      raise ValueError(f"landmark_cnn_lstm pooling={self.pooling!r}; expected one of {POOLINGS}")
    if self.binary and not quant.is_binary_quantizer(self.quantizer):
      raise ValueError(f"landmark_cnn_lstm quantizer={self.quantizer!r} does not output +-1; expected one "
                       f"of {[q for q in quant.QUANTIZERS if quant.is_binary_quantizer(q)]}")
    if self.binary_lstm and not self.binary:
      raise ValueError("landmark_cnn_lstm binary_lstm=True needs binary=True (binarized front end)")
    if self.packed and not self.binary:
      raise ValueError("landmark_cnn_lstm packed=True needs binary=True (pack_landmark_model builds it)")
    if self.method not in bi.METHODS:
      raise ValueError(f"landmark_cnn_lstm method={self.method!r}; expected one of {bi.METHODS}")

  @nn.compact
  def __call__(self, landmarks: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, lstm_hidden)}; ``train`` uses and updates batch statistics."""
    self._check()
    feats, kernel, strides, frame_features, hidden = self.resolved()
    if landmarks.ndim != 4:
      raise ValueError(f"landmark_cnn_lstm expects landmarks (B, T, L, C), got shape {landmarks.shape}")
    b, t = landmarks.shape[:2]
    x = landmarks.astype(self.dtype) if self.dtype is not None else landmarks.astype(jnp.float32)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS, dtype=self.dtype)
    for i, (f, s) in enumerate(zip(feats, strides)):
      name = f"conv{i}"
      if self.packed and i == 0:
        x = SignKernelConvInference(f, kernel, x.shape[-1], (1, s), "SAME", 0.0,
                                    dtype=self.dtype or jnp.float32, name=name)(x)
      elif self.packed:
        x = bi.BinaryConvInference(f, kernel, x.shape[-1], strides=(1, s), padding="SAME", pad_value=1,
                                   use_scale=False, use_bias=False, dtype=self.dtype or jnp.float32,
                                   method=self.method, name=name)(x)
      else:
        x = conv_layer(self, i, f, kernel, s, name=name)(x)
      x = norm(name=f"conv{i}_bn")(x)
      if not self.binary:
        x = nn.relu(x)
    x = x.reshape(b, t, -1)
    if self.packed:
      x = bi.BinaryDenseInference(frame_features, x.shape[-1], use_scale=False, use_bias=False,
                                  dtype=self.dtype or jnp.float32, method=self.method, name="frame_dense")(x)
    else:
      x = dense_layer(self, frame_features, name="frame_dense")(x)
    x = norm(name="frame_bn")(x)
    if not self.binary:
      x = nn.relu(x)
    if self.binary_lstm:
      h = binary_lstm.BinaryLSTM(hidden, self.quantizer, packed=self.packed, method=self.method, name="lstm")(x)
    else:
      h = nn.RNN(nn.OptimizedLSTMCell(hidden, dtype=self.dtype, kernel_init=lecun_init, name="lstm"))(x)
    out = h[:, -1] if self.pooling == "last" else jnp.mean(h, axis=1)
    return {"features": out.astype(jnp.float32)}


def conv_layer(bb: "LandmarkCNNLSTM", i: int, features: int, kernel: Tuple[int, int], stride: int,
               name: Optional[str] = None) -> nn.Module:
  """The training-time conv ``i`` of backbone ``bb``: ``nn.Conv``, or ``QuantConv`` when ``bb.binary``
  (kernels read through ``stop_gradient`` when ``bb.random_front_end``). Shared by the backbone and
  ``pack_landmark_model``, so both build the same layer."""
  if not bb.binary:
    cls = ConvNoGrad if bb.random_front_end else nn.Conv
    return cls(features, kernel, (1, stride), padding="SAME", use_bias=False, kernel_init=he_init,
               dtype=bb.dtype, name=name)
  cls = QuantConvNoGrad if bb.random_front_end else quant.QuantConv
  return cls(features, kernel, (1, stride), padding="SAME", pad_values=0.0 if i == 0 else 1.0,
             use_bias=False, input_quantizer=None if i == 0 else bb.quantizer,
             kernel_quantizer=bb.quantizer, kernel_init=lecun_init, dtype=bb.dtype, name=name)


def dense_layer(bb: "LandmarkCNNLSTM", features: int, name: Optional[str] = None) -> nn.Module:
  """The training-time per-frame dense layer of ``bb`` (``QuantDense`` when ``bb.binary``)."""
  if not bb.binary:
    return nn.Dense(features, use_bias=False, kernel_init=he_init, dtype=bb.dtype, name=name)
  return quant.QuantDense(features, use_bias=False, input_quantizer=bb.quantizer,
                          kernel_quantizer=bb.quantizer, kernel_init=lecun_init, dtype=bb.dtype, name=name)


class ConvNoGrad(nn.Conv):
  """``nn.Conv`` whose parameters are read through ``stop_gradient`` (R-EMO's random convs)."""

  def param(self, name, *args, **kwargs):
    return lax.stop_gradient(super().param(name, *args, **kwargs))


class QuantConvNoGrad(quant.QuantConv):
  """``QuantConv`` whose parameters are read through ``stop_gradient`` (binary R-EMO)."""

  def param(self, name, *args, **kwargs):
    return lax.stop_gradient(super().param(name, *args, **kwargs))


BACKBONES.register("landmark_cnn_lstm", LandmarkCNNLSTM)


def _input_channels(variables: Mapping[str, Any]) -> Tuple[int, ...]:
  """Input channels of every conv, read from the latent kernels (kh, kw, in, out)."""
  params = variables["params"]["backbone"]
  i, out = 0, []
  while f"conv{i}" in params:
    out.append(int(params[f"conv{i}"][quant.LATENT_KERNEL_NAME].shape[2]))
    i += 1
  return tuple(out)


def pack_landmark_model(model, variables: Mapping[str, Any], *, method: str = "tiled"):
  """Freezes a trained binary model: ``(packed model, packed variables)`` with the same outputs.

  ``model``: a ``fer_jax.models.composite.Model`` whose backbone is a ``LandmarkCNNLSTM`` with
  ``binary=True``; ``variables``: its ``{'params', 'batch_stats'}``. The binary-input layers
  (``conv{i>0}``, ``frame_dense``) go through ``binary_inference.pack_quant_conv`` /
  ``pack_quant_dense`` (XNOR-popcount in int32), ``conv0`` through ``SignKernelConvInference``, a
  ``binary_lstm`` through ``binary_lstm.pack_binary_lstm``; BatchNorm, float LSTM and head variables are kept. ``packed_bytes`` of the result counts the words.
  """
  bb = getattr(model, "backbone", None)
  if not isinstance(bb, LandmarkCNNLSTM):
    raise ValueError(f"pack_landmark_model: expected a Model with a landmark_cnn_lstm backbone, got "
                     f"{type(bb).__name__ if bb is not None else type(model).__name__}")
  if not bb.binary or bb.packed:
    raise ValueError(f"pack_landmark_model: the backbone must be binary=True and not packed yet (binary="
                     f"{bb.binary}, packed={bb.packed})")
  feats, kernel, strides, frame_features, _ = bb.resolved()
  params = dict(variables["params"])
  old = params["backbone"]
  missing = [n for n in front_end_names(len(feats)) + ("frame_dense",) if n not in old]
  if missing:
    raise ValueError(f"pack_landmark_model: the variables have no backbone modules {missing}; they hold "
                     f"{sorted(old)}")
  channels = _input_channels(variables)
  new = dict(old)
  plain = bb.clone(random_front_end=False)  # the same layers, without the stop_gradient wrapper
  for i, (f, s) in enumerate(zip(feats, strides)):
    layer = conv_layer(plain, i, f, kernel, s)
    latent = old[f"conv{i}"][quant.LATENT_KERNEL_NAME]
    if latent.shape != tuple(kernel) + (channels[i], f):
      raise ValueError(f"pack_landmark_model: conv{i} latent kernel has shape {latent.shape}; the backbone "
                       f"config gives {tuple(kernel) + (channels[i], f)}")
    if i == 0:
      new["conv0"] = {"kernel_packed": bi.pack_signs(latent, axis=2)}
    else:
      _, v = bi.pack_quant_conv(layer, {"params": old[f"conv{i}"]}, method=method)
      new[f"conv{i}"] = v["params"]
  _, v = bi.pack_quant_dense(dense_layer(plain, frame_features), {"params": old["frame_dense"]},
                             method=method)
  new["frame_dense"] = v["params"]
  if bb.binary_lstm:
    new["lstm"] = binary_lstm.pack_binary_lstm(old["lstm"])
  params["backbone"] = new
  packed_model = model.clone(backbone=bb.clone(packed=True, random_front_end=False, method=method))
  return packed_model, {**variables, "params": params}
