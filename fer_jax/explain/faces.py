"""Integrated Gradients of a FER classifier on face crops, per facial region, as pictures.

``explain_faces`` runs Integrated Gradients (Sundararajan et al. 2017; ``integrated_gradients``, captum's
quadratures) of a ``fer_jax.pretrained.Predictor`` on uint8 face crops, batched and jit-compiled, and
returns the attributions per crop pixel (channels summed), the explained classes, the model's
probabilities and the completeness delta ``sum IG - (F(x) - F(x'))`` of each face.

Defaults, and why:

* ``output='logits'``: IG explains the target class's logit (the mean over the test crops). A softmax
  probability couples all classes (evidence *against* the other classes counts for the target) and
  saturates: near p = 1 its gradient vanishes, so the attribution piles up at the start of the path and
  completeness needs more steps. ``'probs'`` is available; then ``sum IG = p(x) - p(x')``.
* ``baseline='blur'``: a Gaussian blur of the face, sigma = ``BLUR_SIGMA_FRACTION`` x the crop side (4 px
  at 48 px), which keeps the head's layout and lighting but erases the shapes of eyes, brows and mouth
  (the blurred baseline of Sturmfels, Lundberg & Lee, Distill 2020). The constant baselines ``'black'``
  (zeros) and ``'mean'`` (each face's own mean grey per channel) are degenerate for models that
  standardise each image (``per_image_standardization``, as the shipped FER2013 model does): every
  point ``c + a (x - c)`` of the straight path is an intensity rescaling of ``x``, which the model sees as
  ``x`` itself once ``a * std(x) > 1 / sqrt(#pixels)`` (a ~ 1e-3), so all of ``F(x) - F(x')`` happens in
  a sliver at the start of the path that no practical quadrature samples: the completeness delta is
  then about ``-(F(x) - F(x'))``. A black baseline also gives dark pixels (pupils, an open mouth) no
  attribution whatever their role. Their deltas show it; use them only for models without per-image
  standardisation.

Regions (``face_region_masks``), each pixel in at most one region, plus ``'rest'`` (the remainder of the
crop), so the shares of |IG| sum to 1. Names follow ``fer_jax.explain.regions``: "right" / "left" are the
SUBJECT's (the right eye is on the image left). ``d`` is the inter-ocular distance (between the eye
centres) in crop pixels.

* 5 landmarks (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner, the
  detector's order): ``right_eye`` / ``left_eye`` disks of radius ``0.3 d`` round the eye centres (eye and
  lids), ``nose`` a disk of ``0.25 d`` round the tip, ``mouth`` the pixels within ``0.25 d`` of the segment
  between the corners, and -- the 5 points have none, so their place is estimated from typical
  proportions -- ``right_brow`` / ``left_brow`` the pixels within ``0.15 d`` of a segment of length ``0.4 d``
  parallel to the eye line, centred ``0.45 d`` above each eye centre (``FIVE_POINT_RADII``, ``BROW_RISE``,
  ``BROW_HALF_WIDTH``). A pixel in several of them goes to the one whose distance / radius is smallest.
* 68 iBUG landmarks: ``right_brow`` 17-21, ``left_brow`` 22-26, ``right_eye`` 36-41, ``left_eye`` 42-47
  (convex hull + ``0.12 d``), ``nose`` 27-35 (hull + ``0.08 d``), ``mouth`` 48-67 (hull + ``0.1 d``),
  ``jaw`` 0-16 (disks of ``0.15 d`` round the outline points; ``landmark_region_masks``); overlaps go to
  the earlier name in ``REGIONS_68``.

Pictures (``explanation_image``): the face, |IG| as a 'jet' heat map over it (captum's normalisation,
``attribution_heatmap``: the top 2 % of the mass saturates) and the signed IG ('bwr': red raises the
target output, blue lowers it), each upscaled to ``display`` pixels, landmarks drawn, under a title.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import pretrained
from fer_jax.explain.heatmap import attribution_heatmap, draw_landmarks, overlay_heatmap
from fer_jax.explain.integrated_gradients import METHODS, integrated_gradients
from fer_jax.explain.regions import aggregate_by_masks, landmark_region_masks

__all__ = [
    "BASELINES", "OUTPUTS", "BLUR_SIGMA_FRACTION", "FIVE_POINT_RADII", "REGIONS_5", "REGIONS_68",
    "FaceAttributions", "to_grey_uint8", "make_baselines", "resolve_targets", "explain_faces",
    "five_point_region_masks",
    "five_point_shapes", "landmark68_region_masks", "face_region_masks", "region_stats", "landmarks_to_crop",
    "explanation_image", "write_explanation_png",
]

BASELINES = ("blur", "black", "mean")
OUTPUTS = ("logits", "probs")
BLUR_SIGMA_FRACTION = 1.0 / 12.0  # blur baseline sigma / crop side
# 5-point regions, in units of the inter-ocular distance d (see the module docstring).
FIVE_POINT_RADII = {"right_eye": 0.3, "left_eye": 0.3, "right_brow": 0.15, "left_brow": 0.15, "nose": 0.25,
                    "mouth": 0.25}
BROW_RISE = 0.45  # brow centre: this far above the eye centre, perpendicular to the eye line
BROW_HALF_WIDTH = 0.2  # brow segment: this far either side of its centre, along the eye line
REGIONS_5 = ("right_eye", "left_eye", "right_brow", "left_brow", "nose", "mouth", "rest")
_GROUPS_68 = {  # name -> (landmark indices, margin / inter-ocular distance, mode)
    "right_eye": (range(36, 42), 0.12, "hull"), "left_eye": (range(42, 48), 0.12, "hull"),
    "right_brow": (range(17, 22), 0.12, "hull"), "left_brow": (range(22, 27), 0.12, "hull"),
    "mouth": (range(48, 68), 0.1, "hull"), "nose": (range(27, 36), 0.08, "hull"),
    "jaw": (range(0, 17), 0.15, "disks"),
}
REGIONS_68 = tuple(_GROUPS_68) + ("rest",)


@dataclasses.dataclass(frozen=True)
class FaceAttributions:
  """What ``explain_faces`` returns (N faces, K classes, crops H x W)."""

  attributions: np.ndarray  # float32 (N, H, W): IG per crop pixel, channels summed
  targets: np.ndarray  # int64 (N,): the explained class of each face
  target_names: Tuple[str, ...]  # (N,) class names of ``targets``
  probs: np.ndarray  # float32 (N, K): the model's probabilities at the crops (the same test crops)
  output: str  # 'logits' | 'probs': what F is
  values: np.ndarray  # float32 (N,): F(x), the explained output at the face
  baseline_values: np.ndarray  # float32 (N,): F(x') at the baseline
  delta: np.ndarray  # float32 (N,): sum(IG) - (F(x) - F(x')), the completeness (quadrature) error
  baselines: np.ndarray  # float32 (N, H, W, C): the baseline images, in [0, 255] (C = 1 for RGB crops of
  #                        a grey model: the baselines of their luma)

  @property
  def target_probs(self) -> np.ndarray:
    """(N,) probability of each face's explained class."""
    return self.probs[np.arange(len(self.targets)), self.targets]

  @property
  def relative_delta(self) -> np.ndarray:
    """(N,) |delta| / |F(x) - F(x')| (inf when the difference is 0 and delta is not)."""
    diff = np.abs(self.values.astype(np.float64) - self.baseline_values)
    d = np.abs(self.delta.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(diff > 0, d / np.where(diff > 0, diff, 1.0), np.where(d > 0, np.inf, 0.0))


def to_grey_uint8(crops) -> np.ndarray:
  """uint8 RGB (N, H, W, 3) -> uint8 luma (N, H, W, 1), rounded as ``Predictor.to_model_input`` does."""
  y = jnp.clip(jnp.round(pretrained.to_grey(jnp.asarray(pretrained.check_faces(crops, 'crops')))), 0, 255)
  return np.asarray(y).astype(np.uint8)


def make_baselines(crops, baseline: str = "blur", blur_sigma: Optional[float] = None) -> np.ndarray:
  """float32 (N, H, W, C) baselines in [0, 255] for uint8 crops (see the module docstring).

  'black': zeros; 'mean': each face's mean per channel; 'blur': ``scipy.ndimage.gaussian_filter`` of
  each channel with sigma ``blur_sigma`` px (default ``BLUR_SIGMA_FRACTION * min(H, W)``), 'reflect'
  borders, truncated at 4 sigma.
  """
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  x = pretrained.check_faces(crops, 'crops').astype(np.float32)
  if baseline == "black":
    return np.zeros_like(x)
  if baseline == "mean":
    return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
  if baseline == "blur":
    sigma = BLUR_SIGMA_FRACTION * min(x.shape[1:3]) if blur_sigma is None else float(blur_sigma)
    if not sigma > 0:
      raise ValueError(f"blur_sigma must be > 0 pixels, got {blur_sigma!r}")
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect").astype(np.float32)
  raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")


def resolve_targets(target: Any, predicted, class_names: Sequence[str]) -> np.ndarray:
  """int64 (N,) class indices: 'predicted' (the argmax ``predicted``), a class name, an index, or one of
  these per face (a length-N sequence)."""
  predicted = np.asarray(predicted, np.int64).reshape(-1)
  n, names = predicted.shape[0], list(class_names)

  def one(t):
    if isinstance(t, (str, np.str_)):
      t = str(t)
      if t in names:
        return names.index(t)
      if t.strip().lstrip("-").isdigit():
        return one(int(t))
      raise ValueError(f"unknown target class {t!r}; the model's classes are {names} (or 'predicted', "
                       f"or an index 0..{len(names) - 1})")
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
      raise ValueError(f"target must be 'predicted', a class name in {names} or an index, got {t!r}")
    if not 0 <= int(t) < len(names):
      raise ValueError(f"target index {int(t)} is outside 0..{len(names) - 1} (classes {names})")
    return int(t)

  if isinstance(target, str) and target == "predicted":
    return predicted.copy()
  if isinstance(target, (str, np.str_, int, np.integer)):
    return np.full(n, one(target), np.int64)
  seq = list(np.asarray(target).reshape(-1)) if isinstance(target, np.ndarray) else list(target)
  if len(seq) != n:
    raise ValueError(f"target has {len(seq)} entries for {n} faces; give one per face or a single one")
  return np.array([predicted[i] if (isinstance(t, str) and t == "predicted") else one(t)
                   for i, t in enumerate(seq)], np.int64)


def _model_input(predictor, z: jax.Array) -> jax.Array:
  """float (B, H, W, C) crops -> (B, size, size, channels): luma / grey copies and a bilinear antialiased
  resize as ``Predictor.to_model_input``, without its rounding (which has no gradient)."""
  if z.shape[-1] == 3 and predictor.channels == 1:
    z = pretrained.to_grey(z)
  elif z.shape[-1] == 1 and predictor.channels == 3:
    z = jnp.repeat(z, 3, axis=-1)
  size = predictor.image_size
  if z.shape[1:3] != (size, size):
    z = jax.image.resize(z, (z.shape[0], size, size, z.shape[-1]), "linear", antialias=True)
  return z


_COMPILED: Dict[tuple, Any] = {}


def _compiled(predictor, options: tuple):
  """The jitted (forward, IG) pair for ``options`` = (test_crops, output, n_steps, method, internal).

  Cached by the model's spec (its meta's model, input and class names), so predictors loaded again from
  the same files (e.g. by each CLI call) share the compiled code; the variables are arguments."""
  meta = getattr(predictor, "meta", None) or {}
  spec = json.dumps({k: meta.get(k) for k in ("model", "input", "class_names")}, sort_keys=True, default=str)
  key = (type(predictor), spec if meta else id(predictor)) + tuple(options)
  cache = _COMPILED
  if key not in cache:
    test_crops, output, n_steps, method, internal = options

    def model_fn(variables, z, out):
      return predictor.forward(variables, _model_input(predictor, z), test_crops, out)

    def run_ig(variables, x, base, target):
      fn = functools.partial(model_fn, variables, out=output)
      attr, delta = integrated_gradients(fn, x, target=target, baselines=base, n_steps=n_steps,
                                         method=method, internal_batch_size=internal,
                                         return_convergence_delta=True)
      ends = fn(jnp.concatenate([x, base]))
      picked = jnp.take_along_axis(ends, jnp.concatenate([target, target])[:, None], axis=1)[:, 0]
      return attr.sum(-1), delta, picked[:x.shape[0]], picked[x.shape[0]:]

    cache[key] = (jax.jit(functools.partial(model_fn, out="logits")), jax.jit(run_ig))
  return cache[key]


def _padded_chunks(n: int, size: int):
  for start in range(0, n, size):
    idx = np.arange(start, start + size)
    yield np.minimum(idx, n - 1), min(size, n - start)


def explain_faces(predictor, crops, *, target: Any = "predicted", baseline: Union[str, np.ndarray] = "blur",
                  blur_sigma: Optional[float] = None, n_steps: int = 64, method: str = "gausslegendre",
                  test_crops: str = "center", output: str = "logits", batch_size: int = 8,
                  internal_batch_size: Optional[int] = 256) -> FaceAttributions:
  """Integrated Gradients of ``predictor`` on uint8 face crops; see the module docstring.

  Args:
    predictor: a ``fer_jax.pretrained.Predictor`` (``forward``, ``variables``, ``class_names``,
      ``image_size``, ``channels``).
    crops: uint8 (N, S, S) or (N, S, S, 1 | 3). RGB crops of a grey model are first turned into uint8
      luma as ``predict_proba`` does (``to_grey_uint8``; luma is linear, so a grey pixel's attribution is
      what its three channels' would sum to). Differentiated as float pixels in [0, 255]; crops of
      another size than the model's go through its bilinear resize, not rounded (``predict_proba``
      rounds: at most half a grey level apart).
    target: 'predicted' (the argmax of the probabilities), a class name, an index, or one per face.
    baseline: 'blur' (default), 'black', 'mean' (``make_baselines``), or a float array broadcastable
      to (N, S, S, C) in pixel units.
    blur_sigma: sigma in crop pixels of the 'blur' baseline (default ``BLUR_SIGMA_FRACTION * S``).
    n_steps, method: the IG quadrature (``integrated_gradients``; Gauss-Legendre by default).
    test_crops: the predictor's test crops averaged in F ('center' by default: 1 crop, 10x cheaper
      than the shipped model's 'ten'; pixels outside the centre crop then get no attribution).
    output: 'logits' (default) or 'probs'.
    batch_size: faces per compiled call; fewer faces go in one call padded to a power of two, the last
      chunk is padded by repeating its last face (each new chunk shape compiles once per process).
    internal_batch_size: path points per model call (``integrated_gradients``); bounds memory.

  Returns:
    a ``FaceAttributions``.
  """
  x = pretrained.check_faces(crops, 'explain_faces')
  if x.shape[-1] == 3 and predictor.channels == 1:
    x = to_grey_uint8(x)
  if output not in OUTPUTS:
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  for name, v in (("n_steps", n_steps), ("batch_size", batch_size)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")
  if isinstance(baseline, str):
    base = make_baselines(x, baseline, blur_sigma)
  else:
    b = np.asarray(baseline, np.float32)
    try:
      base = np.ascontiguousarray(np.broadcast_to(b, x.shape))
    except ValueError as e:
      raise ValueError(f"baseline array of shape {b.shape} does not broadcast to the crops' shape "
                       f"{x.shape}") from e
  n = x.shape[0]
  bs = min(int(batch_size), 1 << (n - 1).bit_length())  # a power of two below batch_size: few compiles
  forward, run_ig = _compiled(predictor, (test_crops, output, int(n_steps), method, internal_batch_size))
  xf = x.astype(np.float32)
  logits = np.empty((n, len(predictor.class_names)), np.float32)
  for idx, k in _padded_chunks(n, bs):
    logits[idx[:k]] = np.asarray(forward(predictor.variables, xf[idx]))[:k]
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float32)
  targets = resolve_targets(target, logits.argmax(-1), predictor.class_names)
  attr = np.empty(x.shape[:3], np.float32)
  delta, fx, fb = (np.empty(n, np.float32) for _ in range(3))
  for idx, k in _padded_chunks(n, bs):
    out = run_ig(predictor.variables, xf[idx], base[idx], jnp.asarray(targets[idx], jnp.int32))
    for dst, src in zip((attr, delta, fx, fb), out):
      dst[idx[:k]] = np.asarray(src)[:k]
  return FaceAttributions(attr, targets, tuple(predictor.class_names[t] for t in targets), probs, output, fx,
                          fb, delta, base)


# ------------------------------------------------------------------------------------------------
# Regions.
# ------------------------------------------------------------------------------------------------

def _check_landmarks(landmarks, count: Optional[int] = None) -> np.ndarray:
  lm = np.asarray(landmarks, np.float64)
  if lm.ndim not in (2, 3) or lm.shape[-1] != 2 or (count is not None and lm.shape[-2] != count):
    want = f"({count}, 2) or (N, {count}, 2)" if count else "(L, 2) or (N, L, 2), L = 5 or 68"
    raise ValueError(f"landmarks must have shape {want} (x, y) in crop pixels, got {lm.shape}")
  if not np.isfinite(lm).all():
    raise ValueError("landmarks contain NaN or inf (no landmarks for this face?)")
  return lm


def _exclusive(masks: Dict[str, np.ndarray], order: Sequence[str]) -> Dict[str, np.ndarray]:
  """Each pixel kept in the first mask of ``order`` that has it; 'rest' = pixels in none."""
  taken = np.zeros_like(next(iter(masks.values())))
  out = {}
  for name in order:
    out[name] = masks[name] & ~taken
    taken |= out[name]
  out["rest"] = ~taken
  return out


def _segment_distance(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance of points q (1, H, W, 2) to the segments a-b (N, 2) (a point when a == b): (N, H, W)."""
  a, b = a[:, None, None], b[:, None, None]
  ab = b - a
  t = np.clip(((q - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
  return np.linalg.norm(q - (a + t[..., None] * ab), axis=-1)


def five_point_shapes(landmarks) -> Dict[str, Tuple[np.ndarray, np.ndarray, float]]:
  """name -> (a (N, 2), b (N, 2), radius / inter-ocular distance): each 5-point region is the set of
  pixels within ``radius * d`` of the segment a-b (a disk when a == b); see the module docstring."""
  lm = _check_landmarks(landmarks, 5).reshape(-1, 5, 2)
  e = lm[:, 1] - lm[:, 0]
  d = np.linalg.norm(e, axis=-1, keepdims=True)
  if (d <= 0).any():
    raise ValueError("the two eye landmarks coincide: the inter-ocular distance is 0")
  e = e / d
  up = np.stack([e[:, 1], -e[:, 0]], -1)  # e rotated to point up the face (image y grows downwards)
  r = FIVE_POINT_RADII
  out = {"right_eye": (lm[:, 0], lm[:, 0], r["right_eye"]), "left_eye": (lm[:, 1], lm[:, 1], r["left_eye"])}
  for name, eye in (("right_brow", lm[:, 0]), ("left_brow", lm[:, 1])):
    c = eye + BROW_RISE * d * up
    out[name] = (c - BROW_HALF_WIDTH * d * e, c + BROW_HALF_WIDTH * d * e, r[name])
  out["nose"] = (lm[:, 2], lm[:, 2], r["nose"])
  out["mouth"] = (lm[:, 3], lm[:, 4], r["mouth"])
  return out


def five_point_region_masks(landmarks, image_hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """Exclusive boolean masks name -> (H, W) or (N, H, W) of ``REGIONS_5`` from 5 crop landmarks: a pixel
  within several shapes goes to the one with the smallest distance / radius (the first on ties)."""
  lm = _check_landmarks(landmarks, 5)
  h, w = (int(v) for v in image_hw)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
  q = np.stack([cols, rows], -1)[None]  # (1, H, W, 2)
  flat = lm.reshape(-1, 5, 2)
  d = np.linalg.norm(flat[:, 1] - flat[:, 0], axis=-1)[:, None, None]
  shapes = five_point_shapes(flat)
  u = np.stack([_segment_distance(q, a, b) / (r * d) for a, b, r in shapes.values()])  # (R, N, H, W)
  best = np.argmin(u, axis=0)
  inside = u.min(axis=0) <= 1.0 + 1e-9
  out = {name: (inside & (best == k)).reshape(lm.shape[:-2] + (h, w)) for k, name in enumerate(shapes)}
  out["rest"] = (~inside).reshape(lm.shape[:-2] + (h, w))
  return out


def landmark68_region_masks(landmarks, image_hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """Exclusive boolean masks name -> (H, W) or (N, H, W) of ``REGIONS_68`` from 68 iBUG crop landmarks."""
  lm = _check_landmarks(landmarks, 68)
  flat = lm.reshape(-1, 68, 2)
  d = np.linalg.norm(flat[:, 42:48].mean(1) - flat[:, 36:42].mean(1), axis=-1)
  masks = {name: np.zeros((flat.shape[0],) + tuple(int(v) for v in image_hw), bool) for name in _GROUPS_68}
  for i in range(flat.shape[0]):
    for name, (idx, margin, mode) in _GROUPS_68.items():
      masks[name][i] = landmark_region_masks(flat[i], image_hw, radius=margin * d[i],
                                             groups={name: list(idx)}, mode=mode)[name]
  out = _exclusive(masks, tuple(_GROUPS_68))
  return {k: v.reshape(lm.shape[:-2] + v.shape[1:]) for k, v in out.items()}


def face_region_masks(landmarks, image_hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """``five_point_region_masks`` or ``landmark68_region_masks`` by the number of landmarks (5 or 68)."""
  lm = _check_landmarks(landmarks)
  if lm.shape[-2] == 5:
    return five_point_region_masks(lm, image_hw)
  if lm.shape[-2] == 68:
    return landmark68_region_masks(lm, image_hw)
  raise ValueError(f"landmarks must be 5 (detector) or 68 (iBUG) points, got {lm.shape[-2]}")


def region_stats(attribution, masks: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, np.ndarray]]:
  """name -> {'abs_sum': sum of |IG| in the region, 'share': abs_sum / sum of |IG| over the whole image
  (0 for an all-zero map), 'signed_sum': sum of IG, 'area': the region's fraction of the pixels (share /
  area > 1: |IG| concentrated there)}, each (...,) for (..., H, W) attributions."""
  a = np.asarray(attribution, np.float64)
  if a.ndim < 2:
    raise ValueError(f"attribution must be (H, W) or (N, H, W), got shape {a.shape}")
  abs_sums = aggregate_by_masks(a, masks, reduce="sum_abs", channel_axis=None)
  signed = aggregate_by_masks(a, masks, reduce="sum", channel_axis=None)
  total = np.abs(a).sum(axis=(-2, -1))
  out = {}
  for name in masks:
    with np.errstate(divide="ignore", invalid="ignore"):
      share = np.where(total > 0, abs_sums[name] / np.where(total > 0, total, 1.0), 0.0)
    area = np.broadcast_to(np.asarray(masks[name], bool), a.shape).mean(axis=(-2, -1))
    out[name] = {"abs_sum": abs_sums[name], "share": share, "signed_sum": signed[name], "area": area}
  return out


def landmarks_to_crop(points, face_landmarks, crop_landmarks) -> np.ndarray:
  """Frame-pixel ``points`` (L, 2) (e.g. 68 iBUG landmarks) -> crop pixels, by the least-squares similarity
  that maps the face's 5 frame landmarks onto its 5 crop landmarks (exact for aligned and box crops)."""
  from fer_jax.data import align  # pylint: disable=import-outside-toplevel
  src = _check_landmarks(face_landmarks, 5)
  dst = _check_landmarks(crop_landmarks, 5)
  m = align.estimate_similarity(jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32))
  return np.asarray(align.apply_affine(m, jnp.asarray(_check_landmarks(points), jnp.float32)), np.float64)


# ------------------------------------------------------------------------------------------------
# Pictures.
# ------------------------------------------------------------------------------------------------

def _upscale(rgb: np.ndarray, display: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  h, w = rgb.shape[:2]
  if display % h == 0 and h == w:
    k = display // h
    return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
  return np.asarray(Image.fromarray(rgb).resize((display, display), Image.Resampling.NEAREST))


def explanation_image(crop, attribution, *, landmarks=None, title: Union[str, Sequence[str]] = "",
                      display: int = 192, outlier_perc: float = 2.0, alpha: float = 0.55) -> np.ndarray:
  """uint8 RGB picture: title lines above three ``display``-px panels (face | |IG| heat map | signed IG).

  ``crop``: uint8 (S, S), (S, S, 1 | 3); ``attribution``: (S, S); ``landmarks``: (L, 2) crop pixels or None.
  """
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  face = pretrained.check_faces(np.asarray(crop)[None], 'crop')[0]
  a = np.asarray(attribution, np.float64)
  if a.shape != face.shape[:2]:
    raise ValueError(f"attribution has shape {a.shape}; expected the crop's (H, W) = {face.shape[:2]}")
  if isinstance(display, bool) or not isinstance(display, (int, np.integer)) or display < 8:
    raise ValueError(f"display must be an int >= 8 pixels, got {display!r}")
  rgb = np.repeat(face, 3, -1) if face.shape[-1] == 1 else face
  luma = np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
  grey = np.repeat(luma[..., None], 3, -1)
  heat = overlay_heatmap(rgb, attribution_heatmap(a, "absolute_value", outlier_perc, channel_axis=None),
                         alpha=alpha, cmap="jet")
  signed = overlay_heatmap(grey, attribution_heatmap(a, "all", outlier_perc, channel_axis=None),
                           alpha=alpha + 0.15, cmap="bwr", vmin=-1.0)
  panels = [_upscale(p, display) for p in (rgb, heat, signed)]
  if landmarks is not None:
    lm = (_check_landmarks(landmarks) + 0.5) * (display / np.array(face.shape[1::-1], np.float64)) - 0.5
    radius = max(1.0, display / 96)
    panels[1] = draw_landmarks(panels[1], lm, (255, 255, 255), radius)
    panels[2] = draw_landmarks(panels[2], lm, (0, 0, 0), radius)
  lines = [title] if isinstance(title, str) else list(title)
  lines = [t for t in lines if t]
  font_size = max(10, display // 14)
  try:
    font = ImageFont.load_default(size=font_size)
  except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
    font = ImageFont.load_default()
  line_h = font_size + 4
  height = line_h * len(lines) + display + (2 if lines else 0)
  canvas = Image.new("RGB", (3 * display, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, text in enumerate(lines):
    draw.text((4, 2 + i * line_h), text, fill=(0, 0, 0), font=font)
  canvas.paste(Image.fromarray(np.concatenate(panels, axis=1)), (0, canvas.height - display))
  return np.asarray(canvas)


def write_explanation_png(path: Union[str, os.PathLike], image: np.ndarray) -> str:
  """Writes a uint8 (H, W, 3) picture as PNG (parent folders created, an existing file replaced)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(np.asarray(image, np.uint8), mode="RGB").save(path, format="PNG")
  return path
