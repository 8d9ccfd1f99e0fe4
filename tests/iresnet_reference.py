"""A PyTorch iResNet written from the architecture of insightface's ArcFace backbones (Deng et al. 2019;
``recognition/arcface_torch/backbones/iresnet.py``), with insightface's module names so that its state dict
has the keys of a ``backbone.pth``: conv1, bn1, prelu, layer{n}.{i}.{bn1, conv1, bn2, prelu, conv2, bn3,
downsample.0, downsample.1}, bn2, fc, features. The reference of tests/test_iresnet.py and
benchmarks/iresnet_train_step.py.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3),
          "r200": (6, 26, 60, 6)}


class Block(nn.Module):
  """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus the (conv1x1 -> BN) shortcut."""

  def __init__(self, cin: int, width: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
    self.conv1 = nn.Conv2d(cin, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width, eps=1e-5)
    self.prelu = nn.PReLU(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width, eps=1e-5)
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width, eps=1e-5))

  def forward(self, x):
    y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    return y + (x if self.downsample is None else self.downsample(x))


class IResNetReference(nn.Module):
  """Faces (B, 3, S, S) -> (B, embedding_size); the fc reads the torch-flattened (C, H, W) final map."""

  def __init__(self, depths: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512), input_size: int = 112,
               embedding_size: int = 512, dropout: float = 0.0, in_chans: int = 3):
    super().__init__()
    self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
    self.prelu = nn.PReLU(widths[0])
    cin, side = widths[0], input_size
    for n, (w, d) in enumerate(zip(widths, depths), start=1):
      setattr(self, f"layer{n}", nn.Sequential(*[Block(cin if i == 0 else w, w, 2 if i == 0 else 1)
                                                   for i in range(d)]))
      cin, side = w, (side - 1) // 2 + 1  # 3x3 conv, stride 2, padding 1
    self.num_layers = len(depths)
    self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
    self.dropout = nn.Dropout(dropout)
    self.fc = nn.Linear(cin * side * side, embedding_size)
    self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
    nn.init.ones_(self.features.weight)
    self.features.weight.requires_grad = False

  def forward(self, x):
    x = self.prelu(self.bn1(self.conv1(x)))
    for n in range(1, self.num_layers + 1):
      x = getattr(self, f"layer{n}")(x)
    x = self.dropout(torch.flatten(self.bn2(x), 1))
    return self.features(self.fc(x))


def randomize_(model: IResNetReference, calibration: torch.Tensor, seed: int = 0) -> IResNetReference:
  """Random weights away from every init value, and running statistics that keep the eval-mode
  activations O(1): BN scales U(0.5, 1.5), biases N(0, 0.2), PReLU slopes U(0, 0.5); each BN's running
  statistics are those of ``calibration`` (one train-mode pass with momentum 1), times U(0.8, 1.25)
  (variances) or plus 0.1 N(0, 1) (means). ``features.weight`` stays 1. In place; returns ``model``."""
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, nn.PReLU):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
      elif isinstance(m, nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    for m in bns:
      if m is not model.features:
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
      m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
      m.momentum = 1.0
    model.train()(calibration)
    for m in bns:
      m.momentum = 0.1
      m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
      m.running_var.mul_(0.8 + 0.45 * torch.rand(m.running_var.shape, generator=g))
  return model.eval()
