"""uint8 faces for export calibration and checks: FER2013 CSV rows, a folder of images, or synthetic faces.

Nothing here needs TensorFlow; the FER2013 reader streams the CSV and stops once it has enough rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from typing import Tuple

import numpy as np

FER2013_HEADER = ("emotion", "pixels", "Usage")
FER2013_USAGES = ("Training", "PublicTest", "PrivateTest")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif", ".tif", ".tiff", ".webp")


def _open_text(path: str):
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), newline="")
  return open(path, newline="")


def read_fer2013(path: str, usage: str, count: int) -> Tuple[np.ndarray, np.ndarray]:
  """The first ``count`` rows of ``usage`` in a FER2013 ``fer2013.csv[.gz]``, in file order.

  Returns (faces uint8 (n, 48, 48, 1), labels int64 (n,)); n < count only when the file has fewer rows.
  """
  if usage not in FER2013_USAGES:
    raise ValueError(f"usage={usage!r}; expected one of {FER2013_USAGES}")
  if not isinstance(count, int) or count < 1:
    raise ValueError(f"count={count!r}; expected a positive int")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No FER2013 CSV file {path!r}")
  faces, labels = [], []
  with _open_text(path) as f:
    reader = csv.reader(f)
    header = tuple(next(reader, ()))
    if header != FER2013_HEADER:
      raise ValueError(f"{path} line 1 is {list(header)[:5]}; expected the FER2013 header {list(FER2013_HEADER)}")
    for line, row in enumerate(reader, start=2):
      if len(row) != 3:
        raise ValueError(f"{path} line {line} has {len(row)} columns; expected 3 ({', '.join(FER2013_HEADER)})")
      if row[2].strip() != usage:
        continue
      pixels = np.array(row[1].split(), np.int64)
      if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path} line {line}: pixels has {pixels.size} values in "
                         f"[{pixels.min()}, {pixels.max()}]; expected 2304 (48x48) integers in 0..255")
      faces.append(pixels.astype(np.uint8).reshape(48, 48, 1))
      labels.append(int(row[0]))
      if len(faces) == count:
        break
  if not faces:
    raise ValueError(f"{path} has no {usage} rows")
  return np.stack(faces), np.asarray(labels, np.int64)


def read_image_folder(path: str, count: int, size: int, channels: int = 1) -> np.ndarray:
  """Up to ``count`` images of a folder (sorted by name), as uint8 (n, size, size, channels): grey (luma) or
  RGB, resized bilinearly to ``size`` x ``size`` when they are not already that size."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No image folder {path!r}")
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"Folder {path} holds no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
  out = []
  for name in names[:count]:
    try:
      with Image.open(os.path.join(path, name)) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
          im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, np.uint8)
    except OSError as e:
      raise ValueError(f"{os.path.join(path, name)} is not a readable image ({e})") from e
    out.append(a[..., None] if a.ndim == 2 else a)
  return np.stack(out)


def synthetic_faces(count: int, size: int = 48, channels: int = 1, seed: int = 0) -> np.ndarray:
  """``count`` faces of ``fer_jax.data.synthetic`` (its 'test' split), uint8 (count, size, size, channels)."""
  from fer_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  return synthetic.sample_examples(seed, "test", 0, count, size=size, channels=channels)["image"]


def load_faces(source: str, count: int, usage: str, size: int, channels: int = 1) -> np.ndarray:
  """Faces from a FER2013 CSV (``usage`` rows) or a folder of images, uint8 (n, H, W, C)."""
  if os.path.isdir(source):
    return read_image_folder(source, count, size, channels)
  if source.endswith((".csv", ".csv.gz")):
    return read_fer2013(source, usage, count)[0]
  if not os.path.exists(source):
    raise FileNotFoundError(f"No face source {source!r}; expected a FER2013 .csv[.gz] file or a folder of images")
  raise ValueError(f"Face source {source!r} is neither a FER2013 .csv / .csv.gz file nor a folder of images")
