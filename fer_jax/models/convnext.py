"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022, arXiv 2201.03545) in Flax Linen.

Architecture (paper Sec. 2, Fig. 4; official code facebookresearch/ConvNeXt):

* stem: Conv k x k, stride k ("patchify", k = 4 in the paper) -> LayerNorm;
* 4 stages; stage i > 0 starts with a downsampling layer LayerNorm -> Conv 2x2 stride 2;
* block: x + DropPath(gamma * Dense_C(GELU(Dense_4C(LN(dwConv7x7(x)))))), with layer scale gamma
  (Touvron et al. 2021, init 1e-6) and stochastic depth (Huang et al. 2016) whose rate grows
  linearly from 0 to ``drop_path_rate`` over all blocks;
* head: global average pool -> LayerNorm -> Dense(num_classes).

One implementation serves every ConvNeXt-based module: ``convnext_trunk`` (stem -> stages -> pooled
LayerNorm) and ``classifier_head`` build their layers in the calling module's scope, so ``ConvNeXt``,
``ConvNeXtBackbone`` (registered backbone 'convnext') and ``fer_jax.models.emonext`` share them and
keep the flat parameter names below. ``SIZES`` is the one size table (atto ... xlarge).
``ConvNeXtStage`` also carries EmoNeXt's optional Squeeze-and-Excitation blocks.

Every LayerNorm uses eps = 1e-6. Conv/Dense kernels are initialised with a truncated normal of
std 0.02 and biases with zeros, as in the reference. Parameters are float32; ``dtype`` sets the
compute dtype (e.g. ``jnp.bfloat16``); logits and features are returned as float32.

Parameter tree (see ``fer_jax.models.convert`` for the PyTorch mapping)::

  stem_conv, stem_norm,
  stage_{i}/{downsample_norm, downsample_conv (i > 0), [downsample_se | stage_se],
             block_{j}/{dwconv, norm, pwconv1, pwconv2, gamma}},
  head_norm, head

``ConvNeXtBackbone``'s tree is the same without ``head``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.layers.depthwise import DepthwiseConv
from fer_jax.layers.squeeze_excitation import SqueezeExcitation, trunc_normal_init
from fer_jax.registry import BACKBONES, PRETRAINED, register

LN_EPS = 1e-6
# (depths, dims) per size, as in timm / the official repositories (ConvNeXt-V1 atto ... xlarge).
SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
SE_PLACEMENTS = ("downsample", "stage", "none")


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
  """Optional downsampling (LN -> Conv 2x2 stride 2) followed by ``len(drop_path_rates)`` blocks.

  Optional Squeeze-and-Excitation (EmoNeXt): ``downsample_se`` right after the downsampling conv
  (EmoNeXt's official code), ``stage_se`` after the last block (EmoNeXt's paper).
  """

  dim: int
  drop_path_rates: Tuple[float, ...]
  downsample: bool = True
  downsample_se: bool = False
  stage_se: bool = False
  se_reduction: int = 16
  layer_scale_init_value: Optional[float] = 1e-6
  dtype: Any = None
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.downsample:
      x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="downsample_norm")(x)
      x = nn.Conv(self.dim, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype,
                  kernel_init=trunc_normal_init, name="downsample_conv")(x)
      if self.downsample_se:
        x = SqueezeExcitation(self.se_reduction, dtype=self.dtype, name="downsample_se")(x)
    for j, rate in enumerate(self.drop_path_rates):
      x = ConvNeXtBlock(drop_path_rate=rate, layer_scale_init_value=self.layer_scale_init_value,
                        dtype=self.dtype, depthwise_impl=self.depthwise_impl,
                        name=f"block_{j}")(x, train)
    if self.stage_se:
      x = SqueezeExcitation(self.se_reduction, dtype=self.dtype, name="stage_se")(x)
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


# ----------------------------------------------------------------------------- shared pieces
# The functions below create their layers in the scope of the module whose ``@nn.compact`` method
# calls them, so ConvNeXt, EmoNeXt and the backbones share one implementation and keep the flat
# parameter names stem_conv, stem_norm, stage_{i}, head_norm (and head).


def resolve_size(size: Optional[str], depths: Optional[Sequence[int]],
                 dims: Optional[Sequence[int]]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """(depths, dims) from a ``SIZES`` name or from explicit depths and dims (exactly one of the two)."""
  if size is not None:
    if size not in SIZES:
      raise ValueError(f"unknown ConvNeXt size {size!r}; known: {list(SIZES)}")
    if depths is not None or dims is not None:
      raise ValueError(f"pass either size={size!r} or depths and dims, not both "
                       f"(got depths={depths!r}, dims={dims!r})")
    return SIZES[size]
  if depths is None or dims is None:
    raise ValueError(f"pass size (one of {list(SIZES)}) or both depths and dims, got "
                     f"depths={depths!r}, dims={dims!r}")
  return tuple(depths), tuple(dims)


def check_trunk_fields(depths: Sequence[int], dims: Sequence[int], stem_patch_size: int,
                       drop_path_rate: float, se_placement: str = "none") -> None:
  """Validates the stem / stage settings shared by every ConvNeXt-based module."""
  if len(depths) != len(dims) or not depths:
    raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must be non-empty "
                     "and have the same length")
  if any(int(d) < 1 for d in depths) or any(int(c) < 1 for c in dims):
    raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must be positive")
  if int(stem_patch_size) < 1:
    raise ValueError(f"stem_patch_size must be >= 1, got {stem_patch_size!r}")
  if not 0.0 <= drop_path_rate < 1.0:
    raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
  if se_placement not in SE_PLACEMENTS:
    raise ValueError(f"se_placement must be one of {SE_PLACEMENTS}, got {se_placement!r}")


def check_convnext_fields(m) -> None:
  """Validates the ConvNeXt classifier fields of ``m`` (ConvNeXt, or EmoNeXt built on its fields)."""
  check_trunk_fields(m.depths, m.dims, m.stem_patch_size, m.drop_path_rate)
  if not 0.0 <= m.head_dropout_rate < 1.0:
    raise ValueError(f"head_dropout_rate must be in [0, 1), got {m.head_dropout_rate!r}")
  if m.num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {m.num_classes!r}")


def prepare_image(x: jax.Array, stem_patch_size: int, num_stages: int, dtype: Any,
                  what: str) -> jax.Array:
  """Checks that ``x`` is (B, H, W, C) and large enough for the stem and the downsamplings; casts
  it to ``dtype`` (when set). ``what`` names the model in the error messages."""
  if x.ndim != 4:
    raise ValueError(f"{what} expects images (B, H, W, C), got shape {x.shape}")
  p = int(stem_patch_size)
  min_size = p * 2 ** (num_stages - 1)
  if x.shape[1] < min_size or x.shape[2] < min_size:
    raise ValueError(f"input spatial size {x.shape[1:3]} is smaller than the {min_size} px this "
                     f"{what} needs (stem patch {p}, {num_stages - 1} 2x downsamplings)")
  return x.astype(dtype) if dtype is not None else x


def convnext_trunk(m, x: jax.Array, train: bool, depths: Sequence[int], dims: Sequence[int],
                   se_placement: str = "none", se_reduction: int = 16) -> jax.Array:
  """Stem -> stages -> global average pool -> LayerNorm: the pooled features (B, dims[-1]), in the
  compute dtype. Call from the ``@nn.compact`` method of ``m``, which supplies drop_path_rate,
  layer_scale_init_value, stem_patch_size, dtype and depthwise_impl; creates ``stem_conv``,
  ``stem_norm``, ``stage_{i}`` and ``head_norm`` in m's scope.

  ``se_placement``: 'downsample' (SE after downsampling layers 1..n-1), 'stage' (after every stage)
  or 'none'.
  """
  p = int(m.stem_patch_size)
  x = nn.Conv(dims[0], (p, p), strides=(p, p), padding="VALID", dtype=m.dtype,
              kernel_init=trunc_normal_init, name="stem_conv")(x)
  x = nn.LayerNorm(epsilon=LN_EPS, dtype=m.dtype, name="stem_norm")(x)
  rates = drop_path_schedule(depths, m.drop_path_rate)
  for i, dim in enumerate(dims):
    x = ConvNeXtStage(dim=dim, drop_path_rates=rates[i], downsample=i > 0,
                      downsample_se=se_placement == "downsample" and i > 0,
                      stage_se=se_placement == "stage", se_reduction=se_reduction,
                      layer_scale_init_value=m.layer_scale_init_value, dtype=m.dtype,
                      depthwise_impl=m.depthwise_impl, name=f"stage_{i}")(x, train)
  x = jnp.mean(x, axis=(1, 2))
  return nn.LayerNorm(epsilon=LN_EPS, dtype=m.dtype, name="head_norm")(x)


def classifier_head(m, features: jax.Array, train: bool) -> jax.Array:
  """Dropout(head_dropout_rate) -> Dense(num_classes) named ``head``; float32 logits. Call from the
  ``@nn.compact`` method of ``m`` (fields num_classes, head_dropout_rate, head_init_scale, dtype)."""
  y = nn.Dropout(m.head_dropout_rate, deterministic=not train)(features)
  head_init = nn.initializers.truncated_normal(stddev=0.02 * m.head_init_scale)
  logits = nn.Dense(m.num_classes, dtype=m.dtype, kernel_init=head_init, name="head")(y)
  return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------- models


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

  def _pooled(self, x: jax.Array, train: bool) -> Tuple[jax.Array, Any]:
    """(pooled features in the compute dtype, what ``return_features`` returns beside the logits:
    here the float32 features). Subclasses (EmoNeXt) add layers in front and outputs beside."""
    x = prepare_image(x, self.stem_patch_size, len(self.dims), self.dtype, type(self).__name__)
    features = convnext_trunk(self, x, train, self.depths, self.dims)
    return features, features.astype(jnp.float32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    """Maps images (B, H, W, C) to logits (B, num_classes).

    Args:
      x: float images, channels last.
      train: enables stochastic depth and head dropout (rng collection 'dropout').
      return_features: also return the pooled, LayerNorm-ed features (B, dims[-1]) that feed the
        classifier, i.e. ``(logits, features)`` (EmoNeXt: ``(logits, aux)``).
    """
    self._check_config()
    features, extra = self._pooled(x, train)
    if self.num_classes == 0:
      features = features.astype(jnp.float32)
      return (features, extra) if return_features else features
    logits = classifier_head(self, features, train)
    return (logits, extra) if return_features else logits


class ConvNeXtBackbone(nn.Module):
  """ConvNeXt backbone (registered as 'convnext'): images (B, H, W, C) -> {'features': (B, dims[-1])}.

  The pooled, LayerNorm-ed features of ``ConvNeXt(num_classes=0)``; the parameter tree is
  ConvNeXt's minus ``head`` (stem_conv, stem_norm, stage_{i}/..., head_norm), so timm / official
  weights load with ``PRETRAINED.get('convnext')``.

  Attributes:
    size: a ``SIZES`` name ('atto' ... 'xlarge'), or None to give ``depths`` and ``dims``.
    depths, dims: blocks and channels per stage (only without ``size``).
    drop_path_rate, layer_scale_init_value, stem_patch_size, dtype, depthwise_impl: as ConvNeXt's.
    se_placement: Squeeze-and-Excitation blocks (EmoNeXt's): 'none', 'downsample' or 'stage'.
    se_reduction: SE bottleneck ratio r (hidden = C // r).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  depths: Optional[Sequence[int]] = None
  dims: Optional[Sequence[int]] = None
  drop_path_rate: float = 0.0
  layer_scale_init_value: Optional[float] = 1e-6
  stem_patch_size: int = 4
  dtype: Any = None
  depthwise_impl: str = "auto"
  se_placement: str = "none"
  se_reduction: int = 16

  def resolved_size(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(depths, dims), validated."""
    depths, dims = resolve_size(self.size, self.depths, self.dims)
    check_trunk_fields(depths, dims, self.stem_patch_size, self.drop_path_rate, self.se_placement)
    return depths, dims

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, dims[-1])}; ``train`` enables drop path ('dropout' rng)."""
    depths, dims = self.resolved_size()
    x = prepare_image(image, self.stem_patch_size, len(dims), self.dtype, "ConvNeXt backbone")
    features = convnext_trunk(self, x, train, depths, dims, self.se_placement, self.se_reduction)
    return {"features": features.astype(jnp.float32)}


BACKBONES.register("convnext", ConvNeXtBackbone)


@PRETRAINED.register("convnext")
def load_pretrained(backbone_params: Mapping[str, Any],
                    state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """timm or official ConvNeXt state dict -> new params of a ConvNeXt-based backbone.

  Stem, stages and final norm come from ``state_dict`` (its classifier is dropped); everything
  else of ``backbone_params`` (SE blocks; EmoNeXt's STN and attention) keeps its value, as
  EmoNeXt's official code does with ImageNet checkpoints. Returns a tree of the same structure,
  shapes and dtypes as ``backbone_params``; the input is not modified.

  Raises:
    ValueError listing every missing, unexpected and mis-shaped tensor.
  """
  from fer_jax.models import emonext_convert  # noqa: PLC0415  (imports this module's family)

  old = flax.core.unfreeze(backbone_params)
  new = emonext_convert.load_convnext_backbone(old, state_dict, include_head=False)
  return jax.tree.map(lambda o, v: jnp.asarray(v, dtype=o.dtype), old, new)


def register_sizes(family: str, cls) -> Dict[str, Any]:
  """Registers ``{family}_{size}`` = ``partial(cls, depths=..., dims=...)`` for every ``SIZES`` entry
  and ``family`` itself (custom depths / dims, e.g. the small model of
  experiments/convnext_synthetic.py) in the model registry; returns the variants by name."""
  variants = {f"{family}_{size}": functools.partial(cls, depths=d, dims=c)
              for size, (d, c) in SIZES.items()}
  for name, variant in variants.items():
    register(name, variant)
  register(family, cls)
  return variants


# Variants (depths, dims) as in timm / the official repository.
VARIANTS = register_sizes("convnext", ConvNeXt)
(ConvNeXtAtto, ConvNeXtFemto, ConvNeXtPico, ConvNeXtNano, ConvNeXtTiny, ConvNeXtSmall, ConvNeXtBase,
 ConvNeXtLarge, ConvNeXtXLarge) = VARIANTS.values()
