"""EfficientNet-B0..B7 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019,
arXiv 1905.11946) in Flax Linen, built exactly as timm's ``efficientnet_b0`` ... ``efficientnet_b7``
(timm/models/efficientnet.py ``_gen_efficientnet``, _efficientnet_builder.py, _efficientnet_blocks.py),
so that their weights import unchanged (``load_pretrained``, registered in ``PRETRAINED``).

B0 (paper Table 1), one row per stage: (block, repeats, kernel, stride, expansion, channels)::

  stem  conv 3x3 / 2 -> BN -> SiLU                                   32
  1     DepthwiseSeparable  x1  k3 s1  e1                            16
  2-7   MBConv (InvertedResidual)  x2 k3 s2, x2 k5 s2, x3 k3 s2, x3 k5 s1, x4 k5 s2, x1 k3 s1  (e6)
                                    24, 40, 80, 112, 192, 320
  head  conv 1x1 -> BN -> SiLU -> global average pool                1280 (the features)

* DepthwiseSeparable: dw kxk -> BN -> SiLU -> SE -> pw 1x1 -> BN (+ input when stride 1 and the width
  is kept); MBConv: pw 1x1 expand (``make_divisible(in * e)``) -> BN -> SiLU -> dw kxk / s -> BN -> SiLU
  -> SE -> pw 1x1 project -> BN (+ DropPath(residual) + input when stride 1 and the width is kept).
* SE (timm's ``SqueezeExcite``): global mean -> 1x1 conv to ``round(in_block * 0.25)`` channels (from the
  block's *input* width: timm's ``se_from_exp=False``) -> SiLU -> 1x1 conv back -> sigmoid gate.
* Compound scaling (``SIZES``: width, depth): channels ``make_divisible(c * width, 8)`` (round to the
  nearest multiple of 8, never below 90 %; stem and head widths too), repeats ``ceil(r * depth)``; B2
  (1.1, 1.2) has widths 32 / 16, 24, 48, 88, 120, 208, 352 / 1408 and repeats 2, 3, 3, 4, 4, 5, 2.
* Padding: symmetric ``k // 2`` (timm's non-``tf_`` models; differs from TF 'SAME' at stride 2).
  BatchNorm eps 1e-5, momentum 0.9 (torch's 0.1); statistics in ``batch_stats``.
* Stochastic depth: block n of N gets rate ``drop_path_rate * n / N`` (timm's schedule).
* Init as timm's ``_init_weight_goog``: convs N(0, 2 / fan_out) (depthwise: fan_out = k * k), the
  classifier U(-1/sqrt(out), 1/sqrt(out)), BN 1 / 0, biases 0.

1x1 convolutions are ``nn.Dense`` layers over the channel axis (kernel (in, out)); the depthwise convs are
``fer_jax.layers.depthwise.DepthwiseConv`` (``depthwise_impl='auto'``: the fast 'shift' kernels on CPU,
XLA's convolution elsewhere; same parameters).

Parameter tree (timm name -> ours): conv_stem, bn1, ``blocks.{s}.{b}`` -> ``block_{s}_{b}`` with
conv_dw, bn1, se/{conv_reduce, conv_expand}, conv_pw, bn2 (DepthwiseSeparable) or conv_pw, bn1, conv_dw,
bn2, se/..., conv_pwl, bn3 (MBConv); conv_head, bn2; and ``classifier`` in the ``efficientnet_b*``
classifiers (``MODELS``). The backbone ('efficientnet' in ``BACKBONES``) returns the pooled head
features.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.layers.depthwise import DepthwiseConv
from fer_jax.models.convnext import DropPath
from fer_jax.registry import BACKBONES, PRETRAINED, register

BN_MOMENTUM = 0.9  # flax: new = m * old + (1 - m) * batch  (torch momentum 0.1)
BN_EPS = 1e-5
SE_RATIO = 0.25
STEM_WIDTH, HEAD_WIDTH = 32, 1280
# B0's stages (paper Table 1 / timm's arch_def): (block type, repeats, kernel, stride, expansion, width).
BASE_STAGES: Tuple[Tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
# (width multiplier, depth multiplier, resolution, dropout) of the paper / timm's ``_gen_efficientnet``
# table. Resolution and dropout are the paper's training settings, for reference: the models take any
# input size, and ``drop_rate`` (like timm's) defaults to 0.
SIZES: Dict[str, Tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

# timm's _init_weight_goog: N(0, 2 / fan_out) with fan_out = k*k*out / groups. For dense and 1x1 convs
# flax's fan_out is ``out``; for a depthwise kernel (k, k, 1, C) k*k*C/C = k*k is flax's fan_in.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def classifier_init(key, shape, dtype=jnp.float32):
  """timm's Linear init for EfficientNet: U(-r, r), r = 1 / sqrt(fan_out)."""
  r = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -r, r)


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """timm's ``make_divisible``: nearest multiple of ``divisor`` (>= divisor), never below
  ``round_limit * v``."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < round_limit * v:
    new_v += divisor
  return new_v


# One block: (type 'ds' | 'ir', in width, mid width, out width, kernel, stride, SE width).
Block = Tuple[str, int, int, int, int, int, int]
# resolved(): (stem width, per stage a tuple of blocks, head width).
Arch = Tuple[int, Tuple[Tuple[Block, ...], ...], int]


def build_arch(width: float, depth: float) -> Arch:
  """The resolved architecture of timm's builder for width / depth multipliers (see module docstring)."""
  stem = make_divisible(STEM_WIDTH * width)
  stages, c_in = [], stem
  for kind, repeats, k, s, e, c in BASE_STAGES:
    blocks = []
    for b in range(int(math.ceil(repeats * depth))):
      c_out = make_divisible(c * width)
      mid = c_in if kind == "ds" else make_divisible(c_in * e)
      # timm: SqueezeExcite(mid, rd_ratio=se_ratio / exp_ratio) -> round(mid * 0.25 / e).
      rd = round(mid * (SE_RATIO / e))
      blocks.append((kind, c_in, mid, c_out, k, s if b == 0 else 1, rd))
      c_in = c_out
    stages.append(tuple(blocks))
  return stem, tuple(stages), make_divisible(HEAD_WIDTH * width)


def _norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype,
                      name=name)


def _dense(features: int, dtype: Any, name: str, use_bias: bool = False) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=conv_init, name=name)


class SqueezeExcite(nn.Module):
  """timm's ``SqueezeExcite``: x * gate(W2 act(W1 mean_hw(x) + b1) + b2), W1: C -> ``reduced``.

  ``act`` / ``gate``: timm's ``act_layer`` / ``gate_layer`` (EfficientNet: SiLU / sigmoid; MobileNetV3:
  ReLU / hard sigmoid, fer_jax.models.mobilenetv3).
  """

  reduced: int
  dtype: Any = None
  act: Callable[[jax.Array], jax.Array] = nn.silu
  gate: Callable[[jax.Array], jax.Array] = nn.sigmoid

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.act(_dense(self.reduced, self.dtype, "conv_reduce", use_bias=True)(s))
    s = _dense(x.shape[-1], self.dtype, "conv_expand", use_bias=True)(s)
    return x * self.gate(s)


class EfficientNetBlock(nn.Module):
  """DepthwiseSeparable ('ds') or MBConv ('ir') block of ``spec`` = ``Block`` (module docstring).

  ``act``: the block's activation (timm's ``act_layer``; SiLU here, ReLU or hard-swish in MobileNetV3);
  ``se_act`` (None: ``act``) and ``se_gate``: the SE's; an SE width of 0 means no SE (MobileNetV3).
  """

  spec: Block
  drop_path_rate: float = 0.0
  dtype: Any = None
  depthwise_impl: str = "auto"
  act: Callable[[jax.Array], jax.Array] = nn.silu
  se_act: Optional[Callable[[jax.Array], jax.Array]] = None
  se_gate: Callable[[jax.Array], jax.Array] = nn.sigmoid

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kind, c_in, mid, c_out, k, s, rd = self.spec
    if x.shape[-1] != c_in:
      raise ValueError(f"EfficientNet block {self.name}: input has {x.shape[-1]} channels, expected {c_in}")
    dw_bn, pw_bn = ("bn1", "bn2") if kind == "ds" else ("bn2", "bn3")
    y = x
    if kind == "ir":
      y = self.act(_norm(train, self.dtype, "bn1")(_dense(mid, self.dtype, "conv_pw")(y)))
    y = DepthwiseConv(kernel_size=(k, k), strides=s, padding=k // 2, use_bias=False, impl=self.depthwise_impl,
                      dtype=self.dtype, kernel_init=depthwise_init, name="conv_dw")(y)
    y = self.act(_norm(train, self.dtype, dw_bn)(y))
    if rd > 0:
      y = SqueezeExcite(rd, dtype=self.dtype, act=self.se_act or self.act, gate=self.se_gate, name="se")(y)
    y = _dense(c_out, self.dtype, "conv_pw" if kind == "ds" else "conv_pwl")(y)
    y = _norm(train, self.dtype, pw_bn)(y)
    if s == 1 and c_in == c_out:
      y = DropPath(self.drop_path_rate, name="drop_path")(y, train) + x
    return y


def efficientnet_trunk(m, image: jax.Array, train: bool, arch: Arch) -> jax.Array:
  """Stem -> blocks -> head conv -> BN -> SiLU -> global average pool: (B, head width), float32 (or wider:
  the pool accumulates in float32 whatever the compute dtype). Call from the ``@nn.compact`` method of ``m`` (fields dtype, drop_path_rate, depthwise_impl);
  creates conv_stem, bn1, block_{s}_{b}, conv_head, bn2 in m's scope."""
  if image.ndim != 4:
    raise ValueError(f"EfficientNet expects images (B, H, W, C); got shape {image.shape}")
  if not 0.0 <= m.drop_path_rate < 1.0:
    raise ValueError(f"EfficientNet drop_path_rate must be in [0, 1), got {m.drop_path_rate!r}")
  stem, stages, head = arch
  x = image.astype(m.dtype) if m.dtype is not None else image
  x = nn.Conv(stem, (3, 3), 2, padding=1, use_bias=False, kernel_init=conv_init, dtype=m.dtype,
              name="conv_stem")(x)
  x = nn.silu(_norm(train, m.dtype, "bn1")(x))
  n_blocks, idx = sum(len(s) for s in stages), 0
  for si, blocks in enumerate(stages):
    for bi, spec in enumerate(blocks):
      x = EfficientNetBlock(spec, m.drop_path_rate * idx / n_blocks, m.dtype, m.depthwise_impl,
                            name=f"block_{si}_{bi}")(x, train)
      idx += 1
  x = nn.silu(_norm(train, m.dtype, "bn2")(_dense(head, m.dtype, "conv_head")(x)))
  return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))


def resolve_size(size: Optional[str], width_multiplier: Optional[float],
                 depth_multiplier: Optional[float]) -> Arch:
  """``build_arch`` of a ``SIZES`` name, or of explicit multipliers (exactly one of the two)."""
  custom = (width_multiplier, depth_multiplier)
  if size is not None:
    if size not in SIZES:
      raise ValueError(f"efficientnet size={size!r}; expected one of {sorted(SIZES)} or None")
    if any(v is not None for v in custom):
      raise ValueError(f"efficientnet size={size!r} fixes width_multiplier and depth_multiplier; give "
                       "either a size or those two fields")
    return build_arch(*SIZES[size][:2])
  for what, v in zip(("width_multiplier", "depth_multiplier"), custom):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
      raise ValueError(f"efficientnet {what}={v!r}; expected a positive number (or give size, one of "
                       f"{sorted(SIZES)})")
  return build_arch(float(width_multiplier), float(depth_multiplier))


class EfficientNetBackbone(nn.Module):
  """EfficientNet backbone (registered as 'efficientnet'): images (B, H, W, C) -> {'features': (B, D)},
  D = 1280 (B0), 1408 (B2): the pooled output of the head conv -> BN -> SiLU, before dropout and the
  classifier. Parameters as timm's model less ``classifier``.

  Attributes:
    size: a ``SIZES`` name ('b0' ... 'b7'), or None to give the two multipliers.
    width_multiplier, depth_multiplier: compound-scaling coefficients (only without ``size``).
    drop_path_rate: stochastic depth (timm's schedule, module docstring; timm trains B0 / B2 with 0.2).
    dtype: compute dtype (parameters and BN statistics stay float32).
    depthwise_impl: ``DepthwiseConv`` implementation ('auto': 'shift' on CPU, 'xla' elsewhere).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  width_multiplier: Optional[float] = None
  depth_multiplier: Optional[float] = None
  drop_path_rate: float = 0.0
  dtype: Any = None
  depthwise_impl: str = "auto"

  def resolved(self) -> Arch:
    """(stem width, per stage the ``Block`` tuples, head width), validated."""
    return resolve_size(self.size, self.width_multiplier, self.depth_multiplier)

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, D)}; ``train`` uses and updates batch statistics and enables
    drop path (rng 'dropout')."""
    features = efficientnet_trunk(self, image, train, self.resolved())
    return {"features": features.astype(jnp.float32)}


BACKBONES.register("efficientnet", EfficientNetBackbone)


class EfficientNet(nn.Module):
  """EfficientNet classifier as timm's ``efficientnet_b*``: backbone -> dropout -> Dense ``classifier``.

  Attributes: as ``EfficientNetBackbone``'s, plus ``num_classes`` (1000) and ``drop_rate`` (dropout on the
  pooled features; timm's default 0, its training recipes use the paper's ``SIZES`` dropout).
  """

  size: Optional[str] = "b0"
  num_classes: int = 1000
  width_multiplier: Optional[float] = None
  depth_multiplier: Optional[float] = None
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = None
  depthwise_impl: str = "auto"

  def resolved(self) -> Arch:
    return resolve_size(self.size, self.width_multiplier, self.depth_multiplier)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    """Logits (B, num_classes) float32; with ``return_features`` also the pooled features (B, D)."""
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"EfficientNet num_classes={self.num_classes!r}; expected an int >= 1")
    if not 0.0 <= self.drop_rate < 1.0:
      raise ValueError(f"EfficientNet drop_rate must be in [0, 1), got {self.drop_rate!r}")
    features = efficientnet_trunk(self, x, train, self.resolved())
    y = nn.Dropout(self.drop_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=classifier_init,
                      name="classifier")(y).astype(jnp.float32)
    return (logits, features.astype(jnp.float32)) if return_features else logits


VARIANTS = {f"efficientnet_{s}": functools.partial(EfficientNet, size=s) for s in SIZES}
for _name, _variant in VARIANTS.items():
  register(_name, _variant)


# ----------------------------------------------------------------------------- timm weights

_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)")
_LAYERS = {  # timm layer (less the block prefix) -> (our path, kind)
    "conv_pw": (("conv_pw",), "linear"), "conv_pwl": (("conv_pwl",), "linear"),
    "conv_dw": (("conv_dw",), "conv"), "bn1": (("bn1",), "norm"), "bn2": (("bn2",), "norm"),
    "bn3": (("bn3",), "norm"), "se.conv_reduce": (("se", "conv_reduce"), "linear"),
    "se.conv_expand": (("se", "conv_expand"), "linear"),
}
_TOP = {"conv_stem": (("conv_stem",), "conv"), "bn1": (("bn1",), "norm"),
        "conv_head": (("conv_head",), "linear"), "bn2": (("bn2",), "norm"),
        "classifier": (("classifier",), "linear")}
_LEAVES = {"weight": ("params", "kernel"), "bias": ("params", "bias"),
           "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def map_timm_key(key: str):
  """timm EfficientNet key -> ((collection, *module path), our leaf, layer kind), or None if unknown.

  ``collection`` is 'params' or 'batch_stats' (BN running mean / var); see ``convert.map_state_dict``.
  """
  base, _, leaf = key.rpartition(".")
  if leaf not in _LEAVES:
    return None
  m = _BLOCK.fullmatch(base)
  if m:
    layer = _LAYERS.get(m[3])
    prefix = (f"block_{m[1]}_{m[2]}",)
  else:
    layer, prefix = _TOP.get(base), ()
  if layer is None:
    return None
  path, kind = layer
  collection, ours = _LEAVES[leaf]
  if kind == "norm" and leaf == "weight":
    ours = "scale"
  elif kind != "norm" and leaf not in ("weight", "bias"):
    return None
  return (collection, *prefix, *path), ours, kind


def from_timm_state_dict(state_dict: Mapping[str, Any], params: Mapping[str, Any],
                         batch_stats: Optional[Mapping[str, Any]] = None,
                         include_classifier: Optional[bool] = None, *, map_key=None,
                         what: str = "The timm EfficientNet weights"):
  """A timm ``efficientnet_b*`` state dict -> ``BackboneVariables(params, batch_stats)`` of our tree.

  Args:
    state_dict: timm key -> tensor / array (a leading 'module.' is stripped, 'num_batches_tracked'
      dropped).
    params, batch_stats: our fresh trees (arrays or ShapeDtypeStructs) to check against; ``batch_stats``
      None skips the check of the statistics (they are still converted).
    include_classifier: keep timm's ``classifier`` (default: iff ``params`` has one); when False, its
      keys are dropped silently, so a timm classifier imports into the backbone.
    map_key, what: the key map (default ``map_timm_key``) and the error's subject (other timm families
      built from the same blocks: fer_jax.models.mobilenetv3).

  Raises:
    ValueError listing every missing, unexpected and mis-shaped tensor (``convert.check_tree_against``).
  """
  from fer_jax.models import convert  # noqa: PLC0415

  params = dict(params)
  if include_classifier is None:
    include_classifier = "classifier" in params
  if not include_classifier:
    state_dict = {k: v for k, v in state_dict.items()
                  if not convert.strip_module_prefix(k).startswith("classifier.")}
  tree, unexpected = convert.map_state_dict(state_dict, map_key or map_timm_key)
  # Own copies: torch tensors' .numpy() shares memory with the module, whose BN buffers a later forward
  # in train mode would update in place.
  tree = jax.tree.map(np.array, tree)
  got_params, got_stats = tree.get("params", {}), tree.get("batch_stats", {})
  want = {"params": params}
  got = {"params": got_params}
  if batch_stats is not None:
    want["batch_stats"], got["batch_stats"] = dict(batch_stats), got_stats
  convert.check_tree_against(got, want, what, unexpected)
  return convert.BackboneVariables(params=got_params, batch_stats=got_stats)


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'efficientnet': a timm ``efficientnet_b*`` state dict (its classifier is
  dropped), or the ``{'params', 'batch_stats'}`` of a fer_jax efficientnet backbone -> ``BackboneVariables``,
  checked against the fresh backbone's ``params`` / ``batch_stats``."""
  from fer_jax.models import convert  # noqa: PLC0415

  if not hasattr(weights, "keys"):
    raise ValueError(f"efficientnet importer: expected a state dict (name -> tensor), got "
                     f"{type(weights).__name__}")
  if "params" in weights and isinstance(weights["params"], Mapping):  # our own (shipped) backbone
    convert.check_tree_against(weights["params"], params, "The pretrained efficientnet parameters")
    stats = weights.get("batch_stats")
    if batch_stats is not None:
      if stats is None:
        raise ValueError("efficientnet importer: the pretrained weights have no batch_stats")
      convert.check_tree_against(stats, batch_stats, "The pretrained efficientnet batch_stats")
    return convert.BackboneVariables(params=weights["params"], batch_stats=stats)
  return from_timm_state_dict(weights, params, batch_stats, include_classifier=False)


PRETRAINED.register("efficientnet", load_pretrained)
