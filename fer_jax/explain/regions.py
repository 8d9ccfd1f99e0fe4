"""Attributions aggregated over facial landmarks, landmark groups and action-unit regions.

For the explainable binary landmark network (Di Luzio, Rosato & Panella 2024, arXiv 2407.14865;
PAPERS.md section 4): IG over landmark-coordinate inputs (..., T, 68, 2) is reduced to one score
per landmark (|IG| summed over x, y and frames), landmarks are ranked, and the least relevant
are pruned progressively. For image models, attributions are summed inside masks around landmark
groups.

Landmarks follow the iBUG-300W 68-point layout (0-based; "right" / "left" are the SUBJECT's, so
the right brow / eye are on the image left), as in ``fer_jax.data.synthetic``:

  ============ ======= ============================================================
  group        indices points
  ============ ======= ============================================================
  jaw          0-16    outline from the subject's right ear line round the chin (8)
  right_brow   17-21   outer (17) -> inner (21)
  left_brow    22-26   inner (22) -> outer (26)
  nose_bridge  27-30   top (27) -> tip (30)
  nostrils     31-35   right wing (31), base centre (33), left wing (35)
  right_eye    36-41   outer corner 36, upper lid 37-38, inner corner 39, lower lid 40-41
  left_eye     42-47   inner corner 42, upper lid 43-44, outer corner 45, lower lid 46-47
  outer_lips   48-59   right corner 48, upper 49-53 (51 centre), left corner 54, lower 55-59
  inner_lips   60-67   right corner 60, upper 61-63, left corner 64, lower 65-67
  ============ ======= ============================================================

``AU_REGIONS`` maps each FACS action unit of ``fer_jax.data.synthetic.AU_NAMES`` to the landmarks
whose position it changes (Ekman & Friesen 1978 appearance changes; iBUG-68 has no cheek or
forehead points, so AU6 (cheek raiser) is seen through the narrowed eye aperture). We chose:

  =========  ==============================  ================================================
  AU         name                            landmarks
  =========  ==============================  ================================================
  AU1        inner brow raiser               inner brows 19-24
  AU2        outer brow raiser               outer brows 17-19, 24-26
  AU4        brow lowerer                    inner brows 19-24 + glabella 27
  AU5        upper lid raiser                upper lids 37, 38, 43, 44
  AU6        cheek raiser                    eyes 36-47
  AU7        lid tightener                   eyes 36-47
  AU9        nose wrinkler                   nose 27-35 + inner brow ends 21, 22
  AU10       upper lip raiser                nose wings 31, 35 + upper lip 48-54, 60-64
  AU12       lip corner puller               lip corners 48, 54, 60, 64
  AU14       dimpler                         lip corners 48, 54, 60, 64
  AU15       lip corner depressor            lip corners 48, 54, 60, 64 + lower lip 55-59
  AU17       chin raiser                     lips 48-67 + chin 6-10
  AU20       lip stretcher                   lip corners 48, 54, 60, 64 + outer lips 49, 53,
                                             55, 59
  AU23       lip tightener                   lips 48-67
  AU25       lips part                       lips 48-67
  AU26       jaw drop                        lower lip 54-60, 64-67 + lower jaw 4-12
  R12 / R14  unilateral 12 / 14, right side  right corner 48, 60 (+ 49, 59)
  L12 / L14  unilateral 12 / 14, left side   left corner 54, 64 (+ 53, 55)
  =========  ==============================  ================================================
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fer_jax.data.synthetic import AU_NAMES, NUM_LANDMARKS

__all__ = [
    "LANDMARK_GROUPS", "COARSE_GROUPS", "AU_REGIONS", "GROUP_SETS", "resolve_groups",
    "aggregate_landmark_attributions", "aggregate_by_groups", "landmark_region_masks",
    "aggregate_by_masks", "rank_landmarks", "prune_landmarks", "pruning_schedule",
    "select_landmarks",
]

_r = lambda a, b: tuple(range(a, b + 1))

LANDMARK_GROUPS: Dict[str, Tuple[int, ...]] = {
    "jaw": _r(0, 16),
    "right_brow": _r(17, 21),
    "left_brow": _r(22, 26),
    "nose_bridge": _r(27, 30),
    "nostrils": _r(31, 35),
    "right_eye": _r(36, 41),
    "left_eye": _r(42, 47),
    "outer_lips": _r(48, 59),
    "inner_lips": _r(60, 67),
}

COARSE_GROUPS: Dict[str, Tuple[int, ...]] = {
    "jaw": _r(0, 16),
    "brows": _r(17, 26),
    "nose": _r(27, 35),
    "eyes": _r(36, 47),
    "mouth": _r(48, 67),
}

_CORNERS = (48, 54, 60, 64)
_LIPS = _r(48, 67)
_EYES = _r(36, 47)
AU_REGIONS: Dict[str, Tuple[int, ...]] = {
    "AU1": _r(19, 24),
    "AU2": (17, 18, 19, 24, 25, 26),
    "AU4": _r(19, 24) + (27,),
    "AU5": (37, 38, 43, 44),
    "AU6": _EYES,
    "AU7": _EYES,
    "AU9": (21, 22) + _r(27, 35),
    "AU10": (31, 35) + _r(48, 54) + _r(60, 64),
    "AU12": _CORNERS,
    "AU14": _CORNERS,
    "AU15": (48,) + _r(54, 60) + (64,),
    "AU17": _r(6, 10) + _LIPS,
    "AU20": (48, 49, 53, 54, 55, 59, 60, 64),
    "AU23": _LIPS,
    "AU25": _LIPS,
    "AU26": _r(4, 12) + _r(54, 60) + _r(64, 67),
    "R12": (48, 49, 59, 60),
    "L12": (53, 54, 55, 64),
    "R14": (48, 49, 59, 60),
    "L14": (53, 54, 55, 64),
}
assert tuple(AU_REGIONS) == AU_NAMES

GROUP_SETS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "landmarks": LANDMARK_GROUPS, "coarse": COARSE_GROUPS, "au": AU_REGIONS,
}

GroupsLike = Union[None, str, Sequence[str], Mapping[str, Sequence[int]]]


def resolve_groups(groups: GroupsLike = None,
                   num_landmarks: int = NUM_LANDMARKS) -> Dict[str, Tuple[int, ...]]:
  """Name -> landmark indices.

  ``groups`` is None (``LANDMARK_GROUPS``), the name of a set in ``GROUP_SETS`` ('landmarks',
  'coarse', 'au'), a sequence of group / AU names (looked up in all three sets), or a mapping
  name -> indices (checked against ``num_landmarks``).
  """
  if groups is None:
    return dict(LANDMARK_GROUPS)
  if isinstance(groups, str):
    if groups not in GROUP_SETS:
      raise ValueError(f"unknown group set {groups!r}; valid sets: {sorted(GROUP_SETS)} (or pass "
                       "a list of group names or a dict name -> indices)")
    return dict(GROUP_SETS[groups])
  if isinstance(groups, Mapping):
    out = {}
    for name, idx in groups.items():
      idx = tuple(int(i) for i in np.asarray(idx).reshape(-1))
      bad = [i for i in idx if not 0 <= i < num_landmarks]
      if bad or not idx:
        raise ValueError(f"group {name!r} must hold indices in [0, {num_landmarks}), got {idx}")
      out[str(name)] = idx
    return out
  known = {**LANDMARK_GROUPS, **COARSE_GROUPS, **AU_REGIONS}
  names = list(groups)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown group names {unknown}; valid names: {list(known)}")
  return {n: known[n] for n in names}


_LANDMARK_REDUCES = ("sum_abs", "sum", "mean_abs", "mean", "l2", "max_abs")


def _reduce(x: np.ndarray, axes: Tuple[int, ...], reduce: str) -> np.ndarray:
  if reduce == "sum_abs":
    return np.abs(x).sum(axis=axes)
  if reduce == "sum":
    return x.sum(axis=axes)
  if reduce == "mean_abs":
    return np.abs(x).mean(axis=axes)
  if reduce == "mean":
    return x.mean(axis=axes)
  if reduce == "l2":
    return np.sqrt(np.square(x).sum(axis=axes))
  if reduce == "max_abs":
    return np.abs(x).max(axis=axes)
  raise ValueError(f"reduce must be one of {_LANDMARK_REDUCES}, got {reduce!r}")


def aggregate_landmark_attributions(
    attr,
    reduce: str = "sum_abs",
    over_axes: Union[None, int, Sequence[int]] = None,
    layout: str = "points",
    num_landmarks: Optional[int] = NUM_LANDMARKS,
) -> np.ndarray:
  """Per-landmark scores from attributions of landmark-coordinate inputs.

  Args:
    attr: attributions of landmark inputs. ``layout='points'``: (..., L, 2) (x, y last);
      ``'interleaved'``: (..., 2L) as x0, y0, x1, y1, ...; ``'planar'``: (..., 2L) as x0..x_{L-1},
      y0..y_{L-1}.
    reduce: 'sum_abs' (the paper's relevance: sum of |IG| over x, y and ``over_axes``), 'sum'
      (signed), 'mean_abs', 'mean', 'l2' (root of the summed squares) or 'max_abs'.
    over_axes: further axes of ``attr`` reduced the same way, e.g. the frame axis (1 for
      (B, T, L, 2)) or ``(0, 1)`` for a dataset-level ranking. Negative axes count from the end
      of ``attr`` and may not name the landmark / coordinate axes.
    layout: see ``attr``.
    num_landmarks: expected L (None: any).

  Returns:
    scores of shape ``attr.shape`` without the coordinate axis and ``over_axes``; the landmark
    axis is last.
  """
  a = np.asarray(attr)
  if layout not in ("points", "interleaved", "planar"):
    raise ValueError(f"layout must be 'points', 'interleaved' or 'planar', got {layout!r}")
  ndim = a.ndim
  if layout == "points":
    if ndim < 2 or a.shape[-1] != 2:
      raise ValueError(f"layout='points' needs attr of shape (..., L, 2), got {a.shape}")
    lead = ndim - 2
  else:
    if ndim < 1 or a.shape[-1] % 2:
      raise ValueError(f"layout={layout!r} needs attr of shape (..., 2L), got {a.shape}")
    lead = ndim - 1
  axes = () if over_axes is None else (
      (over_axes,) if isinstance(over_axes, (int, np.integer)) else tuple(over_axes))
  norm = []
  for ax in axes:
    ax = int(ax)
    ax_pos = ax + ndim if ax < 0 else ax
    if not 0 <= ax_pos < lead:
      raise ValueError(f"over_axes {axes} must name axes in front of the landmark axes of attr "
                       f"with shape {a.shape} (valid: 0..{lead - 1} or {-ndim}..{lead - ndim - 1})")
    norm.append(ax_pos)
  if len(set(norm)) != len(norm):
    raise ValueError(f"over_axes has repeats: {axes}")
  if layout == "interleaved":
    a = a.reshape(a.shape[:-1] + (a.shape[-1] // 2, 2))
  elif layout == "planar":
    a = np.swapaxes(a.reshape(a.shape[:-1] + (2, a.shape[-1] // 2)), -1, -2)
  if num_landmarks is not None and a.shape[-2] != num_landmarks:
    raise ValueError(f"expected {num_landmarks} landmarks, got {a.shape[-2]} (attr shape "
                     f"{np.shape(attr)}, layout {layout!r})")
  return _reduce(a, tuple(norm) + (a.ndim - 1,), reduce)


def aggregate_by_groups(per_landmark, groups: GroupsLike = None,
                        reduce: str = "sum") -> Dict[str, np.ndarray]:
  """Name -> ``per_landmark[..., indices]`` reduced by 'sum', 'mean' or 'max' over the group."""
  s = np.asarray(per_landmark)
  if s.ndim < 1:
    raise ValueError(f"per_landmark must have a landmark axis last, got shape {s.shape}")
  fns = {"sum": np.sum, "mean": np.mean, "max": np.max}
  if reduce not in fns:
    raise ValueError(f"reduce must be one of {list(fns)}, got {reduce!r}")
  g = resolve_groups(groups, s.shape[-1])
  for name, idx in g.items():
    if max(idx) >= s.shape[-1]:
      raise ValueError(f"group {name!r} needs landmark {max(idx)}, but per_landmark has "
                       f"{s.shape[-1]} (shape {s.shape})")
  return {name: fns[reduce](s[..., list(idx)], axis=-1) for name, idx in g.items()}


def _convex_hull(pts: np.ndarray) -> np.ndarray:
  """Counter-clockwise hull vertices (Andrew's monotone chain) of (N, 2) points (x, y)."""
  p = np.unique(pts, axis=0)
  if len(p) <= 2:
    return p
  p = p[np.lexsort((p[:, 1], p[:, 0]))]
  cross = lambda o, a, b: (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
  lower, upper = [], []
  for q in p:
    while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
      lower.pop()
    lower.append(q)
  for q in p[::-1]:
    while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
      upper.pop()
    upper.append(q)
  return np.array(lower[:-1] + upper[:-1])


def _inside_hull(hull: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
  """Pixels inside or on a counter-clockwise convex polygon with >= 3 vertices."""
  inside = np.ones(px.shape, bool)
  for i in range(len(hull)):
    (ax, ay), (bx, by) = hull[i], hull[(i + 1) % len(hull)]
    inside &= (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= -1e-9
  return inside


def landmark_region_masks(landmarks, image_hw: Tuple[int, int], radius: float = 2.0,
                          groups: GroupsLike = None, mode: str = "disks") -> Dict[str, np.ndarray]:
  """Boolean pixel masks of landmark groups, name -> (..., H, W).

  Args:
    landmarks: (..., L, 2) in pixel coordinates (x, y) = (column, row), pixel centres at integers
      (``fer_jax.data.synthetic`` convention).
    image_hw: (H, W).
    radius: disk radius in pixels: pixel (r, c) belongs to the group if ``(c - x)^2 + (r - y)^2
      <= radius^2`` for one of its landmarks.
    groups: see ``resolve_groups``.
    mode: 'disks' (union of disks) or 'hull' (convex hull of the group's points, plus the disks,
      so collinear groups such as the nose bridge keep an area).
  """
  lm = np.asarray(landmarks, np.float64)
  if lm.ndim < 2 or lm.shape[-1] != 2:
    raise ValueError(f"landmarks must have shape (..., L, 2), got {lm.shape}")
  if mode not in ("disks", "hull"):
    raise ValueError(f"mode must be 'disks' or 'hull', got {mode!r}")
  h, w = (int(v) for v in image_hw)
  if h < 1 or w < 1:
    raise ValueError(f"image_hw must be positive, got {image_hw}")
  if radius < 0:
    raise ValueError(f"radius must be >= 0, got {radius}")
  g = resolve_groups(groups, lm.shape[-2])
  lead = lm.shape[:-2]
  flat = lm.reshape((-1,) + lm.shape[-2:])
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing="ij")
  out = {}
  for name, idx in g.items():
    if max(idx) >= lm.shape[-2]:
      raise ValueError(f"group {name!r} needs landmark {max(idx)}, got {lm.shape[-2]} landmarks")
    pts = flat[:, list(idx)]  # (N, k, 2)
    d2 = ((cols[None, None] - pts[:, :, 0, None, None]) ** 2
          + (rows[None, None] - pts[:, :, 1, None, None]) ** 2)
    m = (d2 <= radius ** 2 + 1e-9).any(axis=1)
    if mode == "hull":
      for n in range(flat.shape[0]):
        hull = _convex_hull(pts[n])
        if len(hull) >= 3:
          m[n] |= _inside_hull(hull, cols, rows)
    out[name] = m.reshape(lead + (h, w))
  return out


_MASK_REDUCES = ("sum_abs", "sum", "mean_abs", "mean")


def aggregate_by_masks(attr_image, masks, reduce: str = "sum_abs",
                       channel_axis: Optional[int] = -1) -> Dict[str, np.ndarray]:
  """Attribution inside each mask, name -> (...,).

  Args:
    attr_image: (..., H, W, C) (``channel_axis=-1``) or (..., H, W) (``channel_axis=None``).
    masks: name -> (..., H, W) or (H, W) boolean masks (``landmark_region_masks``), or a single
      (G, H, W) array (names '0', '1', ...).
    reduce: 'sum_abs' = sum over the mask's pixels of sum_c |a_c|; 'sum' = signed sum;
      'mean_abs' / 'mean' divide by the mask's pixel count (0 for an empty mask).
  """
  a = np.asarray(attr_image, np.float64)
  if reduce not in _MASK_REDUCES:
    raise ValueError(f"reduce must be one of {_MASK_REDUCES}, got {reduce!r}")
  if channel_axis is not None:
    if a.ndim < 3:
      raise ValueError(f"attr_image with a channel axis must be (..., H, W, C), got {a.shape}")
    a = np.moveaxis(a, channel_axis, -1)
    pix = np.abs(a).sum(-1) if reduce.endswith("abs") else a.sum(-1)
  else:
    if a.ndim < 2:
      raise ValueError(f"attr_image must be (..., H, W), got {a.shape}")
    pix = np.abs(a) if reduce.endswith("abs") else a
  if not isinstance(masks, Mapping):
    arr = np.asarray(masks)
    masks = {str(i): arr[i] for i in range(arr.shape[0])}
  out = {}
  for name, m in masks.items():
    m = np.asarray(m, bool)
    if m.shape[-2:] != pix.shape[-2:]:
      raise ValueError(f"mask {name!r} has shape {m.shape}; its last two dims must equal the "
                       f"attribution's (H, W) = {pix.shape[-2:]}")
    total = (pix * m).sum(axis=(-2, -1))
    if reduce.startswith("mean"):
      count = np.broadcast_to(m, np.broadcast_shapes(m.shape, pix.shape)).sum(axis=(-2, -1))
      total = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    out[name] = total
  return out


def rank_landmarks(scores) -> np.ndarray:
  """Landmark indices from most to least relevant (stable: ties keep index order)."""
  s = np.asarray(scores, np.float64)
  if s.ndim != 1:
    raise ValueError(f"scores must be 1-D (one per landmark; reduce examples / frames first with "
                     f"over_axes), got shape {s.shape}")
  if np.isnan(s).any():
    raise ValueError(f"scores contain NaN at landmarks {np.flatnonzero(np.isnan(s)).tolist()}")
  return np.argsort(-s, kind="stable")


def _keep_count(keep: Union[int, float], n: int) -> int:
  if isinstance(keep, bool):
    raise ValueError(f"keep must be an int count or a float fraction, got {keep!r}")
  if isinstance(keep, (int, np.integer)):
    if not 1 <= keep <= n:
      raise ValueError(f"keep={keep} must be a count in [1, {n}]")
    return int(keep)
  if isinstance(keep, (float, np.floating)):
    if not 0.0 < keep <= 1.0:
      raise ValueError(f"keep={keep} as a fraction must lie in (0, 1]")
    return max(1, int(math.ceil(keep * n - 1e-9)))
  raise ValueError(f"keep must be an int count or a float fraction, got {keep!r}")


def prune_landmarks(scores, keep: Union[int, float]) -> np.ndarray:
  """Indices (ascending) of the ``keep`` most relevant landmarks.

  ``keep`` is a count (int) or a fraction in (0, 1] (float; ``ceil(keep * L)`` kept). The paper's
  pruning step removes the least relevant landmarks and retrains on the rest.
  """
  order = rank_landmarks(scores)
  return np.sort(order[:_keep_count(keep, order.size)])


def pruning_schedule(scores, keeps: Sequence[Union[int, float]]) -> list:
  """Kept indices for each entry of ``keeps`` (one ranking; nested sets for decreasing keeps).

  For the paper's progressive pruning with re-ranking after each retraining, call
  ``prune_landmarks`` on each round's new scores instead.
  """
  return [prune_landmarks(scores, k) for k in keeps]


def select_landmarks(x, kept, axis: int = -2):
  """``x`` restricted to the ``kept`` landmarks along ``axis`` ((..., L, 2) inputs by default)."""
  kept = np.asarray(kept)
  if kept.ndim != 1 or not np.issubdtype(kept.dtype, np.integer):
    raise ValueError(f"kept must be a 1-D integer index array, got {kept.dtype} {kept.shape}")
  n = np.shape(x)[axis]
  if kept.size and (kept.min() < 0 or kept.max() >= n):
    raise ValueError(f"kept indices must lie in [0, {n}), got range [{kept.min()}, {kept.max()}]")
  if hasattr(x, "take") and not isinstance(x, np.ndarray):
    return x.take(kept, axis=axis)
  return np.take(x, kept, axis=axis)
