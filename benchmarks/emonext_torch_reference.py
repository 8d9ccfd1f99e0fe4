"""PyTorch EmoNeXt reference for parity tests and benchmarks: a timm ConvNeXt plus our own torch
STN / SE / self-attention, written from ../shared/PAPERS.md section 1 (not the official code).

``TorchEmoNeXt`` adopts the timm model's ``stem``, ``stages``, ``norm_pre`` and ``head`` as its own
children, so its state dict uses timm's ConvNeXt names plus the official EmoNeXt names of the
extras: ``localization.{0,1,4,5}.*`` and ``fc_loc.{0,2}.*`` (STN), ``attention.{norm,query,key,
value}.*``; SE is ``stages.{i}.downsample.2.fc.{0,2}.weight`` (after the stride-2 conv, official
placement) or ``stages.{i}.se.fc.{0,2}.weight`` (after the stage, paper placement).
``fer_jax.models.emonext_convert.emonext_from_torch_state_dict`` reads it directly.

Forward: ``(logits, features, sa_loss, attention)``; train loss ``CE + lambda * sa_loss``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class TorchSE(nn.Module):
  """Squeeze-and-Excitation (Hu et al. 2018), bias-free, NCHW."""

  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    hidden = channels // reduction
    self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                            nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

  def forward(self, x):
    s = self.fc(x.mean(dim=(2, 3)))
    return x * s[:, :, None, None]


class TorchSelfAttention(nn.Module):
  """LayerNorm (eps 1e-5) -> Q, K (and the official, unused V) Linear(C) -> (L_SA, W)."""

  def __init__(self, dim: int, mode: str = "batch", with_value: bool = True):
    super().__init__()
    if mode not in ("batch", "feature"):
      raise ValueError(f"mode must be 'batch' or 'feature', got {mode!r}")
    self.mode = mode
    self.norm = nn.LayerNorm(dim)
    self.query = nn.Linear(dim, dim)
    self.key = nn.Linear(dim, dim)
    self.value = nn.Linear(dim, dim) if with_value else None

  def forward(self, f):
    f = self.norm(f)
    q, k = self.query(f), self.key(f)
    c = f.shape[-1]
    if self.mode == "batch":  # (B, B) across the batch, scale C^-1/4
      w = torch.softmax(q @ k.t() * c ** -0.25, dim=-1)
    else:  # per image, features as tokens: (B, C, C), scale 1/sqrt(C)
      w = torch.softmax(q[:, :, None] * k[:, None, :] / math.sqrt(c), dim=-1)
    return ((w - w.mean()) ** 2).mean(), w


def _stn_side(image_size: int) -> int:
  return ((image_size - 6) // 2 - 4) // 2


class TorchEmoNeXt(nn.Module):
  """STN -> timm ConvNeXt (+ SE) -> head, and the self-attention regulariser on the features."""

  def __init__(self, backbone: nn.Module, dims, image_size: int = 224, use_stn: bool = True,
               se_placement: str = "downsample", se_reduction: int = 16, sa_mode="batch"):
    super().__init__()
    self.stem, self.stages = backbone.stem, backbone.stages
    self.norm_pre, self.head = backbone.norm_pre, backbone.head
    self.use_stn = use_stn
    if use_stn:
      self.localization = nn.Sequential(
          nn.Conv2d(3, 8, 7), nn.BatchNorm2d(8), nn.MaxPool2d(2, 2), nn.ReLU(),
          nn.Conv2d(8, 10, 5), nn.BatchNorm2d(10), nn.MaxPool2d(2, 2), nn.ReLU())
      side = _stn_side(image_size)
      self.fc_loc = nn.Sequential(nn.Linear(10 * side * side, 32), nn.ReLU(), nn.Linear(32, 6))
      for m in list(self.localization) + list(self.fc_loc):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
          nn.init.trunc_normal_(m.weight, std=0.02)
          nn.init.zeros_(m.bias)
      nn.init.zeros_(self.fc_loc[2].weight)
      with torch.no_grad():
        self.fc_loc[2].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
    if se_placement not in ("downsample", "stage", "none"):
      raise ValueError(f"se_placement {se_placement!r}")
    for i, stage in enumerate(self.stages):
      if se_placement == "downsample" and i > 0:
        stage.downsample.append(TorchSE(dims[i], se_reduction))
      elif se_placement == "stage":
        stage.se = TorchSE(dims[i], se_reduction)
    self.attention = TorchSelfAttention(dims[-1], sa_mode) if sa_mode else None
    for m in self.modules():
      if isinstance(m, (TorchSE, TorchSelfAttention)):
        for lin in m.modules():
          if isinstance(lin, nn.Linear):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
              nn.init.zeros_(lin.bias)

  def stn(self, x):
    theta = self.fc_loc(torch.flatten(self.localization(x), 1)).view(-1, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

  def forward(self, x):
    if self.use_stn:
      x = self.stn(x)
    x = self.stem(x)
    for stage in self.stages:
      x = stage.blocks(stage.downsample(x))  # the downsampling SE sits inside stage.downsample
      if hasattr(stage, "se"):
        x = stage.se(x)
    f = self.head(self.norm_pre(x), pre_logits=True)
    logits = self.head.fc(f)
    if self.attention is None:
      return logits, f, torch.zeros(()), None
    sa_loss, w = self.attention(f)
    return logits, f, sa_loss, w


def build_torch_emonext(timm, variant: str = "convnext_tiny", num_classes: int = 7,
                        image_size: int = 224, drop_path_rate: float = 0.0, timm_kwargs=None,
                        **kwargs):
  """``TorchEmoNeXt`` around ``timm.create_model(variant, **timm_kwargs)`` (get ``timm`` from
  ``fer_jax.testing.import_timm()``; timm_kwargs e.g. depths / dims for a custom size); kwargs:
  use_stn, se_placement, se_reduction, sa_mode."""
  backbone = timm.create_model(variant, pretrained=False, num_classes=num_classes,
                               drop_path_rate=drop_path_rate, **(timm_kwargs or {}))
  dims = [s.blocks[-1].conv_dw.out_channels for s in backbone.stages]
  return TorchEmoNeXt(backbone, dims, image_size=image_size, **kwargs)
