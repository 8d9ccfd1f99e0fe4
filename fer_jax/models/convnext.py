"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022, arXiv 2201.03545) in Flax Linen.

Architecture (paper Sec. 2, Fig. 4; official code facebookresearch/ConvNeXt):

* stem: Conv k x k, stride k ("patchify", k = 4 in the paper) -> LayerNorm;
* 4 stages; stage i > 0 starts with a downsampling layer LayerNorm -> Conv 2x2 stride 2;
* block: x + DropPath(gamma * Dense_C(GELU(Dense_4C(LN(dwConv7x7(x)))))), with layer scale gamma
  (Touvron et al. 2021, init 1e-6) and stochastic depth (Huang et al. 2016) whose rate grows
  linearly from 0 to ``drop_path_rate`` over all blocks;
* head: global average pool -> LayerNorm -> Dense(num_classes).

Every LayerNorm uses eps = 1e-6. Conv/Dense kernels are initialised with a truncated normal of
std 0.02 and biases with zeros, as in the reference. Parameters are float32; ``dtype`` sets the
compute dtype (e.g. ``jnp.bfloat16``); logits and features are returned as float32.

Parameter tree (see ``fer_jax.models.convert`` for the PyTorch mapping)::

  stem_conv, stem_norm,
  stage_{i}/{downsample_norm, downsample_conv (i > 0),
             block_{j}/{dwconv, norm, pwconv1, pwconv2, gamma}},
  head_norm, head
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.layers.depthwise import DepthwiseConv
from fer_jax.registry import register

LN_EPS = 1e-6
trunc_normal_init = nn.initializers.truncated_normal(stddev=0.02)


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth: zeroes whole samples w.p. ``rate``, scales the others by 1 / (1 - rate).

  The mask has shape (B, 1, ..., 1) and is drawn with ``jax.random.bernoulli(rng, 1 - rate)``.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"drop path rate must be in [0, 1), got {rate!r}")
  if rate == 0.0:
    return x
  keep_prob = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / jnp.asarray(keep_prob, x.dtype))


class DropPath(nn.Module):
  """Per-sample stochastic depth; active only when ``train`` (uses the 'dropout' rng)."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    return drop_path(x, self.rate, self.make_rng("dropout"))


class ConvNeXtBlock(nn.Module):
  """dwConv7x7 -> LN -> Dense 4C -> GELU (exact) -> Dense C -> layer scale -> DropPath -> + x."""

  drop_path_rate: float = 0.0
  layer_scale_init_value: Optional[float] = 1e-6
  mlp_ratio: int = 4
  dtype: Any = None
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    y = DepthwiseConv(kernel_size=(7, 7), impl=self.depthwise_impl, dtype=self.dtype,
                      kernel_init=trunc_normal_init, name="dwconv")(x)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(y)
    y = nn.Dense(self.mlp_ratio * c, dtype=self.dtype, kernel_init=trunc_normal_init,
                 name="pwconv1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(c, dtype=self.dtype, kernel_init=trunc_normal_init, name="pwconv2")(y)
    if self.layer_scale_init_value is not None:
      gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init_value), (c,),
                         jnp.float32)
      y = y * gamma.astype(y.dtype)
    y = DropPath(self.drop_path_rate, name="drop_path")(y, train)
    return x + y


class ConvNeXtStage(nn.Module):
  """Optional downsampling (LN -> Conv 2x2 stride 2) followed by ``len(drop_path_rates)`` blocks."""

  dim: int
  drop_path_rates: Tuple[float, ...]
  downsample: bool = True
  layer_scale_init_value: Optional[float] = 1e-6
  dtype: Any = None
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.downsample:
      x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="downsample_norm")(x)
      x = nn.Conv(self.dim, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype,
                  kernel_init=trunc_normal_init, name="downsample_conv")(x)
    for j, rate in enumerate(self.drop_path_rates):
      x = ConvNeXtBlock(drop_path_rate=rate, layer_scale_init_value=self.layer_scale_init_value,
                        dtype=self.dtype, depthwise_impl=self.depthwise_impl,
                        name=f"block_{j}")(x, train)
    return x


def drop_path_schedule(depths: Sequence[int],
                       drop_path_rate: float) -> Tuple[Tuple[float, ...], ...]:
  """Per-block drop-path rates, linear from 0 to ``drop_path_rate`` over all blocks, per stage."""
  rates = np.linspace(0.0, drop_path_rate, int(sum(depths))).tolist()
  out, start = [], 0
  for d in depths:
    out.append(tuple(float(r) for r in rates[start:start + d]))
    start += d
  return tuple(out)


def check_convnext_fields(m) -> None:
  """Validates the ConvNeXt fields of ``m`` (a ConvNeXt or a module built on its fields)."""
  if len(m.depths) != len(m.dims) or not m.depths:
    raise ValueError(f"depths {tuple(m.depths)} and dims {tuple(m.dims)} must be non-empty "
                     "and have the same length")
  if any(int(d) < 1 for d in m.depths) or any(int(c) < 1 for c in m.dims):
    raise ValueError(f"depths {tuple(m.depths)} and dims {tuple(m.dims)} must be positive")
  if int(m.stem_patch_size) < 1:
    raise ValueError(f"stem_patch_size must be >= 1, got {m.stem_patch_size!r}")
  if not 0.0 <= m.drop_path_rate < 1.0:
    raise ValueError(f"drop_path_rate must be in [0, 1), got {m.drop_path_rate!r}")
  if not 0.0 <= m.head_dropout_rate < 1.0:
    raise ValueError(f"head_dropout_rate must be in [0, 1), got {m.head_dropout_rate!r}")
  if m.num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {m.num_classes!r}")


class ConvNeXt(nn.Module):
  """ConvNeXt classifier.

  Attributes:
    num_classes: number of logits; 0 means no classifier (``__call__`` returns the features).
    depths: blocks per stage.
    dims: channels per stage.
    drop_path_rate: final stochastic-depth rate (linear schedule over all blocks).
    layer_scale_init_value: initial layer-scale gamma; None disables layer scale.
    stem_patch_size: stem conv kernel = stride (4 in the paper; 1 or 2 suit 48 px FER images).
    head_init_scale: multiplies the initial classifier kernel (bias starts at 0).
    head_dropout_rate: dropout on the pooled features before the classifier.
    dtype: compute dtype (params stay float32).
    depthwise_impl: implementation passed to ``DepthwiseConv``; "auto" = "shift" on CPU, "xla" elsewhere.
  """

  num_classes: int = 1000
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  drop_path_rate: float = 0.0
  layer_scale_init_value: Optional[float] = 1e-6
  stem_patch_size: int = 4
  head_init_scale: float = 1.0
  head_dropout_rate: float = 0.0
  dtype: Any = None
  depthwise_impl: str = "auto"

  def _check_config(self):
    check_convnext_fields(self)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    """Maps images (B, H, W, C) to logits (B, num_classes).

    Args:
      x: float images, channels last.
      train: enables stochastic depth and head dropout (rng collection 'dropout').
      return_features: also return the pooled, LayerNorm-ed features (B, dims[-1]) that feed the
        classifier, i.e. ``(logits, features)``.
    """
    self._check_config()
    if x.ndim != 4:
      raise ValueError(f"ConvNeXt expects images (B, H, W, C), got shape {x.shape}")
    p = int(self.stem_patch_size)
    min_size = p * 2 ** (len(self.dims) - 1)
    if x.shape[1] < min_size or x.shape[2] < min_size:
      raise ValueError(f"input spatial size {x.shape[1:3]} is smaller than the {min_size} px this "
                       f"ConvNeXt needs (stem patch {p}, {len(self.dims) - 1} 2x downsamplings)")
    x = x.astype(self.dtype) if self.dtype is not None else x
    x = nn.Conv(self.dims[0], (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=trunc_normal_init, name="stem_conv")(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="stem_norm")(x)
    rates = drop_path_schedule(self.depths, self.drop_path_rate)
    for i, dim in enumerate(self.dims):
      x = ConvNeXtStage(dim=dim, drop_path_rates=rates[i], downsample=i > 0,
                        layer_scale_init_value=self.layer_scale_init_value, dtype=self.dtype,
                        depthwise_impl=self.depthwise_impl, name=f"stage_{i}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    features = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="head_norm")(x)
    features_out = features.astype(jnp.float32)
    if self.num_classes == 0:
      return (features_out, features_out) if return_features else features_out
    y = nn.Dropout(self.head_dropout_rate, deterministic=not train)(features)
    head_init = nn.initializers.truncated_normal(stddev=0.02 * self.head_init_scale)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=head_init, name="head")(y)
    logits = logits.astype(jnp.float32)
    return (logits, features_out) if return_features else logits


# Variants (dims, depths) as in timm / the official repository.
ConvNeXtAtto = functools.partial(ConvNeXt, depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
ConvNeXtFemto = functools.partial(ConvNeXt, depths=(2, 2, 6, 2), dims=(48, 96, 192, 384))
ConvNeXtPico = functools.partial(ConvNeXt, depths=(2, 2, 6, 2), dims=(64, 128, 256, 512))
ConvNeXtNano = functools.partial(ConvNeXt, depths=(2, 2, 8, 2), dims=(80, 160, 320, 640))
ConvNeXtTiny = functools.partial(ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
ConvNeXtSmall = functools.partial(ConvNeXt, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
ConvNeXtBase = functools.partial(ConvNeXt, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
ConvNeXtLarge = functools.partial(ConvNeXt, depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
ConvNeXtXLarge = functools.partial(ConvNeXt, depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048))

VARIANTS = {
    "convnext_atto": ConvNeXtAtto,
    "convnext_femto": ConvNeXtFemto,
    "convnext_pico": ConvNeXtPico,
    "convnext_nano": ConvNeXtNano,
    "convnext_tiny": ConvNeXtTiny,
    "convnext_small": ConvNeXtSmall,
    "convnext_base": ConvNeXtBase,
    "convnext_large": ConvNeXtLarge,
    "convnext_xlarge": ConvNeXtXLarge,
}

for _name, _variant in VARIANTS.items():
  register(_name, _variant)
# The family itself, for custom depths / dims (e.g. the small model of experiments/convnext_synthetic.py).
register("convnext", ConvNeXt)
