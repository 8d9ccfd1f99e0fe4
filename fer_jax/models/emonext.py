"""EmoNeXt (El Boudouri & Bohi, MMSP 2023, arXiv 2501.08199): STN -> ConvNeXt + SE -> head, with a
self-attention regulariser on the pooled features. Official PyTorch code: yelboudouri/EmoNeXt.

Pieces and where the paper and the official code differ (see ../shared/PAPERS.md section 1):

* **STN** (``use_stn``; Jaderberg et al. 2015) in front of the backbone:
  ``fer_jax.layers.spatial_transformer.SpatialTransformer`` (localisation net as in the official code,
  identity-initialised affine regressor, bilinear sampling with align_corners=True and zeros
  padding). Its BatchNorms keep running statistics in the 'batch_stats' collection, so with
  ``use_stn`` a train-mode ``apply`` needs ``mutable=['batch_stats']``. Its flatten size (10*52*52 =
  27040 at 224 px) follows the input size fixed at ``init``.
* **ConvNeXt backbone**: ``fer_jax.models.convnext``'s own stem / stages / pooled LayerNorm /
  classifier (``convnext_trunk``, ``classifier_head``), so the layers, names and init are ConvNeXt's.
* **Squeeze-and-Excitation** (Hu et al. 2018, eq. 2-4; ``se_reduction`` default 16, no biases;
  ``fer_jax.layers.squeeze_excitation``, built by ``convnext.ConvNeXtStage``):
  ``se_placement='downsample'`` (official code: after the stride-2 conv of downsampling layers
  1-3, 3 blocks, params ``stage_{i}/downsample_se``), ``'stage'`` (paper: after every stage's last
  block, 4 blocks, params ``stage_{i}/stage_se``) or ``'none'``.
* **Self-attention regulariser** (loss only, never changes the logits). The pooled, LayerNorm-ed
  features f (B, C) go through LayerNorm (eps 1e-5, torch's default as in the official code) and
  two projections Q = Dense_C(f), K = Dense_C(f) (params ``attention/{norm, query, key}``; the
  official module's ``value`` projection feeds nothing used, so we have none). Then
  L_SA = mean((W - mean W)^2) over all entries of W, with

  - ``sa_mode='batch'`` (official code): W = softmax_rows(Q K^T * C^-1/4), a (B, B) matrix that
    attends *across the batch*; mean W = 1/B; lambda = 1 in the official code.
  - ``sa_mode='feature'`` (the paper's equation W = softmax(Q K^T / sqrt(d)) read per image, with
    the d = C features as the tokens): for each image b, q = Q[b], k = K[b] in R^C and
    W[b, i, j] = softmax_j(q_i k_j / sqrt(C)), a (B, C, C) tensor (memory B*C^2 floats: 1 GiB at
    B = 64, C = 2048); mean W = 1/C. Same parameters as 'batch', so one checkpoint serves both.
    The paper gives no lambda; the trainer picks it.

  Both are pure functions below (``batch_attention_weights``, ``feature_attention_weights``,
  ``attention_variance``) plus the small module ``SelfAttentionRegulariser``. The softmax runs in
  float32 whatever ``dtype`` is.

Outputs: ``model.apply(v, x, train)`` -> logits (B, num_classes), the fer_jax model contract.
``return_features=True`` -> ``(logits, aux)`` with ``aux = {'features': f (B, C), 'sa_loss':
L_SA scalar (0.0 when sa_mode is None), 'attention': W or None}``, all float32, so a trainer
computes L = CE + lambda * aux['sa_loss'] (``emonext_loss`` does exactly that). Under ``jax.jit``
unused entries cost nothing.

``EmoNeXt(use_stn=False, se_placement='none', sa_mode=None)`` has exactly ConvNeXt's parameter
tree and outputs (the ``convnext`` baselines of Table II). Defaults follow the official code
(STN on, SE at the downsampling layers, batch-mode attention) except ``drop_path_rate``, which
keeps ConvNeXt's default 0.0 (the official ``get_model`` uses 0.1: set it in the config).

``EmoNeXtBackbone`` (registered backbone 'emonext') is EmoNeXt without its classifier: it returns
``{'features', 'sa_loss'[, 'attention']}`` from the same code (``emonext_trunk``), and its parameter
tree is EmoNeXt's minus ``head``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fer_jax.layers.spatial_transformer import SpatialTransformer
from fer_jax.layers.squeeze_excitation import SqueezeExcitation  # noqa: F401  (public name here too)
from fer_jax.models.convnext import (SE_PLACEMENTS, SIZES, ConvNeXt, ConvNeXtBackbone,
                                     check_convnext_fields, convnext_trunk, load_pretrained,
                                     prepare_image, register_sizes, trunc_normal_init)
from fer_jax.registry import BACKBONES, PRETRAINED

SA_MODES = ("batch", "feature")
SA_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by the official attention module.


# ----------------------------------------------------------------------------- self-attention


def batch_attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
  """Official-code reading: softmax over rows of Q K^T * C^-1/4; q, k (B, C) -> W (B, B)."""
  if q.ndim != 2 or q.shape != k.shape:
    raise ValueError(f"expected q, k of the same shape (B, C), got {q.shape} and {k.shape}")
  q, k = q.astype(jnp.float32), k.astype(jnp.float32)
  scores = (q @ k.T) * (q.shape[-1] ** -0.25)
  return jax.nn.softmax(scores, axis=-1)


def feature_attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
  """Paper reading, per image: W[b, i, j] = softmax_j(q_bi k_bj / sqrt(C)); (B, C) -> (B, C, C)."""
  if q.ndim != 2 or q.shape != k.shape:
    raise ValueError(f"expected q, k of the same shape (B, C), got {q.shape} and {k.shape}")
  q, k = q.astype(jnp.float32), k.astype(jnp.float32)
  scores = q[:, :, None] * k[:, None, :] / math.sqrt(q.shape[-1])
  return jax.nn.softmax(scores, axis=-1)


def attention_variance(w: jax.Array) -> jax.Array:
  """L_SA = mean((W - mean W)^2) over all entries (the paper's and the code's regulariser)."""
  w = w.astype(jnp.float32)
  return jnp.mean(jnp.square(w - jnp.mean(w)))


def self_attention_loss(q: jax.Array, k: jax.Array, mode: str) -> Tuple[jax.Array, jax.Array]:
  """Returns (L_SA, W) for ``mode`` in ('batch', 'feature')."""
  if mode == "batch":
    w = batch_attention_weights(q, k)
  elif mode == "feature":
    w = feature_attention_weights(q, k)
  else:
    raise ValueError(f"sa_mode must be one of {SA_MODES} or None, got {mode!r}")
  return attention_variance(w), w


class SelfAttentionRegulariser(nn.Module):
  """LayerNorm -> Q, K = Dense_C -> (L_SA, W); params ``norm``, ``query``, ``key``."""

  mode: str = "batch"
  norm_epsilon: float = SA_NORM_EPS
  dtype: Any = None

  @nn.compact
  def __call__(self, f: jax.Array) -> Tuple[jax.Array, jax.Array]:
    if self.mode not in SA_MODES:
      raise ValueError(f"sa_mode must be one of {SA_MODES} or None, got {self.mode!r}")
    if f.ndim != 2:
      raise ValueError(f"self-attention expects pooled features (B, C), got shape {f.shape}")
    c = f.shape[-1]
    f = nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, name="norm")(f)
    dense = functools.partial(nn.Dense, c, dtype=self.dtype, kernel_init=trunc_normal_init)
    q = dense(name="query")(f)
    k = dense(name="key")(f)
    return self_attention_loss(q, k, self.mode)


# ----------------------------------------------------------------------------- model


def check_emonext_fields(m) -> None:
  """Validates EmoNeXt's own fields of ``m`` (EmoNeXt or EmoNeXtBackbone)."""
  if m.se_placement not in SE_PLACEMENTS:
    raise ValueError(f"se_placement must be one of {SE_PLACEMENTS}, got {m.se_placement!r}")
  if m.sa_mode is not None and m.sa_mode not in SA_MODES:
    raise ValueError(f"sa_mode must be one of {SA_MODES} or None, got {m.sa_mode!r}")


def emonext_trunk(m, x: jax.Array, train: bool, depths: Sequence[int], dims: Sequence[int],
                  what: str) -> Tuple[jax.Array, Dict[str, Any]]:
  """[STN] -> ConvNeXt with SE -> pooled LayerNorm-ed features -> [self-attention regulariser].

  Call from the ``@nn.compact`` method of ``m`` (EmoNeXt's fields): creates ``stn``, the ConvNeXt
  layers of ``convnext_trunk`` and ``attention`` in m's scope. Returns (features in the compute
  dtype, aux = {'features' (float32), 'sa_loss', 'attention' (None without attention)}).
  """
  x = prepare_image(x, m.stem_patch_size, len(dims), m.dtype, what)
  if m.use_stn:
    x = SpatialTransformer(dtype=m.dtype, name="stn")(x, train)
  features = convnext_trunk(m, x, train, depths, dims, m.se_placement, m.se_reduction)
  sa_loss, attention = jnp.zeros((), jnp.float32), None
  if m.sa_mode is not None:
    sa_loss, attention = SelfAttentionRegulariser(m.sa_mode, m.sa_norm_epsilon, dtype=m.dtype,
                                                  name="attention")(features)
  return features, {"features": features.astype(jnp.float32), "sa_loss": sa_loss,
                    "attention": attention}


class EmoNeXt(ConvNeXt):
  """EmoNeXt classifier: [STN] -> ConvNeXt with SE -> GAP -> LN -> [dropout] -> Dense.

  ``ConvNeXt`` with layers in front (STN), inside (SE) and beside (attention); ``__call__`` is
  ConvNeXt's: ``model.apply(v, x, train)`` -> logits; ``return_features=True`` -> ``(logits, aux)``,
  aux = {'features', 'sa_loss', 'attention'}. x: float images (B, H, W, C) (the official code feeds
  [0, 1] pixels, 224 px); ``train`` also switches the STN's BatchNorms to batch statistics (needs
  ``mutable=['batch_stats']`` when ``use_stn``).

  Attributes (ConvNeXt's, see ``fer_jax.models.convnext.ConvNeXt``, plus):
    use_stn: spatial transformer in front (official localisation net; input size fixed at init).
    se_placement: 'downsample' (official code, 3 SE), 'stage' (paper, 4 SE) or 'none'.
    se_reduction: SE bottleneck ratio r (hidden = C // r).
    sa_mode: 'batch' (official code), 'feature' (paper) or None (no attention params, loss 0).
    sa_norm_epsilon: epsilon of the attention's LayerNorm (1e-5 as in the official code).
  """

  use_stn: bool = True
  se_placement: str = "downsample"
  se_reduction: int = 16
  sa_mode: Optional[str] = "batch"
  sa_norm_epsilon: float = SA_NORM_EPS

  def _check_config(self):
    check_convnext_fields(self)
    check_emonext_fields(self)

  def _pooled(self, x: jax.Array, train: bool) -> Tuple[jax.Array, Dict[str, Any]]:
    return emonext_trunk(self, x, train, self.depths, self.dims, "EmoNeXt")


class EmoNeXtBackbone(ConvNeXtBackbone):
  """EmoNeXt backbone (registered as 'emonext'): images -> {'features', 'sa_loss'[, 'attention']}.

  ``EmoNeXt`` without its classifier: [STN] -> ConvNeXt with SE -> pooled LayerNorm-ed features
  (B, dims[-1]) float32, plus the self-attention regulariser on them: 'sa_loss' (scalar float32,
  0.0 when ``sa_mode`` is None) and 'attention' (W; absent when ``sa_mode`` is None). The parameter
  tree is EmoNeXt's minus ``head``; ``PRETRAINED.get('emonext')`` loads the ConvNeXt part from a
  timm / official ConvNeXt state dict (STN, SE and attention keep their values).

  Attributes: ``ConvNeXtBackbone``'s (``size`` or ``depths`` + ``dims``, ...; ``se_placement``
  defaults to the official 'downsample') plus ``use_stn``, ``sa_mode``, ``sa_norm_epsilon`` as in
  ``EmoNeXt``. With ``use_stn`` a train-mode apply needs ``mutable=['batch_stats']``.
  """

  se_placement: str = "downsample"
  use_stn: bool = True
  sa_mode: Optional[str] = "batch"
  sa_norm_epsilon: float = SA_NORM_EPS

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    depths, dims = self.resolved_size()
    check_emonext_fields(self)
    _, aux = emonext_trunk(self, image, train, depths, dims, "EmoNeXt backbone")
    return {k: v for k, v in aux.items() if v is not None}


BACKBONES.register("emonext", EmoNeXtBackbone)
# Only the ConvNeXt part comes from the checkpoint (the trainer's ``load_init_weights`` does the same).
PRETRAINED.register("emonext", load_pretrained)


def emonext_loss(logits: jax.Array, aux: Dict[str, Any], labels: jax.Array,
                 sa_weight: float = 1.0, label_smoothing: float = 0.0
                 ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """L = CE(logits, labels; label smoothing) + sa_weight * L_SA (paper eq.; official: lambda = 1,
  smoothing 0.2). Returns (L, {'ce', 'sa_loss'})."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  n = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, n), label_smoothing)
  ce = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
  sa = aux["sa_loss"].astype(jnp.float32)
  return ce + sa_weight * sa, {"ce": ce, "sa_loss": sa}


# ----------------------------------------------------------------------------- parameter counts


def stn_param_count(image_size: int = 224, in_channels: int = 3) -> int:
  """Official localisation net: conv 7x7 (8) + BN, pool 2, conv 5x5 (10) + BN, pool 2, Dense 32, Dense 6.

  Spatial side after the two conv+pool steps: s2 = ((s - 6) // 2 - 4) // 2 (52 at 224), so the
  flatten size is 10 * s2^2 (27040 at 224). BN running statistics are not counted (batch_stats).
  """
  s2 = ((int(image_size) - 6) // 2 - 4) // 2
  if s2 < 1:
    raise ValueError(f"image_size {image_size} is too small for the STN localisation net (>= 16)")
  conv = 49 * in_channels * 8 + 8 + 2 * 8 + 25 * 8 * 10 + 10 + 2 * 10
  return conv + (10 * s2 * s2) * 32 + 32 + 32 * 6 + 6


def se_param_count(dims: Sequence[int], se_placement: str, se_reduction: int = 16) -> int:
  """2 * C * (C // r) per SE block; 'downsample' covers dims[1:], 'stage' all dims."""
  if se_placement not in SE_PLACEMENTS:
    raise ValueError(f"se_placement must be one of {SE_PLACEMENTS}, got {se_placement!r}")
  chans = {"downsample": dims[1:], "stage": dims, "none": ()}[se_placement]
  return sum(2 * c * (c // se_reduction) for c in chans)


def attention_param_count(dim: int, with_value: bool = False) -> int:
  """LN (2C) + query, key (C^2 + C each); ``with_value`` adds the official, unused value Dense."""
  return 2 * dim + (3 if with_value else 2) * (dim * dim + dim)


def convnext_param_count(depths: Sequence[int], dims: Sequence[int], num_classes: int,
                         stem_patch_size: int = 4, in_channels: int = 3) -> int:
  """ConvNeXt closed form: stem p^2*in*C0 + C0 + LN 2C0; blocks 8C^2 + 58C; downsampling LN +
  conv 4*C*C' + C'; head LN 2C + C*K + K."""
  n = stem_patch_size ** 2 * in_channels * dims[0] + 3 * dims[0]
  for i, (d, c) in enumerate(zip(depths, dims)):
    if i:
      n += 2 * dims[i - 1] + 4 * dims[i - 1] * c + c
    n += d * (8 * c * c + 58 * c)
  return n + 2 * dims[-1] + (dims[-1] * num_classes + num_classes if num_classes else 0)


def emonext_param_count(depths: Sequence[int], dims: Sequence[int], num_classes: int,
                        image_size: int = 224, use_stn: bool = True,
                        se_placement: str = "downsample", se_reduction: int = 16,
                        sa_mode: Optional[str] = "batch", stem_patch_size: int = 4,
                        in_channels: int = 3) -> Dict[str, int]:
  """Closed-form parameter counts {'convnext', 'stn', 'se', 'attention', 'total'} of ``EmoNeXt``."""
  out = {"convnext": convnext_param_count(depths, dims, num_classes, stem_patch_size, in_channels),
         "stn": stn_param_count(image_size, in_channels) if use_stn else 0,
         "se": se_param_count(dims, se_placement, se_reduction),
         "attention": attention_param_count(dims[-1]) if sa_mode is not None else 0}
  out["total"] = sum(out.values())
  return out


TABLE2_SIZES = ("tiny", "small", "base", "large", "xlarge")


def param_count_table(num_classes: int = 7, image_size: int = 224,
                      sizes: Sequence[str] = TABLE2_SIZES) -> List[Dict[str, Any]]:
  """One row per (size, variant): the Table II ConvNeXt baseline, each addition alone, and the
  official-code and paper EmoNeXt (SE at downsampling vs after every stage).

  Row keys: size, variant, convnext, stn, se, attention, total, and 'official_value' = the params
  of the official attention module's unused value projection (C^2 + C, not in our model).
  """
  variants = (
      ("convnext", dict(use_stn=False, se_placement="none", sa_mode=None)),
      ("+stn", dict(use_stn=True, se_placement="none", sa_mode=None)),
      ("+se(downsample)", dict(use_stn=False, se_placement="downsample", sa_mode=None)),
      ("+se(stage)", dict(use_stn=False, se_placement="stage", sa_mode=None)),
      ("+sa", dict(use_stn=False, se_placement="none", sa_mode="batch")),
      ("emonext(code)", dict(use_stn=True, se_placement="downsample", sa_mode="batch")),
      ("emonext(paper)", dict(use_stn=True, se_placement="stage", sa_mode="feature")),
  )
  rows = []
  for size in sizes:
    if size not in SIZES:
      raise ValueError(f"unknown EmoNeXt size {size!r}; known: {sorted(SIZES)}")
    depths, dims = SIZES[size]
    for name, kw in variants:
      row = dict(size=size, variant=name,
                 **emonext_param_count(depths, dims, num_classes, image_size, **kw))
      row["official_value"] = dims[-1] * dims[-1] + dims[-1] if kw["sa_mode"] else 0
      rows.append(row)
  return rows


def format_param_count_table(rows: Sequence[Dict[str, Any]]) -> str:
  head = f"{'size':>7} {'variant':>16} {'convnext':>12} {'stn':>9} {'se':>9} {'attn':>10} {'total':>12}"
  lines = [head]
  for r in rows:
    lines.append(f"{r['size']:>7} {r['variant']:>16} {r['convnext']:>12,} {r['stn']:>9,} "
                 f"{r['se']:>9,} {r['attention']:>10,} {r['total']:>12,}")
  return "\n".join(lines)


# Variants: the ConvNeXt sizes (``fer_jax.models.convnext.SIZES``).
VARIANTS = register_sizes("emonext", EmoNeXt)
(EmoNeXtAtto, EmoNeXtFemto, EmoNeXtPico, EmoNeXtNano, EmoNeXtTiny, EmoNeXtSmall, EmoNeXtBase,
 EmoNeXtLarge, EmoNeXtXLarge) = VARIANTS.values()
