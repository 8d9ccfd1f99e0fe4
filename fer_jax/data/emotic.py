"""EMOTIC constants and label / box helpers (NumPy and PIL only: importable without TensorFlow).

EMOTIC (Kosti, Alvarez, Recasens and Lapedriza, "Context Based Emotion Recognition using EMOTIC Dataset",
TPAMI 2019 / arXiv 2003.13401): people in natural scenes, each with a body box, any of 26 discrete
categories (multi-label), valence / arousal / dominance on a 1-10 scale, gender and age group. The
baseline (paper Sec. 5) reads two inputs per person: the whole image (the context) and the body crop.

Used by the TFDS builder (`tfds_builders/emotic`) and by models / evaluators that need the category
names or must preprocess new images the same way:

- `EMOTIC_CATEGORIES`: the 26 categories in the order of the paper's tables (alphabetical), the order
  of every 26-vector (`categories_to_multi_hot`, model heads, per-category AP).
- `scale_vad` / `unscale_vad`: the 1-10 ratings <-> [0, 1] as (v - 1) / 9.
- `gender_code` / `age_code`: annotation strings -> 0 / 1 (/ 2), -1 unknown.
- `clamp_box`, `crop_pixels`, `crop_body`, `normalise_box`, `resize`, `context_and_body`: the body box
  (x1, y1, x2, y2 in pixel edges) checked and clamped to the image, the body crop and the resized
  inputs (224 px context, 128 px body in Kosti et al.).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

# The 26 discrete categories, in the order of Kosti et al. (Table of per-category AP) and of the public
# baseline code (Tandon-A/emotic `cat`); index i of every 26-vector is EMOTIC_CATEGORIES[i].
EMOTIC_CATEGORIES = (
    'Affection', 'Anger', 'Annoyance', 'Anticipation', 'Aversion', 'Confidence', 'Disapproval',
    'Disconnection', 'Disquietment', 'Doubt/Confusion', 'Embarrassment', 'Engagement', 'Esteem',
    'Excitement', 'Fatigue', 'Fear', 'Happiness', 'Pain', 'Peace', 'Pleasure', 'Sadness', 'Sensitivity',
    'Suffering', 'Surprise', 'Sympathy', 'Yearning')
NUM_CATEGORIES = len(EMOTIC_CATEGORIES)
CATEGORY_INDEX = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}

VAD_NAMES = ('valence', 'arousal', 'dominance')
VAD_MIN, VAD_MAX = 1.0, 10.0  # The annotation scale (integers per annotator; means when combined).

GENDERS = ('Male', 'Female')  # Codes 0, 1.
AGES = ('Kid', 'Teenager', 'Adult')  # Codes 0, 1, 2.
UNKNOWN = -1
# Spellings read as "not annotated" (case-insensitive); any other unknown string is an error.
UNKNOWN_STRINGS = frozenset({'', 'unknown', 'na', 'n/a', 'none'})

CONTEXT_SIZE = 224  # Kosti et al.: the whole image resized to 224 x 224 ...
BODY_SIZE = 128  # ... and the body crop to 128 x 128.


def categories_to_multi_hot(names: Iterable[str]) -> np.ndarray:
  """(26,) float32 multi-hot of category names (a name listed twice counts once).

  Raises:
    ValueError: a name that is not one of `EMOTIC_CATEGORIES` (exact spelling; listed in the message).
  """
  out = np.zeros(NUM_CATEGORIES, np.float32)
  for name in names:
    index = CATEGORY_INDEX.get(name if isinstance(name, str) else None)
    if index is None:
      raise ValueError(f'unknown EMOTIC category {name!r}; expected one of {", ".join(EMOTIC_CATEGORIES)}')
    out[index] = 1.0
  return out


def multi_hot_to_categories(vector) -> tuple[str, ...]:
  """The category names where a (26,) vector is > 0.5, in `EMOTIC_CATEGORIES` order."""
  v = np.asarray(vector)
  if v.shape != (NUM_CATEGORIES,):
    raise ValueError(f'expected a ({NUM_CATEGORIES},) vector, got shape {v.shape}')
  return tuple(name for name, x in zip(EMOTIC_CATEGORIES, v) if x > 0.5)


def scale_vad(values: Sequence[float]) -> np.ndarray:
  """(valence, arousal, dominance) on the 1-10 scale -> (3,) float32 (v - 1) / 9 in [0, 1].

  Raises:
    ValueError: not 3 values, or a value that is not finite or outside [1, 10].
  """
  v = np.asarray(values, np.float64).reshape(-1)
  if v.shape != (3,):
    raise ValueError(f'expected 3 values (valence, arousal, dominance), got {v.size}')
  for name, x in zip(VAD_NAMES, v):
    if not (math.isfinite(x) and VAD_MIN <= x <= VAD_MAX):
      raise ValueError(f'{name} is {float(x)!r}, expected a number in [{VAD_MIN:g}, {VAD_MAX:g}]')
  return ((v - VAD_MIN) / (VAD_MAX - VAD_MIN)).astype(np.float32)


def unscale_vad(scaled) -> np.ndarray:
  """Inverse of `scale_vad`: [0, 1] -> 1 + 9 x (float32, any shape)."""
  return (VAD_MIN + (VAD_MAX - VAD_MIN) * np.asarray(scaled, np.float64)).astype(np.float32)


def _code(text, names: Sequence[str], what: str) -> int:
  if text is None:
    return UNKNOWN
  if not isinstance(text, str):
    raise ValueError(f'{what} is {text!r}, expected a string ({", ".join(names)} or unknown)')
  t = text.strip().lower()
  if t in UNKNOWN_STRINGS:
    return UNKNOWN
  for i, name in enumerate(names):
    if t == name.lower():
      return i
  raise ValueError(f'{what} is {text!r}, expected one of {", ".join(names)} (case-insensitive) or '
                   'unknown / empty')


def gender_code(text) -> int:
  """'Male' -> 0, 'Female' -> 1, None / '' / 'Unknown' / 'NA' -> -1 (case-insensitive); else ValueError."""
  return _code(text, GENDERS, 'gender')


def age_code(text) -> int:
  """'Kid' -> 0, 'Teenager' -> 1, 'Adult' -> 2, None / '' / 'Unknown' / 'NA' -> -1; else ValueError."""
  return _code(text, AGES, 'age')


def clamp_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
  """The body box (x1, y1, x2, y2), pixel edges, clamped to the image [0, width] x [0, height].

  A box that runs partly past the image is clamped (public EMOTIC loaders do the same); what is left
  must have positive width and height.

  Raises:
    ValueError: not 4 finite numbers, an inverted or empty box (x2 <= x1 or y2 <= y1), or a box with no
      area inside the image.
  """
  try:
    b = [float(v) for v in np.asarray(box, np.float64).reshape(-1)]
  except (TypeError, ValueError) as e:
    raise ValueError(f'body box {box!r} is not 4 numbers (x1, y1, x2, y2)') from e
  if len(b) != 4 or not all(math.isfinite(v) for v in b):
    raise ValueError(f'body box {box!r}: expected 4 finite numbers (x1, y1, x2, y2)')
  x1, y1, x2, y2 = b
  if not (x2 > x1 and y2 > y1):
    raise ValueError(f'body box {tuple(b)} is inverted or empty: expected x1 < x2 and y1 < y2 '
                     '(x1, y1, x2, y2 order)')
  c = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
       min(max(x2, 0.0), width), min(max(y2, 0.0), height))
  if not (c[2] > c[0] and c[3] > c[1]):
    raise ValueError(f'body box {tuple(b)} lies outside the {width}x{height} image')
  return c


def crop_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
  """Whole-pixel extent (c0, r0, c1, r1) of a clamped box: floor of x1, y1 and ceil of x2, y2
  (we chose to cover every pixel the box touches), at least one pixel."""
  x1, y1, x2, y2 = box
  c0, r0 = min(int(math.floor(x1)), width - 1), min(int(math.floor(y1)), height - 1)
  c1, r1 = max(int(math.ceil(x2)), c0 + 1), max(int(math.ceil(y2)), r0 + 1)
  return c0, r0, min(c1, width), min(r1, height)


def crop_body(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
  """image[r0:r1, c0:c1] of `crop_pixels` for a box already clamped by `clamp_box`."""
  h, w = image.shape[:2]
  c0, r0, c1, r1 = crop_pixels(box, w, h)
  return image[r0:r1, c0:c1]


def normalise_box(box: Sequence[float], width: int, height: int) -> np.ndarray:
  """(4,) float32 (x1 / width, y1 / height, x2 / width, y2 / height)."""
  x1, y1, x2, y2 = (float(v) for v in box)
  return np.array([x1 / width, y1 / height, x2 / width, y2 / height], np.float32)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) uint8 with PIL's bilinear filter (antialiased when shrinking;
  the aspect ratio is not kept, as in Kosti et al.). Returned as is when already that size."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
      (size, size), Image.Resampling.BILINEAR))


def context_and_body(image: np.ndarray, box: Sequence[float], context_size: int = CONTEXT_SIZE,
                     body_size: int = BODY_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(context, body, bbox) of one person: the whole image resized to `context_size`, the body crop
  (`clamp_box` + `crop_body`) resized to `body_size`, and the clamped box normalised by the image size.

  Raises ValueError for a box `clamp_box` rejects.
  """
  h, w = image.shape[:2]
  clamped = clamp_box(box, w, h)
  return (resize(image, context_size), resize(crop_body(image, clamped), body_size),
          normalise_box(clamped, w, h))
