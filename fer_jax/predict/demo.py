r"""Demo inputs for ``fer-jax predict`` / ``explain`` that need no dataset: photos and a video of rendered faces.

    python -m fer_jax.predict.demo --out_dir=runs/predict_demo     # (make predict-demo)

Writes ``<out>/inputs/photos/scene_<k>.png`` (640x480 scenes with 1-3 faces of ``fer_jax.data.synthetic``,
rendered at 110-190 px in colour and pasted with feathered edges onto cluttered backgrounds) and
``<out>/inputs/clip.mp4`` (two rendered faces going from neutral to an expression while they drift across
the frame, 48 frames at 12 fps, H.264), then runs, as a user would::

    fer-jax predict <out>/inputs/photos --output <out>/photos.csv --annotate <out>/annotated
    fer-jax predict <out>/inputs/clip.mp4 --output <out>/clip.csv --annotate <out>/annotated
    fer-jax explain <out>/inputs/photos --out_dir <out>/explain

The shipped model was trained on FER2013 photographs, not on these drawings: the demo shows the mechanics
(detection, alignment, tracking, tables, drawings, heat maps), not accuracy. Each rendered face's expression
is in ``<out>/inputs/truth.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from typing import List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480


def scene_background(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
  """Smooth colour gradients, blurred noise and random rectangles / ellipses (clutter), as an RGB image."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  base = np.zeros((height, width, 3), np.float32)
  for c in range(3):
    a, b = rng.uniform(-1, 1, 2) / max(width, height)
    base[..., c] = rng.uniform(40, 200) + 60 * (a * xx + b * yy)
  noise = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
  noise = noise.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))
  img = Image.fromarray(np.clip(base * 0.7 + np.asarray(noise, np.float32) * 0.3, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(4, 12))):
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    w, h = rng.uniform(20, width / 3), rng.uniform(20, height / 3)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
    shape([x0, y0, x0 + w, y0 + h], fill=colour)
  return img.filter(ImageFilter.GaussianBlur(1.0))


def feather_mask(side: int, feather: float = 0.08) -> Image.Image:
  """A side x side alpha mask: 255 inside, a linear ramp over the outer ``feather`` of the side."""
  ramp = max(1.0, feather * side)
  d = np.arange(side, dtype=np.float32) + 0.5
  edge = np.minimum(d, side - d)
  m = np.clip(np.minimum(edge[:, None], edge[None, :]) / ramp, 0, 1)
  return Image.fromarray((m * 255).round().astype(np.uint8))


def make_photos(out_dir: str, n: int = 4, seed: int = 0) -> List[dict]:
  """Scenes with 1-3 rendered faces each; returns the truth rows (file, box, expression)."""
  from fer_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  os.makedirs(out_dir, exist_ok=True)
  rows, face_id = [], 0
  for k in range(n):
    img = scene_background(rng)
    boxes: list = []
    for _ in range(int(rng.integers(1, 4))):
      side = int(rng.integers(110, 191))
      for _ in range(50):
        x0, y0 = int(rng.integers(0, WIDTH - side)), int(rng.integers(0, HEIGHT - side))
        if all(x0 >= b[2] or b[0] >= x0 + side or y0 >= b[3] or b[1] >= y0 + side for b in boxes):
          break
      else:
        continue
      ex = synthetic.sample_examples(seed, "test", face_id, 1, size=side, channels=3)
      img.paste(Image.fromarray(ex["image"][0]), (x0, y0), feather_mask(side))
      boxes.append((x0, y0, x0 + side, y0 + side))
      rows.append({"file": f"scene_{k}.png", "x0": x0, "y0": y0, "x1": x0 + side, "y1": y0 + side,
                   "expression": synthetic.CLASS_NAMES[int(ex["label"][0])]})
      face_id += 1
    img.save(os.path.join(out_dir, f"scene_{k}.png"))
  return rows


def make_clip(path: str, seed: int = 0, frames: int = 48, fps: int = 12) -> List[dict]:
  """Two faces, neutral -> apex, drifting in opposite directions; H.264 via PyAV. Returns truth rows."""
  import av  # pylint: disable=import-outside-toplevel
  from fer_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed + 1)
  side = 150
  clips = synthetic.sample_sequences(seed, "test", 0, 2, num_frames=frames, size=side, channels=3)
  background = scene_background(rng)
  mask = feather_mask(side)
  starts, ends = [(40, 40), (450, 290)], [(450, 60), (40, 270)]  # paths that do not cross
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps, options={"crf": "20"})
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    for t in range(frames):
      img = background.copy()
      a = t / max(frames - 1, 1)
      for i in range(2):
        x = int(round(starts[i][0] + a * (ends[i][0] - starts[i][0])))
        y = int(round(starts[i][1] + a * (ends[i][1] - starts[i][1])))
        img.paste(Image.fromarray(clips["frames"][i, t]), (x, y), mask)
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return [{"file": os.path.basename(path), "x0": "", "y0": "", "x1": "", "y1": "",
           "expression": f"face {i}: neutral -> {synthetic.CLASS_NAMES[int(clips['label'][i])]}"}
          for i in range(2)]


def _fer_jax(*args: str) -> None:
  cmd = [sys.executable, "-m", "fer_jax.main", *args]
  print("$ fer-jax " + " ".join(args), flush=True)
  subprocess.run(cmd, check=True)


def main(argv: Optional[list] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m fer_jax.predict.demo", description=__doc__.split("\n\n")[0])
  ap.add_argument("--out_dir", default="runs/predict_demo")
  ap.add_argument("--no_run", action="store_true", help="only write the inputs")
  args = ap.parse_args(argv)
  inputs = os.path.join(args.out_dir, "inputs")
  truth = make_photos(os.path.join(inputs, "photos"))
  truth += make_clip(os.path.join(inputs, "clip.mp4"))
  with open(os.path.join(inputs, "truth.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(truth[0]))
    writer.writeheader()
    writer.writerows(truth)
  print(f"wrote {inputs}/photos/*.png, {inputs}/clip.mp4 and {inputs}/truth.csv")
  if args.no_run:
    return 0
  out = args.out_dir
  _fer_jax("predict", os.path.join(inputs, "photos"), "--output", os.path.join(out, "photos.csv"),
           "--annotate", os.path.join(out, "annotated"), "--overwrite")
  _fer_jax("predict", os.path.join(inputs, "clip.mp4"), "--output", os.path.join(out, "clip.csv"),
           "--annotate", os.path.join(out, "annotated"), "--overwrite")
  _fer_jax("explain", os.path.join(inputs, "photos"), "--out_dir", os.path.join(out, "explain"),
           "--overwrite")
  return 0


if __name__ == "__main__":
  sys.exit(main())
