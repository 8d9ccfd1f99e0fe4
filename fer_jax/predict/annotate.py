"""``--annotate DIR``: the inputs drawn over with each face's box, landmarks, track id and label.

Images are written in their own format (JPEG at quality 95), videos re-encoded as MP4 (H.264 by libx264
when the PyAV wheel has it, else MPEG-4 part 2) at the input frame rate divided by ``every``, one output
frame per processed frame. Output paths mirror the inputs under DIR: a file given directly keeps its name,
a file found in a folder keeps its path relative to that folder, under the folder's name.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from fer_jax.predict.sources import Frame

COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))
VIDEO_CODECS = ("libx264", "mpeg4")


def mirror_name(source: str, inputs: Sequence[str]) -> str:
  """The path of ``source`` relative to the output folder (see the module docstring)."""
  src = os.path.abspath(source)
  for item in inputs:
    root = os.path.abspath(item)
    if os.path.isdir(root) and src.startswith(root.rstrip(os.sep) + os.sep):
      return os.path.join(os.path.basename(root.rstrip(os.sep)) or "input", os.path.relpath(src, root))
  return os.path.basename(src)


def video_codec() -> str:
  """The first encoder of ``VIDEO_CODECS`` this PyAV build has."""
  import av  # pylint: disable=import-outside-toplevel
  for name in VIDEO_CODECS:
    try:
      av.codec.Codec(name, "w")
      return name
    except (av.error.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
      continue
  raise RuntimeError(f"this PyAV build has none of the video encoders {VIDEO_CODECS}")


def _font(size: int):
  from PIL import ImageFont  # pylint: disable=import-outside-toplevel
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError, ImportError):
    return ImageFont.load_default()


def draw_faces(image: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """uint8 (H, W, 3) -> a copy with each ``ok`` row's box, 5 landmarks and ``#track label p`` drawn."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  img = Image.fromarray(image)
  draw = ImageDraw.Draw(img)
  h, w = image.shape[:2]
  width = max(1, round(min(h, w) / 200))
  font = _font(max(10, round(min(h, w) / 30)))
  for row in rows:
    if row.get("status") != "ok":
      continue
    colour = COLOURS[int(row["track"]) % len(COLOURS)] if row.get("track", -1) >= 0 else COLOURS[0]
    box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
    draw.rectangle(box, outline=colour, width=width)
    r = width + 1
    for name in ("le", "re", "nose", "lm", "rm"):
      x, y = row.get(f"{name}_x"), row.get(f"{name}_y")
      if x is not None and y is not None and np.isfinite(x) and np.isfinite(y):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    label = row.get("label") or ""
    p = row.get(f"p_{label}")
    text = f"#{row['track']} {label}" + (f" {p:.2f}" if p is not None else "")
    tb = draw.textbbox((box[0], box[1]), text, font=font)
    top = box[1] - (tb[3] - tb[1]) - 2 * width
    if top < 0:  # no room above the box: inside its top edge (below it could cover a face underneath)
      top = max(box[1], 0) + width
    tb = draw.textbbox((box[0], top), text, font=font)
    draw.rectangle(tb, fill=colour)
    draw.text((box[0], top), text, fill=(0, 0, 0), font=font)
  return np.asarray(img)


class Annotator:
  """Receives processed frames in order (``add``) and writes the annotated images / videos under
  ``out_dir``; ``close`` finishes the open video."""

  def __init__(self, out_dir: str, inputs: Sequence[str], *, every: int = 1):
    self.out_dir, self.inputs, self.every = out_dir, list(inputs), every
    self.written: list[str] = []
    self._video: Optional[tuple[str, Any, Any]] = None  # (source, container, stream)
    os.makedirs(out_dir, exist_ok=True)

  def path_for(self, source: str, video: bool) -> str:
    rel = mirror_name(source, self.inputs)
    if video:
      rel = os.path.splitext(rel)[0] + ".mp4"
    path = os.path.join(self.out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def add(self, frame: Frame, rows: Sequence[Mapping[str, Any]]) -> None:
    drawn = draw_faces(frame.image, rows)
    if frame.frame_index is None:
      self._close_video()
      self._write_image(frame.source, drawn)
    else:
      if self._video is None or self._video[0] != frame.source:
        self._open_video(frame.source, drawn.shape)
      self._encode(drawn)

  def _write_image(self, source: str, image: np.ndarray) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    path = self.path_for(source, video=False)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
      path = os.path.splitext(path)[0] + ".png"
    Image.fromarray(image).save(path, **({"quality": 95} if ext in (".jpg", ".jpeg") else {}))
    self.written.append(path)

  def _open_video(self, source: str, shape: tuple[int, ...]) -> None:
    import av  # pylint: disable=import-outside-toplevel
    self._close_video()
    rate = None
    try:
      with av.open(source) as src:
        rate = src.streams.video[0].average_rate
    except (av.error.FFmpegError, OSError, IndexError):
      pass
    rate = Fraction(rate or 25) / self.every
    rate = rate.limit_denominator(1001) if rate > 0 else Fraction(25)
    path = self.path_for(source, video=True)
    container = av.open(path, "w")
    stream = container.add_stream(video_codec(), rate=rate)
    stream.width, stream.height = shape[1] + shape[1] % 2, shape[0] + shape[0] % 2  # yuv420p: even sides
    stream.pix_fmt = "yuv420p"
    self._video = (source, container, stream)
    self.written.append(path)

  def _encode(self, image: np.ndarray) -> None:
    import av  # pylint: disable=import-outside-toplevel
    _, container, stream = self._video
    pad = ((0, stream.height - image.shape[0]), (0, stream.width - image.shape[1]), (0, 0))
    if pad[0][1] < 0 or pad[1][1] < 0 or pad[0][1] > 1 or pad[1][1] > 1:  # the size changed mid-video
      from PIL import Image  # pylint: disable=import-outside-toplevel
      image = np.asarray(Image.fromarray(image).resize((stream.width, stream.height), Image.Resampling.BILINEAR))
    elif any(p[1] for p in pad):
      image = np.pad(image, pad, mode="edge")
    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
      container.mux(packet)

  def _close_video(self) -> None:
    if self._video is not None:
      _, container, stream = self._video
      self._video = None
      for packet in stream.encode():
        container.mux(packet)
      container.close()

  def close(self) -> None:
    self._close_video()
