"""Writes the FAKE dummy_data/ of the afew_va builder (synthetic faces).

Run from the project root:
  .venv/bin/python tfds_builders/afew_va/make_dummy_data.py

Five clips in the AFEW-VA layout (`<id>/<id>.json` + `<frame>.png`), 64x48
frames rendered by `fer_jax.data.synthetic` (a face drifting in pose, its
true 68 landmarks in the JSON), random integer labels in -10..10:
  001/  18 frames (two 16-frame windows, the second padded)
  002/   4 frames, plus an unannotated 00004.png (ignored by the builder)
  003/   5 frames with gaps (00000 00001 00003 00004 00006), keys unsorted
  01.zip: 007/ (3 frames) and 011/ (6 greyscale PNG frames), plus a
         __MACOSX/ junk entry.
With 5 folds, fold 0: test = 007, validation = 003, train = 001 002 011.
No real AFEW-VA data is used.
"""

import io
import json
import pathlib
import zipfile

import numpy as np
from PIL import Image

from fer_jax.data import synthetic

OUT = pathlib.Path(__file__).resolve().parent / 'dummy_data'
WIDTH, HEIGHT = 64, 48

# clip id -> (frame numbers, where, PNG mode, extra unannotated frames).
CLIPS = {
    '001': (list(range(18)), 'folder', 'RGB', []),
    '002': (list(range(4)), 'folder', 'RGB', [4]),
    '003': ([0, 1, 3, 4, 6], 'folder', 'RGB', []),
    '007': (list(range(3)), 'zip', 'RGB', []),
    '011': (list(range(6)), 'zip', 'L', []),
}
ZIP_NAME = '01.zip'


def render_clip(clip_id: str, frame_numbers):
  """Frames uint8 (n, 48, 64, 3) and landmarks (n, 68, 2) of one fake clip."""
  rng = np.random.default_rng([int(clip_id), 7])
  n = len(frame_numbers)
  n_id = len(synthetic.IDENTITY_RANGES)
  identity = synthetic.params_from_uniform(
      synthetic.IDENTITY_RANGES, np.repeat(rng.random((1, n_id)), n, 0))
  scene = synthetic.params_from_uniform(
      synthetic.SCENE_RANGES,
      np.repeat(rng.random((1, len(synthetic.SCENE_RANGES))), n, 0))
  scene['noise'][:] = 0.0
  label = rng.integers(len(synthetic.CLASS_NAMES))
  intensity = np.linspace(0.0, 1.0, n, dtype=np.float32)
  au = synthetic.expression_action_units(np.full(n, label), intensity)
  t = np.asarray(frame_numbers, np.float32) / 17.0
  a0, a1 = rng.uniform(-20, 20, 2)
  pose = {
      'angle': (a0 + (a1 - a0) * t).astype(np.float32),
      'scale': (0.7 + 0.15 * t).astype(np.float32),
      'shift_x': np.full(n, rng.uniform(-0.1, 0.1), np.float32),
      'shift_y': np.full(n, rng.uniform(-0.1, 0.1), np.float32),
  }
  faces, landmarks = synthetic.render_faces(au, identity, pose, HEIGHT, 3,
                                            scene)
  frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
  frames[...] = (rng.integers(0, 256, 3)).astype(np.uint8)
  x0 = (WIDTH - HEIGHT) // 2 + int(rng.integers(-6, 7))
  frames[:, :, x0:x0 + HEIGHT] = faces
  landmarks = landmarks.astype(np.float64)
  landmarks[..., 0] += x0
  return frames, landmarks


def clip_files(clip_id: str) -> dict[str, bytes]:
  """{file name: bytes} of one fake clip folder."""
  numbers, _, mode, extra = CLIPS[clip_id]
  rng = np.random.default_rng([int(clip_id), 8])
  frames, landmarks = render_clip(clip_id, numbers + extra)
  labels = rng.integers(-10, 11, size=(len(numbers), 2))
  labels[0] = (-10, 10)  # Both ends of the range appear.
  annotations = {}
  for i, number in enumerate(numbers):
    annotations[f'{number:05d}'] = {
        'arousal': int(labels[i, 1]),
        'landmarks': np.round(landmarks[i], 3).tolist(),
        'valence': int(labels[i, 0]),
    }
  if clip_id == '003':  # Keys out of order: the builder sorts by number.
    annotations = dict(reversed(list(annotations.items())))
  doc = {'actor': f'Fake Actor {int(clip_id) % 3}', 'frames': annotations,
         'video_id': clip_id}
  files = {f'{clip_id}.json': json.dumps(doc).encode()}
  for i, number in enumerate(numbers + extra):
    buf = io.BytesIO()
    Image.fromarray(frames[i]).convert(mode).save(buf, format='PNG')
    files[f'{number:05d}.png'] = buf.getvalue()
  return files


def main(out=OUT):
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  zipped = {}
  for clip_id, (_, where, _, _) in CLIPS.items():
    files = clip_files(clip_id)
    if where == 'folder':
      (out / clip_id).mkdir(exist_ok=True)
      for name, data in files.items():
        (out / clip_id / name).write_bytes(data)
    else:
      zipped.update({f'{clip_id}/{name}': data for name, data in files.items()})
  zipped['__MACOSX/007/._007.json'] = b'\x00\x05\x16\x07junk'
  with zipfile.ZipFile(out / ZIP_NAME, 'w') as zf:
    for name, data in zipped.items():
      info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      zf.writestr(info, data)


if __name__ == '__main__':
  main()
