"""Procedural people in scenes with EMOTIC-style labels: a licence-free stand-in for EMOTIC.

EMOTIC (Kosti et al., TPAMI 2019) labels a person in a photo with any of 26 categories and valence /
arousal / dominance, read from the face, the body and the scene around them. Here a scene is drawn from a
few parameters whose effect on the labels is a fixed, documented rule, so that context-aware models
(the EMOTIC body + context baseline, SeLiNet) have something to learn that the face alone does not give.

One scene (``context``, S x S RGB, default S = 96) holds:

* the **person**: the face of ``fer_jax.data.synthetic`` (``render_faces``, expression sampled as there:
  prototype AUs x intensity + optional AUs + jitter, identity from ``IDENTITY_RANGES``) on a body of
  flat-shaded shapes (legs, a torso polygon, two-segment arms with outlines, hands) whose **posture**
  has parameters ``POSTURE_NAMES``: the arms (one-hot ``down`` / ``open`` / ``up`` / ``crossed``),
  ``slump`` (0 upright .. 1 slumped: the head sinks between lower, narrower, sloping shoulders, a
  shorter torso), ``head_tilt`` (-1 .. 1: head roll of +-18 degrees about the neck) and ``lean``
  (-1 .. 1: torso roll of +-8 degrees about the neck; a nuisance, no rule uses it);
* the **scene**, parameters ``SCENE_MOOD_NAMES``: ``warmth`` (-1 cold blue .. 1 warm orange wall and
  floor colour, and a light tint), ``brightness`` (0 dark .. 1 bright: a gain on the whole image,
  person included), ``clutter`` (0 .. 1: number (round(8 c)) and colour contrast (0.1 + 0.5 c) of
  random rectangles and discs on the wall) and ``companion`` (0 / 1: a second, smaller person beside
  the first, drawn behind it, with its own random expression and arms down or open: a distractor
  whose presence, not its expression, enters the rules).

Records: ``context`` uint8 (S, S, 3); ``body`` uint8 (B, B, 3), the person box cut from the context and
resized (``fer_jax.data.emotic.crop_body`` + ``resize``: PIL bilinear, as the real EMOTIC builder does;
default B = 64); ``bbox`` float32 (4,) the person box x1, y1, x2, y2 in whole pixels (the extent of
head, torso, arms and legs plus half a pixel, clipped to the image) divided by S; ``categories``
float32 (26,) multi-hot in ``EMOTIC_CATEGORIES`` order and ``vad`` float32 (3,) in [0, 1] from the rules
below; ground truth ``label`` (face class, ``synthetic.CLASS_NAMES``), ``posture`` float32 (7,),
``scene_mood`` float32 (4,); EMOTIC's ``gender`` / ``age`` = -1 (unknown), ``person`` = 0, ``image_id``
and ``id``.

Draws: face class with prior ``EXPRESSION_PRIOR`` (EMOTIC-like: neutral and happy common), arms with
``ARMS_PRIOR``, companion with probability ``COMPANION_PROB``; ``slump``, ``|head_tilt|``, ``warmth``,
``brightness`` and ``clutter`` from the bands of ``LEVELS`` (a band picked with its probability, then
uniform inside it), so that every rule threshold (``THRESHOLDS``) lies in a gap between bands and no
example sits on a decision boundary; ``lean`` uniform. All draws are independent of each other, so
the categories that depend on the body or the scene cannot be guessed from the face.

Rules (``scene_categories``; F = face class, "upright" = slump < 0.3, "slumped" = slump > 0.6,
"tilted" = |head_tilt| > 0.4, "cold" / "warm" = warmth < -0.4 / > 0.4, "dark" / "bright" = brightness
< 0.3 / > 0.75, "calm" / "busy" = clutter < 0.3 / > 0.7, "alone" = no companion):

  ================  =====================================================================  =========
  category          rule                                                                    needs
  ================  =====================================================================  =========
  Affection         F happy, companion, arms open or down                                   face+ctx
  Anger             F angry, not slumped                                                    face+body
  Annoyance         F angry and slumped, or F contempt / disgust and busy                   face+b/c
  Anticipation      F neutral / surprise and not slumped, or F happy, upright, arms down    face+body
  Aversion          F disgust                                                               face
  Confidence        upright, not tilted, arms down / open, F happy / neutral / contempt     body+face
  Disapproval       F contempt, or F angry / disgust with arms crossed                      face+body
  Disconnection     F neutral and arms crossed, or F neutral, tilted and alone; and the     face+b/c
                    fallback when no other rule fires
  Disquietment      busy, not bright, F fear / neutral / sad / surprise                     ctx+face
  Doubt/Confusion   tilted, F neutral / surprise / contempt                                 body+face
  Embarrassment     F happy / sad, arms crossed, tilted, companion                          all
  Engagement        not slumped, and (companion or arms open / up or F happy / surprise /   body+b/c
                    angry / fear)
  Esteem            companion, upright, bright, F happy / neutral                           all
  Excitement        F happy / surprise and (arms up, or arms open and not calm)             face+b/c
  Fatigue           slumped and (dark and F sad / neutral, or tilted and F neutral)          body+b/c
  Fear              F fear                                                                  face
  Happiness         F happy                                                                 face
  Pain              F fear / sad, arms crossed, slumped                                     face+body
  Peace             F neutral / happy, arms down, calm, not dark, not slumped               all
  Pleasure          F happy, warm, not dark                                                 face+ctx
  Sadness           F sad, or F neutral, slumped and dark                                   face+b/c
  Sensitivity       F sad / fear, companion, tilted                                         all
  Suffering         F sad / fear, slumped, dark or cold                                     all
  Surprise          F surprise, or F fear with arms up                                      face+body
  Sympathy          companion, arms open, F sad / neutral                                   all
  Yearning          alone, cold, arms down, not slumped, F sad / neutral                    all
  ================  =====================================================================  =========

Valence / arousal / dominance (``scene_vad``), with (V_F, A_F) = ``synthetic.VALENCE_AROUSAL`` and D_F =
``FACE_DOMINANCE`` of the face class, I the expression intensity (0 for neutral), s = slump, t =
head_tilt, w = warmth, b = brightness, c = clutter, p = companion and [.] the arm indicators::

  valence   = V_F I + 0.2 [open] - 0.1 [crossed] - 0.2 s + 0.1 w + 0.2 (b - 0.5) + 0.1 p
  arousal   = A_F I + 0.3 [up] + 0.1 [open] - 0.1 [down] - 0.3 s + 0.3 (c - 0.5) + 0.1 (b - 0.5)
  dominance = D_F I + 0.4 (0.5 - s) + 0.15 [open] + 0.1 [crossed] - 0.1 |t|
  vad = clip((x + 1) / 2, 0, 1)   (each on EMOTIC's scaled [0, 1] range)

Paper says (Kosti et al.): categories come from the person's face, body and the scene; we chose these
rules (and their priors) to give a multi-label set with EMOTIC-like imbalance (Engagement, Anticipation,
Happiness common; Embarrassment, Pain, Sensitivity rare) in which most categories need the body or the
scene. Measured frequencies are in ``tfds_builders/synthetic_expressions/README.md``.

Determinism: example ``i`` of split ``s`` with seed ``k`` draws all of its randomness from
``np.random.default_rng([k, split_id, i, 2])`` (stills of ``synthetic`` use ``[k, s, i]``, clips
``[k, s, i, 1]``), in a fixed order, so it is the same whatever chunk or order it is generated in; the
rendering is elementwise NumPy (no BLAS), bit-identical for a given NumPy / PIL.

Coordinates: pixel centres at integers, x = column, y = row (down); "image left" is the subject's right.
Lengths of the body are in head units U = ``HEAD_UNIT`` * S * scale (scale ~ U[0.85, 1]): the face
renderer's canonical unit, so the face (half-width ~0.68 U) and the body share one scale. The head is
rendered by ``render_faces`` in an F x F patch (F = ceil(``HEAD_PATCH`` * S)), rotated about the neck
point (canonical v = ``NECK_V``) which sits at the middle of the patch's bottom edge; it is composited
exactly (up to uint8 rounding) by rendering it on black and on white: out = K + (W - K) * behind.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import numpy as np

from fer_jax.data import emotic, synthetic

__all__ = [
    "EMOTIC_CATEGORIES", "NUM_CATEGORIES", "ARMS", "POSTURE_NAMES", "SCENE_MOOD_NAMES", "EXPRESSION_PRIOR",
    "ARMS_PRIOR", "COMPANION_PROB", "LEVELS", "THRESHOLDS", "FACE_DOMINANCE", "HEAD_UNIT", "HEAD_PATCH",
    "NECK_V", "MIN_SIZE", "scene_categories", "scene_vad", "head_patch_size", "person_geometry", "draw_scenes",
    "render_scenes", "crop_bodies", "sample_scenes",
]

EMOTIC_CATEGORIES = emotic.EMOTIC_CATEGORIES
NUM_CATEGORIES = len(EMOTIC_CATEGORIES)
_C = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}

ARMS = ("down", "open", "up", "crossed")
POSTURE_NAMES = ("arms_down", "arms_open", "arms_up", "arms_crossed", "slump", "head_tilt", "lean")
SCENE_MOOD_NAMES = ("warmth", "brightness", "clutter", "companion")
_P = {n: i for i, n in enumerate(POSTURE_NAMES)}
_M = {n: i for i, n in enumerate(SCENE_MOOD_NAMES)}

EXPRESSION_PRIOR: Dict[str, float] = {
    "angry": 0.06, "disgust": 0.05, "fear": 0.06, "happy": 0.28, "sad": 0.10, "surprise": 0.08,
    "neutral": 0.30, "contempt": 0.07}
ARMS_PRIOR = (0.40, 0.25, 0.15, 0.20)  # down, open, up, crossed
COMPANION_PROB = 0.3
# name -> bands (lo, hi, probability); head_tilt bands are for |tilt| (sign +- with probability 1/2).
LEVELS: Dict[str, Tuple[Tuple[float, float, float], ...]] = {
    "slump": ((0.0, 0.2, 0.45), (0.35, 0.55, 0.25), (0.7, 1.0, 0.30)),
    "head_tilt": ((0.0, 0.2, 0.7), (0.6, 1.0, 0.3)),
    "warmth": ((-1.0, -0.5, 0.35), (-0.25, 0.25, 0.30), (0.5, 1.0, 0.35)),
    "brightness": ((0.0, 0.25, 0.30), (0.4, 0.7, 0.35), (0.8, 1.0, 0.35)),
    "clutter": ((0.0, 0.25, 0.35), (0.4, 0.6, 0.35), (0.75, 1.0, 0.30)),
}
# Rule predicates: slump < upright, slump > slumped, |tilt| > tilted, warmth < cold, warmth > warm, ...
THRESHOLDS: Dict[str, float] = {"upright": 0.3, "slumped": 0.6, "tilted": 0.4, "cold": -0.4, "warm": 0.4,
                                "dark": 0.3, "bright": 0.75, "calm": 0.3, "busy": 0.7}
FACE_DOMINANCE: Dict[str, float] = {
    "angry": 0.35, "disgust": 0.1, "fear": -0.45, "happy": 0.15, "sad": -0.35, "surprise": -0.1,
    "neutral": 0.0, "contempt": 0.35}

HEAD_UNIT = 0.15      # U / S at scale 1
SCALE_RANGE = (0.85, 1.0)
HEAD_PATCH = 0.42     # F / S
NECK_V = 1.15         # canonical face-frame v of the neck point (the chin reaches at most v = 1.04)
TILT_MAX_DEG = 18.0
LEAN_MAX_DEG = 8.0
NOISE_STD = 0.012
MIN_SIZE = 20  # smallest scene: head patches of ceil(0.42 * 20) = 9 px (render_faces needs 8)
NUM_SHAPES = 8
# Arms: (alpha lo, alpha hi, beta lo, beta hi, forearm length factor); alpha = upper arm, beta = forearm,
# degrees from straight down, positive = away from the body (90 horizontal outwards, 180 straight up).
_ARM_TABLE = np.array([
    (6.0, 18.0, 0.0, 14.0, 1.0),        # down: by the hips
    (40.0, 60.0, 65.0, 105.0, 1.0),     # open: spread, forearms about horizontal
    (135.0, 160.0, 155.0, 178.0, 1.0),  # up: hands above the head
    (8.0, 20.0, -96.0, -84.0, 1.45),    # crossed: forearms across the chest, past the midline
], np.float64)
_CROSS_SKEW = 7.0  # crossed: the image-left forearm rises, the other falls, by this many degrees
_UPPER_ARM, _FOREARM = 1.2, 1.1
_R_UPPER, _R_FORE, _R_HAND, _R_LEG = 0.26, 0.23, 0.26, 0.36
# Colours of the wall by warmth (-1, 0, 1), before the brightness gain.
_COLD, _NEUTRAL, _WARM = (np.array(c) for c in ((0.30, 0.50, 0.80), (0.62, 0.62, 0.60), (0.92, 0.58, 0.30)))

_FACE = {n: i for i, n in enumerate(synthetic.CLASS_NAMES)}
_FACE_PRIOR = np.array([EXPRESSION_PRIOR[c] for c in synthetic.CLASS_NAMES], np.float64)
_FACE_DOM = np.array([FACE_DOMINANCE[c] for c in synthetic.CLASS_NAMES], np.float32)
_N_ID = len(synthetic.IDENTITY_RANGES)
# Nuisance uniforms per person: scale, x, y, 4 arm angles (alpha R, beta R, alpha L, beta L), shirt (3),
# trousers (3); the companion adds side flip, distance, height, scale (4 more).
_N_PERSON = 13
_N_COMPANION = _N_PERSON + 4
_N_BACKGROUND = 6 + NUM_SHAPES * 8  # hue jitter (3), horizon, wall shade, floor shade; per shape 8


# ----------------------------------------------------------------------------------------------
# Labels.
# ----------------------------------------------------------------------------------------------


def _check_labels(label, posture, scene_mood):
  label = np.asarray(label)
  posture = np.asarray(posture, np.float32)
  scene_mood = np.asarray(scene_mood, np.float32)
  n = label.shape[0] if label.ndim == 1 else -1
  if label.ndim != 1 or (label.size and (label.min() < 0 or label.max() >= len(synthetic.CLASS_NAMES))):
    raise ValueError(f"label must be a (B,) array of face classes in [0, {len(synthetic.CLASS_NAMES)}), got "
                     f"shape {label.shape}" + (f", values {label.min()}..{label.max()}" if label.size else ""))
  if posture.shape != (n, len(POSTURE_NAMES)):
    raise ValueError(f"posture must have shape ({n}, {len(POSTURE_NAMES)}) ordered as {POSTURE_NAMES}, got "
                     f"{posture.shape}")
  arms = posture[:, :4]
  if n and not (np.all((arms == 0) | (arms == 1)) and np.all(arms.sum(1) == 1)):
    bad = int(np.nonzero(~(np.all((arms == 0) | (arms == 1), 1) & (arms.sum(1) == 1)))[0][0])
    raise ValueError(f"posture[{bad}, :4] must be one-hot over {ARMS}, got {arms[bad].tolist()}")
  if scene_mood.shape != (n, len(SCENE_MOOD_NAMES)):
    raise ValueError(f"scene_mood must have shape ({n}, {len(SCENE_MOOD_NAMES)}) ordered as {SCENE_MOOD_NAMES}, "
                     f"got {scene_mood.shape}")
  return label.astype(np.int64), posture, scene_mood


def _facts(label, posture, scene_mood) -> Dict[str, np.ndarray]:
  """Boolean predicates of the rules (see the module docstring), each (B,)."""
  t = THRESHOLDS
  s, tilt = posture[:, _P["slump"]], posture[:, _P["head_tilt"]]
  w, b, c = (scene_mood[:, _M[n]] for n in ("warmth", "brightness", "clutter"))
  f = {f"face_{name}": label == i for name, i in _FACE.items()}
  f.update({f"arms_{a}": posture[:, i] > 0.5 for i, a in enumerate(ARMS)})
  f.update(upright=s < t["upright"], slumped=s > t["slumped"], tilted=np.abs(tilt) > t["tilted"],
           cold=w < t["cold"], warm=w > t["warm"], dark=b < t["dark"], bright=b > t["bright"],
           calm=c < t["calm"], busy=c > t["busy"], companion=scene_mood[:, _M["companion"]] > 0.5)
  return f


def scene_categories(label, posture, scene_mood) -> np.ndarray:
  """(B, 26) float32 multi-hot of the rules in the module docstring (``EMOTIC_CATEGORIES`` order).

  Args:
    label: (B,) face classes (``synthetic.CLASS_NAMES``).
    posture: (B, 7) ordered as ``POSTURE_NAMES`` (arms one-hot).
    scene_mood: (B, 4) ordered as ``SCENE_MOOD_NAMES``.
  """
  label, posture, scene_mood = _check_labels(label, posture, scene_mood)
  f = _facts(label, posture, scene_mood)
  face = lambda *names: np.any([f[f"face_{n}"] for n in names], axis=0)
  alone, not_slumped = ~f["companion"], ~f["slumped"]
  rules = {
      "Affection": f["face_happy"] & f["companion"] & (f["arms_open"] | f["arms_down"]),
      "Anger": f["face_angry"] & not_slumped,
      "Annoyance": (f["face_angry"] & f["slumped"]) | (face("contempt", "disgust") & f["busy"]),
      "Anticipation": ((face("neutral", "surprise") & not_slumped)
                       | (f["face_happy"] & f["upright"] & f["arms_down"])),
      "Aversion": f["face_disgust"],
      "Confidence": (f["upright"] & ~f["tilted"] & (f["arms_down"] | f["arms_open"])
                     & face("happy", "neutral", "contempt")),
      "Disapproval": f["face_contempt"] | (face("angry", "disgust") & f["arms_crossed"]),
      "Disconnection": f["face_neutral"] & (f["arms_crossed"] | (f["tilted"] & alone)),
      "Disquietment": f["busy"] & ~f["bright"] & face("fear", "neutral", "sad", "surprise"),
      "Doubt/Confusion": f["tilted"] & face("neutral", "surprise", "contempt"),
      "Embarrassment": face("happy", "sad") & f["arms_crossed"] & f["tilted"] & f["companion"],
      "Engagement": not_slumped & (f["companion"] | f["arms_open"] | f["arms_up"]
                                   | face("happy", "surprise", "angry", "fear")),
      "Esteem": f["companion"] & f["upright"] & f["bright"] & face("happy", "neutral"),
      "Excitement": face("happy", "surprise") & (f["arms_up"] | (f["arms_open"] & ~f["calm"])),
      "Fatigue": f["slumped"] & ((f["dark"] & face("sad", "neutral")) | (f["tilted"] & f["face_neutral"])),
      "Fear": f["face_fear"],
      "Happiness": f["face_happy"],
      "Pain": face("fear", "sad") & f["arms_crossed"] & f["slumped"],
      "Peace": face("neutral", "happy") & f["arms_down"] & f["calm"] & ~f["dark"] & not_slumped,
      "Pleasure": f["face_happy"] & f["warm"] & ~f["dark"],
      "Sadness": f["face_sad"] | (f["face_neutral"] & f["slumped"] & f["dark"]),
      "Sensitivity": face("sad", "fear") & f["companion"] & f["tilted"],
      "Suffering": face("sad", "fear") & f["slumped"] & (f["dark"] | f["cold"]),
      "Surprise": f["face_surprise"] | (f["face_fear"] & f["arms_up"]),
      "Sympathy": f["companion"] & f["arms_open"] & face("sad", "neutral"),
      "Yearning": alone & f["cold"] & f["arms_down"] & not_slumped & face("sad", "neutral"),
  }
  assert set(rules) == set(EMOTIC_CATEGORIES), set(rules) ^ set(EMOTIC_CATEGORIES)
  out = np.zeros((label.shape[0], NUM_CATEGORIES), np.float32)
  for name, fired in rules.items():
    out[:, _C[name]] = fired
  out[out.sum(1) == 0, _C["Disconnection"]] = 1.0  # fallback: every person has a category
  return out


def scene_vad(label, intensity, posture, scene_mood) -> np.ndarray:
  """(B, 3) float32 valence, arousal, dominance in [0, 1] (formulas in the module docstring)."""
  label, posture, scene_mood = _check_labels(label, posture, scene_mood)
  inten = np.asarray(intensity, np.float32)
  if inten.shape != label.shape:
    raise ValueError(f"intensity must have shape {label.shape}, got {inten.shape}")
  v_f, a_f = synthetic.valence_arousal(label, inten)
  down, opn, up, crossed = (posture[:, i] for i in range(4))
  s, t = posture[:, _P["slump"]], posture[:, _P["head_tilt"]]
  w, b, c, p = (scene_mood[:, i] for i in range(4))
  val = v_f + 0.2 * opn - 0.1 * crossed - 0.2 * s + 0.1 * w + 0.2 * (b - 0.5) + 0.1 * p
  aro = a_f + 0.3 * up + 0.1 * opn - 0.1 * down - 0.3 * s + 0.3 * (c - 0.5) + 0.1 * (b - 0.5)
  dom = _FACE_DOM[label] * inten + 0.4 * (0.5 - s) + 0.15 * opn + 0.1 * crossed - 0.1 * np.abs(t)
  return np.clip((np.stack([val, aro, dom], 1) + 1) / 2, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Geometry.
# ----------------------------------------------------------------------------------------------


def head_patch_size(size: int) -> int:
  """Side F of the square in which heads are rendered: ceil(HEAD_PATCH * size)."""
  return int(math.ceil(HEAD_PATCH * size))


def _rot(x, y, c, s):
  """Rotates (x, y) by an angle with cosine c and sine s (clockwise on screen, y down)."""
  return x * c - y * s, x * s + y * c


def person_geometry(posture, person_u, size: int, companion_of=None) -> Dict[str, np.ndarray]:
  """Pixel geometry of people, float64 arrays.

  Args:
    posture: (B, 7) ordered as ``POSTURE_NAMES``.
    person_u: (B, 13) U[0, 1) nuisance draws (scale, x, y, 4 arm angles, shirt, trousers) or, with
      ``companion_of``, (B, 17) (4 more: side flip, distance, height, scale).
    size: scene side S.
    companion_of: the geometry of the main people (to place companions beside them), or None.

  Returns keys: ``unit`` (B,) U in pixels; ``patch`` (B, 2) int64 top-left row, column of the head
  patch; ``neck`` (B, 2) x, y (the middle of the patch's bottom edge); ``tilt`` (B,) degrees; ``torso``
  (B, 6, 2) polygon; ``shoulder`` / ``elbow`` / ``hand`` (B, 2, 2) per arm (index 0 image left);
  ``hip`` / ``foot`` (B, 2, 2); ``box`` (B, 4) x1, y1, x2, y2 whole-pixel edges of the person, clipped.
  """
  posture = np.asarray(posture, np.float64)
  u = np.asarray(person_u, np.float64)
  n = posture.shape[0]
  f_px = head_patch_size(size)
  if companion_of is None:
    unit = HEAD_UNIT * size * (SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 0])
    x_target = size * (0.3 + 0.4 * u[:, 1])
    y_target = size * (0.40 + 0.07 * u[:, 2])
  else:
    main_x, main_unit = companion_of["neck"][:, 0], companion_of["unit"]
    unit = main_unit * (0.65 + 0.15 * u[:, 16])
    side = np.where(main_x < size / 2, 1.0, -1.0) * np.where(u[:, 13] < 0.2, -1.0, 1.0)
    x_target = main_x + side * main_unit * (2.6 + 0.8 * u[:, 14])
    y_target = companion_of["neck"][:, 1] - main_unit * (0.2 + 0.4 * u[:, 15])
  col0 = np.rint(x_target - (f_px - 1) / 2)
  row0 = np.rint(y_target + 0.5 - f_px)
  neck = np.stack([col0 + (f_px - 1) / 2, row0 + f_px - 0.5], 1)
  # Body points in the torso frame (origin at the neck, units of U), then lean and scale.
  s = posture[:, _P["slump"]]
  arms = np.argmax(posture[:, :4], 1)
  top = -(0.1 + 0.4 * s)
  w_sh, y_sh = 1.3 - 0.2 * s, top + 0.3 + 0.35 * s
  w_hip, y_hip = np.full(n, 0.95), top + 2.7 - 0.5 * s
  z = np.zeros(n)
  torso = [(-0.45 + z, top), (-w_sh, y_sh), (-w_hip, y_hip), (w_hip, y_hip), (w_sh, y_sh), (0.45 + z, top)]
  table = _ARM_TABLE[arms]
  joints = {k: [] for k in ("shoulder", "elbow", "hand", "hip", "foot")}
  for side, sg in ((0, -1.0), (1, 1.0)):
    alpha = np.deg2rad(table[:, 0] + (table[:, 1] - table[:, 0]) * u[:, 3 + 2 * side])
    beta = table[:, 2] + (table[:, 3] - table[:, 2]) * u[:, 4 + 2 * side]
    beta = np.deg2rad(beta + (arms == 3) * sg * _CROSS_SKEW)  # crossed forearms make an X
    jx, jy = sg * (w_sh - 0.25), y_sh + 0.15
    ex, ey = jx + _UPPER_ARM * sg * np.sin(alpha), jy + _UPPER_ARM * np.cos(alpha)
    fl = _FOREARM * table[:, 4]
    hx, hy = ex + fl * sg * np.sin(beta), ey + fl * np.cos(beta)
    for k, (px, py) in (("shoulder", (jx, jy)), ("elbow", (ex, ey)), ("hand", (hx, hy)),
                        ("hip", (sg * 0.45 + z, y_hip - 0.2)), ("foot", (sg * 0.6 + z, y_hip + 3.0))):
      joints[k].append((px, py))
  lean = np.deg2rad(LEAN_MAX_DEG * posture[:, _P["lean"]])
  lc, ls = np.cos(lean), np.sin(lean)

  def place(points):  # list of (x, y) in the torso frame -> (B, len, 2) pixels
    out = []
    for px, py in points:
      rx, ry = _rot(px, py, lc, ls)
      out.append(np.stack([neck[:, 0] + unit * rx, neck[:, 1] + unit * ry], -1))
    return np.stack(out, 1)

  g = {"unit": unit, "patch": np.stack([row0, col0], 1).astype(np.int64), "neck": neck,
       "tilt": TILT_MAX_DEG * posture[:, _P["head_tilt"]], "torso": place(torso)}
  g.update({k: place(v) for k, v in joints.items()})
  # Extent: the hair ellipse of the head (centre v0 - 0.08 in [-0.26, -0.18], radii <= (0.83, 1.07) for
  # every identity, so centre -0.22 and radii + 0.04 bound it), rotated about the neck; the chin and
  # the neck below it (|u| <= 0.4 from v = 0.8 to NECK_V); the body parts with their radii.
  th = np.deg2rad(g["tilt"])
  c, sn = np.cos(th), np.sin(th)
  at = lambda v: np.stack([neck[:, 0] - unit * sn * (v - NECK_V), neck[:, 1] + unit * c * (v - NECK_V)], 1)
  centre = at(-0.22)
  half = unit[:, None] * np.stack([np.sqrt((0.87 * c) ** 2 + (1.11 * sn) ** 2),
                                   np.sqrt((0.87 * sn) ** 2 + (1.11 * c) ** 2)], 1)
  chin, r_neck = np.stack([at(0.8), neck], 1), (unit * 0.4)[:, None]
  lo = [centre - half, chin.min(1) - r_neck, g["torso"].min(1)]
  hi = [centre + half, chin.max(1) + r_neck, g["torso"].max(1)]
  for k, r in (("shoulder", _R_UPPER), ("elbow", _R_UPPER), ("hand", max(_R_HAND, _R_FORE)),
               ("hip", _R_LEG), ("foot", _R_LEG)):
    lo.append(g[k].min(1) - (unit * r)[:, None])
    hi.append(g[k].max(1) + (unit * r)[:, None])
  lo, hi = np.min(lo, 0), np.max(hi, 0)
  box = np.concatenate([np.floor(lo - 0.5), np.ceil(hi + 0.5)], 1)
  box = np.clip(box, 0, size)
  box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 1)  # at least one pixel (a person off the image)
  box[:, :2] = np.minimum(box[:, :2], box[:, 2:] - 1)
  g["box"] = box
  return g


# ----------------------------------------------------------------------------------------------
# Rasterisation (whole-image, vectorised over the batch; lengths in pixels).
# ----------------------------------------------------------------------------------------------


def _cov(d):
  """Coverage of {d < 0} by a one-pixel box filter, d a distance in pixels."""
  return np.clip(0.5 - d, 0.0, 1.0)


def _paint(buf, alpha, colour):
  """Composites colour (B, 3) over buf (B, H, W, 3) with alpha (B, H, W)."""
  buf += alpha[..., None] * (colour[:, None, None, :].astype(np.float32) - buf)


def _e(x):
  return np.asarray(x, np.float32)[:, None, None]


def _capsule(xs, ys, a, b, r):
  """Signed distance to the capsule of radius r (B,) around the segments a-b ((B, 2) each)."""
  ax, ay, bx, by = _e(a[:, 0]), _e(a[:, 1]), _e(b[:, 0]), _e(b[:, 1])
  px, py, dx, dy = xs - ax, ys - ay, bx - ax, by - ay
  h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy + 1e-6), 0.0, 1.0)
  px = px - h * dx
  py = py - h * dy
  return np.sqrt(px * px + py * py) - _e(r)


def _polygon(xs, ys, pts):
  """Signed distance (exact inside, to the edge lines outside) to convex polygons pts (B, K, 2)."""
  k = pts.shape[1]
  cx, cy = pts[:, :, 0].mean(1), pts[:, :, 1].mean(1)
  d = None
  for i in range(k):
    a, b = pts[:, i], pts[:, (i + 1) % k]
    nx, ny = b[:, 1] - a[:, 1], a[:, 0] - b[:, 0]
    norm = np.sqrt(nx * nx + ny * ny) + 1e-9
    sign = np.where((cx - a[:, 0]) * nx + (cy - a[:, 1]) * ny > 0, -1.0, 1.0) / norm  # outwards
    di = (xs - _e(a[:, 0])) * _e(nx * sign) + (ys - _e(a[:, 1])) * _e(ny * sign)
    d = di if d is None else np.maximum(d, di)
  return d


class _Window:
  """The pixels of each example's box [lo - 1, hi + 1] (lo, hi: (B, 2) x, y), gathered from the canvas.

  Painters evaluate coverage on ``x`` (B, 1, w) / ``y`` (B, h, 1) and paint into ``buf``; ``commit``
  writes it back. Every shape painted must have zero coverage outside its box plus half a pixel, so
  the result is the same as painting the whole image (only cheaper).
  """

  def __init__(self, canvas, lo, hi):
    b, size = canvas.shape[0], canvas.shape[1]
    ext = np.maximum(np.asarray(hi, np.float64) - lo, 0)
    wx = int(min(size, math.ceil(float(ext[:, 0].max(initial=0))) + 3))
    wy = int(min(size, math.ceil(float(ext[:, 1].max(initial=0))) + 3))
    c0 = np.clip(np.floor(lo[:, 0]) - 1, 0, size - wx).astype(np.int64)
    r0 = np.clip(np.floor(lo[:, 1]) - 1, 0, size - wy).astype(np.int64)
    cols = c0[:, None, None] + np.arange(wx)[None, None, :]
    rows = r0[:, None, None] + np.arange(wy)[None, :, None]
    self.idx = (np.arange(b)[:, None, None] * size + rows) * size + cols
    self.flat = canvas.reshape(-1, 3)
    self.buf = self.flat[self.idx]
    self.x, self.y = cols.astype(np.float32), rows.astype(np.float32)

  def commit(self):
    self.flat[self.idx] = self.buf


def _paint_outlined(canvas, lo, hi, dist, colour, outline, inset=0.9):
  """Paints the shape {dist < 0} (dist(x, y) -> (B, h, w) pixels) in colour with an outline of width
  ``inset`` pixels; lo, hi bound the shape."""
  w = _Window(canvas, lo, hi)
  d = dist(w.x, w.y)
  _paint(w.buf, _cov(d), outline)
  _paint(w.buf, _cov(d + inset), colour)
  w.commit()


def _paint_capsule(canvas, a, b, r, colour, outline, inset=0.9):
  """Capsule of radius r (B,) around the segment a-b ((B, 2) pixels)."""
  lo = np.minimum(a, b) - r[:, None]
  hi = np.maximum(a, b) + r[:, None]
  _paint_outlined(canvas, lo, hi, lambda x, y: _capsule(x, y, a, b, r), colour, outline, inset)


def _paint_body(canvas, g, shirt, trousers, skin):
  """Legs, torso, arms and hands of people g on canvas (B, S, S, 3)."""
  u = g["unit"]
  sleeve, shirt_line = np.minimum(shirt * 1.08, 1.0), shirt * 0.55
  for side in (0, 1):
    _paint_capsule(canvas, g["hip"][:, side], g["foot"][:, side], u * _R_LEG, trousers, trousers * 0.6)
  _paint_outlined(canvas, g["torso"].min(1), g["torso"].max(1), lambda x, y: _polygon(x, y, g["torso"]),
                  shirt, shirt_line)
  for side in (0, 1):
    _paint_capsule(canvas, g["shoulder"][:, side], g["elbow"][:, side], u * _R_UPPER, sleeve, shirt_line)
    _paint_capsule(canvas, g["elbow"][:, side], g["hand"][:, side], u * _R_FORE, sleeve, shirt_line)
    _paint_capsule(canvas, g["hand"][:, side], g["hand"][:, side], u * _R_HAND, skin, skin * 0.7, 0.8)


def _face_pose(g, f_px):
  """render_faces pose that puts canonical (0, NECK_V) at the middle of the patch's bottom edge."""
  th = np.deg2rad(g["tilt"])
  k = g["unit"]
  return {"angle": g["tilt"].astype(np.float32), "scale": (2 * k / f_px).astype(np.float32),
          "shift_x": (2 * k * np.sin(th) * NECK_V / f_px).astype(np.float32),
          "shift_y": (1 - 2 * k * np.cos(th) * NECK_V / f_px).astype(np.float32)}


def _render_heads(action_units, identity, pose, f_px):
  """(K, W) float32: heads on black and on white, so that head-over-x = K + (W - K) * x."""
  n = action_units.shape[0]
  out = []
  for value in (0.0, 1.0):
    scene = {k: np.zeros(n, np.float32) for k in synthetic.SCENE_RANGES}
    for k in ("bg_r", "bg_g", "bg_b", "bg_grey"):
      scene[k][:] = value
    scene["contrast"][:] = 1.0
    img, _ = synthetic.render_faces(action_units, identity, pose, f_px, 3, scene)
    out.append(img.astype(np.float32) / 255)
  return out[0], np.clip(out[1] - out[0], 0.0, 1.0)


def _composite_heads(canvas, patch, premult, transmit):
  """canvas[b, r0 + i, c0 + j] = premult + transmit * canvas[...] inside the image."""
  b, size = canvas.shape[0], canvas.shape[1]
  f_px = premult.shape[1]
  rows = patch[:, 0, None, None] + np.arange(f_px)[None, :, None]
  cols = patch[:, 1, None, None] + np.arange(f_px)[None, None, :]
  inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
  idx = (np.arange(b)[:, None, None] * size + np.clip(rows, 0, size - 1)) * size + np.clip(cols, 0, size - 1)
  flat = canvas.reshape(-1, 3)
  new = premult + transmit * flat[idx]
  flat[idx[inside]] = new[inside]


def _paint_background(canvas, mood, bg_u):
  """Wall (colour from warmth, vertical gradient), floor below a horizon, NUM_SHAPES clutter slots."""
  size = canvas.shape[1]
  w, c = mood[:, _M["warmth"]].astype(np.float64), mood[:, _M["clutter"]].astype(np.float64)
  wp, wn = np.clip(w, 0, 1)[:, None], np.clip(-w, 0, 1)[:, None]
  base = _NEUTRAL + wp * (_WARM - _NEUTRAL) + wn * (_COLD - _NEUTRAL) + 0.08 * (bg_u[:, 0:3] - 0.5)
  ys = np.arange(size, dtype=np.float32)[None, :, None]
  wall = (base * (0.9 + 0.1 * bg_u[:, 4:5])).astype(np.float32)
  floor = (base * (0.55 + 0.1 * bg_u[:, 5:6])).astype(np.float32)
  horizon = size * (0.6 + 0.15 * bg_u[:, 3])
  rows = wall[:, None, :] * (1.05 - 0.15 * ys[..., 0, None] / size)  # (B, S, 3)
  a = _cov(_e(horizon)[..., 0] - ys[..., 0])[..., None]  # (B, S, 1) floor coverage of each row
  rows += a * (floor[:, None, :] - rows)
  canvas[...] = rows[:, :, None, :]
  count = np.rint(NUM_SHAPES * c)
  contrast = 0.1 + 0.5 * c
  for i in range(NUM_SHAPES):
    q = bg_u[:, 6 + 8 * i: 14 + 8 * i]
    centre = size * q[:, 1:3]
    half = np.stack([size * (0.025 + 0.125 * q[:, 3]), size * (0.025 + 0.125 * q[:, 4])], 1)
    half[:, 1] = np.where(q[:, 0] < 0.5, half[:, 1], half[:, 0])  # discs: radius half[:, 0]
    colour = np.clip(base + contrast[:, None] * (2 * q[:, 5:8] - 1), 0, 1).astype(np.float32)
    win = _Window(canvas, centre - half, centre + half)
    dx, dy = win.x - _e(centre[:, 0]), win.y - _e(centre[:, 1])
    rect = np.maximum(np.abs(dx) - _e(half[:, 0]), np.abs(dy) - _e(half[:, 1]))
    disc = np.sqrt(dx * dx + dy * dy) - _e(half[:, 0])
    d = np.where(_e(q[:, 0]) < 0.5, rect, disc)
    _paint(win.buf, _cov(d) * _e(i < count), colour)
    win.commit()


# ----------------------------------------------------------------------------------------------
# Sampling and rendering.
# ----------------------------------------------------------------------------------------------


def _level(u_band, u_in, bands):
  lo, hi, p = (np.array(x, np.float64) for x in zip(*bands))
  k = np.minimum(np.searchsorted(np.cumsum(p), u_band, side="right"), len(bands) - 1)
  return lo[k] + (hi[k] - lo[k]) * u_in


def _draw_face(rng):
  label = min(int(np.searchsorted(np.cumsum(_FACE_PRIOR), rng.random(), side="right")),
              len(synthetic.CLASS_NAMES) - 1)
  inten = rng.uniform(*synthetic.INTENSITY_RANGE)
  mirror = rng.random() < 0.5
  opt = rng.random(synthetic.NUM_AUS) * (rng.random(synthetic.NUM_AUS) < synthetic.OPTIONAL_PROB)
  jit = np.clip(rng.normal(0, synthetic.AU_JITTER_STD, synthetic.NUM_AUS), -synthetic.AU_JITTER_MAX,
                synthetic.AU_JITTER_MAX)
  return label, inten, mirror, opt, jit, rng.random(_N_ID)


def _faces(draws):
  """Face draws -> label, intensity (0 for neutral), action units, identity."""
  n = len(draws)
  label = np.array([d[0] for d in draws], np.int64).reshape(n)
  inten = np.array([d[1] for d in draws], np.float32).reshape(n)
  inten[label == _FACE["neutral"]] = 0.0
  col = lambda j, k: np.array([d[j] for d in draws], np.float32).reshape(n, k)
  au = synthetic.expression_action_units(label, inten, np.array([d[2] for d in draws], bool).reshape(n),
                                         col(3, synthetic.NUM_AUS), col(4, synthetic.NUM_AUS))
  ident = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES, col(5, _N_ID))
  return label, inten, au, ident


def _split_id(split) -> int:
  return synthetic._split_id(split)  # pylint: disable=protected-access


def draw_scenes(seed: int, split, start: int, count: int, size: int = 96) -> Dict[str, object]:
  """All random draws of examples ``start .. start + count - 1`` (see the module docstring).

  Returns a dict: ``label`` int64 (B,), ``intensity`` float32 (B,), ``action_units`` (B, NUM_AUS),
  ``identity`` (dict of (B,)), ``posture`` float32 (B, 7), ``scene_mood`` float32 (B, 4),
  ``person_u`` (B, 13), ``background_u`` (B, 70), ``noise`` float32 (B, size, size, 3) U[0, 1) (the
  last draw of each example: ``size`` changes nothing else), and the
  companion's ``companion_label`` / ``_intensity`` / ``_action_units`` / ``_identity`` /
  ``_posture`` (B, 7) / ``_u`` (B, 17), drawn for every example (used where scene_mood companion = 1).
  Example i only depends on (seed, split, i). Edit ``posture`` / ``scene_mood`` and call
  ``render_scenes`` to render the same scene with other parameters.
  """
  for name, val, lo in (("seed", seed, 0), ("start", start, 0), ("count", count, 0), ("size", size, 1)):
    if isinstance(val, bool) or int(val) != val or val < lo:
      raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
  sid = _split_id(split)
  faces, cfaces, post, mood, pers, bg, comp, cpost, noise = ([] for _ in range(9))
  for i in range(start, start + count):
    rng = np.random.default_rng([int(seed), sid, int(i), 2])
    faces.append(_draw_face(rng))
    arms = min(int(np.searchsorted(np.cumsum(ARMS_PRIOR), rng.random(), side="right")), 3)
    v = rng.random(6)
    tilt = _level(v[2], v[3], LEVELS["head_tilt"]) * (1.0 if v[4] < 0.5 else -1.0)
    p = np.zeros(len(POSTURE_NAMES))
    p[arms] = 1.0
    p[4:] = _level(v[0], v[1], LEVELS["slump"]), tilt, 2 * v[5] - 1
    post.append(p)
    v = rng.random(7)
    mood.append([_level(v[0], v[1], LEVELS["warmth"]), _level(v[2], v[3], LEVELS["brightness"]),
                 _level(v[4], v[5], LEVELS["clutter"]), float(v[6] < COMPANION_PROB)])
    pers.append(rng.random(_N_PERSON))
    bg.append(rng.random(_N_BACKGROUND))
    cfaces.append(_draw_face(rng))
    v = rng.random(3)
    cp = np.zeros(len(POSTURE_NAMES))
    cp[int(v[0] < 0.5)] = 1.0  # down or open
    cp[4:] = 0.5 * v[1], 0.4 * v[2] - 0.2, 0.0
    cpost.append(cp)
    comp.append(rng.random(_N_COMPANION))
    noise.append(rng.random((size, size, 3), dtype=np.float32))
  label, inten, au, ident = _faces(faces)
  c_label, c_inten, c_au, c_ident = _faces(cfaces)
  arr = lambda x, k: np.array(x, np.float64).reshape(count, k)
  return {"label": label, "intensity": inten, "action_units": au, "identity": ident,
          "posture": arr(post, len(POSTURE_NAMES)).astype(np.float32),
          "scene_mood": arr(mood, len(SCENE_MOOD_NAMES)).astype(np.float32),
          "person_u": arr(pers, _N_PERSON), "background_u": arr(bg, _N_BACKGROUND),
          "noise": (np.stack(noise) if count else np.zeros((0, size, size, 3), np.float32)),
          "companion_label": c_label, "companion_intensity": c_inten, "companion_action_units": c_au,
          "companion_identity": c_ident, "companion_posture": arr(cpost, len(POSTURE_NAMES)).astype(np.float32),
          "companion_u": arr(comp, _N_COMPANION)}


def _shirt_trousers_skin(person_u, identity):
  shirt = 0.1 + 0.8 * person_u[:, 7:10]
  trousers = 0.05 + 0.5 * person_u[:, 10:13]
  skin = synthetic._colours(identity, 3)["skin"]  # pylint: disable=protected-access
  return shirt.astype(np.float32), trousers.astype(np.float32), skin.astype(np.float32)


def render_scenes(params: Mapping[str, object], size: int = 96) -> Tuple[np.ndarray, np.ndarray]:
  """Renders ``draw_scenes`` output; returns (context uint8 (B, S, S, 3), box float64 (B, 4)).

  ``box`` is the main person's x1, y1, x2, y2 in whole-pixel edges (``person_geometry``).
  """
  if int(size) != size or size < MIN_SIZE:
    raise ValueError(f"size must be an integer >= {MIN_SIZE} (heads of at least 8 px), got {size!r}")
  size = int(size)
  label, posture, mood = _check_labels(params["label"], params["posture"], params["scene_mood"])
  n = label.shape[0]
  noise = np.asarray(params["noise"], np.float32)
  if noise.shape != (n, size, size, 3):
    raise ValueError(f"noise must have shape {(n, size, size, 3)} (draw_scenes with size={size}), got "
                     f"{noise.shape}")
  if n == 0:
    return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 4))
  f_px = head_patch_size(size)
  g = person_geometry(posture, params["person_u"], size)
  has = np.nonzero(mood[:, _M["companion"]] > 0.5)[0]
  sub = lambda d: {k: np.asarray(x)[has] for k, x in d.items()}
  cg = person_geometry(np.asarray(params["companion_posture"])[has], np.asarray(params["companion_u"])[has],
                       size, companion_of=sub(g))
  # Heads: main people and companions in one batch.
  ident = {k: np.concatenate([np.asarray(params["identity"][k]), np.asarray(params["companion_identity"][k])[has]])
           for k in synthetic.IDENTITY_RANGES}
  au = np.concatenate([np.asarray(params["action_units"]), np.asarray(params["companion_action_units"])[has]])
  pose = {k: np.concatenate([a, b]) for (k, a), b in zip(_face_pose(g, f_px).items(),
                                                         _face_pose(cg, f_px).values())}
  premult, transmit = _render_heads(au, ident, pose, f_px)
  canvas = np.empty((n, size, size, 3), np.float32)
  _paint_background(canvas, mood, np.asarray(params["background_u"], np.float64))
  if has.size:
    sub_canvas = canvas[has]
    colours = _shirt_trousers_skin(np.asarray(params["companion_u"])[has],
                                   {k: v[n:] for k, v in ident.items()})
    _paint_body(sub_canvas, cg, *colours)
    _composite_heads(sub_canvas, cg["patch"], premult[n:], transmit[n:])
    canvas[has] = sub_canvas
  _paint_body(canvas, g, *_shirt_trousers_skin(np.asarray(params["person_u"]), {k: v[:n] for k, v in
                                                                                ident.items()}))
  _composite_heads(canvas, g["patch"], premult[:n], transmit[:n])
  # Light: gain 0.3 .. 1.1 from brightness, tinted by warmth; then pixel noise.
  w, b = mood[:, _M["warmth"]], mood[:, _M["brightness"]]
  gain = (0.3 + 0.8 * b)[:, None] * (1 + 0.08 * w[:, None] * np.array([1.0, 0.0, -1.0], np.float32))
  canvas *= gain[:, None, None, :].astype(np.float32)
  canvas += np.float32(NOISE_STD * math.sqrt(12.0)) * (noise - 0.5)
  return np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8), g["box"]


def crop_bodies(context: np.ndarray, box: np.ndarray, body_size: int) -> np.ndarray:
  """(B, body_size, body_size, 3) uint8: each context cut at its whole-pixel box and resized with
  ``emotic.crop_body`` + ``emotic.resize`` (PIL bilinear, antialiased when shrinking)."""
  out = np.empty((context.shape[0], body_size, body_size, 3), np.uint8)
  for i in range(context.shape[0]):
    out[i] = emotic.resize(emotic.crop_body(context[i], box[i]), body_size)
  return out


def sample_scenes(seed: int, split, start: int, count: int, context_size: int = 96, body_size: int = 64,
                  chunk: int = 256) -> Dict[str, np.ndarray]:
  """Records of examples ``start .. start + count - 1`` of ``split`` (batched arrays, keys as the TFDS
  ``synthetic_expressions/scenes`` features: context, body, categories, vad, bbox, gender, age,
  image_id, person, id, label, posture, scene_mood). Example i only depends on (seed, split, i)."""
  for name, val, lo in (("body_size", body_size, 8), ("chunk", chunk, 1)):
    if isinstance(val, bool) or int(val) != val or val < lo:
      raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
  parts = []
  for a in range(start, start + count, chunk):
    p = draw_scenes(seed, split, a, min(chunk, start + count - a), context_size)
    context, box = render_scenes(p, context_size)
    parts.append({
        "context": context, "body": crop_bodies(context, box, body_size),
        "categories": scene_categories(p["label"], p["posture"], p["scene_mood"]),
        "vad": scene_vad(p["label"], p["intensity"], p["posture"], p["scene_mood"]),
        "bbox": (box / context_size).astype(np.float32), "label": p["label"], "posture": p["posture"],
        "scene_mood": p["scene_mood"]})
  keys = ("context", "body", "categories", "vad", "bbox", "label", "posture", "scene_mood")
  shapes = {"context": (context_size, context_size, 3), "body": (body_size, body_size, 3),
            "categories": (NUM_CATEGORIES,), "vad": (3,), "bbox": (4,), "label": (),
            "posture": (len(POSTURE_NAMES),), "scene_mood": (len(SCENE_MOOD_NAMES),)}
  dtypes = {"context": np.uint8, "body": np.uint8, "label": np.int64}
  out = {k: (np.concatenate([q[k] for q in parts]) if parts else
             np.zeros((0,) + shapes[k], dtypes.get(k, np.float32))) for k in keys}
  ids = np.arange(start, start + count, dtype=np.int64)
  split_name = split if isinstance(split, str) else str(int(split))
  out.update(gender=np.full(count, emotic.UNKNOWN, np.int32), age=np.full(count, emotic.UNKNOWN, np.int32),
             person=np.zeros(count, np.int32), id=ids,
             image_id=np.array([f"synthetic_scenes/{split_name}/{i:06d}" for i in ids], dtype=object))
  return out
