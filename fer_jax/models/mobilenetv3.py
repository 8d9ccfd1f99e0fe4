"""MobileNetV3-Large / -Small (Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244) in
Flax Linen, built exactly as timm's ``mobilenetv3_large_100`` / ``_075``, ``mobilenetv3_small_100`` / ``_075`` /
``_050`` (timm 1.0.31: timm/models/mobilenetv3.py ``_gen_mobilenet_v3``, _efficientnet_builder.py,
_efficientnet_blocks.py), so that their weights import unchanged (``load_pretrained``, in ``PRETRAINED``).

SeLiNet (PAPERS.md section 3) runs on device but names no backbone; we chose MobileNetV3 as its
lightweight feature extractors.

Architecture (paper Tables 1 / 2; ``ARCH_DEFS`` holds timm's block strings verbatim: ``ds`` depthwise
separable, ``ir`` inverted residual (MBConv), ``cn`` 1x1 conv -> BN -> act; ``r`` repeats, ``k`` kernel,
``s`` stride of the stage's first block, ``e`` expansion, ``c`` width, ``se0.25`` SE, ``nre`` ReLU instead
of the model's hard-swish)::

  stem   conv 3x3 / 2 (no bias) -> BN -> hard-swish                       16
  blocks Large: 15 ds / ir blocks, 16 .. 160 wide, then cn 960; Small: 11 blocks 16 .. 96, then cn 576
  head   global average pool -> conv_head 1x1 with bias (1280 Large / 1024 Small) -> hard-swish
         -> flatten (-> dropout) -> classifier

* The blocks are EfficientNet's (``fer_jax.models.efficientnet.EfficientNetBlock``: pw expand -> BN -> act ->
  dw kxk / s -> BN -> act -> SE -> pw project -> BN, + input when stride 1 and the width is kept; 'ds' without
  the expansion), with the activation of their row (ReLU or hard-swish ``x relu6(x + 3) / 6``) and, where
  the row says ``se``, timm's MobileNetV3 SE: mean -> 1x1 conv to ``make_divisible(mid * 0.25)`` channels
  (from the *expanded* width: ``se_from_exp=True``, ``rd_round_fn=round_channels``) -> ReLU -> 1x1 conv ->
  hard-sigmoid gate ``relu6(x + 3) / 6``.
* Width multiplier w (``SIZES``): every block width ``make_divisible(c * w, 8)``, expanded widths
  ``make_divisible(c_in * e)``, the stem ``make_divisible(16 w)`` but 16 for w < 0.75 (timm's
  ``fix_stem``); the head width (1280 / 1024) is not scaled. Depth is not scaled (all five timm models).
* "Efficient last stage" (paper section 5.3): the pool comes *before* conv_head, which has a bias and no
  BN. Padding symmetric ``k // 2`` (timm's non-``tf_`` models), BN eps 1e-5, momentum 0.9 (torch's 0.1).
* Stochastic depth: block n of N (the cn block counted) gets ``drop_path_rate * n / N``, as timm.
* Init as timm's ``_init_weight_goog`` (the same initialisers as efficientnet.py).

``features`` = timm's ``forward_head(x, pre_logits=True)`` in eval mode: hard-swish(conv_head(pool(x))),
(B, 1280) Large / (B, 1024) Small. (timm's dropout sits after the flatten, so in train mode its pre-logits
are dropped out; our ``features`` never are: dropout is the classifier's / the head's business.)

Parameter tree (timm name -> ours): conv_stem, bn1, ``blocks.{s}.{b}`` -> ``block_{s}_{b}`` (as efficientnet.py;
no 'se' where the row has none; the cn block: conv, bn1), conv_head (kernel, bias), and ``classifier`` in the
``MobileNetV3`` classifier. The backbone ('mobilenetv3' in ``BACKBONES``) is the classifier less
``classifier``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models import efficientnet as eff
from fer_jax.models.efficientnet import (EfficientNetBlock, _dense, _norm, classifier_init, conv_init,
                                         make_divisible)
from fer_jax.registry import BACKBONES, PRETRAINED, register

STEM_WIDTH = 16
# timm 1.0.31 ``_gen_mobilenet_v3`` (the non-'minimal' variants), one list per stage.
ARCH_DEFS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "large": (
        ("ds_r1_k3_s1_e1_c16_nre",),
        ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
        ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
        ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
        ("ir_r2_k3_s1_e6_c112_se0.25",),
        ("ir_r3_k5_s2_e6_c160_se0.25",),
        ("cn_r1_k1_s1_c960",),
    ),
    "small": (
        ("ds_r1_k3_s2_e1_c16_se0.25_nre",),
        ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
        ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"),
        ("ir_r2_k5_s1_e3_c48_se0.25",),
        ("ir_r3_k5_s2_e6_c96_se0.25",),
        ("cn_r1_k1_s1_c576",),
    ),
}
HEAD_WIDTHS = {"large": 1280, "small": 1024}  # timm's num_features: the conv_head width, never scaled
# size -> (layout, width multiplier): timm's mobilenetv3_{size}.
SIZES: Dict[str, Tuple[str, float]] = {
    "large_100": ("large", 1.0),
    "large_075": ("large", 0.75),
    "small_100": ("small", 1.0),
    "small_075": ("small", 0.75),
    "small_050": ("small", 0.5),
}
ACTIVATIONS = {"relu": nn.relu, "hard_swish": jax.nn.hard_swish}

# One block: efficientnet.Block's (type 'ds' | 'ir' | 'cn', in width, mid width, out width, kernel, stride,
# SE width (0: no SE)) + the activation name (ACTIVATIONS). 'cn' blocks: mid = out, kernel 1, SE 0.
Block = Tuple[str, int, int, int, int, int, int, str]
Arch = Tuple[int, Tuple[Tuple[Block, ...], ...], int]  # (stem width, per stage the blocks, head width)


def decode_block(block: str) -> Tuple[str, int, int, int, float, int, float, str]:
  """A timm block string (the subset above) -> (type, repeats, kernel, stride, expansion, width, SE ratio,
  activation); e.g. 'ir_r3_k5_s2_e3_c40_se0.25_nre' -> ('ir', 3, 5, 2, 3.0, 40, 0.25, 'relu')."""
  kind, *ops = block.split("_")
  opts: Dict[str, str] = {}
  act = "hard_swish"  # the model's act_layer; 'nre' overrides it per block
  for op in ops:
    m = re.fullmatch(r"([a-z]+)(\d[\d.]*)", op)
    if op == "nre":
      act = "relu"
    elif m and m[1] in ("r", "k", "s", "e", "c", "se"):
      opts[m[1]] = m[2]
    else:
      raise ValueError(f"MobileNetV3 block string {block!r}: unknown option {op!r}")
  need = {"ds": "rksc", "ir": "rksec", "cn": "rksc"}.get(kind)
  if need is None or any(k not in opts for k in need):
    raise ValueError(f"MobileNetV3 block string {block!r}: expected type ds / ir / cn with options "
                     "r, k, s, c (and e for ir)")
  if kind == "cn" and (opts["k"] != "1" or "se" in opts):
    raise ValueError(f"MobileNetV3 block string {block!r}: only 1x1 'cn' blocks without SE are supported")
  return (kind, int(opts["r"]), int(opts["k"]), int(opts["s"]), float(opts.get("e", 1)), int(opts["c"]),
          float(opts.get("se", 0)), act)


def build_arch(layout: str, width: float) -> Arch:
  """The resolved architecture of timm's builder for ``layout`` ('large' | 'small') at width ``width``."""
  stem = STEM_WIDTH if width < 0.75 else make_divisible(STEM_WIDTH * width)
  stages, c_in = [], stem
  for stage in ARCH_DEFS[layout]:
    blocks = []
    for row in stage:
      kind, repeats, k, s, e, c, se, act = decode_block(row)
      for _ in range(repeats):
        c_out = make_divisible(c * width)
        mid = c_out if kind == "cn" else c_in if kind == "ds" else make_divisible(c_in * e)
        rd = make_divisible(mid * se) if se else 0
        blocks.append((kind, c_in, mid, c_out, k, s if not blocks else 1, rd, act))  # timm: stride on the
        c_in = c_out  # stage's first block only
    stages.append(tuple(blocks))
  return stem, tuple(stages), HEAD_WIDTHS[layout]


def resolve_size(size: Optional[str], layout: Optional[str], width_multiplier: Optional[float]) -> Arch:
  """``build_arch`` of a ``SIZES`` name, or of an explicit layout and width multiplier (exactly one)."""
  if size is not None:
    if size not in SIZES:
      raise ValueError(f"mobilenetv3 size={size!r}; expected one of {sorted(SIZES)} or None")
    if layout is not None or width_multiplier is not None:
      raise ValueError(f"mobilenetv3 size={size!r} fixes layout and width_multiplier; give either a size "
                       "or those two fields")
    return build_arch(*SIZES[size])
  if layout not in ARCH_DEFS:
    raise ValueError(f"mobilenetv3 layout={layout!r}; expected one of {sorted(ARCH_DEFS)} (or give size, "
                     f"one of {sorted(SIZES)})")
  w = width_multiplier
  if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
    raise ValueError(f"mobilenetv3 width_multiplier={w!r}; expected a positive number")
  return build_arch(layout, float(w))


class ConvBnAct(nn.Module):
  """timm's ``ConvBnAct`` as MobileNetV3 uses it ('cn' rows): 1x1 conv (no bias) -> BN -> act."""

  spec: Block
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _, c_in, _, c_out, _, _, _, act = self.spec
    if x.shape[-1] != c_in:
      raise ValueError(f"MobileNetV3 block {self.name}: input has {x.shape[-1]} channels, expected {c_in}")
    y = _norm(train, self.dtype, "bn1")(_dense(c_out, self.dtype, "conv")(x))
    return ACTIVATIONS[act](y)


def mobilenetv3_features(m, image: jax.Array, train: bool, arch: Arch) -> jax.Array:
  """Stem -> blocks -> pool -> conv_head -> hard-swish: timm's pre-logits (B, head width), in the compute
  dtype. Call from the ``@nn.compact`` method of ``m`` (fields dtype, drop_path_rate, depthwise_impl);
  creates conv_stem, bn1, block_{s}_{b} and conv_head in m's scope."""
  if image.ndim != 4:
    raise ValueError(f"MobileNetV3 expects images (B, H, W, C); got shape {image.shape}")
  if not 0.0 <= m.drop_path_rate < 1.0:
    raise ValueError(f"MobileNetV3 drop_path_rate must be in [0, 1), got {m.drop_path_rate!r}")
  stem, stages, head = arch
  x = image.astype(m.dtype) if m.dtype is not None else image
  x = nn.Conv(stem, (3, 3), 2, padding=1, use_bias=False, kernel_init=conv_init, dtype=m.dtype,
              name="conv_stem")(x)
  x = jax.nn.hard_swish(_norm(train, m.dtype, "bn1")(x))
  n_blocks, idx = sum(len(s) for s in stages), 0
  for si, blocks in enumerate(stages):
    for bi, spec in enumerate(blocks):
      name = f"block_{si}_{bi}"
      if spec[0] == "cn":
        x = ConvBnAct(spec, m.dtype, name=name)(x, train)
      else:
        x = EfficientNetBlock(spec[:7], m.drop_path_rate * idx / n_blocks, m.dtype, m.depthwise_impl,
                              act=ACTIVATIONS[spec[7]], se_act=nn.relu, se_gate=jax.nn.hard_sigmoid,
                              name=name)(x, train)
      idx += 1
  x = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
  return jax.nn.hard_swish(_dense(head, m.dtype, "conv_head", use_bias=True)(x))


class MobileNetV3Backbone(nn.Module):
  """MobileNetV3 backbone (registered as 'mobilenetv3'): images (B, H, W, C) -> {'features': (B, D)},
  D = 1280 (Large) / 1024 (Small): timm's pre-logits (module docstring). Parameters as timm's model less
  ``classifier``.

  Attributes:
    size: a ``SIZES`` name ('large_100', 'large_075', 'small_100', 'small_075', 'small_050'), or None to
      give ``layout`` and ``width_multiplier``.
    layout: 'large' or 'small' (only without ``size``).
    width_multiplier: channel multiplier (only without ``size``).
    drop_path_rate: stochastic depth (timm's schedule; timm's defaults 0).
    dtype: compute dtype (parameters and BN statistics stay float32; features come back float32).
    depthwise_impl: ``DepthwiseConv`` implementation ('auto': 'shift' on CPU, 'xla' elsewhere).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  layout: Optional[str] = None
  width_multiplier: Optional[float] = None
  drop_path_rate: float = 0.0
  dtype: Any = None
  depthwise_impl: str = "auto"

  def resolved(self) -> Arch:
    """(stem width, per stage the ``Block`` tuples, head width), validated."""
    return resolve_size(self.size, self.layout, self.width_multiplier)

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, D)}; ``train`` uses and updates batch statistics and enables
    drop path (rng 'dropout')."""
    features = mobilenetv3_features(self, image, train, self.resolved())
    return {"features": features.astype(jnp.float32)}


BACKBONES.register("mobilenetv3", MobileNetV3Backbone)


class MobileNetV3(nn.Module):
  """MobileNetV3 classifier as timm's ``mobilenetv3_*``: backbone -> dropout -> Dense ``classifier``.

  Attributes: as ``MobileNetV3Backbone``'s (``size`` defaults to 'large_100'), plus ``num_classes`` (1000)
  and ``drop_rate`` (dropout before the classifier; timm's default 0, its ImageNet recipe 0.2).
  """

  size: Optional[str] = "large_100"
  num_classes: int = 1000
  layout: Optional[str] = None
  width_multiplier: Optional[float] = None
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = None
  depthwise_impl: str = "auto"

  def resolved(self) -> Arch:
    return resolve_size(self.size, self.layout, self.width_multiplier)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    """Logits (B, num_classes) float32; with ``return_features`` also the pre-logits features (B, D)."""
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"MobileNetV3 num_classes={self.num_classes!r}; expected an int >= 1")
    if not 0.0 <= self.drop_rate < 1.0:
      raise ValueError(f"MobileNetV3 drop_rate must be in [0, 1), got {self.drop_rate!r}")
    features = mobilenetv3_features(self, x, train, self.resolved())
    y = nn.Dropout(self.drop_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=classifier_init,
                      name="classifier")(y).astype(jnp.float32)
    return (logits, features.astype(jnp.float32)) if return_features else logits


# timm's names. Not in MODELS (so tests/test_models.py needs no rows); ``VARIANTS[name](num_classes=7)``.
VARIANTS = {f"mobilenetv3_{s}": functools.partial(MobileNetV3, size=s) for s in SIZES}


# ----------------------------------------------------------------------------- timm weights


def map_timm_key(key: str):
  """timm MobileNetV3 key -> ((collection, *module path), our leaf, layer kind), or None if unknown:
  efficientnet.py's map plus the cn blocks' ``blocks.{s}.{b}.conv``, less EfficientNet's head BN 'bn2'."""
  base, _, leaf = key.rpartition(".")
  if base == "bn2":
    return None
  m = eff._BLOCK.fullmatch(base)
  if m and m[3] == "conv":
    return (("params", f"block_{m[1]}_{m[2]}", "conv"), "kernel", "linear") if leaf == "weight" else None
  return eff.map_timm_key(key)


def from_timm_state_dict(state_dict: Mapping[str, Any], params: Mapping[str, Any],
                         batch_stats: Optional[Mapping[str, Any]] = None,
                         include_classifier: Optional[bool] = None):
  """A timm ``mobilenetv3_*`` state dict -> ``BackboneVariables(params, batch_stats)`` of our tree, checked
  against ``params`` / ``batch_stats`` (see ``efficientnet.from_timm_state_dict``: a leading 'module.' is
  stripped; the classifier kept iff ``params`` has one; one ValueError lists every missing, unexpected and
  mis-shaped tensor)."""
  return eff.from_timm_state_dict(state_dict, params, batch_stats, include_classifier, map_key=map_timm_key,
                                  what="The timm MobileNetV3 weights")


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'mobilenetv3': a timm ``mobilenetv3_*`` state dict (its classifier is
  dropped), or the ``{'params', 'batch_stats'}`` of a fer_jax mobilenetv3 backbone -> ``BackboneVariables``,
  checked against the fresh backbone's ``params`` / ``batch_stats``."""
  from fer_jax.models import convert  # noqa: PLC0415

  if not hasattr(weights, "keys"):
    raise ValueError(f"mobilenetv3 importer: expected a state dict (name -> tensor), got "
                     f"{type(weights).__name__}")
  if "params" in weights and isinstance(weights["params"], Mapping):  # our own (shipped) backbone
    convert.check_tree_against(weights["params"], params, "The pretrained mobilenetv3 parameters")
    stats = weights.get("batch_stats")
    if batch_stats is not None:
      if stats is None:
        raise ValueError("mobilenetv3 importer: the pretrained weights have no batch_stats")
      convert.check_tree_against(stats, batch_stats, "The pretrained mobilenetv3 batch_stats")
    return convert.BackboneVariables(params=weights["params"], batch_stats=stats)
  return from_timm_state_dict(weights, params, batch_stats, include_classifier=False)


PRETRAINED.register("mobilenetv3", load_pretrained)

for _name, _variant in VARIANTS.items():
  register(_name, _variant)
