"""Greedy non-maximum suppression in JAX with static shapes (padded to power-of-two buckets).

Two overlap measures, as facenet-pytorch's MTCNN uses them (``models/utils/detect_face.py``):
  * ``'union'``: ``torchvision.ops.batched_nms`` (its CPU kernel): areas ``(x1 - x0) (y1 - y0)``, overlap
    ``inter / (area_i + area_j - inter)`` with ``inter`` from ``max(0, min(x1) - max(x0))`` per axis;
  * ``'min'``: facenet's ``nms_numpy(..., 'Min')``: areas and intersections with ``+ 1`` per side,
    overlap ``inter / min(area_i, area_j)``.
A box is suppressed when its overlap with a higher-scoring kept box of the same category exceeds the
threshold. Categories replace torchvision's coordinate-offset trick (same result, no float shift).

The loop over the score-sorted boxes is a ``lax.fori_loop`` whose body compares one box with all
others (O(n) memory); inputs are padded to the next power of two (at least 64) so each bucket compiles
once. Ties in score keep the lower input index first (a stable sort; torch leaves them unspecified).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("union", "min")


def bucket(n: int, minimum: int = 64) -> int:
  """Smallest power of two >= max(n, minimum)."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("mode",))
def _nms_padded(boxes, scores, categories, valid, threshold, mode: str):
  n = boxes.shape[0]
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
  x0, y0, x1, y1 = (boxes[order, k] for k in range(4))
  cat, keep0 = categories[order], valid[order]
  one = 1.0 if mode == "min" else 0.0
  area = (x1 - x0 + one) * (y1 - y0 + one)
  idx = jnp.arange(n)

  def body(i, keep):
    w = jnp.maximum(0.0, jnp.minimum(x1[i], x1) - jnp.maximum(x0[i], x0) + one)
    h = jnp.maximum(0.0, jnp.minimum(y1[i], y1) - jnp.maximum(y0[i], y0) + one)
    inter = w * h
    if mode == "min":
      overlap = inter / jnp.minimum(area[i], area)
    else:
      overlap = inter / (area[i] + area - inter)
    suppress = keep[i] & (idx > i) & (cat == cat[i]) & (overlap > threshold)
    return keep & ~suppress

  keep = jax.lax.fori_loop(0, n, body, keep0)
  return order, keep


def nms(boxes, scores, categories=None, threshold: float = 0.5, mode: str = "union") -> np.ndarray:
  """Indices (int64, NumPy) of the boxes kept, by descending score.

  Args:
    boxes: (N, 4) x0, y0, x1, y1 (float32).
    scores: (N,).
    categories: optional (N,) ints; boxes of different categories never suppress each other.
    threshold: overlap above which the lower-scoring box is dropped.
    mode: ``'union'`` (IoU, torchvision) or ``'min'`` (intersection over the smaller box, facenet).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  boxes = np.asarray(boxes, np.float32)
  n = boxes.shape[0]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
  if n == 0:
    return np.zeros((0,), np.int64)
  m = bucket(n)
  pad = lambda a, dtype: np.concatenate([np.asarray(a, dtype), np.zeros((m - n,) + np.shape(a)[1:], dtype)])
  cats = np.zeros(n, np.int32) if categories is None else categories
  order, keep = _nms_padded(pad(boxes, np.float32), pad(scores, np.float32), pad(cats, np.int32),
                            pad(np.ones(n, bool), bool), np.float32(threshold), mode)
  order, keep = np.asarray(order), np.asarray(keep)
  return order[keep].astype(np.int64)
