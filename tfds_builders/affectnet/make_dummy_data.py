"""Writes the FAKE dummy_data/ of the affectnet builder (synthetic faces, random labels).

Run from the project root:
  .venv/bin/python tfds_builders/affectnet/make_dummy_data.py

dummy_data/official/: the official layout. Manually_Annotated_file_lists/training.csv (with header,
3 rows per expression 0-10) and validation.csv (no header, as in the release; 2 rows per
expression), images in Manually_Annotated_Images/<folder>/<hex>.jpg: faces rendered by
`fer_jax.data.synthetic` on a larger background (their true 68 landmarks in the CSV, the face box
around them, mostly not square), plus special cases (SPECIAL): a PNG whose square face box holds
four flat-coloured quadrants, a box of side exactly 112 px, a box running past the image, a grey
JPEG. Validation split by the builder's hash: training rows VALIDATION_ROWS go to `validation`
(their file names are drawn until the hash agrees), all others to `train`.
dummy_data/repackaged/: the re-packaged layout. train_set/ (2 images per expression 0-10) and
val_set/ (1 per expression), images/<N>.jpg of 48 x 48 faces (one 48 x 40, one grey PNG),
annotations/<N>_{exp,val,aro,lnd}.npy holding strings ('3', '0.25') or numbers (every 4th).
Expressions 9 and 10 have valence = arousal = -2. No real AffectNet data is used.
"""

import io
import pathlib

import numpy as np
from PIL import Image

from fer_jax.data import synthetic
from tfds_builders.affectnet import affectnet_dataset_builder as ab

OUT = pathlib.Path(__file__).resolve().parent / 'dummy_data'
HEADER = ','.join(ab.CSV_HEADER)
# AffectNet expression id -> the synthetic renderer's class (8-10: a neutral face).
SYNTH_CLASS = ('neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'angry', 'contempt',
               'neutral', 'neutral', 'neutral')
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 2
# (expression, index within the expression) of the training rows that hash into `validation`.
VALIDATION_ROWS = {(1, 0), (4, 0), (5, 0), (7, 0)}
REPACKAGED_VALIDATION = {(4, 0), (5, 1), (7, 0)}
# (csv, expression, index) -> special image (see the module docstring).
SPECIAL = {('training.csv', 0, 0): 'pattern', ('training.csv', 2, 1): 'exact112',
           ('training.csv', 3, 0): 'outside', ('training.csv', 6, 2): 'grey',
           ('validation.csv', 4, 1): 'pattern', ('validation.csv', 5, 0): 'outside'}
PATTERN_BOX = (18, 10, 56)  # left, top, side of the square quadrant box in a 96 x 80 PNG.
PATTERN_COLOURS = ((200, 30, 40), (20, 180, 60), (30, 60, 220), (240, 220, 30))  # TL TR BL BR.
PATTERN_BACKGROUND = (90, 90, 90)


def render_face(seed, expression: int, size: int):
  """(size, size, 3) uint8 synthetic face and its (68, 2) landmarks."""
  rng = np.random.default_rng(seed)
  identity = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES,
                                           rng.random((1, len(synthetic.IDENTITY_RANGES))))
  scene = synthetic.params_from_uniform(synthetic.SCENE_RANGES,
                                        rng.random((1, len(synthetic.SCENE_RANGES))))
  scene['noise'][:] = 0.0
  label = synthetic.CLASS_NAMES.index(SYNTH_CLASS[expression])
  au = synthetic.expression_action_units(np.array([label]), np.array([0.9], np.float32))
  pose = {'angle': np.float32([rng.uniform(-15, 15)]), 'scale': np.float32([0.75]),
          'shift_x': np.float32([0.0]), 'shift_y': np.float32([0.0])}
  faces, landmarks = synthetic.render_faces(au, identity, pose, size, 3, scene)
  return faces[0], landmarks[0].astype(np.float64)


def _encode(image: np.ndarray, fmt: str, mode: str = 'RGB') -> bytes:
  buf = io.BytesIO()
  im = Image.fromarray(image).convert(mode)
  if fmt == 'JPEG':
    im.save(buf, format='JPEG', quality=90)
  else:
    im.save(buf, format='PNG')
  return buf.getvalue()


def official_image(kind, seed, expression):
  """(file bytes, suffix, box (x, y, w, h) ints, landmarks (68, 2)) of one official-layout row."""
  rng = np.random.default_rng([seed, 1])
  if kind == 'pattern':
    left, top, side = PATTERN_BOX
    canvas = np.empty((80, 96, 3), np.uint8)
    canvas[:] = PATTERN_BACKGROUND
    half = side // 2
    for q, colour in enumerate(PATTERN_COLOURS):
      r, c = divmod(q, 2)
      canvas[top + r * half:top + (r + 1) * half, left + c * half:left + (c + 1) * half] = colour
    _, lm = render_face(seed, expression, side)
    return _encode(canvas, 'PNG'), '.png', (left, top, side, side), lm + (left, top)
  face_size = {'exact112': 112}.get(kind, 40)
  face, lm = render_face(seed, expression, face_size)
  pad = {'exact112': (10, 6)}.get(kind, (int(rng.integers(4, 20)), int(rng.integers(4, 14))))
  h, w = face_size + 2 * pad[1], face_size + 2 * pad[0] + 4
  canvas = np.empty((h, w, 3), np.uint8)
  canvas[:] = rng.integers(0, 256, 3).astype(np.uint8)
  canvas[pad[1]:pad[1] + face_size, pad[0]:pad[0] + face_size] = face
  lm = lm + pad
  if kind == 'exact112':
    box = (pad[0], pad[1] - 3, 112, 112)
  else:
    lo, hi = lm.min(0), lm.max(0)
    x0, y0 = np.floor(lo - (hi - lo) * 0.08).astype(int)
    x1, y1 = np.ceil(hi + (hi - lo) * 0.08).astype(int)
    box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    if kind == 'outside':  # Move the box (not the face) so that it runs past the left / top.
      box = (-7, -5, box[2] + 10, box[3])
  mode = 'L' if kind == 'grey' else 'RGB'
  return _encode(canvas, 'JPEG', mode), '.jpg', box, lm


def _affect(rng, expression):
  if expression >= 9:
    return ab.NOT_RATED, ab.NOT_RATED
  return tuple(float(v) for v in np.round(rng.uniform(-1, 1, 2), 6))


def _hex_name(rng, suffix):
  return ''.join(f'{b:02x}' for b in rng.integers(0, 256, 8)) + suffix


def official_files() -> dict[str, bytes]:
  """{relative path: bytes} of dummy_data/official/."""
  files = {}
  rng = np.random.default_rng(2017)
  for csv_name, per_class in (('training.csv', TRAIN_PER_CLASS), ('validation.csv', TEST_PER_CLASS)):
    lines = [HEADER] if csv_name == 'training.csv' else []
    for expression in range(ab.NUM_EXPRESSIONS):
      for i in range(per_class):
        seed = len(files) + 100 * (csv_name == 'training.csv')
        kind = SPECIAL.get((csv_name, expression, i), 'face')
        data, suffix, box, lm = official_image(kind, seed, expression)
        want_val = (expression, i) in VALIDATION_ROWS
        while True:
          rel = f'{600 + int(rng.integers(0, 4))}/{_hex_name(rng, suffix)}'
          filename = f'{ab.OFFICIAL_IMAGES}/{rel}'
          if csv_name != 'training.csv' or ab.in_validation(filename) == want_val:
            break
        files[filename] = data
        valence, arousal = _affect(rng, expression)
        if (csv_name, expression, i) == ('training.csv', 2, 0):
          valence, arousal = -1.0, 1.0  # Both ends of the range on a kept row.
        landmarks = ';'.join(f'{v:.2f}' for v in lm.reshape(-1))
        lines.append(f'{rel},{box[0]},{box[1]},{box[2]},{box[3]},{landmarks},{expression},'
                     f'{valence:g},{arousal:g}')
    files[f'{ab.OFFICIAL_LISTS}/{csv_name}'] = ('\n'.join(lines) + '\n').encode()
  return files


def _npy(value) -> bytes:
  buf = io.BytesIO()
  np.save(buf, value, allow_pickle=False)
  return buf.getvalue()


def repackaged_files() -> dict[str, bytes]:
  """{relative path: bytes} of dummy_data/repackaged/."""
  files = {}
  rng = np.random.default_rng(2019)
  number = 0
  for set_name, per_class in (('train_set', 2), ('val_set', 1)):
    for expression in range(ab.NUM_EXPRESSIONS):
      for i in range(per_class):
        want_val = (expression, i) in REPACKAGED_VALIDATION
        while True:
          number += int(rng.integers(1, 50))
          name = f'{number}.jpg'
          if set_name != 'train_set' or ab.in_validation(f'{set_name}/images/{name}') == want_val:
            break
        face, lm = render_face(number, expression, 48)
        k = len(files) // 5
        if (set_name, expression, i) == ('train_set', 3, 1):  # Not square: padded to a square.
          face, lm = face[4:44], lm - (0, 4)
        if (set_name, expression, i) == ('val_set', 6, 0):
          name = f'{number}.png'
          data = _encode(face, 'PNG', 'L')
        else:
          data = _encode(face, 'JPEG')
        stem = name.rsplit('.', 1)[0]
        files[f'{set_name}/images/{name}'] = data
        valence, arousal = _affect(rng, expression)
        numeric = k % 4 == 0  # Every 4th image stores numbers instead of strings.
        ann = f'{set_name}/annotations/{stem}'
        files[f'{ann}_exp.npy'] = _npy(np.int64(expression) if numeric else np.array(str(expression)))
        files[f'{ann}_val.npy'] = _npy(np.float64(valence) if numeric else np.array(f'{valence:g}'))
        files[f'{ann}_aro.npy'] = _npy(np.float64(arousal) if numeric else np.array(f'{arousal:g}'))
        flat = np.round(lm.reshape(-1), 3)
        if (set_name, expression, i) == ('train_set', 1, 1):
          lnd = np.array([f'{v:g}' for v in flat])  # Landmarks as strings.
        elif (set_name, expression, i) == ('train_set', 2, 0):
          lnd = flat.reshape(68, 2).astype(np.float32)  # Shape (68, 2).
        else:
          lnd = flat
        files[f'{ann}_lnd.npy'] = _npy(lnd)
  return files


def main(out=OUT):
  out = pathlib.Path(out)
  for sub, files in (('official', official_files()), ('repackaged', repackaged_files())):
    for rel, data in files.items():
      path = out / sub / rel
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(data)


if __name__ == '__main__':
  main()
