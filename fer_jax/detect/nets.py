"""MTCNN's three networks (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", Fig. 2) as Flax Linen modules, NHWC.

Layer for layer the definitions of facenet-pytorch 2.6.0 (``facenet_pytorch/models/mtcnn.py``: PNet,
RNet, ONet), so its converted weights (:mod:`fer_jax.detect.convert_mtcnn`) give the same outputs:

  * PReLU with one slope per channel (``torch.nn.PReLU(C)``): ``x if x >= 0 else a * x``.
  * Max pooling with ``ceil_mode=True`` and no padding: ``ceil((L - k) / s) + 1`` outputs, the last
    window cut by the border (:func:`max_pool_ceil`).
  * R-Net / O-Net flatten their last feature map as torch does after ``x.permute(0, 3, 2, 1)`` of an
    NCHW tensor, i.e. in (W, H, C) order, before the first dense layer.

Outputs (as facenet's, softmax over the two face / not-face logits):
  P-Net ``(reg (B, h, w, 4), prob (B, h, w, 2))``; R-Net ``(reg (N, 4), prob (N, 2))``;
  O-Net ``(reg (N, 4), landmarks (N, 10) = 5 x then 5 y, prob (N, 2))``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class PReLU(nn.Module):
  """``torch.nn.PReLU(num_parameters=C)`` on the last axis (param ``alpha`` (C,))."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha * x)


def max_pool_ceil(x, window: int, stride: int):
  """``torch.nn.MaxPool2d(window, stride, ceil_mode=True)`` on NHWC ``x`` (no padding).

  Output length ``ceil((L - window) / stride) + 1`` per spatial axis (torch drops a last window that
  would start past the input; with ``window >= stride`` none does); missing border values count -inf.
  """
  pads = []
  for length in x.shape[1:3]:
    if length < window:
      raise ValueError(f"max pool window {window} does not fit a feature map of size {length}")
    out = math.ceil((length - window) / stride) + 1
    if (out - 1) * stride >= length:
      out -= 1
    pads.append((0, (out - 1) * stride + window - length))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                               [(0, 0), *pads, (0, 0)])


def _conv(features: int, k: int, name: str):
  return nn.Conv(features, (k, k), padding="VALID", name=name)


def _flatten_whc(x):
  """(N, H, W, C) -> (N, W * H * C) in torch's ``permute(0, 3, 2, 1)`` order of the NCHW map."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """Proposal network: fully convolutional, 12 x 12 receptive field, stride 2."""

  @nn.compact
  def __call__(self, x):
    x = PReLU(name="prelu1")(_conv(10, 3, "conv1")(x))
    x = max_pool_ceil(x, 2, 2)
    x = PReLU(name="prelu2")(_conv(16, 3, "conv2")(x))
    x = PReLU(name="prelu3")(_conv(32, 3, "conv3")(x))
    prob = jax.nn.softmax(_conv(2, 1, "conv4_1")(x), axis=-1)
    reg = _conv(4, 1, "conv4_2")(x)
    return reg, prob


class RNet(nn.Module):
  """Refinement network on 24 x 24 crops."""

  @nn.compact
  def __call__(self, x):
    x = PReLU(name="prelu1")(_conv(28, 3, "conv1")(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name="prelu2")(_conv(48, 3, "conv2")(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name="prelu3")(_conv(64, 2, "conv3")(x))
    x = PReLU(name="prelu4")(nn.Dense(128, name="dense4")(_flatten_whc(x)))
    prob = jax.nn.softmax(nn.Dense(2, name="dense5_1")(x), axis=-1)
    reg = nn.Dense(4, name="dense5_2")(x)
    return reg, prob


class ONet(nn.Module):
  """Output network on 48 x 48 crops: box regression, 5 landmarks, face probability."""

  @nn.compact
  def __call__(self, x):
    x = PReLU(name="prelu1")(_conv(32, 3, "conv1")(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name="prelu2")(_conv(64, 3, "conv2")(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name="prelu3")(_conv(64, 3, "conv3")(x))
    x = max_pool_ceil(x, 2, 2)
    x = PReLU(name="prelu4")(_conv(128, 2, "conv4")(x))
    x = PReLU(name="prelu5")(nn.Dense(256, name="dense5")(_flatten_whc(x)))
    prob = jax.nn.softmax(nn.Dense(2, name="dense6_1")(x), axis=-1)
    reg = nn.Dense(4, name="dense6_2")(x)
    landmarks = nn.Dense(10, name="dense6_3")(x)
    return reg, landmarks, prob
