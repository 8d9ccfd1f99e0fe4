"""Inputs of ``fer-jax predict``: files and folders -> frames (uint8 RGB arrays).

Images are read with Pillow (the first frame of a multi-frame GIF / TIFF), EXIF orientation applied, and
converted to uint8 RGB whatever their mode:
greyscale and palette images are expanded, CMYK / YCbCr / LAB converted by Pillow, 16-bit greyscale scaled
by 255 / 65535 (rounded), and images with transparency (RGBA, LA, palette with a transparent colour)
composited on WHITE (as a viewer shows them on a page). Images over ``MAX_PIXELS`` pixels are refused, not
downscaled, so that every box and landmark in the output is in the pixels of the file as it is.

Videos are decoded with PyAV (FFmpeg); ``every=N`` keeps frames 0, N, 2N, ... (indices count every decoded
frame), each with its time in seconds from its presentation timestamp (``index / average rate`` when a frame
has none). Rotation metadata of phone videos is not applied.

Unreadable input raises :class:`InputError`, whose message names the file and says what is wrong; a video
that breaks part-way raises it after yielding the frames decoded before the break.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                              ".pgm", ".pbm", ".pnm", ".jfif"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                              ".flv", ".3gp", ".ts", ".mts", ".ogv"})
MAX_PIXELS = 8192 * 8192  # larger images are refused (Pillow's own decompression-bomb limit is ~89 MP)
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on


class InputError(ValueError):
  """An input file cannot be read as an image or a video; the message names the file and the problem."""


class Frame(NamedTuple):
  """One image, or one frame of a video."""

  source: str  # the path as discovered
  frame_index: Optional[int]  # None for an image; 0-based decoded-frame index in a video
  time_s: Optional[float]  # None for an image; presentation time in seconds in a video
  image: np.ndarray  # uint8 (H, W, 3) RGB


def kind_of(path: str) -> Optional[str]:
  """'image' | 'video' by the file extension (case-insensitive), else None."""
  ext = os.path.splitext(path)[1].lower()
  if ext in IMAGE_EXTENSIONS:
    return "image"
  if ext in VIDEO_EXTENSIONS:
    return "video"
  return None


def discover(inputs: Sequence[str]) -> list[str]:
  """Input paths -> the files to process, in order.

  Files are kept as given (whatever their extension, and even if missing: :func:`iter_frames` then
  reports them); folders are expanded recursively to the image and video files in them (by extension),
  sorted; other files in folders are skipped. Duplicates are dropped (first occurrence kept).
  """
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  out: list[str] = []
  seen = set()
  for item in inputs:
    item = os.fspath(item)
    if os.path.isdir(item):
      found = []
      for root, dirs, files in os.walk(item):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in files if kind_of(f) is not None)
      paths = sorted(found)
    else:
      paths = [item]
    for p in paths:
      if p not in seen:
        seen.add(p)
        out.append(p)
  return out


def _to_rgb(img, path: str) -> np.ndarray:
  """Any Pillow image -> uint8 (H, W, 3) RGB (see the module docstring)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  mode = img.mode
  if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    a = np.asarray(img).astype(np.float64)
    grey = np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode == "F":
    raise InputError(f"{path}: a 32-bit floating-point image (mode 'F'); expected an 8- or 16-bit image")
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
  if has_alpha:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
  if mode != "RGB":
    img = img.convert("RGB")
  return np.asarray(img)


def read_image(path: str) -> np.ndarray:
  """An image file -> uint8 (H, W, 3) RGB, EXIF orientation applied. Raises :class:`InputError`."""
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        w, h = img.size
        if w * h > MAX_PIXELS:
          raise InputError(f"{path}: {w}x{h} = {w * h} pixels is over the limit of {MAX_PIXELS} "
                           "(fer_jax.predict.sources.MAX_PIXELS); downscale the image first")
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img, path)
  except InputError:
    raise
  except FileNotFoundError as e:
    raise InputError(f"{path}: no such file") from e
  except IsADirectoryError as e:
    raise InputError(f"{path}: is a directory, expected an image or video file") from e
  except UnidentifiedImageError as e:
    raise InputError(f"{path}: not an image file Pillow can read") from e
  except Image.DecompressionBombError as e:
    raise InputError(f"{path}: too many pixels ({e})") from e
  except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
    raise InputError(f"{path}: unreadable or truncated image ({type(e).__name__}: {e})") from e
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
    raise InputError(f"{path}: decoded to shape {rgb.shape}; expected (H, W, 3)")
  return np.ascontiguousarray(rgb, dtype=np.uint8)


def _open_video(path: str):
  import av  # pylint: disable=import-outside-toplevel
  try:
    container = av.open(path)
  except FileNotFoundError as e:
    raise InputError(f"{path}: no such file") from e
  except av.error.EOFError as e:
    raise InputError(f"{path}: empty or truncated video, no decodable frames (FFmpeg met the end of the file "
                     "while reading its header)") from e
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise InputError(f"{path}: not a video file FFmpeg can open ({type(e).__name__}: {e})") from e
  if not container.streams.video:
    container.close()
    raise InputError(f"{path}: has no video stream")
  return container


def _iter_video(path: str, every: int) -> Iterator[Frame]:
  import av  # pylint: disable=import-outside-toplevel
  container = _open_video(path)
  index = -1
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate) if stream.average_rate else None
    try:
      for frame in container.decode(stream):
        index += 1
        if index % every:
          continue
        if frame.pts is not None and frame.time_base is not None:
          t = float(frame.pts * frame.time_base)
        elif rate:
          t = index / rate
        else:
          t = None
        yield Frame(path, index, t, np.ascontiguousarray(frame.to_ndarray(format="rgb24")))
    except av.error.EOFError:  # FFmpeg's end of file on an empty stream: the same as no frames
      pass
    except (av.error.FFmpegError, OSError, ValueError) as e:
      where = f"after {index} decoded frame(s)" if index >= 0 else "before any frame"
      raise InputError(f"{path}: corrupt video stream, decoding stopped {where} "
                       f"({type(e).__name__}: {e})") from e
  finally:
    container.close()
  if index < 0:
    raise InputError(f"{path}: the video has no decodable frames")


def iter_frames(path: str, every: int = 1) -> Iterator[Frame]:
  """The frames of an image (one, ``frame_index`` None) or a video (every ``every``-th).

  A file with a video extension is decoded as a video; any other file is read as an image, and if
  Pillow cannot identify it, tried as a video. Raises :class:`InputError` for missing, unreadable or
  corrupt input (for a video possibly after yielding the frames before the damage).
  """
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every={every!r}; expected a positive int")
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory; pass it to discover() to expand it")
  if kind_of(path) == "video":
    yield from _iter_video(path, every)
    return
  try:
    image = read_image(path)
  except InputError as e:
    if kind_of(path) == "image" or "not an image" not in str(e):
      raise
    try:
      container = _open_video(path)
    except InputError:
      raise InputError(f"{path}: neither an image Pillow can read nor a video FFmpeg can open") from None
    container.close()
    yield from _iter_video(path, every)
    return
  yield Frame(path, None, None, image)


def count_frames(path: str, every: int = 1) -> Optional[int]:
  """Frames :func:`iter_frames` will yield, if cheap to tell: 1 for an image, the container's frame
  count for a video (None when the container does not say, or the file cannot be opened)."""
  if kind_of(path) != "video":
    return 1
  try:
    container = _open_video(path)
  except InputError:
    return None
  try:
    n = container.streams.video[0].frames
  finally:
    container.close()
  return (n + every - 1) // every if n else None
