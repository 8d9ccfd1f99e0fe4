"""ResNet with basic blocks (He et al. 2016, "Deep Residual Learning", Fig. 2 left, option B shortcuts),
sized for 48-px faces: the compact CPU model of experiments/resnet_fer2013.py.

Why a BatchNorm ResNet beside ConvNeXt: on FER2013's 28,709 grey 48x48 faces a ConvNeXt trained from
scratch overfits before it reaches the ~66% of a mini-Xception (the H200 ceiling check of the
"FER model worth using" issue), while small BatchNorm CNNs are what the FER2013 literature trains from
scratch (VGG / ResNet variants of Pramerdorfer & Kampel 2016, Khaireddin & Chen 2021). On XLA:CPU a
dense 3x3 convolution also runs 5-10x faster per FLOP than ConvNeXt's depthwise 7x7.

Layout (torchvision's ``BasicBlock`` semantics, so a torch model built from timm's ``BasicBlock``
with the same widths is the reference of tests/test_resnet.py):

  stem: for each ``stem_widths[i]``: conv3x3 (stride ``stem_strides[i]``, no bias) -> BN -> ReLU
  stage s: ``depths[s]`` blocks of width ``widths[s]``; the first block of every stage but the first
           has stride 2; block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU;
           shortcut = identity, or conv1x1 (stride) -> BN when the width or stride changes.
  features: global average pool -> (B, widths[-1]) float32.

BatchNorm statistics live in the ``batch_stats`` collection (momentum 0.9 = torch's 0.1, eps 1e-5).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.registry import BACKBONES, PRETRAINED

BN_MOMENTUM = 0.9  # flax: new = m * old + (1 - m) * batch  (torch momentum 0.1)
BN_EPS = 1e-5
# He-normal fan-out initialisation of torchvision's ResNet (kaiming_normal_, mode='fan_out', relu).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Named sizes: (stem_widths, stem_strides, widths, depths). 'fer_s' is the 48-px CPU model: ~38 M
# multiply-adds per 48x48 face, 1.2 M parameters.
SIZES: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]] = {
    "fer_xs": ((16, 24), (1, 2), (24, 48, 96, 192), (1, 1, 1, 1)),
    "fer_s": ((16, 32), (1, 2), (32, 64, 128, 256), (1, 1, 1, 1)),
    "fer_m": ((24, 48), (1, 2), (48, 96, 192, 384), (1, 1, 1, 1)),
    "resnet18_48": ((32, 64), (1, 2), (64, 128, 256, 512), (2, 2, 2, 2)),
}


def _check(name: str, value: Any, length: Optional[int] = None) -> Tuple[int, ...]:
  t = tuple(value) if isinstance(value, (list, tuple)) else None
  if not t or not all(isinstance(v, int) and v >= 1 for v in t) or (length is not None and len(t) != length):
    want = f"{length} " if length is not None else ""
    raise ValueError(f"resnet {name}={value!r}; expected a sequence of {want}positive ints")
  return t


class BasicBlock(nn.Module):
  """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU (He et al. 2016, Fig. 2 left)."""

  width: int
  stride: int = 1
  zero_init_residual: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS, dtype=self.dtype)
    y = conv(self.width, (3, 3), self.stride, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.width, (3, 3), padding=1, name="conv2")(y)
    # Zero-init of the last BN's scale: every block starts as the identity (Goyal et al. 2017).
    y = norm(name="bn2", scale_init=nn.initializers.zeros if self.zero_init_residual
             else nn.initializers.ones)(y)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = conv(self.width, (1, 1), self.stride, padding=0, name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNetBackbone(nn.Module):
  """ResNet backbone (registered as 'resnet'): images (B, H, W, C) -> {'features': (B, widths[-1])}.

  Attributes:
    size: a ``SIZES`` name, or None to give the four fields below.
    stem_widths, stem_strides: the stem's 3x3 conv-BN-ReLU layers.
    widths, depths: basic blocks per stage and their widths.
    zero_init_residual: start every block as the identity (scale of its last BN = 0).
    dtype: compute dtype (parameters and BN statistics stay float32).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  stem_widths: Optional[Sequence[int]] = None
  stem_strides: Optional[Sequence[int]] = None
  widths: Optional[Sequence[int]] = None
  depths: Optional[Sequence[int]] = None
  zero_init_residual: bool = True
  dtype: Any = None

  def resolved(self) -> Tuple[Tuple[int, ...], ...]:
    """(stem_widths, stem_strides, widths, depths), validated."""
    custom = (self.stem_widths, self.stem_strides, self.widths, self.depths)
    if self.size is not None:
      if self.size not in SIZES:
        raise ValueError(f"resnet size={self.size!r}; expected one of {sorted(SIZES)} or None")
      if any(v is not None for v in custom):
        raise ValueError(f"resnet size={self.size!r} fixes stem_widths, stem_strides, widths and "
                         "depths; give either a size or those four fields")
      return SIZES[self.size]
    sw = _check("stem_widths", self.stem_widths)
    ss = _check("stem_strides", self.stem_strides, len(sw))
    w = _check("widths", self.widths)
    return sw, ss, w, _check("depths", self.depths, len(w))

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, widths[-1])}; ``train`` uses and updates batch statistics."""
    stem_widths, stem_strides, widths, depths = self.resolved()
    if image.ndim != 4:
      raise ValueError(f"ResNet backbone expects images (B, H, W, C); got shape {image.shape}")
    x = image.astype(self.dtype) if self.dtype is not None else image
    for i, (w, s) in enumerate(zip(stem_widths, stem_strides)):
      x = nn.Conv(w, (3, 3), s, padding=1, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                  name=f"stem_conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                       dtype=self.dtype, name=f"stem_bn{i}")(x)
      x = nn.relu(x)
    for s, (w, d) in enumerate(zip(widths, depths)):
      for b in range(d):
        x = BasicBlock(w, 2 if (b == 0 and s > 0) else 1, self.zero_init_residual, self.dtype,
                       name=f"stage{s}_block{b}")(x, train)
    pooled = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
    return {"features": pooled.astype(jnp.float32)}


BACKBONES.register("resnet", ResNetBackbone)


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'resnet': ``weights`` = ``{'params', 'batch_stats'}`` of a fer_jax
  ``resnet`` backbone (e.g. ``fer_jax.pretrained``'s ``fer2013_resnet_s``, read from msgpack, no torch)
  -> ``BackboneVariables``; the trees must match ``params`` / ``batch_stats`` (the fresh backbone's)."""
  from fer_jax.models import convert
  if not hasattr(weights, "keys") or "params" not in weights:
    raise ValueError("resnet importer: expected the {'params', 'batch_stats'} of a fer_jax resnet backbone "
                     f"(a shipped model, config.init_weights='pretrained:NAME'); got keys "
                     f"{sorted(weights.keys()) if hasattr(weights, 'keys') else type(weights).__name__}")
  convert.check_tree_against(weights["params"], params, "The pretrained resnet parameters")
  stats = weights.get("batch_stats")
  if batch_stats is not None:
    if stats is None:
      raise ValueError("resnet importer: the pretrained weights have no batch_stats (BatchNorm statistics)")
    convert.check_tree_against(stats, batch_stats, "The pretrained resnet batch_stats")
  return convert.BackboneVariables(params=weights["params"], batch_stats=stats)


PRETRAINED.register("resnet", load_pretrained)
