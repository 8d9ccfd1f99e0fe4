"""Writes a tiny FAKE CK+ tree (synthetic faces) for the ckplus builder's tests.

Run from the project root (the tests call `main(tmp_dir)` themselves; nothing is committed):
  .venv/bin/python tfds_builders/ckplus/make_dummy_data.py OUT_DIR

The four unpacked CK+ folders, `cohn-kanade-images/`, `Emotion/`, `Landmarks/`, `FACS/`, with 7
sequences of 5 subjects (SEQUENCES): frames rendered by `fer_jax.data.synthetic` (a face going from
neutral to the labelled expression while drifting in pose, pasted on a flat background), their true
68 landmarks in one `_landmarks.txt` per frame, and CK+-style `_emotion.txt` / `_facs.txt` files
(numbers written as `   3.0000000e+00`) named after the peak frame. Special cases:
  S005/002, S037/001  unlabelled (S037/001: an empty Emotion folder and an empty FACS file)
  S010/001            RGB frames (the others are grey), 20 frames (more than T = 16)
  S011/001            another frame size (72 x 60 instead of 80 x 64); FACS code 27 (not in AU_NAMES)
  S011/002            9 PNGs but the label files name frame 8 (frame 9 comes after the peak);
                      AU 4 coded twice
  S022/001            frame 7 missing (numbers 1-6, 8-11); intensity-0 codes; codes 24, 50
  S005/001            a hidden .DS_Store beside the frames (ignored)
Subjects in order S005 S010 S011 S022 S037 -> folds 0 1 2 3 4 of 10. No real CK+ data is used.
"""

import io
import pathlib
import sys

import numpy as np
from PIL import Image

from fer_jax.data import synthetic

WIDTH, HEIGHT = 80, 64


# (subject, sequence) -> frame numbers of the PNGs, PNG mode, (width, height), emotion label (None:
# unlabelled), peak frame named by the label files, FACS rows (AU code, intensity).
SEQUENCES = {
    ('S005', '001'): (list(range(1, 13)), 'L', (WIDTH, HEIGHT), 3, 12, [(9, 4), (15, 2), (17, 3)]),
    ('S005', '002'): (list(range(1, 6)), 'L', (WIDTH, HEIGHT), None, 5, [(1, 0), (2, 0)]),
    ('S010', '001'): (list(range(1, 21)), 'RGB', (WIDTH, HEIGHT), 5, 20, [(6, 3), (12, 5), (25, 2)]),
    ('S011', '001'): (list(range(1, 17)), 'L', (72, 60), 7, 16,
                      [(1, 4), (2, 4), (5, 1), (26, 5), (27, 3)]),
    ('S011', '002'): (list(range(1, 10)), 'L', (WIDTH, HEIGHT), 1, 8,
                      [(4, 3), (5, 2), (7, 2), (23, 4), (4, 1)]),
    ('S022', '001'): ([1, 2, 3, 4, 5, 6, 8, 9, 10, 11], 'L', (WIDTH, HEIGHT), 2, 11,
                      [(14, 2), (12, 0), (50, 0), (24, 1)]),
    ('S037', '001'): (list(range(1, 8)), 'L', (WIDTH, HEIGHT), None, 7, []),
}
# CK+ emotion label -> the synthetic renderer's class (unlabelled sequences: a surprised face).
SYNTH_CLASS = {1: 'angry', 2: 'contempt', 3: 'disgust', 4: 'fear', 5: 'happy', 6: 'sad',
               7: 'surprise', None: 'surprise'}


def number(value: float) -> str:
  """A number as CK+ writes it: 3 spaces, then `%.7e` (e.g. `   3.0000000e+00`)."""
  return f'   {value:.7e}'


def render_sequence(key, numbers, mode, size, label):
  """Frames uint8 (n, H, W, C) and landmarks float64 (n, 68, 2) of one fake sequence."""
  width, height = size
  seed = [int(key[0][1:]), int(key[1]), 11]
  rng = np.random.default_rng(seed)
  n = len(numbers)
  n_id = len(synthetic.IDENTITY_RANGES)
  identity = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES,
                                           np.repeat(rng.random((1, n_id)), n, 0))
  intensity = np.linspace(0.0, 1.0, n, dtype=np.float32)  # Neutral -> peak.
  au = synthetic.expression_action_units(
      np.full(n, synthetic.CLASS_NAMES.index(SYNTH_CLASS[label])), intensity)
  t = np.linspace(0.0, 1.0, n, dtype=np.float32)
  a0, a1 = rng.uniform(-8, 8, 2)
  pose = {'angle': (a0 + (a1 - a0) * t).astype(np.float32),
          'scale': (0.72 + 0.06 * t).astype(np.float32),
          'shift_x': np.full(n, rng.uniform(-0.05, 0.05), np.float32),
          'shift_y': np.full(n, rng.uniform(-0.05, 0.05), np.float32)}
  channels = 3 if mode == 'RGB' else 1
  faces, landmarks = synthetic.render_faces(au, identity, pose, height, channels)
  frames = np.empty((n, height, width, channels), np.uint8)
  frames[...] = rng.integers(30, 220, channels).astype(np.uint8)
  x0 = (width - height) // 2 + int(rng.integers(-4, 5))
  frames[:, :, x0:x0 + height] = faces
  landmarks = landmarks.astype(np.float64)
  landmarks[..., 0] += x0
  return frames, landmarks


def _png(frame: np.ndarray, mode: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frame[..., 0] if mode == 'L' else frame, mode).save(buf, format='PNG')
  return buf.getvalue()


def sequence_files(key) -> dict[str, bytes]:
  """{path relative to the manual dir: bytes} of one fake sequence."""
  subject, seq = key
  numbers, mode, size, label, peak, facs = SEQUENCES[key]
  frames, landmarks = render_sequence(key, numbers, mode, size, label)
  files = {}
  for i, k in enumerate(numbers):
    stem = f'{subject}_{seq}_{k:08d}'
    files[f'cohn-kanade-images/{subject}/{seq}/{stem}.png'] = _png(frames[i], mode)
    files[f'Landmarks/{subject}/{seq}/{stem}_landmarks.txt'] = ''.join(
        f'{number(x)}{number(y)}\n' for x, y in landmarks[i]).encode()
  stem = f'{subject}_{seq}_{peak:08d}'
  if label is not None:
    files[f'Emotion/{subject}/{seq}/{stem}_emotion.txt'] = f'{number(label)}\n'.encode()
  files[f'FACS/{subject}/{seq}/{stem}_facs.txt'] = ''.join(
      f'{number(au)}{number(v)}\n' for au, v in facs).encode()
  return files


def main(out):
  out = pathlib.Path(out)
  files = {}
  for key in SEQUENCES:
    files.update(sequence_files(key))
  files['cohn-kanade-images/S005/001/.DS_Store'] = b'\x00\x00\x00\x01Bud1'
  for rel, data in sorted(files.items()):
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  (out / 'Emotion' / 'S037' / '001').mkdir(parents=True, exist_ok=True)  # Unlabelled: empty.
  return out


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(f'usage: {sys.argv[0]} OUT_DIR')
  main(sys.argv[1])
