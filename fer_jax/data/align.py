"""Face alignment for in-the-wild frames: landmarks -> similarity transform -> fixed-size crop.

Users with raw videos run a landmark detector (iBUG-68 or 5-point), then :func:`align_face` (or
:func:`crop_face`) to get the crops the models expect; the ``afew_va`` TFDS builder makes its
crops with these same functions (``aligned_112``: ``align_face(frame, landmarks, '68', 112,
scale=1.25, supersample=4)``, then rounded to uint8). Everything is written in ``jax.numpy`` and
is jit-able with the sizes and options static, e.g.
``jax.jit(jax.vmap(functools.partial(align_face, out_size=112, scale=1.25)))(frames, landmarks)``.

Conventions
  * Points are (x, y) = (column, row) in pixels; pixel centres lie at integer coordinates, so an
    image of width W spans x in [-0.5, W - 0.5] and its centre is at ((W - 1) / 2, (H - 1) / 2)
    (as in ``fer_jax.data.synthetic``, OpenCV's ``warpAffine`` and scikit-image).
  * A transform is a (2, 3) matrix ``M`` mapping input (x, y, 1) to output (x, y) (the forward
    map, as ``cv2.warpAffine`` takes it without ``WARP_INVERSE_MAP``).
  * Landmark order: iBUG-300W 68 points (Sagonas et al. 2013; 36-41 the eye on the image left,
    i.e. the subject's right eye, 48 / 54 the image-left / image-right mouth corner), or the
    5-point order of ArcFace / RetinaFace: image-left eye, image-right eye, nose tip, image-left
    and image-right mouth corner.

Templates (reference frame of 112 x 112 pixels, ``TEMPLATE_SIZE``)
  * ``'5'``: ``ARCFACE_TEMPLATE_112``, the 5-point template of InsightFace's ArcFace crops
    (Deng et al., CVPR 2019; the ``arcface_dst`` constants of insightface ``face_align``).
  * ``'68'``: ``MEAN_SHAPE_68``, our own mean shape: the iBUG-68 landmarks of the neutral,
    average-identity face of ``fer_jax.data.synthetic`` (all identity draws at 0.5, no AU),
    placed by the least-squares scale + translation (no rotation, so it stays upright and
    left-right symmetric) that maps its 5-point subset (:func:`landmarks_68_to_5`) onto
    ``ARCFACE_TEMPLATE_112``. Both templates therefore frame a face alike.
  * ``'fer2013'``: ``FER2013_TEMPLATE_112``, FER2013's own framing (its 48 x 48 faces are looser than
    ArcFace's crops): the per-point median of our MTCNN's 5 landmarks on 3,444 FER2013 Training faces
    (``FER2013_TEMPLATE_48``, measured by ``benchmarks/fer2013_template.py``), converted to the 112
    frame by ``p112 = (p48 + 0.5) * 112 / 48 - 0.5``. ``align_face(frame, lm5, 'fer2013', out_size=48)``
    frames a detected face as FER2013 does, for the models trained on it.

  For an output of S pixels and a zoom-out factor ``scale`` the template points are
  ``(p - 55.5) * (S / 112) / scale + (S - 1) / 2`` (:func:`template_points`): ``scale > 1``
  leaves more context around the face (the ArcFace framing, ``scale=1``, cuts the chin of the
  68-point template, whose chin point lies at y = 118 in the 112 frame).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TEMPLATE_SIZE", "ARCFACE_TEMPLATE_112", "MEAN_SHAPE_68", "FER2013_TEMPLATE_48", "FER2013_TEMPLATE_112",
    "TEMPLATES", "AlignedFace",
    "landmarks_68_to_5", "template_points", "estimate_similarity", "apply_affine",
    "invert_affine", "square_box_matrix", "warp_affine", "align_face", "crop_face",
    "square_crop_box", "crop_face_box", "FaceOutsideFrameError",
]

TEMPLATE_SIZE = 112

# InsightFace ArcFace 5-point template for 112 x 112 crops (x, y), pixel centres at integers.
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],  # image-left eye centre (subject's right eye)
    [73.5318, 51.5014],  # image-right eye centre
    [56.0252, 71.7366],  # nose tip
    [41.5493, 92.3655],  # image-left mouth corner
    [70.7299, 92.2041],  # image-right mouth corner
], np.float64)


@jax.jit
def landmarks_68_to_5(landmarks):
  """iBUG-68 (..., 68, 2) -> 5 points (..., 5, 2): eye centres (36-41, 42-47), 30, 48, 54."""
  shape = jnp.shape(landmarks)
  if len(shape) < 2 or shape[-2:] != (68, 2):
    raise ValueError(f"landmarks must have shape (..., 68, 2) (iBUG-68 (x, y) points), got "
                     f"{shape}")
  lm = jnp.asarray(landmarks)
  return jnp.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :],
                    lm[..., 48, :], lm[..., 54, :]], axis=-2)


def _mean_shape_68() -> np.ndarray:
  """``MEAN_SHAPE_68`` (see the module docstring); float64 NumPy, computed once at import."""
  from fer_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  n_id = len(synthetic.IDENTITY_RANGES)
  identity = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES, np.full((1, n_id), 0.5))
  au = np.zeros((1, synthetic.NUM_AUS), np.float32)
  shape = synthetic.canonical_landmarks(au, identity)[0].astype(np.float64)
  five = np.stack([shape[36:42].mean(0), shape[42:48].mean(0), shape[30], shape[48], shape[54]])
  # Least squares over (k, tx, ty) of sum |k * five + t - arcface|^2.
  src = five - five.mean(0)
  dst = ARCFACE_TEMPLATE_112 - ARCFACE_TEMPLATE_112.mean(0)
  k = (src * dst).sum() / (src * src).sum()
  t = ARCFACE_TEMPLATE_112.mean(0) - k * five.mean(0)
  return k * shape + t


MEAN_SHAPE_68 = _mean_shape_68()

# FER2013's framing in its 48 x 48 pixels (x, y; pixel centres at integers), 5-point order: the per-point
# median of fer_jax.detect.MTCNN's landmarks on the 3,444 of the first 4,000 FER2013 Training faces with one
# detection of score >= 0.95 (faces upscaled 3x and padded; per-point IQR 2.5-4.1 px). Measured by
# `python benchmarks/fer2013_template.py --part template` (benchmarks/results/fer2013_template.json).
FER2013_TEMPLATE_48 = np.array([
    [14.944, 18.497],  # image-left eye
    [33.047, 18.183],  # image-right eye
    [23.991, 28.605],  # nose tip
    [16.627, 37.456],  # image-left mouth corner
    [31.650, 37.238],  # image-right mouth corner
], np.float64)
FER2013_TEMPLATE_112 = (FER2013_TEMPLATE_48 + 0.5) * TEMPLATE_SIZE / 48 - 0.5
TEMPLATES = {"5": ARCFACE_TEMPLATE_112, "68": MEAN_SHAPE_68, "fer2013": FER2013_TEMPLATE_112}


def _check_size(out_size) -> Tuple[int, int]:
  """int S or (height, width) -> (height, width) of positive ints."""
  size = (out_size, out_size) if np.ndim(out_size) == 0 else tuple(out_size)
  if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
    raise ValueError(f"out_size must be a positive int or a (height, width) pair of them, got "
                     f"{out_size!r}")
  return int(size[0]), int(size[1])


def template_points(template: str = "68", out_size=TEMPLATE_SIZE,
                    scale: float = 1.0) -> np.ndarray:
  """Template ``'68'``, ``'5'`` or ``'fer2013'`` in the pixels of an ``out_size`` crop, zoomed out by ``scale``.

  ``p -> (p - 55.5) * (S / 112) / scale + (S - 1) / 2`` per axis (S = height for y, width for x).
  """
  if template not in TEMPLATES:
    raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {template!r}")
  if not scale > 0:
    raise ValueError(f"scale must be > 0, got {scale!r}")
  h, w = _check_size(out_size)
  size = np.array([w, h], np.float64)
  c0 = (TEMPLATE_SIZE - 1) / 2
  return (TEMPLATES[template] - c0) * (size / TEMPLATE_SIZE) / scale + (size - 1) / 2


@jax.jit
def estimate_similarity(src, dst, weights=None):
  """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

  Minimises ``sum_i w_i |c R src_i + t - dst_i|^2`` over c >= 0, R in SO(2), t (Umeyama 1991,
  Eqs. 40-42, with the reflection fix S = diag(1, det(U) det(V))). In 2-D, {c R} is exactly the
  set of matrices [[a, -b], [b, a]], so the minimiser has the closed form (no SVD)::

      a = sum_i w_i <s_i, d_i> / sum_i w_i |s_i|^2,   b = sum_i w_i (s_i x d_i) / sum_i w_i |s_i|^2

  with s_i, d_i the points minus their weighted means, and ``t = mean(dst) - [[a, -b], [b, a]]
  mean(src)``. Undefined (NaN / inf) when all weighted source points coincide.

  Args:
    src, dst: (..., N, 2) points (leading dims broadcast, so batches need no vmap).
    weights: optional (..., N) non-negative weights (e.g. 0 for missing landmarks).

  Returns:
    (..., 2, 3) float32 matrix M with dst ~= M @ [src; 1].
  """
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  if src.ndim < 2 or src.shape[-1] != 2 or dst.ndim < 2 or dst.shape[-1] != 2:
    raise ValueError(f"src and dst must have shape (..., N, 2), got {src.shape} and {dst.shape}")
  if src.shape[-2] != dst.shape[-2]:
    raise ValueError(f"src and dst must have the same number of points, got {src.shape} and "
                     f"{dst.shape}")
  if weights is None:
    w = jnp.ones(src.shape[:-1], jnp.float32)
  else:
    w = jnp.asarray(weights, jnp.float32)
    if w.shape[-1:] != src.shape[-2:-1]:
      raise ValueError(f"weights must have shape (..., {src.shape[-2]}), got {w.shape}")
  w = w / w.sum(-1, keepdims=True)
  mu_s = jnp.einsum("...n,...nk->...k", w, src)
  mu_d = jnp.einsum("...n,...nk->...k", w, dst)
  s = src - mu_s[..., None, :]
  d = dst - mu_d[..., None, :]
  var = jnp.einsum("...n,...n->...", w, (s * s).sum(-1))
  a = jnp.einsum("...n,...n->...", w, s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]) / var
  b = jnp.einsum("...n,...n->...", w, s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]) / var
  tx = mu_d[..., 0] - (a * mu_s[..., 0] - b * mu_s[..., 1])
  ty = mu_d[..., 1] - (b * mu_s[..., 0] + a * mu_s[..., 1])
  return jnp.stack([jnp.stack([a, -b, tx], -1), jnp.stack([b, a, ty], -1)], -2)


@jax.jit
def apply_affine(matrix, points):
  """Maps (..., N, 2) points by (..., 2, 3) matrices: ``M[:, :2] @ p + M[:, 2]``."""
  m = jnp.asarray(matrix)
  p = jnp.asarray(points)
  return jnp.einsum("...ij,...nj->...ni", m[..., :2], p) + m[..., None, :, 2]


@jax.jit
def invert_affine(matrix):
  """Inverse of (..., 2, 3) affine maps (as (..., 2, 3))."""
  m = jnp.asarray(matrix)
  a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
  det = a * d - b * c
  inv = jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-c, a], -1)], -2) / det[..., None, None]
  t = -jnp.einsum("...ij,...j->...i", inv, m[..., 2])
  return jnp.concatenate([inv, t[..., None]], -1)


@functools.partial(jax.jit, static_argnames=("out_size", "scale"))
def square_box_matrix(landmarks, out_size, scale: float = 1.25):
  """Scale + translation mapping a square box around the landmarks onto an ``out_size`` crop.

  The box is centred on the centre of the landmarks' bounding box, with side ``scale`` times its
  larger extent; its edges map onto the crop's outer pixel edges (x = -0.5 and W - 0.5), so
  ``x_out = k (x - c_x) + (W - 1) / 2`` with ``k = W / side`` (likewise y, with H; a non-square
  ``out_size`` stretches the box). Batched over leading dims: (..., N, 2) -> (..., 2, 3).
  """
  h, w = _check_size(out_size)
  lm = jnp.asarray(landmarks, jnp.float32)
  if lm.ndim < 2 or lm.shape[-1] != 2:
    raise ValueError(f"landmarks must have shape (..., N, 2), got {lm.shape}")
  lo, hi = lm.min(-2), lm.max(-2)
  centre = (lo + hi) / 2
  side = scale * (hi - lo).max(-1)
  kx, ky = w / side, h / side
  zero = jnp.zeros_like(kx)
  return jnp.stack([jnp.stack([kx, zero, (w - 1) / 2 - kx * centre[..., 0]], -1),
                    jnp.stack([zero, ky, (h - 1) / 2 - ky * centre[..., 1]], -1)], -2)


def _bilinear(image, x, y, fill):
  """Samples (H, W, C) at float coords x, y (...); pixels outside the image count as ``fill``.

  Each output is the bilinear blend of the 4 surrounding pixel centres, where a centre outside
  the image counts as ``fill`` (scipy.ndimage ``map_coordinates(order=1, mode='grid-constant')``).
  """
  h, w, c = image.shape
  flat = image.reshape(h * w, c)
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  fx = (x - x0)[..., None]
  fy = (y - y0)[..., None]
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)

  def tap(yi, xi):
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
    return jnp.where(inside[..., None], jnp.take(flat, idx, axis=0), fill)

  top = (1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1)
  bottom = (1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)
  return (1 - fy) * top + fy * bottom


@functools.partial(jax.jit, static_argnames=("out_size", "supersample"))
def _warp(image, matrix, fill, out_size, supersample):
  """Jitted core of :func:`warp_affine`: image float32 (H, W, C), out_size (h, w)."""
  h_out, w_out = out_size
  n = supersample
  offsets = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n - 0.5
  ys = jnp.arange(h_out, dtype=jnp.float32)[:, None, None, None] + offsets[None, None, :, None]
  xs = jnp.arange(w_out, dtype=jnp.float32)[None, :, None, None] + offsets[None, None, None, :]
  inv = invert_affine(matrix)
  src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  return _bilinear(image, src_x, src_y, fill).mean(axis=(2, 3))


def warp_affine(image, matrix, out_size, *, supersample: int = 1, fill: float = 0.0):
  """Resamples ``image`` into an ``out_size`` crop by the forward map ``matrix`` (bilinear).

  Output pixel (row r, column c) takes the input at ``M^-1 (c, r)`` (pixel centres at integers,
  see the module docstring), interpolated bilinearly between the four nearest input pixels, with
  pixels outside the image equal to ``fill``. ``supersample = n > 1`` averages n x n such samples
  spread evenly over the output pixel's square (offsets ((k + 0.5) / n - 0.5), k < n): an
  anti-aliasing box filter for downscaling by up to about n (n = 1 is plain bilinear, like
  ``cv2.warpAffine(..., flags=INTER_LINEAR, borderMode=BORDER_CONSTANT)``). Jit-able (inside
  ``jax.jit`` / ``jax.vmap``, ``out_size`` and ``supersample`` must be Python ints).

  Args:
    image: (H, W, C) or (H, W), any real dtype (computed in float32).
    matrix: (2, 3) forward map, input (x, y, 1) -> output (x, y).
    out_size: int S or (height, width).
    supersample: samples per output pixel along each axis.
    fill: value of the pixels outside the input.

  Returns:
    float32 (height, width, C) (or (height, width) for a 2-D image), values not rounded.
  """
  size = _check_size(out_size)
  if isinstance(supersample, bool) or int(supersample) != supersample or supersample < 1:
    raise ValueError(f"supersample must be an integer >= 1, got {supersample!r}")
  img = jnp.asarray(image)
  if img.ndim not in (2, 3):
    raise ValueError(f"image must have shape (H, W) or (H, W, C), got {img.shape}")
  m = jnp.asarray(matrix, jnp.float32)
  if m.shape != (2, 3):
    raise ValueError(f"matrix must have shape (2, 3), got {m.shape}")
  grey = img.ndim == 2
  img = (img[..., None] if grey else img).astype(jnp.float32)
  out = _warp(img, m, jnp.asarray(fill, jnp.float32), size, int(supersample))
  return out[..., 0] if grey else out


class AlignedFace(NamedTuple):
  """Result of :func:`align_face` / :func:`crop_face`."""

  image: jax.Array  # float32 (height, width, C): the crop, values not rounded
  landmarks: jax.Array  # (N, 2) the input landmarks mapped into the crop
  matrix: jax.Array  # (2, 3) the forward map input -> crop


def _check_landmarks(landmarks, allowed=(68, 5)):
  shape = jnp.shape(landmarks)
  if len(shape) != 2 or shape[1] != 2 or shape[0] not in allowed:
    want = " or ".join(f"({n}, 2)" for n in allowed)
    raise ValueError(f"landmarks must have shape {want} ((x, y) points), got {shape}")
  return jnp.asarray(landmarks, jnp.float32)


def align_face(image, landmarks, template: str = "68", out_size=TEMPLATE_SIZE,
               scale: float = 1.0, supersample: int = 1, fill: float = 0.0) -> AlignedFace:
  """Aligns a face to a canonical template by the least-squares similarity of its landmarks.

  Jit-able and vmap-able over ``image`` / ``landmarks`` (the other arguments are Python values).

  Args:
    image: (H, W, C) or (H, W) frame.
    landmarks: (68, 2) iBUG-68 points or (5, 2) points in the 5-point order, (x, y) pixels.
    template: ``'68'`` (``MEAN_SHAPE_68``, needs 68 landmarks), ``'5'`` (ArcFace) or ``'fer2013'``
      (FER2013's framing); with the 5-point templates 68 landmarks are reduced by
      :func:`landmarks_68_to_5`.
    out_size: int S or (height, width) of the crop.
    scale: zoom-out factor of the template (> 1: more context), see :func:`template_points`.
    supersample, fill: see :func:`warp_affine`.

  Returns:
    AlignedFace(image float32 crop, landmarks (N, 2) in crop pixels, matrix (2, 3)).
  """
  lm = _check_landmarks(landmarks, (68,) if template == "68" else (68, 5))
  dst = template_points(template, out_size, scale)
  src = landmarks_68_to_5(lm) if (template != "68" and lm.shape[0] == 68) else lm
  matrix = estimate_similarity(src, dst)
  crop = warp_affine(image, matrix, out_size, supersample=supersample, fill=fill)
  return AlignedFace(crop, apply_affine(matrix, lm), matrix)


def crop_face(image, landmarks, out_size, scale: float = 1.25, supersample: int = 1,
              fill: float = 0.0) -> AlignedFace:
  """Axis-aligned square crop around the landmarks (:func:`square_box_matrix`), resized.

  Unlike :func:`align_face` it keeps the in-plane rotation and the aspect of the face.
  ``landmarks``: (N, 2) with any N >= 1. Other arguments as in :func:`align_face`.
  """
  lm = jnp.asarray(landmarks, jnp.float32)
  if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] < 1:
    raise ValueError(f"landmarks must have shape (N, 2) with N >= 1, got {lm.shape}")
  if not scale > 0:
    raise ValueError(f"scale must be > 0, got {scale!r}")
  matrix = square_box_matrix(lm, _check_size(out_size), float(scale))
  crop = warp_affine(image, matrix, out_size, supersample=supersample, fill=fill)
  return AlignedFace(crop, apply_affine(matrix, lm), matrix)



# ----------------------------------------------------------------------------------------------
# Whole-pixel box crops (NumPy + PIL; the Aff-Wild builder's crops).


class FaceOutsideFrameError(ValueError):
  """The crop square of :func:`crop_face_box` does not overlap the frame."""


def square_crop_box(box, margin: float) -> Tuple[int, int, int]:
  """Integer square ``(left, top, side)`` around a face box ``(x0, y0, x1, y1)``.

  Box coordinates are pixel EDGES here (pixel i spans [i, i + 1), so the box (2, 2, 5, 5) holds
  pixels 2..4), unlike the pixel-centre convention of the rest of this module.
  ``side = round(max(w, h) * (1 + margin))`` (at least 1), centred on the box centre:
  ``left = round(cx - side / 2)``, ``top = round(cy - side / 2)``, rounding halves up. Pixels
  ``[top, top + side) x [left, left + side)`` are cropped.
  """
  x0, y0, x1, y1 = (float(v) for v in box)
  side = max(1, int(math.floor(max(x1 - x0, y1 - y0) * (1.0 + margin) + 0.5)))
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  left = int(math.floor(cx - side / 2 + 0.5))
  top = int(math.floor(cy - side / 2 + 0.5))
  return left, top, side


def crop_face_box(frame: np.ndarray, box, size: int, margin: float = 0.0) -> np.ndarray:
  """Square whole-pixel crop of an (H, W, 3) uint8 frame around a face box, resized to ``size``.

  The square of :func:`square_crop_box` is cut out (zeros where it runs past the frame) and, if
  its side is not ``size``, resized to (size, size, 3) with PIL's bilinear filter (antialiased
  when shrinking). No sub-pixel placement and no rotation, unlike :func:`crop_face` /
  :func:`align_face` (which resample by an affine map in JAX). Not jit-able.

  Raises:
    FaceOutsideFrameError (a ValueError) if the square lies entirely outside the frame.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  h, w = frame.shape[:2]
  left, top, side = square_crop_box(box, margin)
  r0, r1 = max(top, 0), min(top + side, h)
  c0, c1 = max(left, 0), min(left + side, w)
  if r0 >= r1 or c0 >= c1:
    raise FaceOutsideFrameError(
        f"face box {tuple(float(v) for v in box)} lies outside the {w}x{h} frame")
  square = np.zeros((side, side, 3), np.uint8)
  square[r0 - top:r1 - top, c0 - left:c1 - left] = frame[r0:r1, c0:c1]
  if side == size:
    return square
  return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))
