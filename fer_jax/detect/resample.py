"""Area resampling (``torch.nn.functional.interpolate(mode='area')``) in JAX, by integral images.

facenet-pytorch's MTCNN resizes the image pyramid and the R-Net / O-Net crops with torch's 'area'
mode, which is ``adaptive_avg_pool2d``: output index i along an axis of input length L and output
length S averages the inputs ``[floor(i L / S), ceil((i + 1) L / S))`` (also when upsampling, S > L).
A window average is four lookups in the image's integral image, kept in int32 (exact up to
2^31 / 255 ~ 8.4 M pixels), and divided as torch divides its float sum (``sum / kh / kw``). For uint8
images the sums are integers below 2^24, so torch's float32 sums are exact too and the results agree
bitwise. Everything here has static shapes and is jit-able.
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np


def window_bounds(length: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Start and end (exclusive) input indices of each of ``size`` area-resize outputs (NumPy int32)."""
  i = np.arange(size, dtype=np.int64)
  return (i * length // size).astype(np.int32), (-(-(i + 1) * length // size)).astype(np.int32)


@jax.jit
def integral_image(images):
  """uint8 (B, H, W, C) -> int32 (B, H + 1, W + 1, C) with ``S[b, y, x] = sum(images[b, :y, :x])``."""
  if images.ndim != 4:
    raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}")
  s = jnp.cumsum(jnp.cumsum(images.astype(jnp.int32), axis=1), axis=2)
  return jnp.pad(s, ((0, 0), (1, 0), (1, 0), (0, 0)))


def _divide(total, kh, kw):
  """``float32(total) / kh / kw`` in that order, as torch's kernel. XLA rewrites a division by a
  broadcast divisor as a multiplication by its reciprocal (last-bit differences), so the divisors are
  broadcast to full size behind an optimization barrier first, and a second barrier keeps
  ``(a / b) / c`` from becoming ``a / (b * c)``."""
  total = total.astype(jnp.float32)
  kh, kw = jax.lax.optimization_barrier((jnp.broadcast_to(kh, total.shape), jnp.broadcast_to(kw, total.shape)))
  return jax.lax.optimization_barrier(total / kh) / kw


def _box_sum(ii, b, y0, y1, x0, x1):
  """Sums over rows [y0, y1) x cols [x0, x1) of image b; index arrays broadcast together."""
  return ii[b, y1, x1] - ii[b, y0, x1] - ii[b, y1, x0] + ii[b, y0, x0]


@functools.partial(jax.jit, static_argnames=("size",))
def area_resize(ii, size: Tuple[int, int]):
  """Whole images (integral images ``ii`` (B, H + 1, W + 1, C)) resized to ``size`` = (h, w): float32
  (B, h, w, C), as ``interpolate(x, size, mode='area')``."""
  length_y, length_x = ii.shape[1] - 1, ii.shape[2] - 1
  ys, ye = window_bounds(length_y, size[0])
  xs, xe = window_bounds(length_x, size[1])
  rows_s, rows_e = ii[:, ys], ii[:, ye]
  total = rows_e[:, :, xe] - rows_s[:, :, xe] - rows_e[:, :, xs] + rows_s[:, :, xs]
  kh = (ye - ys).astype(np.float32)[None, :, None, None]
  kw = (xe - xs).astype(np.float32)[None, None, :, None]
  return _divide(total, kh, kw)


@functools.partial(jax.jit, static_argnames=("size",))
def area_crops(ii, image_index, y0, y1, x0, x1, size: int):
  """Crops rows [y0, y1) x cols [x0, x1) of image ``image_index`` (each (N,) int32, non-empty and
  inside the image), each resized to (size, size) by area interpolation: float32 (N, size, size, C)."""
  i = jnp.arange(size, dtype=jnp.int32)
  hk, wk = (y1 - y0)[:, None], (x1 - x0)[:, None]
  ys = y0[:, None] + i * hk // size
  ye = y0[:, None] + ((i + 1) * hk + size - 1) // size
  xs = x0[:, None] + i * wk // size
  xe = x0[:, None] + ((i + 1) * wk + size - 1) // size
  b = image_index[:, None, None]
  total = _box_sum(ii, b, ys[:, :, None], ye[:, :, None], xs[:, None, :], xe[:, None, :])
  kh = (ye - ys).astype(jnp.float32)[:, :, None, None]
  kw = (xe - xs).astype(jnp.float32)[:, None, :, None]
  return _divide(total, kh, kw)
