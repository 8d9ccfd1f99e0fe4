"""MTCNN face detector (Zhang et al. 2016) in JAX, a port of facenet-pytorch 2.6.0's ``detect_face``.

    >>> from fer_jax.detect import MTCNN
    >>> det = MTCNN()                     # shipped weights, facenet-pytorch's defaults
    >>> d = det.detect(frame)             # uint8 (H, W, 3) RGB -> Detections(boxes, scores, landmarks)
    >>> ds = det.detect_batch(frames)     # uint8 (B, H, W, 3) -> [Detections] * B

The cascade, step for step as facenet-pytorch's ``models/utils/detect_face.py`` (same float32 arithmetic):
  1. Pyramid: scales ``12 / min_face_size * factor^k`` while ``min(H, W) * scale >= 12``; level size
     ``(int(H s + 1), int(W s + 1))``; area resampling (:mod:`fer_jax.detect.resample`, bitwise equal to
     ``interpolate(mode='area')``); pixels ``(x - 127.5) / 128``.
  2. P-Net on every level; cells with face probability ``>= thresholds[0]`` give boxes
     ``floor((2 (x, y) + 1) / s)`` .. ``floor((2 (x, y) + 12) / s)``; NMS (IoU 0.5) per level and image,
     then (IoU 0.7) per image; regression by the box size ``x1 - x0``; squaring (``rerec``).
  3. Crops: the box truncated to ints and clipped to the image (no zero padding: facenet's ``pad``
     clips, so border crops are stretched), area-resized to 24; R-Net; keep ``> thresholds[1]``; NMS
     (IoU 0.7); regression by ``x1 - x0 + 1``; squaring.
  4. The same crops at 48; O-Net; keep ``> thresholds[2]``; landmarks ``(x1 - x0 + 1) p + x0 - 1``
     from the squared R-Net boxes; regression; NMS ('Min', 0.7) per image.
Output boxes are facenet's (regressed, unsquared, float32, x0 y0 x1 y1), sorted by score, descending.
facenet-pytorch's own ``MTCNN.detect`` reorders them by area when ``select_largest=True`` (its default).

What runs where: the pyramid and P-Net (all levels and frames in one jit, compiled once per batch and
frame size), the crops and R-Net / O-Net (one jit per power-of-two bucket of boxes) and the NMS
(:mod:`fer_jax.detect.nms`, ``lax.fori_loop`` over buckets) are JAX; thresholding (a data-dependent
count), the box arithmetic (a few float32 ops per box, kept in NumPy so no FMA contraction changes it)
and the bookkeeping are NumPy. A box whose crop is empty (it lies wholly outside the frame) is
dropped; facenet-pytorch would instead misalign its later boxes and crops.
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.detect import nets, resample
from fer_jax.detect.nms import bucket, nms
from fer_jax.detect.params import load_variables

__all__ = ["MTCNN", "Detections", "pyramid_scales"]

_PNET, _RNET, _ONET = nets.PNet(), nets.RNet(), nets.ONet()


class Detections(NamedTuple):
  """Faces found in one image, sorted by score (descending); N may be 0."""

  boxes: np.ndarray  # float32 (N, 4): x0, y0, x1, y1 in pixels (as facenet-pytorch returns them)
  scores: np.ndarray  # float32 (N,): O-Net face probability
  landmarks: np.ndarray  # float32 (N, 5, 2) (x, y): image-left eye, image-right eye, nose, mouth left, right


def _empty() -> Detections:
  return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


def pyramid_scales(height: int, width: int, min_face_size: float = 20, factor: float = 0.709) -> List[float]:
  """facenet-pytorch's pyramid scales (Python floats, the same float64 products in the same order)."""
  m = 12.0 / min_face_size
  minl = min(height, width) * m
  scales, scale = [], m
  while minl >= 12:
    scales.append(scale)
    scale = scale * factor
    minl = minl * factor
  return scales


def _normalize(x):
  return (x - 127.5) * 0.0078125


@functools.partial(jax.jit, static_argnames=("sizes",))
def _pnet_pyramid(params, images, sizes: Tuple[Tuple[int, int], ...]):
  """Integral image and, per pyramid level, P-Net's (reg (B, h, w, 4), face prob (B, h, w))."""
  ii = resample.integral_image(images)
  outs = []
  for size in sizes:
    reg, prob = _PNET.apply(params, _normalize(resample.area_resize(ii, size)))
    outs.append((reg, prob[..., 1]))
  return ii, outs


@functools.partial(jax.jit, static_argnames=("size",))
def _crop_net(params, ii, image_index, y0, y1, x0, x1, size: int):
  crops = _normalize(resample.area_crops(ii, image_index, y0, y1, x0, x1, size))
  return (_RNET if size == 24 else _ONET).apply(params, crops)


def _rerec(boxes: np.ndarray) -> np.ndarray:
  """facenet's ``rerec``: squares (N, >=4) float32 boxes about their centres, in place order of ops."""
  b = boxes.copy()
  h = b[:, 3] - b[:, 1]
  w = b[:, 2] - b[:, 0]
  side = np.maximum(w, h)
  b[:, 0] = b[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
  b[:, 1] = b[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
  b[:, 2] = b[:, 0] + side
  b[:, 3] = b[:, 1] + side
  return b


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
  """facenet's ``bbreg``: box += reg * (size + 1) per side (float32)."""
  b = boxes.copy()
  w = b[:, 2] - b[:, 0] + np.float32(1)
  h = b[:, 3] - b[:, 1] + np.float32(1)
  b[:, 0] = b[:, 0] + reg[:, 0] * w
  b[:, 1] = b[:, 1] + reg[:, 1] * h
  b[:, 2] = b[:, 2] + reg[:, 2] * w
  b[:, 3] = b[:, 3] + reg[:, 3] * h
  return b


def _crop_bounds(boxes: np.ndarray, width: int, height: int):
  """facenet's ``pad`` as half-open ranges: rows [y - 1, ey), cols [x - 1, ex), and which are non-empty."""
  t = np.trunc(boxes[:, :4]).astype(np.int32)
  x, y = np.maximum(t[:, 0], 1), np.maximum(t[:, 1], 1)
  ex, ey = np.minimum(t[:, 2], width), np.minimum(t[:, 3], height)
  ok = (ey > y - 1) & (ex > x - 1)
  return y - 1, ey, x - 1, ex, ok


class MTCNN:
  """MTCNN face detector with the shipped weights (see the module docstring).

  Args:
    min_face_size: smallest face side searched for, in pixels (> 0).
    thresholds: face-probability thresholds of P-Net, R-Net, O-Net (each in [0, 1]).
    factor: pyramid scale step, in (0, 1).
    weights: path of another ``mtcnn.msgpack`` (with its ``.json`` sidecar); default: the shipped one.
  """

  def __init__(self, min_face_size: float = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
               factor: float = 0.709, weights: Optional[str] = None):
    if isinstance(min_face_size, bool) or not np.isscalar(min_face_size) or not min_face_size > 0:
      raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size!r}")
    if not np.isscalar(factor) or not 0 < factor < 1:
      raise ValueError(f"factor must be in (0, 1), got {factor!r}")
    th = tuple(thresholds) if isinstance(thresholds, (tuple, list, np.ndarray)) else ()
    if len(th) != 3 or not all(np.isscalar(t) and 0 <= t <= 1 for t in th):
      raise ValueError(f"thresholds must be 3 numbers in [0, 1] (P-Net, R-Net, O-Net), got {thresholds!r}")
    self.min_face_size = float(min_face_size)
    self.thresholds = tuple(float(t) for t in th)
    self.factor = float(factor)
    v = load_variables(weights)
    self.variables = jax.tree.map(jnp.asarray, v)

  def _check(self, images, batch: bool) -> np.ndarray:
    a = np.asarray(images)
    what = "images" if batch else "image"
    want = "(B, H, W, 3)" if batch else "(H, W, 3)"
    if a.dtype != np.uint8:
      raise ValueError(f"{what} must be uint8 RGB {want}, got dtype {a.dtype}")
    if a.ndim != (4 if batch else 3) or a.shape[-1] != 3:
      raise ValueError(f"{what} must have shape {want} (RGB), got {a.shape}")
    if batch and a.shape[0] == 0:
      raise ValueError(f"images must hold at least one frame, got shape {a.shape}")
    h, w = a.shape[-3:-1]
    if min(h, w) < max(12, self.min_face_size):
      raise ValueError(f"{what} of {w}x{h} pixels is too small: MTCNN needs both sides >= "
                       f"max(12, min_face_size={self.min_face_size:g}) pixels")
    if h * w > (2 ** 31 - 1) // 255:
      raise ValueError(f"{what} of {w}x{h} pixels is too large for the int32 integral image")
    return a if batch else a[None]

  def detect(self, image) -> Detections:
    """Faces in one uint8 (H, W, 3) RGB image."""
    return self._run(self._check(image, batch=False))[0]

  def detect_batch(self, images) -> List[Detections]:
    """Faces in each of a batch of same-size uint8 (B, H, W, 3) RGB frames (P-Net runs on all at once)."""
    return self._run(self._check(images, batch=True))

  def _run(self, images: np.ndarray) -> List[Detections]:
    n_img, height, width = images.shape[:3]
    t0, t1, t2 = self.thresholds
    scales = pyramid_scales(height, width, self.min_face_size, self.factor)
    sizes = tuple((int(height * s + 1), int(width * s + 1)) for s in scales)
    ii, outs = _pnet_pyramid(self.variables["pnet"], jnp.asarray(images), sizes)

    # Stage 1: candidates of every level; NMS per (level, image), then per image.
    cand, cats = [], []
    for level, (s, (reg, prob)) in enumerate(zip(scales, outs)):
      reg, prob = np.asarray(reg), np.asarray(prob)
      b, yy, xx = np.nonzero(prob >= np.float32(t0))
      if b.size == 0:
        continue
      s32 = np.float32(s)
      q = np.stack([xx, yy], 1).astype(np.float32) * np.float32(2)
      q1 = np.floor((q + np.float32(1)) / s32)
      q2 = np.floor((q + np.float32(11) + np.float32(1)) / s32)
      cand.append(np.concatenate([q1, q2, prob[b, yy, xx][:, None], reg[b, yy, xx]], 1).astype(np.float32))
      cats.append(np.stack([b, np.full_like(b, level)], 1))
    if not cand:
      return [_empty() for _ in range(n_img)]
    boxes, cats = np.concatenate(cand), np.concatenate(cats)
    keep = nms(boxes[:, :4], boxes[:, 4], cats[:, 0] * len(scales) + cats[:, 1], 0.5)
    boxes, img_idx = boxes[keep], cats[keep, 0]
    keep = nms(boxes[:, :4], boxes[:, 4], img_idx, 0.7)
    boxes, img_idx = boxes[keep], img_idx[keep]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    boxes = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                      boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], 1)
    boxes = _rerec(boxes)

    # Stage 2: R-Net on 24 x 24 crops.
    boxes, img_idx, (reg, prob) = self._crop_stage(ii, boxes, img_idx, width, height, 24)
    ok = prob > np.float32(t1)
    boxes = np.concatenate([boxes[ok, :4], prob[ok, None]], 1)
    img_idx, reg = img_idx[ok], reg[ok]
    keep = nms(boxes[:, :4], boxes[:, 4], img_idx, 0.7)
    boxes = _rerec(_bbreg(boxes[keep], reg[keep]))
    img_idx = img_idx[keep]

    # Stage 3: O-Net on 48 x 48 crops, landmarks, final 'Min' NMS.
    boxes, img_idx, (reg, pts, prob) = self._crop_stage(ii, boxes, img_idx, width, height, 48)
    ok = prob > np.float32(t2)
    boxes = np.concatenate([boxes[ok, :4], prob[ok, None]], 1)
    img_idx, reg, pts = img_idx[ok], reg[ok], pts[ok]
    w = boxes[:, 2] - boxes[:, 0] + np.float32(1)
    h = boxes[:, 3] - boxes[:, 1] + np.float32(1)
    px = w[:, None] * pts[:, :5] + boxes[:, 0:1] - np.float32(1)
    py = h[:, None] * pts[:, 5:] + boxes[:, 1:2] - np.float32(1)
    landmarks = np.stack([px, py], -1).astype(np.float32)
    boxes = _bbreg(boxes, reg)
    keep = nms(boxes[:, :4], boxes[:, 4], img_idx, 0.7, mode="min")
    boxes, img_idx, landmarks = boxes[keep], img_idx[keep], landmarks[keep]
    return [Detections(boxes[img_idx == i, :4].copy(), boxes[img_idx == i, 4].copy(),
                       landmarks[img_idx == i].copy()) for i in range(n_img)]

  def _crop_stage(self, ii, boxes, img_idx, width, height, size):
    """Crops of ``boxes`` at ``size`` through R-Net (24) or O-Net (48), padded to a bucket; returns the
    boxes with non-empty crops, their image indices and the network outputs (NumPy, unpadded)."""
    y0, y1, x0, x1, ok = _crop_bounds(boxes, width, height)
    boxes, img_idx = boxes[ok], img_idx[ok]
    n = len(boxes)
    if n == 0:
      return boxes, img_idx, ((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)) if size == 24 else
                              (np.zeros((0, 4), np.float32), np.zeros((0, 10), np.float32),
                               np.zeros((0,), np.float32)))
    m = bucket(n, 16)
    def pad(a, fill):  # padded rows crop pixel (0, 0) of image 0
      return np.concatenate([a.astype(np.int32), np.full(m - n, fill, np.int32)])
    idx = pad(img_idx, 0)
    args = (pad(y0[ok], 0), pad(y1[ok], 1), pad(x0[ok], 0), pad(x1[ok], 1))
    out = _crop_net(self.variables["rnet" if size == 24 else "onet"], ii, idx, *args, size=size)
    out = [np.asarray(o)[:n] for o in out]
    out[-1] = out[-1][:, 1]
    return boxes, img_idx, tuple(out)
