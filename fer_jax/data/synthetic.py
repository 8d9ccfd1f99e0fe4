"""Procedural FACS-driven facial-expression images: a learnable, license-free stand-in for FER2013.

Faces are drawn with anti-aliased signed-distance / interval coverage (a one-pixel box filter) in
a canonical face frame, then placed in the output image by a similarity transform (rotation,
scale, shift). Geometry is driven by FACS action-unit (AU) intensities in [0, 1] (Ekman & Friesen
1978): brows (AU1/2/4), lids (AU5/6/7), nose (AU9/10), lip corners (AU12/14/15/20/23), chin (AU17)
and mouth opening (AU25/26). Expressions are EMFACS-like prototypes scaled by an intensity.

Everything is pure NumPy and deterministic: example ``i`` of split ``s`` with seed ``k`` draws all
of its randomness from ``np.random.default_rng([k, split_id, i])`` (sequences:
``[k, split_id, i, 1]``), so it is identical whatever batch or order it is generated in.
Rendering is vectorised over faces; small features are evaluated only inside per-face windows.

Conventions
  * Canonical face frame: ``u`` to the right, ``v`` down; the output image spans [-1, 1]^2 at pose
    scale 1. "R"/"L" are the SUBJECT's right/left; the subject's right is on the image left.
  * Output pixel coordinates: (x, y) = (column, row), pixel centres at integers, image centre at
    ((S - 1) / 2, (S - 1) / 2). Landmarks are given in these coordinates after the pose::

        [x, y] = k * R(theta) @ [u, v] + (S - 1) / 2 + [shift_x, shift_y] * S / 2

    with ``k = scale * S / 2`` and ``R = [[cos, -sin], [sin, cos]]`` (positive ``theta`` turns the
    face clockwise on screen, as the y axis points down).
  * Landmarks follow the iBUG-300W 68-point layout (Sagonas et al. 2013): 0-16 jaw, 17-21 / 22-26
    brows, 27-30 nose bridge, 31-35 nostrils, 36-41 / 42-47 eyes, 48-59 outer / 60-67 inner lips.

Labels (FER2013 order plus contempt) with their AU prototypes (apex intensities, ``PROTOTYPES``)
and optional AUs (each present with probability 1/2 at a uniform level up to the value,
``OPTIONAL_AUS``):

  ==  ========  ===========================================  ============  ================
  id  class     prototype AUs                                optional      (valence, arousal)
  ==  ========  ===========================================  ============  ================
  0   angry     4, 5 (.6), 7 (.8), 23 (.9)                   17 (.5)       (-0.55, +0.65)
  1   disgust   9, 10 (.8), 15 (.6), 17 (.5)                 25 (.5)       (-0.65, +0.35)
  2   fear      1 (.9), 2 (.6), 4 (.6), 5, 7 (.4), 20 (.9),  --            (-0.60, +0.75)
                25, 26 (.5)
  3   happy     6 (.8), 12                                   25 (1)        (+0.80, +0.45)
  4   sad       1, 4 (.6), 15 (.9)                           17 (.6)       (-0.70, -0.35)
  5   surprise  1, 2, 5 (.8), 25, 26                         --            (+0.25, +0.80)
  6   neutral   none                                         --            ( 0.00,  0.00)
  7   contempt  unilateral 12 (.6) + 14 (.9) (R or L)        --            (-0.45, +0.20)
  ==  ========  ===========================================  ============  ================

(valence, arousal) are approximate positions of the categories on Russell's (1980) circumplex, in
the [-1, 1] scale of AffectNet (Mollahosseini et al. 2017). An example with label ``c`` and
intensity ``I`` has ``valence = V_c * I``, ``arousal = A_c * I`` and action units
``clip(P_c * I + O * I + j, 0, 1)`` with ``P_c`` the prototype, ``O`` the drawn optional AUs and
``j`` an AU jitter ~ N(0, 0.04^2) clipped to +-0.1. ``I ~ U[0.5, 1]`` for expressions and
``I = 0`` for neutral, so the classes stay separable at 48 x 48 (a 4-layer CNN reaches ~96%
validation accuracy after ~1000 CPU steps on the default 16000 training images).

Nuisances, all uniform per example: the label (8 classes), identity (``IDENTITY_RANGES``: face
shape, eye spacing and size, brow thickness, skin / hair / iris tone, hair style), pose
(``POSE_RANGES``: rotation +-15 degrees, scale 1.1-1.3, shift +-0.08 image half-widths), scene
(``SCENE_RANGES``: background colour, gradient and grating, two rectangles and a disc, a lighting
gradient up to 35%, brightness +-0.12, contrast 0.7-1.2) and zero-mean uniform pixel noise with
std up to 0.03.

Speed: about 0.4 ms of one CPU core per 48 x 48 grey image (20,000 images in 7-8 s).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping

import numpy as np

__all__ = [
    "AU_NAMES", "CLASS_NAMES", "PROTOTYPES", "OPTIONAL_AUS", "VALENCE_AROUSAL", "INTENSITY_RANGE",
    "AU_JITTER_STD", "AU_JITTER_MAX", "SPLITS", "IDENTITY_RANGES", "POSE_RANGES", "SCENE_RANGES",
    "DRIFT_RANGES", "NUM_AUS", "NUM_LANDMARKS", "prototype_matrix", "expression_action_units",
    "valence_arousal", "canonical_landmarks", "pose_affine", "apply_affine", "params_from_uniform",
    "render_faces", "intensity_ramp", "sample_examples", "sample_sequences", "tracker_noise",
    "TRACKER_CORRELATION", "TRACKER_JAW_FACTOR",
]

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")

# Bilateral AUs, then unilateral AU12 / AU14 (FACS notation R12 = right-side AU12). The effective
# intensity of a side is clip(AU12 + R12) etc.
AU_NAMES = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17",
            "AU20", "AU23", "AU25", "AU26", "R12", "L12", "R14", "L14")
_AU = {name: i for i, name in enumerate(AU_NAMES)}
NUM_AUS = len(AU_NAMES)
NUM_LANDMARKS = 68

PROTOTYPES: Dict[str, Dict[str, float]] = {
    "angry": {"AU4": 1.0, "AU5": 0.6, "AU7": 0.8, "AU23": 0.9},
    "disgust": {"AU9": 1.0, "AU10": 0.8, "AU15": 0.6, "AU17": 0.5},
    "fear": {"AU1": 0.9, "AU2": 0.6, "AU4": 0.6, "AU5": 1.0, "AU7": 0.4, "AU20": 0.9, "AU25": 1.0,
             "AU26": 0.5},
    "happy": {"AU6": 0.8, "AU12": 1.0},
    "sad": {"AU1": 1.0, "AU4": 0.6, "AU15": 0.9},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 0.8, "AU25": 1.0, "AU26": 1.0},
    "neutral": {},
    # Written for the subject's right side; half of the examples use the mirror (L12, L14).
    "contempt": {"R12": 0.6, "R14": 0.9},
}
OPTIONAL_AUS: Dict[str, Dict[str, float]] = {
    "angry": {"AU17": 0.5}, "disgust": {"AU25": 0.5}, "happy": {"AU25": 1.0}, "sad": {"AU17": 0.6},
}
VALENCE_AROUSAL: Dict[str, tuple] = {
    "angry": (-0.55, 0.65), "disgust": (-0.65, 0.35), "fear": (-0.60, 0.75), "happy": (0.80, 0.45),
    "sad": (-0.70, -0.35), "surprise": (0.25, 0.80), "neutral": (0.0, 0.0),
    "contempt": (-0.45, 0.20),
}
INTENSITY_RANGE = (0.5, 1.0)
AU_JITTER_STD = 0.04
AU_JITTER_MAX = 0.1
OPTIONAL_PROB = 0.5
SPLITS = {"train": 0, "validation": 1, "test": 2}
NEUTRAL = CLASS_NAMES.index("neutral")

# Identity: name -> (low, high) of a uniform draw. Lengths in canonical units (image half-width 1).
IDENTITY_RANGES: Dict[str, tuple] = {
    "face_w": (0.62, 0.74),       # face half-width
    "face_top": (0.82, 0.95),     # upper half-height of the face ellipse (above the ear line)
    "chin_gap": (0.36, 0.44),     # chin below the mouth
    "eye_dx": (0.23, 0.29),       # half inter-ocular distance
    "eye_v": (-0.24, -0.16),      # eye height
    "eye_w": (0.12, 0.15),        # eye half-width
    "eye_hu": (0.06, 0.075),      # upper-lid height above the eye line
    "eye_hl": (0.035, 0.05),      # lower-lid depth below the eye line
    "iris_r": (0.055, 0.068),
    "brow_gap": (0.12, 0.16),     # brow above the eye line
    "brow_arch": (0.015, 0.04),
    "brow_thick": (0.018, 0.03),  # half-thickness at the inner end
    "brow_dark": (0.25, 0.5),     # brow colour = skin * brow_dark
    "nose_tip": (0.10, 0.18),
    "nose_w": (0.085, 0.11),
    "mouth_v": (0.40, 0.47),
    "mouth_w": (0.2, 0.25),       # mouth half-width
    "lip_u": (0.04, 0.055),
    "lip_l": (0.05, 0.065),
    "fold": (0.05, 0.2),          # resting depth of the nasolabial folds
    "neck_w": (0.3, 0.4),
    "skin_tone": (0.0, 1.0),      # light -> dark
    "skin_hue": (-1.0, 1.0),
    "hair_on": (0.0, 1.0),        # hair drawn when < 0.85
    "hair_tone": (0.0, 1.0),
    "hairline": (-0.86, -0.70),
    "hair_curv": (0.1, 0.35),
    "hair_tilt": (-0.1, 0.1),
    "hair_len": (-0.05, 0.7),
    "iris_tone": (0.0, 1.0),
    "lip_dark": (0.0, 1.0),
    "teeth": (0.8, 0.95),
}
# Pose: rotation in degrees, scale, shift in units of the image half-width.
POSE_RANGES: Dict[str, tuple] = {"angle": (-15.0, 15.0), "scale": (1.1, 1.3),
                                 "shift_x": (-0.08, 0.08), "shift_y": (-0.08, 0.08)}
_NUM_CLUTTER = 3  # two rectangles and a disc
# Scene (background clutter, lighting, noise); uniform draws. Positions in output-image units.
SCENE_RANGES: Dict[str, tuple] = {
    "bg_r": (0.05, 0.95), "bg_g": (0.05, 0.95), "bg_b": (0.05, 0.95), "bg_grey": (0.0, 1.0),
    "bg_grad": (0.0, 0.4), "bg_grad_dir": (0.0, 2 * math.pi),
    "stripe_amp": (0.0, 0.1), "stripe_freq": (1.5, 6.0), "stripe_dir": (0.0, math.pi),
    "stripe_phase": (0.0, 2 * math.pi),
    **{f"clutter{i}_{p}": r for i in range(_NUM_CLUTTER) for p, r in (
        ("x", (-1.0, 1.0)), ("y", (-1.0, 1.0)), ("w", (0.1, 1.2)), ("h", (0.1, 1.2)),
        ("r", (0.0, 1.0)), ("g", (0.0, 1.0)), ("b", (0.0, 1.0)), ("alpha", (0.3, 1.0)))},
    "light": (0.0, 0.35), "light_dir": (0.0, 2 * math.pi),
    "brightness": (-0.12, 0.12), "contrast": (0.7, 1.2), "noise": (0.0, 0.03),
}
# Sequences: total pose drift over a clip (uniform in +-range).
DRIFT_RANGES: Dict[str, tuple] = {"angle": (-6.0, 6.0), "scale": (-0.04, 0.04),
                                  "shift_x": (-0.05, 0.05), "shift_y": (-0.05, 0.05)}

_SQRT12 = np.float32(math.sqrt(12.0))


def prototype_matrix() -> np.ndarray:
  """(num_classes, num_aus) apex AU intensities of ``PROTOTYPES`` (contempt on the right side)."""
  p = np.zeros((len(CLASS_NAMES), NUM_AUS), np.float32)
  for c, name in enumerate(CLASS_NAMES):
    for au, w in PROTOTYPES[name].items():
      p[c, _AU[au]] = w
  return p


def _optional_matrix() -> np.ndarray:
  p = np.zeros((len(CLASS_NAMES), NUM_AUS), np.float32)
  for c, name in enumerate(CLASS_NAMES):
    for au, w in OPTIONAL_AUS.get(name, {}).items():
      p[c, _AU[au]] = w
  return p


_PROTO = prototype_matrix()
_BROW_VINV = np.linalg.inv(np.vander(np.linspace(0, 1, 5), 5, increasing=True)).astype(np.float32)
_OPTIONAL = _optional_matrix()
_VA = np.array([VALENCE_AROUSAL[c] for c in CLASS_NAMES], np.float32)
_MIRROR = np.arange(NUM_AUS)
_MIRROR[[_AU["R12"], _AU["L12"], _AU["R14"], _AU["L14"]]] = [_AU["L12"], _AU["R12"], _AU["L14"],
                                                             _AU["R14"]]


def _check_labels(labels):
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
    raise ValueError(f"labels must be in [0, {len(CLASS_NAMES)}), got values from {labels.min()} "
                     f"to {labels.max()}")
  return labels.astype(np.int64)


def expression_action_units(labels, intensity, mirror=None, optional=None,
                            jitter=None) -> np.ndarray:
  """AU intensities ``clip(P[label] * I + optional * I + jitter, 0, 1)``, float32 (B, NUM_AUS).

  Args:
    labels: (B,) class ids. intensity: (B,) expression intensity in [0, 1].
    mirror: optional (B,) bool, swap the unilateral R12/R14 columns to L12/L14 (contempt side).
    optional: optional (B, NUM_AUS) levels in [0, 1] of ``OPTIONAL_AUS`` (scaled by their maxima).
    jitter: optional (B, NUM_AUS) additive AU noise.
  """
  labels = _check_labels(labels)
  intensity = np.asarray(intensity, np.float32)
  proto = _PROTO[labels]
  if mirror is not None:
    proto = np.where(np.asarray(mirror, bool)[:, None], proto[:, _MIRROR], proto)
  au = proto * intensity[:, None]
  if optional is not None:
    au = au + _OPTIONAL[labels] * np.asarray(optional, np.float32) * intensity[:, None]
  if jitter is not None:
    au = au + np.asarray(jitter, np.float32)
  return np.clip(au, 0.0, 1.0).astype(np.float32)


def valence_arousal(labels, intensity) -> tuple:
  """(valence, arousal) = VALENCE_AROUSAL[label] * intensity (each float32 (B,))."""
  labels = _check_labels(labels)
  intensity = np.asarray(intensity, np.float32)
  return _VA[labels, 0] * intensity, _VA[labels, 1] * intensity


# ----------------------------------------------------------------------------------------------
# Geometry.
# ----------------------------------------------------------------------------------------------


def _check_batch(action_units, identity, pose=None):
  au = np.asarray(action_units, np.float32)
  if au.ndim != 2 or au.shape[1] != NUM_AUS:
    raise ValueError(f"action_units must have shape (B, {NUM_AUS}) ordered as AU_NAMES, got "
                     f"{au.shape}")
  if au.size and (au.min() < 0 or au.max() > 1):
    raise ValueError(f"action_units must lie in [0, 1], got range [{au.min()}, {au.max()}]")
  missing = [k for k in IDENTITY_RANGES if k not in identity]
  if missing:
    raise ValueError(f"identity is missing keys {missing}; expected the keys of IDENTITY_RANGES")
  for k in IDENTITY_RANGES:
    if np.shape(identity[k]) != (au.shape[0],):
      raise ValueError(f"identity[{k!r}] must have shape ({au.shape[0]},), got "
                       f"{np.shape(identity[k])}")
  if pose is not None:
    for k in POSE_RANGES:
      if k not in pose or np.shape(pose[k]) != (au.shape[0],):
        raise ValueError(f"pose[{k!r}] must be given with shape ({au.shape[0]},); pose has "
                         f"{ {n: np.shape(x) for n, x in pose.items()} }")
  return au


def _face_geometry(action_units, identity) -> Dict[str, np.ndarray]:
  """Feature parameters (canonical frame) and canonical landmarks (B, 68, 2) of each face."""
  a = {n: action_units[:, i] for n, i in _AU.items()}
  idn = {k: np.asarray(identity[k], np.float32) for k in IDENTITY_RANGES}
  b = action_units.shape[0]
  g: Dict[str, np.ndarray] = {}
  sides = np.array([-1.0, 1.0], np.float32)  # 0: subject's right (image left), 1: subject's left.
  a12 = np.clip(a["AU12"][:, None] + np.stack([a["R12"], a["L12"]], 1), 0, 1)  # (B, 2)
  a14 = np.clip(a["AU14"][:, None] + np.stack([a["R14"], a["L14"]], 1), 0, 1)
  g["a12"], g["a14"] = a12, a14
  for n in ("AU1", "AU2", "AU4", "AU6", "AU7", "AU9", "AU10", "AU17"):
    g[n] = a[n]

  # Brows: 5 points from inner to outer end; AU1 lifts the inner, AU2 the outer part, AU4 lowers
  # and knits the inner part, AU9 lowers the inner part.
  t = np.linspace(0, 1, 5, dtype=np.float32)[None, None, :]
  sg = sides[None, :, None]
  e3 = lambda x: x[:, None, None]
  ex, ew, ev = e3(idn["eye_dx"]), e3(idn["eye_w"]), e3(idn["eye_v"])
  col = lambda n: a[n][:, None, None]
  inner, outer = sg * (ex - 1.0 * ew), sg * (ex + 1.2 * ew)
  bu = inner + t * (outer - inner) - sg * 0.05 * col("AU4") * (1 - t)
  bv = (ev - idn["brow_gap"][:, None, None]
        - idn["brow_arch"][:, None, None] * np.sin(np.pi * t ** 1.36)
        - 0.12 * col("AU1") * (1 - t) - 0.11 * col("AU2") * t
        - 0.03 * np.minimum(col("AU1"), col("AU2")) * np.sin(np.pi * t)
        + 0.08 * col("AU4") * (1 - 0.7 * t) + 0.035 * col("AU9") * (1 - t) + 0.015 * col("AU6") * t)
  bv = np.broadcast_to(bv, bu.shape)
  g["brow"] = np.stack([bu, bv], -1).astype(np.float32)  # (B, 2, 5, 2)
  # Quartic v(t) through the 5 points (written out, no BLAS): coefficients (B, 2, 5), t^0 first.
  g["brow_poly"] = sum(_BROW_VINV[None, None, :, j] * bv[..., j:j + 1] for j in range(5))
  g["brow_r"] = idn["brow_thick"] * (1 + 0.15 * a["AU4"])

  # Eyes: lids are parabolas between the corners; AU5 raises the upper lid, AU6/AU7 narrow the eye.
  g["eye_u"] = sides[None, :] * idn["eye_dx"][:, None]
  g["eye_v"] = idn["eye_v"]
  g["eye_w"] = idn["eye_w"] * (1 - 0.06 * a["AU6"] - 0.04 * a["AU7"])
  hu = 1 + 1.0 * a["AU5"] - 0.4 * a["AU7"] - 0.35 * a["AU6"] - 0.15 * a["AU4"] - 0.25 * a["AU9"]
  hl = 1 - 0.6 * a["AU7"] - 0.55 * a["AU6"] - 0.3 * a["AU9"] + 0.2 * a["AU5"]
  g["eye_hu"] = idn["eye_hu"] * np.maximum(hu, 0.12)
  g["eye_hl"] = idn["eye_hl"] * np.maximum(hl, 0.1)
  g["iris_r"] = idn["iris_r"]

  # Nose: AU9 wrinkles the bridge and lifts / flares the wings, AU10 lifts them a little.
  g["nose_tip"] = idn["nose_tip"] - 0.012 * a["AU9"]
  g["wing_up"] = 0.035 * a["AU9"] + 0.015 * a["AU10"]
  g["nose_w"] = idn["nose_w"] * (1 + 0.15 * a["AU9"] + 0.05 * a["AU10"])

  # Mouth (per side): AU12 pulls the corner up and out, AU14 tightens it (up, in), AU15 pulls it
  # down, AU20 stretches, AU23 narrows and thins, AU17 pushes the lower lip up, AU10 raises the
  # upper lip, AU25 / AU26 open the lips / drop the jaw.
  cw = (idn["mouth_w"][:, None] + 0.06 * a12 + 0.09 * a["AU20"][:, None]
        - 0.04 * a["AU23"][:, None] - 0.025 * a14 - 0.03 * a["AU26"][:, None]
        - 0.015 * a["AU17"][:, None])
  g["mouth_cw"] = np.maximum(cw, 0.6 * idn["mouth_w"][:, None])
  g["mouth_lift"] = (0.10 * a12 + 0.05 * a14 - 0.085 * a["AU15"][:, None]
                     - 0.025 * a["AU20"][:, None] - 0.025 * a["AU17"][:, None])
  g["mouth_v"] = idn["mouth_v"] - 0.01 * a["AU17"] - 0.015 * a["AU10"]
  g["mouth_open"] = np.maximum(0.035 * a["AU25"] + 0.16 * a["AU26"] - 0.03 * a["AU17"], 0)
  g["lip_raise"] = 0.04 * a["AU10"] + 0.015 * a["AU9"]
  a12m = a12.mean(1)
  thin = 1 - 0.55 * a["AU23"] - 0.25 * a["AU20"] - 0.15 * a12m
  g["lip_u"] = idn["lip_u"] * np.maximum(thin, 0.25)
  g["lip_l"] = idn["lip_l"] * np.maximum(thin + 0.2 * a["AU17"], 0.25)

  # Face outline: ellipse halves above / below the ear line; the chin follows the jaw (AU26).
  g["face_v0"] = idn["eye_v"] + 0.06
  g["face_w"] = idn["face_w"]
  g["face_top"] = idn["face_top"]
  chin = idn["mouth_v"] + idn["chin_gap"] + 0.13 * a["AU26"] - 0.01 * a["AU17"]
  g["face_bot"] = chin - g["face_v0"]
  g["landmarks"] = _landmarks_from_geometry(g, b)
  return g


def _mouth_curves(g, s, side):
  """Lip curves at normalised mouth abscissa ``s`` in [-1, 1] for the given side index array.

  Returns (mid, inner_upper, inner_lower, outer_upper, outer_lower); inputs broadcast against the
  (B,) geometry entries after the caller has expanded them.
  """
  lift = np.where(side, g["lift_l"], g["lift_r"])
  s2 = s * s
  q = np.maximum(1 - s2, 0)
  qh = np.sqrt(q)
  mid = g["mv"] - lift * s2 - 0.015 * g["a17"] * q
  iu = mid - (0.2 * g["op"] + g["lr"]) * qh
  il = mid + 0.8 * g["op"] * qh
  return mid, iu, il, iu - g["tu"] * qh, il + g["tl"] * qh


def _mouth_params(g, expand):
  e = expand
  return {"lift_r": e(g["mouth_lift"][:, 0]), "lift_l": e(g["mouth_lift"][:, 1]),
          "cw_r": e(g["mouth_cw"][:, 0]), "cw_l": e(g["mouth_cw"][:, 1]), "mv": e(g["mouth_v"]),
          "a17": e(g["AU17"]), "op": e(g["mouth_open"]), "lr": e(g["lip_raise"]),
          "tu": e(g["lip_u"]), "tl": e(g["lip_l"])}


def _landmarks_from_geometry(g, b) -> np.ndarray:
  lm = np.zeros((b, NUM_LANDMARKS, 2), np.float32)
  # Jaw 0..16 on the outline, from the subject's right ear line round the chin.
  delta = 0.12
  psi = np.pi + delta - np.arange(17, dtype=np.float32) * (np.pi + 2 * delta) / 16
  sn = np.sin(psi)[None]
  rv = np.where(sn < 0, g["face_top"][:, None], g["face_bot"][:, None])
  lm[:, 0:17, 0] = g["face_w"][:, None] * np.cos(psi)[None]
  lm[:, 0:17, 1] = g["face_v0"][:, None] + rv * sn
  # Brows 17..21 (image left, outer -> inner) and 22..26 (inner -> outer).
  lm[:, 17:22] = g["brow"][:, 0, ::-1]
  lm[:, 22:27] = g["brow"][:, 1]
  # Nose bridge 27..30 and nostril base 31..35.
  top, tip = g["eye_v"] - 0.01, g["nose_tip"]
  for j, f in enumerate((0.0, 1 / 3, 2 / 3, 1.0)):
    lm[:, 27 + j, 1] = top + f * (tip - top)
  nw, wu = g["nose_w"], g["wing_up"]
  lm[:, 31] = np.stack([-nw, tip + 0.02 - wu], -1)
  lm[:, 32] = np.stack([-0.5 * nw, tip + 0.045 - 0.7 * wu], -1)
  lm[:, 33] = np.stack([0 * nw, tip + 0.055 - 0.5 * wu], -1)
  lm[:, 34] = np.stack([0.5 * nw, tip + 0.045 - 0.7 * wu], -1)
  lm[:, 35] = np.stack([nw, tip + 0.02 - wu], -1)
  # Eyes 36..41 (image left: outer corner, upper lid x2, inner corner, lower lid x2), 42..47.
  c = 1 - 1 / 9
  for side, base, order in ((0, 36, (-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3)),
                            (1, 42, (-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3))):
    eu, ev, ew = g["eye_u"][:, side], g["eye_v"], g["eye_w"]
    dv = (0, -c * g["eye_hu"], -c * g["eye_hu"], 0, c * g["eye_hl"], c * g["eye_hl"])
    for j in range(6):
      lm[:, base + j, 0] = eu + order[j] * ew
      lm[:, base + j, 1] = ev + dv[j]
  # Mouth 48..59 outer (from the image-left corner clockwise), 60..67 inner.
  mp = _mouth_params(g, lambda x: x[:, None])
  s_out = np.array([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0, -1 / 3, -2 / 3],
                   np.float32)
  which_out = np.array([0, 3, 3, 3, 3, 3, 0, 4, 4, 4, 4, 4])
  s_in = np.array([-0.95, -0.5, 0, 0.5, 0.95, 0.5, 0, -0.5], np.float32)
  which_in = np.array([5, 1, 1, 1, 5, 2, 2, 2])
  for s_arr, which, base in ((s_out, which_out, 48), (s_in, which_in, 60)):
    side = (s_arr > 0)[None]
    s = s_arr[None]
    curves = _mouth_curves(mp, s, side)
    curves = curves + ((curves[1] + curves[2]) / 2,)
    cw = np.where(side, mp["cw_l"], mp["cw_r"])
    lm[:, base:base + len(s_arr), 0] = s * cw
    for j, w in enumerate(which):
      lm[:, base + j, 1] = curves[w][:, j]
  return lm


def canonical_landmarks(action_units, identity) -> np.ndarray:
  """iBUG-68 landmarks (B, 68, 2) in the canonical face frame (before the pose transform)."""
  au = _check_batch(action_units, identity)
  return _face_geometry(au, identity)["landmarks"]


def pose_affine(pose: Mapping[str, np.ndarray], size: int) -> np.ndarray:
  """(B, 2, 3) affine maps canonical (u, v, 1) -> output pixel (x, y); see the module docstring."""
  th = np.deg2rad(np.asarray(pose["angle"], np.float64))
  k = np.asarray(pose["scale"], np.float64) * size / 2
  c, s = np.cos(th), np.sin(th)
  tx = (size - 1) / 2 + np.asarray(pose["shift_x"], np.float64) * size / 2
  ty = (size - 1) / 2 + np.asarray(pose["shift_y"], np.float64) * size / 2
  return np.stack([np.stack([k * c, -k * s, tx], -1), np.stack([k * s, k * c, ty], -1)], 1)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Applies (B, 2, 3) affines to (B, N, 2) points elementwise (no BLAS: bit-stable per row)."""
  affine = np.asarray(affine, np.float64)
  p = np.asarray(points, np.float64)
  x = affine[:, None, 0, 0] * p[..., 0] + affine[:, None, 0, 1] * p[..., 1] + affine[:, None, 0, 2]
  y = affine[:, None, 1, 0] * p[..., 0] + affine[:, None, 1, 1] * p[..., 1] + affine[:, None, 1, 2]
  return np.stack([x, y], -1)


# ----------------------------------------------------------------------------------------------
# Rasterisation.
# ----------------------------------------------------------------------------------------------


def _clip01(x):
  return np.clip(x, 0.0, 1.0, out=x)


def _cov(d, k):
  """Coverage of the region {d < 0} for a pixel of canonical size 1/k (d in canonical units)."""
  return _clip01(0.5 - d * k)


def _band(lo, hi, v, k, h):
  """Exact box-filter coverage of the interval lo < v < hi (h = half pixel size)."""
  return _clip01((np.minimum(hi, v + h) - np.maximum(lo, v - h)) * k)


def _seg(u, v, ax, ay, bx, by):
  """Distance to the segment a-b."""
  px, py, dx, dy = u - ax, v - ay, bx - ax, by - ay
  h = _clip01((px * dx + py * dy) * (1 / (dx * dx + dy * dy + 1e-12)))
  px = px - h * dx
  py = py - h * dy
  return np.sqrt(px * px + py * py)


def _ellipse_sd(u, v, cu, cv, ru, rv):
  """Approximate signed distance to an ellipse (Quilez's k0 * (k0 - 1) / k1) and k0."""
  iru, irv = 1 / ru, 1 / rv
  x, y = (u - cu) * iru, (v - cv) * irv
  k0 = np.sqrt(x * x + y * y)
  x *= iru
  y *= irv
  k1 = np.sqrt(x * x + y * y) + 1e-6
  return k0 * (k0 - 1) / k1, k0


def _line(u, v, k, v0, slope, ua, ub, hw):
  """Coverage of a straight stroke v = v0 + slope * (u - ua), ua <= u <= ub (or ub <= u <= ua)."""
  d = np.abs(v - v0 - slope * (u - ua)) * (1 / np.sqrt(1 + slope * slope)) - hw
  mid, half = (ua + ub) / 2, np.abs(ub - ua) / 2
  return _cov(np.maximum(d, np.abs(u - mid) - half), k)


def _stroke_curve(u, v, k, curve, slope, u0, half_len, hw):
  """Coverage of a stroke of half-width hw along v = curve(u) for |u - u0| < half_len."""
  d = np.abs(v - curve) / np.sqrt(1 + slope * slope) - hw
  return _cov(np.maximum(d, np.abs(u - u0) - half_len), k)


def _paint(buf, alpha, colour):
  """Alpha-composites ``colour`` (B, C) over ``buf`` (B, H, W, C) with ``alpha`` (B, H, W)."""
  buf += alpha[..., None] * (colour[:, None, None, :] - buf)


class _Window:
  """Output pixels of a per-face window, their canonical coordinates and a colour buffer.

  The window is the pixel box that holds the canonical rectangle centre (cu, cv) +- (ex, ey) after
  the pose, plus one pixel (the anti-aliasing footprint). Painters must keep their alpha zero
  outside that rectangle, so that the result does not depend on the window (tested).
  """

  def __init__(self, canvas, pose, cu=None, cv=None, ex=None, ey=None):
    b, size = canvas.shape[0], canvas.shape[1]
    self.canvas = canvas
    c, s, k, tx, ty = pose["c"], pose["s"], pose["k"], pose["tx"], pose["ty"]
    if cu is None:
      cols = np.arange(size)[None, None, :]
      rows = np.arange(size)[None, :, None]
      self.idx = None
    else:
      cu, cv = np.asarray(cu, np.float64), np.asarray(cv, np.float64)
      px = k * (c * cu - s * cv) + tx
      py = k * (s * cu + c * cv) + ty
      hx = k * (np.abs(c) * ex + np.abs(s) * ey) + 1.0
      hy = k * (np.abs(s) * ex + np.abs(c) * ey) + 1.0
      wx = int(min(size, math.ceil(2 * float(hx.max())) + 2))
      wy = int(min(size, math.ceil(2 * float(hy.max())) + 2))
      c0 = np.clip(np.floor(px - hx), 0, size - wx).astype(np.int64)
      r0 = np.clip(np.floor(py - hy), 0, size - wy).astype(np.int64)
      cols = c0[:, None, None] + np.arange(wx)[None, None, :]
      rows = r0[:, None, None] + np.arange(wy)[None, :, None]
      self.idx = (np.arange(b)[:, None, None] * size + rows) * size + cols
    e = lambda x: x[:, None, None].astype(np.float32)
    dx = cols.astype(np.float32) - e(tx)
    dy = rows.astype(np.float32) - e(ty)
    ik = 1 / e(k)
    self.u = (e(c) * ik) * dx + (e(s) * ik) * dy
    self.v = (e(c) * ik) * dy - (e(s) * ik) * dx
    self.k = e(k)
    self.h = 0.5 * ik
    if self.idx is None:
      self.buf = canvas
    else:
      self.buf = canvas.reshape(-1, canvas.shape[-1])[self.idx]

  def commit(self):
    if self.idx is not None:
      self.canvas.reshape(-1, self.canvas.shape[-1])[self.idx] = self.buf


def _luma(x):
  """Rec. 601 luma of (..., 3) RGB (written out: no BLAS, so bit-identical per row)."""
  x = np.asarray(x, np.float64)
  return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _colours(identity, channels) -> Dict[str, np.ndarray]:
  """Per-face colours (B, C)."""
  tone = identity["skin_tone"][:, None].astype(np.float64)
  light, dark = np.array([0.96, 0.84, 0.74]), np.array([0.42, 0.29, 0.22])
  skin = light + tone * (dark - light)
  skin = skin + identity["skin_hue"][:, None] * np.array([0.03, 0.0, -0.03])
  hair_pal = np.array([[0.07, 0.06, 0.05], [0.2, 0.13, 0.08], [0.36, 0.22, 0.12],
                       [0.5, 0.25, 0.12], [0.72, 0.6, 0.38], [0.6, 0.6, 0.6]])
  hair = hair_pal[np.minimum((identity["hair_tone"] * 6).astype(int), 5)]
  iris_pal = np.array([[0.3, 0.18, 0.1], [0.12, 0.08, 0.06], [0.25, 0.4, 0.55],
                       [0.3, 0.4, 0.25]])
  iris = iris_pal[np.minimum((identity["iris_tone"] * 4).astype(int), 3)]
  lips = skin * np.array([0.85, 0.55, 0.55]) * (1 - 0.2 * identity["lip_dark"][:, None])
  teeth = identity["teeth"][:, None] * np.array([1.0, 0.98, 0.9])
  const = lambda c: np.broadcast_to(np.array(c), skin.shape)
  cols = {"skin": skin, "hair": hair, "iris": iris, "lips": lips, "teeth": teeth,
          "neck": skin * 0.85, "shade": skin * 0.55, "crease": skin * 0.45,
          "brow": skin * identity["brow_dark"][:, None], "highlight": np.minimum(skin * 1.25, 1),
          "lash": skin * 0.2, "sclera": const([0.93, 0.92, 0.9]),
          "pupil": const([0.04, 0.03, 0.03]),
          "mouth": const([0.2, 0.07, 0.07]), "nostril": skin * 0.25}
  if channels == 1:
    return {n: _luma(x)[:, None].astype(np.float32) for n, x in cols.items()}
  return {n: np.ascontiguousarray(x, np.float32) for n, x in cols.items()}


def _strength(a, lo=0.15, span=0.6):
  """Dead-zoned AU strength for wrinkles: 0 below ``lo``, 1 above ``lo + span``."""
  return np.clip((a - lo) / span, 0, 1)


def _paint_background(w, scene, channels):
  """Base colour with a linear gradient, a sinusoidal grating, rectangles and a disc (output frame).

  Everything is separable in x and y, so it costs a few whole-image operations per face.
  """
  size = w.buf.shape[1]
  e = lambda n: scene[n][:, None, None].astype(np.float32)
  xs = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
  x, y = xs[None, None, :], xs[None, :, None]
  rgb = lambda p: np.stack([scene[p + c] for c in ("r", "g", "b")], -1)
  base = rgb("bg_") if channels == 3 else scene["bg_grey"][:, None]
  base = base.astype(np.float32)[:, None, None, :]
  gd = e("bg_grad_dir")
  grad = (1 + (e("bg_grad") * np.cos(gd)) * x) + (e("bg_grad") * np.sin(gd)) * y
  sd, f = e("stripe_dir"), e("stripe_freq") * np.float32(np.pi)
  arg = (f * np.cos(sd)) * x + ((f * np.sin(sd)) * y + e("stripe_phase"))
  w.buf[...] = base * grad[..., None]
  w.buf += (e("stripe_amp") * np.sin(arg))[..., None]
  k = np.float32(size / 2)
  for i in range(_NUM_CLUTTER):
    p = lambda n: e(f"clutter{i}_{n}")
    cx, cy, hx, hy = p("x"), p("y"), p("w") / 2, p("h") / 2
    if i < _NUM_CLUTTER - 1:  # axis-aligned rectangle
      ax = _cov(np.abs(x - cx) - hx, k) * p("alpha")
      alpha = ax * _cov(np.abs(y - cy) - hy, k)
    else:  # disc
      dx, dy = x - cx, y - cy
      alpha = _cov(np.sqrt(dx * dx + dy * dy) - hx, k) * p("alpha")
    colour = rgb(f"clutter{i}_")
    if channels == 1:
      colour = _luma(colour)[:, None]
    _paint(w.buf, alpha, colour.astype(np.float32))


def _paint_head(w, g, idn, col):
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k = w.u, w.v, w.k
  v0, fw, top, bot = g["face_v0"], g["face_w"], g["face_top"], g["face_bot"]
  hair_on = (idn["hair_on"] < 0.85).astype(np.float32)
  # Back hair: a larger ellipse (approximate distance) down to hair_len below the ear line.
  ru, rv = fw + 0.09, top + 0.12
  x, y = u * e(1 / ru), (v - e(v0 - 0.08)) * e(1 / rv)
  d_hair = (np.sqrt(x * x + y * y) - 1) * e(np.minimum(ru, rv))
  d_hair = np.maximum(d_hair, v - e(v0 + idn["hair_len"]))
  _paint(w.buf, _cov(d_hair, k) * e(hair_on), col["hair"])
  # Neck.
  d = np.maximum(np.abs(u) - e(idn["neck_w"]), e(v0 + 0.3) - v)
  _paint(w.buf, _cov(d, k), col["neck"])
  # Face: half ellipses above / below the ear line (Quilez's distance estimate), shaded towards
  # the outline.
  # 1 / rv is m - h * sign(v - v0); dv * (m - h * sign(dv)) = m * dv - h * |dv| avoids np.sign.
  dv = v - e(v0)
  m, h = e((1 / top + 1 / bot) / 2), e((1 / top - 1 / bot) / 2)
  iru = e(1 / fw)
  x, y = u * iru, m * dv - h * np.abs(dv)
  k0 = np.sqrt(x * x + y * y)
  x *= iru
  y = m * y - h * np.abs(y)
  k1 = np.sqrt(x * x + y * y)
  k1 += 1e-6
  face = _cov(k0 * (k0 - 1) / k1, k)
  _paint(w.buf, face, col["skin"])
  shade = _clip01((k0 - 0.7) * (1 / 0.3))
  _paint(w.buf, face * (shade * shade) * 0.25, col["shade"])
  # Fringe: hair over the forehead above the hairline.
  hl = (e(idn["hair_curv"] / fw ** 2) * u + e(idn["hair_tilt"])) * u + e(idn["hairline"])
  _paint(w.buf, np.minimum(face, _cov(v - hl, k)) * e(hair_on), col["hair"])


_WRINKLE_V = (0.075, 0.12, 0.165)  # forehead lines, below the top of the brows


def _forehead_box(g):
  top = g["brow"][..., 1].min(axis=(1, 2))
  return np.zeros_like(top), top - 0.12, np.full_like(top, 0.32), np.full_like(top, 0.07)


def _paint_forehead(w, g, col):
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k = w.u, w.v, w.k
  brow_top = e(g["brow"][..., 1].min(axis=(1, 2)))
  s1, s2 = e(0.5 * _strength(g["AU1"])), e(0.5 * _strength(g["AU2"]))
  au = np.abs(u) * (1 / 0.3)
  weight = _clip01(s1 * (1.0 - 0.7 * au) + s2 * (0.3 + 0.7 * au))
  for j, dv in enumerate(_WRINKLE_V):
    alpha = _stroke_curve(u, v, k, brow_top - dv + 0.15 * u * u, 0.3 * u, 0, 0.3 - 0.04 * j, 0.009)
    _paint(w.buf, alpha * weight, col["crease"])


def _glabella_box(g):
  iv = (g["brow"][:, 0, 0, 1] + g["brow"][:, 1, 0, 1]) / 2
  return np.zeros_like(iv), iv, np.full_like(iv, 0.05), np.full_like(iv, 0.06)


def _paint_glabella(w, g, col):
  """AU4: vertical furrows between the brows."""
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k = w.u, w.v, w.k
  iv = e((g["brow"][:, 0, 0, 1] + g["brow"][:, 1, 0, 1]) / 2)
  s4 = e(0.6 * _strength(g["AU4"]))
  for sgn in (-1.0, 1.0):  # lines u = sgn * (0.0325 - 0.05 * (v - iv)), |v - iv| <= 0.05
    d = np.abs(u - sgn * (0.0325 - 0.05 * (v - iv))) - 0.008
    _paint(w.buf, _cov(np.maximum(d, np.abs(v - iv) - 0.05), k) * s4, col["crease"])


def _eye_box(g, side):
  ev, hu, hl = g["eye_v"], g["eye_hu"], g["eye_hl"]
  top = ev - np.maximum(hu, g["iris_r"]) - 0.025
  bot = ev + hl + 0.085
  return g["eye_u"][:, side], (top + bot) / 2, g["eye_w"] + 0.02, (bot - top) / 2


def _paint_eye(w, g, col, side):
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k, h = w.u, w.v, w.k, w.h
  eu, ev, ew = e(g["eye_u"][:, side]), e(g["eye_v"]), e(g["eye_w"])
  hu, hl = e(g["eye_hu"]), e(g["eye_hl"])
  du = u - eu
  s = du * (1 / ew)
  q = 1 - s * s
  up, lo = ev - hu * q, ev + hl * q
  eye = np.minimum(_band(up, lo, v, k, h), _cov((np.abs(s) - 1) * ew, k))
  _paint(w.buf, eye, col["sclera"])
  dv = v - ev
  r = np.sqrt(du * du + dv * dv)
  ir = e(g["iris_r"])
  _paint(w.buf, np.minimum(eye, _cov(r - ir, k)), col["iris"])
  _paint(w.buf, np.minimum(eye, _cov(r - 0.45 * ir, k)), col["pupil"])
  # Lid lines (upper: lashes), limited to the eye's width.
  lim = (np.abs(s) - 1.05) * ew
  d_up = np.abs(v - up) / np.sqrt(1 + (2 * hu / ew) ** 2 * (s * s)) - 0.014
  _paint(w.buf, _cov(np.maximum(d_up, lim), k) * 0.9, col["lash"])
  d_lo = np.abs(v - lo) / np.sqrt(1 + (2 * hl / ew) ** 2 * (s * s)) - 0.006
  _paint(w.buf, _cov(np.maximum(d_lo, lim), k) * 0.35, col["lash"])
  # AU6 / AU7 infraorbital furrow below the lower lid.
  s67 = e(0.45 * np.maximum(_strength(g["AU6"]), _strength(g["AU7"])))
  fv = ev + hl + 0.05 + 0.02 * (1 - np.minimum(s * s, 1))
  _paint(w.buf, _stroke_curve(u, v, k, fv, 0.0, eu, 0.85 * ew, 0.007) * s67, col["crease"])


_CROW = (-0.48, 0.0, 0.48)  # slopes of the crow's-feet lines


def _crow_box(g, side):
  sg = -1.0 if side == 0 else 1.0
  cu = g["eye_u"][:, side] + sg * (g["eye_w"] + 0.06)
  return cu, g["eye_v"], np.full_like(cu, 0.035), np.full_like(cu, 0.035)


def _paint_crow(w, g, col, side):
  """AU6: crow's feet fanning out from the outer eye corner."""
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  sg = -1.0 if side == 0 else 1.0
  cx = e(g["eye_u"][:, side] + sg * (g["eye_w"] + 0.03))
  ev = e(g["eye_v"])
  s6 = e(0.6 * _strength(g["AU6"]))
  for m in _CROW:
    alpha = _line(w.u, w.v, w.k, ev, sg * m, cx, cx + sg * 0.055, 0.007)
    _paint(w.buf, alpha * s6, col["crease"])


def _brow_box(g, side):
  p = g["brow"][:, side]
  cu = (p[:, 0, 0] + p[:, 4, 0]) / 2
  cv = p[:, :, 1].mean(1)
  ex = np.abs(p[:, 4, 0] - p[:, 0, 0]) / 2
  ey = np.abs(p[:, :, 1] - cv[:, None]).max(1) + g["brow_r"] + 0.02
  return cu, cv, ex, ey


def _paint_brow(w, g, col, side):
  """Brow: a tapered stroke along the quartic through the 5 brow points (graph over u)."""
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k = w.u, w.v, w.k
  p = g["brow"][:, side]
  u0, length = e(p[:, 0, 0]), e(p[:, 4, 0] - p[:, 0, 0])
  cf = [e(c) for c in g["brow_poly"][:, side].T]  # v(t) = sum_i cf[i] * t^i
  t = (u - u0) * (1 / length)
  val = cf[4] * t + cf[3]
  der = 4 * cf[4] * t + 3 * cf[3]
  for i in (2, 1):
    val = val * t + cf[i]
    der = der * t + i * cf[i]
  val = val * t + cf[0]
  slope = der * (1 / length)
  r = e(g["brow_r"]) * (1 - 0.45 * _clip01(t.copy()))
  d = np.abs(v - val) / np.sqrt(1 + slope * slope) - r
  d = np.maximum(d, (np.abs(t - 0.5) - 0.5) * np.abs(length))
  _paint(w.buf, _cov(d, k), col["brow"])


def _cheek_centre(g, side):
  sg = -1.0 if side == 0 else 1.0
  return (g["eye_u"][:, side] + sg * 0.04,
          g["eye_v"] + 0.27 - 0.06 * g["AU6"] - 0.02 * g["a12"][:, side])


def _cheek_box(g, side):
  cu, cv = _cheek_centre(g, side)
  return cu, cv, np.full_like(cu, 0.14), np.full_like(cu, 0.1)


def _paint_cheek(w, g, col, side):
  """AU6 / AU12: raised cheek highlight."""
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  cu, cv = _cheek_centre(g, side)
  x, y = (w.u - e(cu)) * (1 / 0.14), (w.v - e(cv)) * (1 / 0.1)
  fall = np.maximum(1 - x * x - y * y, 0) ** 2
  amount = e(0.35 * np.maximum(g["AU6"], 0.6 * g["a12"][:, side]))
  _paint(w.buf, fall * amount, col["highlight"])


def _nose_box(g):
  top, bot = g["eye_v"] + 0.05, g["nose_tip"] + 0.065
  return np.zeros_like(top), (top + bot) / 2, g["nose_w"] + 0.06, (bot - top) / 2


def _paint_nose(w, g, col):
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k = w.u, w.v, w.k
  tip, nw, wu, ev = e(g["nose_tip"]), e(g["nose_w"]), e(g["wing_up"]), e(g["eye_v"])
  for sg in (-1.0, 1.0):
    d = _seg(u, v, sg * 0.045, ev + 0.065, sg * 0.75 * nw, tip - 0.03)
    _paint(w.buf, _cov(d - 0.01, k) * 0.22, col["shade"])
    dw, _ = _ellipse_sd(u, v, sg * 0.78 * nw, tip + 0.02 - wu, 0.045, 0.04)
    half = _cov(sg * (0.78 * nw - u) - 0.01, k)  # outer half of the wing only
    _paint(w.buf, np.minimum(_cov(np.abs(dw) - 0.008, k), half) * 0.45, col["shade"])
    dn, _ = _ellipse_sd(u, v, sg * 0.42 * nw, tip + 0.042 - 0.7 * wu, 0.028 + 0.008 * e(g["AU9"]),
                        0.014)
    _paint(w.buf, _cov(dn, k) * 0.85, col["nostril"])
  # AU9 wrinkles across the bridge.
  s9 = e(0.6 * _strength(g["AU9"]))
  for j in range(3):
    cv = ev + 0.075 + 0.035 * j
    alpha = _stroke_curve(u, v, k, cv - 0.3 * u * u, -0.6 * u, 0, 0.05 + 0.01 * j, 0.008)
    _paint(w.buf, alpha * s9, col["crease"])


def _fold_points(g, side):
  sg = -1.0 if side == 0 else 1.0
  ax, ay = sg * (g["nose_w"] + 0.02), g["nose_tip"] + 0.01 - g["wing_up"]
  cx = sg * (g["mouth_cw"][:, side] + 0.05)
  cy = g["mouth_v"] - g["mouth_lift"][:, side] + 0.05
  return ax, ay, (ax + cx) / 2 + sg * 0.035, (ay + cy) / 2, cx, cy


def _fold_box(g, side):
  xs = _fold_points(g, side)
  us, vs = np.stack(xs[0::2]), np.stack(xs[1::2])
  lo_u, hi_u, lo_v, hi_v = us.min(0), us.max(0), vs.min(0), vs.max(0)
  return (lo_u + hi_u) / 2, (lo_v + hi_v) / 2, (hi_u - lo_u) / 2 + 0.01, (hi_v - lo_v) / 2 + 0.01


def _paint_fold(w, g, col, side):
  """Nasolabial fold from the nose wing to beyond the lip corner (AU6/9/10/12 deepen it)."""
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  ax, ay, bx, by, cx, cy = [e(x) for x in _fold_points(g, side)]
  d = np.minimum(_seg(w.u, w.v, ax, ay, bx, by), _seg(w.u, w.v, bx, by, cx, cy))
  deep = np.maximum(np.maximum(_strength(g["AU10"]), _strength(g["AU9"])),
                    np.maximum(_strength(g["a12"][:, side]), 0.6 * _strength(g["AU6"])))
  _paint(w.buf, _cov(d - 0.009, w.k) * e(g["fold"] + 0.5 * deep), col["crease"])


def _mouth_box(g):
  lift = g["mouth_lift"]
  mv, op = g["mouth_v"], g["mouth_open"]
  top = mv - np.maximum(lift.max(1) + 0.035, 0.2 * op + g["lip_raise"] + g["lip_u"]) - 0.025
  bot = np.maximum(mv - lift.min(1) + 0.04, mv + 0.8 * op + g["lip_l"] + 0.09)
  return np.zeros_like(mv), (top + bot) / 2, g["mouth_cw"].max(1) + 0.05, (bot - top) / 2


def _paint_mouth(w, g, col):
  e = lambda x: np.asarray(x, np.float32)[:, None, None]
  u, v, k, h = w.u, w.v, w.k, w.h
  mp = _mouth_params(g, e)
  side = u > 0
  cw = np.where(side, mp["cw_l"], mp["cw_r"])
  s = u / cw
  mid, iu, il, ou, ol = _mouth_curves(mp, s, side)
  inside = _cov((np.abs(s) - 1) * cw, k)
  _paint(w.buf, np.minimum(_band(ou, ol, v, k, h), inside), col["lips"])
  _paint(w.buf, np.minimum(_band(iu, il, v, k, h), inside), col["mouth"])
  _paint(w.buf, np.minimum(_band(iu, np.minimum(iu + 0.05, il), v, k, h), inside), col["teeth"])
  # Junction line where the lips are closed (fades out as the gap reaches one pixel).
  d = np.abs(v - mid) - 0.008
  closed = _clip01(1 - (il - iu) * k)
  _paint(w.buf, _cov(np.maximum(d, (np.abs(s) - 1) * cw), k) * closed * 0.6, col["crease"])
  # AU14 dimples beside the corners.
  for sd, sg in ((0, -1.0), (1, 1.0)):
    cwi, lift = (mp["cw_r"], mp["lift_r"]) if sd == 0 else (mp["cw_l"], mp["lift_l"])
    dx, dy = sg * (cwi + 0.025), mp["mv"] - lift
    dd = np.abs(u - dx - sg * 0.012 * (v - dy + 0.03) / 0.065) - 0.008
    dd = np.maximum(dd, np.abs(v - dy - 0.0025) - 0.0325)
    _paint(w.buf, _cov(dd, k) * e(0.65 * _strength(g["a14"][:, sd])), col["crease"])
  # AU17: chin boss crease below the lower lip.
  ol0 = mp["mv"] - 0.015 * mp["a17"] + 0.8 * mp["op"] + mp["tl"]
  alpha = _stroke_curve(u, v, k, ol0 + 0.055 + 0.8 * u * u, 1.6 * u, 0, 0.12, 0.008)
  _paint(w.buf, alpha * e(0.1 + 0.5 * _strength(g["AU17"])), col["crease"])


def _pose_arrays(pose, size):
  th = np.deg2rad(np.asarray(pose["angle"], np.float64))
  k = np.asarray(pose["scale"], np.float64) * size / 2
  return {"c": np.cos(th), "s": np.sin(th), "k": k,
          "tx": (size - 1) / 2 + np.asarray(pose["shift_x"], np.float64) * size / 2,
          "ty": (size - 1) / 2 + np.asarray(pose["shift_y"], np.float64) * size / 2}


def render_faces(action_units, identity, pose, size: int = 48, channels: int = 1,
                 scene: Mapping[str, np.ndarray] | None = None, noise: np.ndarray | None = None,
                 windowed: bool = True):
  """Renders faces; returns (images uint8 (B, size, size, channels), landmarks float32 (B, 68, 2)).

  Args:
    action_units: (B, NUM_AUS) intensities in [0, 1], ordered as ``AU_NAMES``.
    identity: dict of (B,) arrays with the keys of ``IDENTITY_RANGES``.
    pose: dict of (B,) arrays ``angle`` (degrees), ``scale``, ``shift_x``, ``shift_y``.
    size: output height = width in pixels. channels: 1 (grey) or 3 (RGB).
    scene: optional dict of (B,) arrays with the keys of ``SCENE_RANGES`` (background clutter,
      lighting, noise level); ``None`` gives a plain mid-grey background and no lighting change.
      (Randomness is passed in explicitly so that each face depends only on its own draws.)
    noise: optional (B, size, size, channels) U[0, 1) draws; the pixel noise is zero-mean uniform
      with standard deviation ``scene['noise']``.
    windowed: evaluate small features only in per-face windows (identical pixels; False, which
      evaluates every feature on the whole image, exists for tests).
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  if int(size) != size or size < 8:
    raise ValueError(f"size must be an integer >= 8, got {size}")
  size = int(size)
  au = _check_batch(action_units, identity, pose)
  b = au.shape[0]
  if noise is not None and scene is None:
    raise ValueError("noise needs a scene (its level is scene['noise']); got scene=None")
  if b == 0:
    return (np.zeros((0, size, size, channels), np.uint8),
            np.zeros((0, NUM_LANDMARKS, 2), np.float32))
  idn = {n: np.asarray(identity[n], np.float32) for n in IDENTITY_RANGES}
  g = _face_geometry(au, idn)
  g["fold"] = idn["fold"]
  col = _colours(idn, channels)
  pa = _pose_arrays(pose, size)
  canvas = np.empty((b, size, size, channels), np.float32)
  full = _Window(canvas, pa)
  if scene is None:
    canvas[...] = 0.5
  else:
    missing = [n for n in SCENE_RANGES if n not in scene]
    if missing:
      raise ValueError(f"scene is missing keys {missing}; expected the keys of SCENE_RANGES")
    _paint_background(full, scene, channels)
  _paint_head(full, g, idn, col)

  def paint(box, fn, *args):
    w = _Window(canvas, pa, *box) if windowed else _Window(canvas, pa)
    fn(w, g, col, *args)
    w.commit()

  paint(_forehead_box(g), _paint_forehead)
  paint(_glabella_box(g), _paint_glabella)
  for side in (0, 1):
    paint(_cheek_box(g, side), _paint_cheek, side)
  paint(_nose_box(g), _paint_nose)
  for side in (0, 1):
    paint(_fold_box(g, side), _paint_fold, side)
    paint(_eye_box(g, side), _paint_eye, side)
    paint(_crow_box(g, side), _paint_crow, side)
    paint(_brow_box(g, side), _paint_brow, side)
  paint(_mouth_box(g), _paint_mouth)
  # Lighting, brightness / contrast, noise.
  if scene is not None:
    e = lambda n: np.asarray(scene[n], np.float32)[:, None, None, None]
    xs = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    x, y = xs[None, None, :, None], xs[None, :, None, None]
    ld = e("light_dir")
    canvas *= 1 + (e("light") * np.cos(ld)) * x + (e("light") * np.sin(ld)) * y
    canvas -= 0.5
    canvas *= e("contrast")
    canvas += 0.5 + e("brightness")
    if noise is not None:
      noise = np.asarray(noise, np.float32)
      if noise.shape != canvas.shape:
        raise ValueError(f"noise must have shape {canvas.shape}, got {noise.shape}")
      canvas += (e("noise") * _SQRT12) * (noise - 0.5)
  images = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)
  landmarks = apply_affine(pose_affine(pose, size), g["landmarks"]).astype(np.float32)
  return images, landmarks


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------


def _split_id(split) -> int:
  if isinstance(split, (int, np.integer)) and not isinstance(split, bool) and split >= 0:
    return int(split)
  if split in SPLITS:
    return SPLITS[split]
  raise ValueError(f"split must be one of {sorted(SPLITS)} or a non-negative int, got {split!r}")


def params_from_uniform(ranges: Mapping[str, tuple], u) -> Dict[str, np.ndarray]:
  """Maps U[0, 1) draws (B, len(ranges)) to a dict of float32 (B,) arrays ``lo + (hi - lo) * u``.

  ``ranges`` is ``IDENTITY_RANGES``, ``POSE_RANGES`` or ``SCENE_RANGES``; e.g.
  ``params_from_uniform(IDENTITY_RANGES, np.full((B, len(IDENTITY_RANGES)), 0.5))`` gives B
  average faces.
  """
  u = np.asarray(u, np.float64)
  if u.ndim != 2 or u.shape[1] != len(ranges):
    raise ValueError(f"u must have shape (B, {len(ranges)}) (one column per range: "
                     f"{list(ranges)}), got {u.shape}")
  return {n: (lo + (hi - lo) * u[:, j]).astype(np.float32)
          for j, (n, (lo, hi)) in enumerate(ranges.items())}


_N_ID, _N_POSE, _N_SCENE = len(IDENTITY_RANGES), len(POSE_RANGES), len(SCENE_RANGES)


def _draw(rng):
  """All random draws of one example / clip, in a fixed order."""
  label = rng.integers(len(CLASS_NAMES))
  inten = rng.uniform(*INTENSITY_RANGE)
  mirror = rng.random() < 0.5
  opt = rng.random(NUM_AUS) * (rng.random(NUM_AUS) < OPTIONAL_PROB)
  jit = np.clip(rng.normal(0, AU_JITTER_STD, NUM_AUS), -AU_JITTER_MAX, AU_JITTER_MAX)
  return (label, inten, mirror, opt, jit, rng.random(_N_ID), rng.random(_N_POSE),
          rng.random(_N_SCENE))


def _check_count(seed, start, count, size, channels, chunk):
  for name, val, lo in (("seed", seed, 0), ("start", start, 0), ("count", count, 0),
                        ("size", size, 8), ("chunk", chunk, 1)):
    if int(val) != val or val < lo:
      raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def sample_examples(seed: int, split, start: int, count: int, size: int = 48, channels: int = 1,
                    chunk: int = 256) -> Dict[str, np.ndarray]:
  """Examples ``start .. start + count - 1`` of ``split``, as a dict of batched arrays.

  Keys: image uint8 (B, size, size, channels), label int64 (B,), intensity / valence / arousal
  float32 (B,), action_units float32 (B, NUM_AUS), landmarks float32 (B, 68, 2) (output pixels,
  after the pose), id int64 (B,) (the example index). Example ``i`` only depends on
  (seed, split, i); ``chunk`` faces are rendered per vectorised batch.
  """
  _check_count(seed, start, count, size, channels, chunk)
  sid = _split_id(split)
  draws, noises = [], []
  for i in range(start, start + count):
    rng = np.random.default_rng([int(seed), sid, i])
    draws.append(_draw(rng))
    noises.append(rng.random((size, size, channels), dtype=np.float32))
  labels = np.array([d[0] for d in draws], np.int64).reshape(count)
  inten = np.array([d[1] for d in draws], np.float32).reshape(count)
  inten[labels == NEUTRAL] = 0.0
  mirror = np.array([d[2] for d in draws], bool).reshape(count)
  opt = np.array([d[3] for d in draws], np.float32).reshape(count, NUM_AUS)
  jit = np.array([d[4] for d in draws], np.float32).reshape(count, NUM_AUS)
  au = expression_action_units(labels, inten, mirror, opt, jit)
  column = lambda j, n: np.array([d[j] for d in draws]).reshape(count, n)
  ident = params_from_uniform(IDENTITY_RANGES, column(5, _N_ID))
  pose = params_from_uniform(POSE_RANGES, column(6, _N_POSE))
  scene = params_from_uniform(SCENE_RANGES, column(7, _N_SCENE))
  images = np.empty((count, size, size, channels), np.uint8)
  landmarks = np.empty((count, NUM_LANDMARKS, 2), np.float32)
  for a in range(0, count, chunk):
    sl = slice(a, min(a + chunk, count))
    sub = lambda d: {n: x[sl] for n, x in d.items()}
    images[sl], landmarks[sl] = render_faces(au[sl], sub(ident), sub(pose), size, channels,
                                             sub(scene), np.stack(noises[sl]))
  val, aro = valence_arousal(labels, inten)
  return {"image": images, "label": labels, "intensity": inten, "valence": val, "arousal": aro,
          "action_units": au, "landmarks": landmarks,
          "id": np.arange(start, start + count, dtype=np.int64)}


def intensity_ramp(num_frames: int, onset: float, apex: float, hold: bool = True) -> np.ndarray:
  """Neutral -> apex profile in [0, 1]: 0 until frame ``onset``, smoothstep up to ``apex``, then 1.

  ``onset`` / ``apex`` are fractions of the clip; without ``hold`` the apex is the last frame.
  """
  t = np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1)
  if not hold:
    apex = 1.0
  x = np.clip((t - onset) / max(apex - onset, 1e-6), 0, 1)
  return (x * x * (3 - 2 * x)).astype(np.float32)


# Landmark-tracker error model of ``sample_sequences(tracking_noise=...)``: frame-to-frame correlation of a
# point's error (an AR(1) process: trackers drift more than they jitter) and the jaw contour's error relative
# to the inner points (contour points have no texture along the contour and are the worst localised, as in
# 300-W's per-point errors, Sagonas et al. 2016).
TRACKER_CORRELATION = 0.6
TRACKER_JAW_FACTOR = 2.0


def tracker_noise(rng: np.random.Generator, landmarks: np.ndarray, level: float) -> np.ndarray:
  """Additive landmark error of one clip (T, 68, 2), as a face tracker makes it.

  Each coordinate's error is a stationary AR(1) series over the frames (``TRACKER_CORRELATION``) with a
  standard deviation of ``level`` times the frame's inter-ocular distance (outer eye corners 36 / 45; a
  tracker's normalised mean error is quoted in these units), ``TRACKER_JAW_FACTOR`` times that on the jaw
  points 0-16.
  """
  t_n = landmarks.shape[0]
  iod = np.linalg.norm(landmarks[:, 45] - landmarks[:, 36], axis=-1)  # (T,)
  scale = np.full(NUM_LANDMARKS, float(level))
  scale[:17] *= TRACKER_JAW_FACTOR
  rho = TRACKER_CORRELATION
  eps = rng.standard_normal((t_n, NUM_LANDMARKS, 2))
  z = np.empty_like(eps)
  z[0] = eps[0]
  for t in range(1, t_n):
    z[t] = rho * z[t - 1] + math.sqrt(1 - rho * rho) * eps[t]
  return (z * scale[None, :, None] * iod[:, None, None]).astype(np.float32)


def sample_sequences(seed: int, split, start: int, count: int, num_frames: int = 16,
                     size: int = 48, channels: int = 1, hold: bool = True,
                     chunk: int = 256, tracking_noise: float = 0.0,
                     intensity_scale: float = 1.0) -> Dict[str, np.ndarray]:
  """Clips going from neutral to an expression's apex, same identity, slowly drifting pose.

  Per clip: onset at a fraction U[0, 0.25] of the clip, apex at onset + U[0.3, 0.6] (then held, or
  at the last frame when ``hold=False``); apex intensity as for still images, times ``intensity_scale``
  (in (0, 1]: subtler expressions). Keys: frames uint8 (B, T, size, size, channels), label int64 (B,)
  (the apex class), frame_labels int64 (B, T) (the class once the frame intensity reaches
  ``intensity_scale * INTENSITY_RANGE[0]``, neutral before), intensity / valence / arousal float32 (B, T),
  action_units float32 (B, T, NUM_AUS), landmarks float32 (B, T, 68, 2), id int64 (B,). Clip ``i`` only
  depends on (seed, split, i).

  ``tracking_noise`` > 0 gives the landmarks a tracker's error (:func:`tracker_noise`, its level in units of
  the inter-ocular distance) drawn from a stream of its own (``[seed, split_id, i, 2]``): the frames and
  every other key are those of ``tracking_noise=0``, and only ``landmarks`` differ.
  """
  _check_count(seed, start, count, size, channels, chunk)
  if int(num_frames) != num_frames or num_frames < 1:
    raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
  if not (isinstance(tracking_noise, (int, float)) and 0 <= tracking_noise < 1):
    raise ValueError(f"tracking_noise must be a fraction of the inter-ocular distance in [0, 1), got "
                     f"{tracking_noise!r}")
  if not (isinstance(intensity_scale, (int, float)) and 0 < intensity_scale <= 1):
    raise ValueError(f"intensity_scale must be in (0, 1], got {intensity_scale!r}")
  sid = _split_id(split)
  t_n = int(num_frames)
  draws, ramps, drifts, noises = [], [], [], []
  for i in range(start, start + count):
    rng = np.random.default_rng([int(seed), sid, i, 1])
    draws.append(_draw(rng))
    onset = rng.uniform(0, 0.25)
    ramps.append(intensity_ramp(t_n, onset, onset + rng.uniform(0.3, 0.6), hold))
    drifts.append(rng.random(len(DRIFT_RANGES)))
    noises.append(rng.random((t_n, size, size, channels), dtype=np.float32))
  labels = np.array([d[0] for d in draws], np.int64).reshape(count)
  apex = np.array([d[1] for d in draws], np.float32).reshape(count)
  apex[labels == NEUTRAL] = 0.0
  apex *= np.float32(intensity_scale)
  inten = (apex[:, None] * np.array(ramps, np.float32).reshape(count, t_n)).astype(np.float32)
  rep = lambda x: np.repeat(np.asarray(x), t_n, axis=0)
  mirror = np.array([d[2] for d in draws], bool).reshape(count)
  opt = np.array([d[3] for d in draws], np.float32).reshape(count, NUM_AUS)
  jit = np.array([d[4] for d in draws], np.float32).reshape(count, NUM_AUS)
  au = expression_action_units(rep(labels), inten.reshape(-1), rep(mirror), rep(opt), rep(jit))
  column = lambda j, n: np.array([d[j] for d in draws]).reshape(count, n)
  ident = params_from_uniform(IDENTITY_RANGES, rep(column(5, _N_ID)))
  scene = params_from_uniform(SCENE_RANGES, rep(column(7, _N_SCENE)))
  pose0 = params_from_uniform(POSE_RANGES, column(6, _N_POSE))
  drift = params_from_uniform(DRIFT_RANGES, np.array(drifts).reshape(count, len(DRIFT_RANGES)))
  tt = (np.arange(t_n, dtype=np.float32) / max(t_n - 1, 1) - 0.5)[None]
  pose = {n: (pose0[n][:, None] + drift[n][:, None] * tt).reshape(-1).astype(np.float32)
          for n in POSE_RANGES}
  n_all = count * t_n
  frames = np.empty((n_all, size, size, channels), np.uint8)
  landmarks = np.empty((n_all, NUM_LANDMARKS, 2), np.float32)
  noise = np.stack(noises).reshape(n_all, size, size, channels) if count else None
  for a in range(0, n_all, chunk):
    sl = slice(a, min(a + chunk, n_all))
    sub = lambda d: {n: x[sl] for n, x in d.items()}
    frames[sl], landmarks[sl] = render_faces(au[sl], sub(ident), sub(pose), size, channels,
                                             sub(scene), noise[sl])
  val, aro = valence_arousal(rep(labels), inten.reshape(-1))
  frame_labels = np.where(inten >= intensity_scale * INTENSITY_RANGE[0] - 1e-6, labels[:, None], NEUTRAL)
  landmarks = landmarks.reshape(count, t_n, NUM_LANDMARKS, 2)
  if tracking_noise:
    for j, i in enumerate(range(start, start + count)):
      landmarks[j] += tracker_noise(np.random.default_rng([int(seed), sid, i, 2]), landmarks[j], tracking_noise)
  return {"frames": frames.reshape(count, t_n, size, size, channels), "label": labels,
          "frame_labels": frame_labels.astype(np.int64), "intensity": inten,
          "valence": val.reshape(count, t_n), "arousal": aro.reshape(count, t_n),
          "action_units": au.reshape(count, t_n, NUM_AUS),
          "landmarks": landmarks, "id": np.arange(start, start + count, dtype=np.int64)}
