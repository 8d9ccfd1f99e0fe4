"""Attribution heat maps: captum-style normalisation, colour-map overlay, PNG writer.

``attribution_heatmap`` follows ``captum.attr.visualization.visualize_image_attr``'s scaling:
the attribution is summed over channels, transformed by ``sign`` ('absolute_value', 'positive',
'negative', 'all'), divided by the value at which the cumulative sum of the sorted |values|
reaches ``100 - outlier_perc`` percent of the total, and clipped to [-1, 1]; so the top
``outlier_perc`` percent of the attribution mass saturates.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["attribution_heatmap", "overlay_heatmap", "draw_landmarks", "write_heatmap_png"]

_SIGNS = ("absolute_value", "positive", "negative", "all")


def _cumulative_threshold(values: np.ndarray, percentile: float) -> float:
  """Smallest sorted value at which the cumulative sum reaches ``percentile`` % of the total."""
  v = np.sort(values.reshape(-1))
  cum = np.cumsum(v)
  return float(v[np.flatnonzero(cum >= cum[-1] * 0.01 * percentile)[0]])


def attribution_heatmap(attr, sign: str = "absolute_value", outlier_perc: float = 2.0,
                        channel_axis: Optional[int] = -1) -> np.ndarray:
  """(H, W) map in [0, 1] ([-1, 1] for 'all') from (H, W, C) or (H, W) attributions.

  Args:
    attr: attributions of one image; (H, W, C) with ``channel_axis`` (summed, signed, first, as
      captum does), or (H, W) with ``channel_axis=None``.
    sign: which values to show (captum's ``VisualizeSign``): 'absolute_value' |a|, 'positive'
      max(a, 0), 'negative' the magnitude of min(a, 0) (so also in [0, 1]), 'all' a itself.
    outlier_perc: percent of the attribution mass that saturates (captum's default 2).
    channel_axis: the channel axis, or None.

  An all-zero map is returned as zeros (captum raises there).
  """
  a = np.asarray(attr, np.float64)
  if channel_axis is not None:
    if a.ndim != 3:
      raise ValueError(f"attr must be (H, W, C) with channel_axis={channel_axis}, got {a.shape}")
    a = a.sum(axis=channel_axis)
  elif a.ndim != 2:
    raise ValueError(f"attr must be (H, W) with channel_axis=None, got {a.shape}")
  if sign not in _SIGNS:
    raise ValueError(f"sign must be one of {_SIGNS}, got {sign!r}")
  if not 0 <= outlier_perc <= 100:
    raise ValueError(f"outlier_perc must lie in [0, 100], got {outlier_perc}")
  if not np.isfinite(a).all():
    raise ValueError("attr contains NaN or inf")
  if sign == "absolute_value":
    a = np.abs(a)
  elif sign == "positive":
    a = np.maximum(a, 0)
  elif sign == "negative":
    a = np.minimum(a, 0)
  thr = _cumulative_threshold(np.abs(a), 100.0 - outlier_perc)
  if thr == 0:
    return np.zeros_like(a)
  if sign == "negative":
    thr = -thr
  return np.clip(a / thr, -1.0, 1.0)


def _as_rgb01(image) -> np.ndarray:
  """(H, W), (H, W, 1) or (H, W, 3) uint8 / float [0, 1] -> float64 (H, W, 3) in [0, 1]."""
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {img.shape}")
  if img.dtype == np.uint8:
    img = img.astype(np.float64) / 255.0
  else:
    img = img.astype(np.float64)
    if img.size and (img.min() < 0 or img.max() > 1):
      raise ValueError(f"float images must lie in [0, 1], got range [{img.min()}, {img.max()}]")
  return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def _to_uint8(x01: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x01 * 255.0), 0, 255).astype(np.uint8)


def overlay_heatmap(image, heat, alpha: float = 0.5, cmap: str = "jet", vmin: float = 0.0,
                    vmax: float = 1.0) -> np.ndarray:
  """uint8 (H, W, 3): ``round(255 * ((1 - alpha) * image + alpha * cmap((heat - vmin) / (vmax -
  vmin))))`` with image and colour in [0, 1] and the scaled heat clipped to [0, 1].

  Use ``vmin=-1, cmap='bwr'`` for signed maps (``sign='all'``).
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  img = _as_rgb01(image)
  h = np.asarray(heat, np.float64)
  if h.shape != img.shape[:2]:
    raise ValueError(f"heat must have the image's (H, W) = {img.shape[:2]}, got {h.shape}")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
  if not vmax > vmin:
    raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
  colour = matplotlib.colormaps[cmap](np.clip((h - vmin) / (vmax - vmin), 0.0, 1.0))[..., :3]
  return _to_uint8((1.0 - alpha) * img + alpha * colour)


def draw_landmarks(rgb, landmarks, color: Union[Sequence[int], np.ndarray] = (255, 255, 255),
                   radius: float = 1.0) -> np.ndarray:
  """Copy of uint8 (H, W, 3) ``rgb`` with filled disks at (L, 2) landmarks (x, y) = (col, row).

  ``color`` is one RGB triple or (L, 3) (one per landmark, e.g. from a colour map of per-landmark
  scores); later landmarks are drawn over earlier ones. Pixel (r, c) is painted when
  ``(c - x)^2 + (r - y)^2 <= radius^2``.
  """
  out = np.array(rgb, dtype=np.uint8, copy=True)
  if out.ndim != 3 or out.shape[-1] != 3:
    raise ValueError(f"rgb must be (H, W, 3) uint8, got {out.shape}")
  lm = np.asarray(landmarks, np.float64)
  if lm.ndim != 2 or lm.shape[-1] != 2:
    raise ValueError(f"landmarks must be (L, 2), got {lm.shape}")
  col = np.asarray(color)
  col = np.broadcast_to(col, (lm.shape[0], 3)) if col.shape == (3,) else col
  if col.shape != (lm.shape[0], 3):
    raise ValueError(f"color must be (3,) or ({lm.shape[0]}, 3), got {np.shape(color)}")
  col = col.astype(np.uint8)
  rows, cols = np.mgrid[0:out.shape[0], 0:out.shape[1]]
  for (x, y), c in zip(lm, col):
    out[(cols - x) ** 2 + (rows - y) ** 2 <= radius ** 2 + 1e-9] = c
  return out


def write_heatmap_png(path: Union[str, os.PathLike], image, attr, alpha: float = 0.5,
                      cmap: str = "jet", sign: str = "absolute_value", outlier_perc: float = 2.0,
                      channel_axis: Optional[int] = -1, scale: int = 1, landmarks=None,
                      landmark_color: Union[Sequence[int], np.ndarray] = (255, 255, 255),
                      landmark_radius: float = 1.0) -> np.ndarray:
  """Writes image + attribution heat map (+ optional landmarks) as an RGB PNG; returns the array.

  ``attr`` is normalised with ``attribution_heatmap`` (signed maps for ``sign='all'`` use
  ``vmin=-1``), overlaid with ``overlay_heatmap``, enlarged ``scale`` times (nearest neighbour) and
  marked with ``draw_landmarks`` (landmarks in input pixel coordinates, mapped to
  ``(x + 0.5) * scale - 0.5``). Parent directories are created; an existing file is replaced.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
    raise ValueError(f"scale must be a positive int, got {scale!r}")
  heat = attribution_heatmap(attr, sign=sign, outlier_perc=outlier_perc, channel_axis=channel_axis)
  rgb = overlay_heatmap(image, heat, alpha=alpha, cmap=cmap, vmin=-1.0 if sign == "all" else 0.0)
  if scale > 1:
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
  if landmarks is not None:
    lm = (np.asarray(landmarks, np.float64) + 0.5) * scale - 0.5
    rgb = draw_landmarks(rgb, lm, landmark_color, landmark_radius * scale)
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(rgb, mode="RGB").save(path, format="PNG")
  return rgb
