"""Writes the FAKE dummy_data/ of the aff_wild builder (drawn faces, no real data).

Run from the project root (needs PyAV, `pip install 'fer_jax[video]'`):
  .venv/bin/python tfds_builders/aff_wild/make_dummy_data.py

The files follow the layout of the Aff-Wild release (see README.md):
  videos/{train,test}/<id>.mp4|.avi           80x64 RGB, 25 fps, MPEG-4 part 2
  annotations/{train,test}/{valence,arousal}/<id>.txt   one value per line
  bboxes/{train,test}/<id>/<frame>.pts        iBUG .pts, 4 corner points
  landmarks/{train,test}/<id>/<frame>.pts     iBUG .pts, 68 points
where <frame> is the 1-based frame number. Each frame shows a flat-coloured
ellipse ("face") with two dark eyes over a moving colour gradient; the box is
the ellipse's bounding box. The videos are encoded bit-exactly, so re-running
the script reproduces the committed files byte for byte (same PyAV build).
"""

import math
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / 'dummy_data'

WIDTH, HEIGHT, FPS = 80, 64, 25
NUM_LANDMARKS = 68


# (partition, video id, container, frames, annotation lines, frames with
# landmarks but no bbox, frames with neither, face centre track). Frames are
# 0-based here; the .pts files are named by 1-based frame number.
VIDEOS = [
    # Two landmark-only frames (crop from the landmark extent), one face-less.
    ('train', '101', 'mp4', 22, 22, (5, 6), (7,), 'centre'),
    # Shorter than a 16-frame clip: one padded clip.
    ('train', '102', 'avi', 9, 9, (), (), 'centre'),
    # One annotation line short of the frame count (tolerated); the first two
    # frames have no face.
    ('train', '103', 'mp4', 17, 16, (), (0, 1), 'centre'),
    # Exactly one clip; the face box runs past the right and top borders.
    ('train', '104', 'mp4', 16, 16, (), (), 'edge'),
    ('test', '201', 'mp4', 20, 20, (3,), (10, 11), 'centre'),
    # One annotation line more than the frames (tolerated, dropped).
    ('test', '202', 'avi', 12, 13, (), (), 'centre'),
]


def face_geometry(track: str, t: int):
  """(cx, cy, rx, ry) of the drawn face ellipse in frame t (pixels)."""
  if track == 'edge':
    return 72.0 + 2.0 * math.sin(t / 3), 6.0 + t * 0.25, 13.0, 16.0
  return (40.0 + 14.0 * math.sin(t / 4), 31.0 + 5.0 * math.cos(t / 5),
          12.0 + 0.2 * t, 15.0 + 0.25 * t)


def render_frame(track: str, t: int, seed: int) -> np.ndarray:
  """(HEIGHT, WIDTH, 3) uint8 frame t: gradient background + face ellipse."""
  y, x = np.mgrid[:HEIGHT, :WIDTH].astype(np.float64)
  img = np.stack([
      (x * 2.5 + t * 6 + seed * 40) % 200 + 20,
      (y * 3.0 + seed * 25) % 200 + 20,
      np.full_like(x, 60.0 + 10 * seed),
  ], -1)
  cx, cy, rx, ry = face_geometry(track, t)
  face = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
  img[face] = (230, 180, 150)
  for ex in (cx - rx * 0.4, cx + rx * 0.4):
    eye = ((x - ex) / (rx * 0.18)) ** 2 + ((y - cy + ry * 0.25)
                                           / (ry * 0.12)) ** 2 <= 1.0
    img[eye] = (40, 30, 30)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def bbox_points(track: str, t: int) -> np.ndarray:
  cx, cy, rx, ry = face_geometry(track, t)
  x0, y0, x1, y1 = cx - rx, cy - ry, cx + rx, cy + ry
  return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def landmark_points(track: str, t: int) -> np.ndarray:
  """68 points inside the face: a jaw arc, then a spiral over the face."""
  cx, cy, rx, ry = face_geometry(track, t)
  jaw = np.linspace(math.pi * 0.05, math.pi * 0.95, 17)
  pts = [(cx - 0.9 * rx * math.cos(a), cy + 0.2 * ry + 0.75 * ry * math.sin(a))
         for a in jaw]
  for k in range(NUM_LANDMARKS - 17):
    a, r = k * 0.7, 0.15 + 0.6 * k / (NUM_LANDMARKS - 17)
    pts.append((cx + r * rx * math.cos(a), cy - 0.1 * ry + r * ry * math.sin(a)))
  return np.array(pts)


def pts_text(points: np.ndarray) -> str:
  lines = ['version: 1', f'n_points: {len(points)}', '{']
  lines += [f'{x:.3f} {y:.3f}' for x, y in points]
  lines.append('}')
  return '\n'.join(lines) + '\n'


def labels(video_id: str, n: int):
  """Valence / arousal text lines; exact -1 and 1 appear in video 101."""
  k = int(video_id)
  val, aro = [], []
  for t in range(n):
    v = 0.9 * math.sin(0.3 * t + k)
    a = 0.8 * math.cos(0.2 * t + 0.5 * k)
    val.append(f'{v:.4f}')
    aro.append(f'{a:.4f}')
  if video_id == '101':
    val[0], aro[0], val[1], aro[1] = '1', '-1', '-1.0', '1.000'
  return val, aro


def write_video(path: pathlib.Path, frames) -> None:
  import av  # pylint: disable=g-import-not-at-top
  container = av.open(str(path), 'w', format=path.suffix[1:],
                      options={'fflags': '+bitexact'})
  stream = container.add_stream('mpeg4', rate=FPS)
  stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
  stream.codec_context.options = {'flags': '+bitexact', 'qscale': '2'}
  stream.codec_context.qmax = 3
  for img in frames:
    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  container.close()


def main(out=OUT):
  out = pathlib.Path(out)
  for seed, (part, vid, ext, n, n_lines, no_bbox, no_face, track) in enumerate(
      VIDEOS):
    video = out / 'videos' / part / f'{vid}.{ext}'
    video.parent.mkdir(parents=True, exist_ok=True)
    write_video(video, [render_frame(track, t, seed) for t in range(n)])
    val, aro = labels(vid, n_lines)
    for name, lines in (('valence', val), ('arousal', aro)):
      path = out / 'annotations' / part / name / f'{vid}.txt'
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text('\n'.join(lines) + '\n')
    for kind, skip in (('bboxes', set(no_bbox) | set(no_face)),
                       ('landmarks', set(no_face))):
      folder = out / kind / part / vid
      folder.mkdir(parents=True, exist_ok=True)
      for t in range(n):
        if t in skip:
          continue
        pts = bbox_points(track, t) if kind == 'bboxes' else landmark_points(
            track, t)
        (folder / f'{t + 1}.pts').write_text(pts_text(pts))


if __name__ == '__main__':
  main()
