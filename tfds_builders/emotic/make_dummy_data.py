"""Writes the FAKE dummy_data/ of the emotic builder (generated pictures, made-up labels).

Run from the project root:
  .venv/bin/python tfds_builders/emotic/make_dummy_data.py

dummy_data/release/: the original layout. `Annotations/Annotations.mat` (written with scipy.io.savemat:
`train`, `val`, `test` are 1 x N struct arrays of images with filename, folder, image_size (n_col,
n_row), original_database and person (a struct array; one person -> a 1 x 1 struct); categories are
cell arrays of strings; training people have one annotation, validation / test people per-annotator
struct arrays plus combined_categories / combined_continuous) and the images under
`emotic/<folder>/<filename>` (small JPEGs, one grey JPEG, one PNG whose pixels are `pattern_pixels`).
RELEASE below is the whole content, one entry per image and person; the cases: a single-person image,
a box running past the image (clamped), non-integer box coordinates, a single category (a 1 x 1 cell,
squeezed to a string by loadmat), a person without categories and one with a NaN valence (both left
out), a validation person with three annotators whose combined categories are neither any one
annotator's nor their union, a one-annotator person (a struct, not an array), VAD at 1 and 10, every
gender / age code including unknown.
dummy_data/pre/: what Tandon-A/emotic's `mat2py.py --generate_npy` writes for the same people (it
leaves out the same two people), with 24 x 24 context and 16 x 16 body arrays instead of 224 / 128 to
keep the files small. No real EMOTIC data is used.
"""

import copy
import csv
import io
import math
import pathlib

import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / 'dummy_data'
PRE_CONTEXT, PRE_BODY = 24, 16
NAN = float('nan')
PATTERN_ID = 'emodb_small/images/pattern_0001.png'

# One dict per image: folder, filename, size (width, height), kind ('jpeg' | 'grey' | 'pattern'),
# people. Training people: box, categories, vad, gender, age. Validation / test people: box, annotators
# (each {'categories', 'vad'}), combined_categories, combined_vad, gender, age.
RELEASE = {
    'train': [
        dict(folder='mscoco/images', filename='COCO_train2014_000000000009.jpg', size=(64, 48),
             kind='jpeg', people=[
                 dict(box=(8, 4, 40, 44), categories=['Engagement', 'Happiness'], vad=(6, 4, 7),
                      gender='Male', age='Adult')]),
        dict(folder='framesdb/images', filename='frame_0001.jpg', size=(72, 40), kind='jpeg', people=[
            dict(box=(-5, 2, 30, 50), categories=['Peace'], vad=(10, 1, 5), gender='Female', age='Kid'),
            dict(box=(40, 5, 70, 38), categories=['Doubt/Confusion', 'Yearning', 'Affection'],
                 vad=(3, 3, 3), gender='Male', age='Teenager'),
            dict(box=(10, 10, 20, 30), categories=[], vad=(5, 5, 5), gender='Female', age='Adult')]),
        dict(folder='emodb_small/images', filename='pattern_0001.png', size=(48, 48), kind='pattern',
             people=[
                 dict(box=(10, 6, 26, 22), categories=['Sympathy'], vad=(1, 10, 6), gender='Unknown',
                      age='Adult'),
                 dict(box=(0, 0, 48, 48), categories=['Pain'], vad=(NAN, 5, 5), gender='Male',
                      age='Adult')]),
        dict(folder='ade20k/images', filename='ADE_train_00000001.jpg', size=(50, 40), kind='grey',
             people=[
                 dict(box=(3.5, 2.25, 20.75, 30.5), categories=['Fatigue', 'Sadness'], vad=(2, 2, 4),
                      gender='Female', age='Teenager')]),
    ],
    'val': [
        dict(folder='mscoco/images', filename='COCO_val2014_000000000042.jpg', size=(60, 44), kind='jpeg',
             people=[dict(
                 box=(12, 3, 50, 40),
                 annotators=[dict(categories=['Engagement', 'Excitement'], vad=(5, 6, 7)),
                             dict(categories=['Happiness', 'Pleasure'], vad=(6, 6, 6)),
                             dict(categories=['Happiness', 'Engagement', 'Peace'], vad=(7, 3, 8))],
                 combined_categories=['Engagement', 'Happiness'], combined_vad=(6, 5, 7),
                 gender='Female', age='Adult')]),
        dict(folder='framesdb/images', filename='frame_0100.jpg', size=(56, 56), kind='jpeg', people=[
            dict(box=(2, 2, 20, 54), annotators=[dict(categories=['Anticipation'], vad=(4, 5, 6))],
                 combined_categories=['Anticipation'], combined_vad=(4, 5, 6), gender='Male', age='Kid'),
            dict(box=(24, 8, 55, 50),
                 annotators=[dict(categories=['Fear', 'Surprise'], vad=(2, 9, 3)),
                             dict(categories=['Surprise', 'Fear', 'Anger'], vad=(3, 8, 3))],
                 combined_categories=['Fear', 'Surprise'], combined_vad=(2.5, 8.5, 3.0),
                 gender='Male', age='Teenager')]),
    ],
    'test': [
        dict(folder='emodb_small/images', filename='abc123def456.jpg', size=(40, 60), kind='jpeg',
             people=[dict(
                 box=(5, 10, 35, 58),
                 annotators=[dict(categories=['Esteem', 'Confidence'], vad=(7, 4, 6)),
                             dict(categories=['Confidence'], vad=(8, 5, 6)),
                             dict(categories=['Confidence', 'Esteem'], vad=(7, 4, 6)),
                             dict(categories=['Esteem'], vad=(7, 5, 6))],
                 combined_categories=['Confidence', 'Esteem'], combined_vad=(7.25, 4.5, 6.0),
                 gender='Female', age='Kid')]),
        dict(folder='mscoco/images', filename='COCO_val2014_000000000077.jpg', size=(48, 36), kind='jpeg',
             people=[
                 dict(box=(1, 1, 15, 35), annotators=[dict(categories=['Disconnection'], vad=(5, 2, 5))],
                      combined_categories=[], combined_vad=(5, 2, 5), gender='Male', age='Adult'),
                 dict(box=(16, 1, 30, 35), annotators=[dict(categories=['Annoyance'], vad=(NAN, NAN, NAN))],
                      combined_categories=['Annoyance'], combined_vad=(NAN, NAN, NAN), gender='Male',
                      age='Adult'),
                 dict(box=(30, 2, 47, 34),
                      annotators=[dict(categories=['Disapproval', 'Aversion'], vad=(2, 6, 7)),
                                  dict(categories=['Disapproval'], vad=(3, 6, 8))],
                      combined_categories=['Aversion', 'Disapproval'], combined_vad=(2.5, 6.0, 7.5),
                      gender='', age='Unknown')]),
    ],
}


def pattern_pixels(width: int = 48, height: int = 48) -> np.ndarray:
  """(H, W, 3) uint8: R = 5 x, G = 5 y, B = (x * y) % 256 (x = column, y = row)."""
  y, x = np.mgrid[0:height, 0:width]
  return np.stack([5 * x, 5 * y, (x * y) % 256], -1).astype(np.uint8)


def image_pixels(spec: dict, seed: int) -> np.ndarray:
  """(H, W, 3) uint8 pixels of one image (before JPEG coding)."""
  w, h = spec['size']
  if spec['kind'] == 'pattern':
    return pattern_pixels(w, h)
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / max(w, h)
  base = rng.uniform(40, 200, 3)
  slope = rng.uniform(-80, 80, (2, 3))
  img = base + x[..., None] * slope[0] + y[..., None] * slope[1] + rng.normal(0, 6, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def image_bytes(spec: dict, seed: int) -> bytes:
  pixels = image_pixels(spec, seed)
  buf = io.BytesIO()
  if spec['kind'] == 'pattern':
    Image.fromarray(pixels).save(buf, format='PNG')
  else:
    Image.fromarray(pixels).convert('L' if spec['kind'] == 'grey' else 'RGB').save(
        buf, format='JPEG', quality=90)
  return buf.getvalue()


def _cell(names) -> np.ndarray:
  """A MATLAB cell array of strings (a 1 x 1 cell for one name; loadmat squeezes it to the string)."""
  out = np.empty(len(names), dtype=object)
  out[:] = list(names)
  return out


def _vad(values) -> dict:
  return {name: float(v) for name, v in zip(('valence', 'arousal', 'dominance'), values)}


def _struct_array(dtype_names, rows) -> np.ndarray:
  """A 1 x N MATLAB struct array with the given field names (object fields)."""
  arr = np.zeros((1, len(rows)), dtype=[(n, 'O') for n in dtype_names])
  for i, row in enumerate(rows):
    arr[0, i] = tuple(row[n] for n in dtype_names)
  return arr


def _person(split: str, p: dict) -> dict:
  box = np.asarray(p['box'], np.float64) if 'box' in p else None
  if split == 'train':
    return {'body_bbox': box, 'annotations_categories': {'categories': _cell(p['categories'])},
            'annotations_continuous': _vad(p['vad']), 'gender': p['gender'], 'age': p['age']}
  return {'body_bbox': box,
          'annotations_categories': _struct_array(['categories'], [
              {'categories': _cell(a['categories'])} for a in p['annotators']]),
          'combined_categories': _cell(p['combined_categories']),
          'annotations_continuous': _struct_array(['valence', 'arousal', 'dominance'], [
              _vad(a['vad']) for a in p['annotators']]),
          'combined_continuous': _vad(p['combined_vad']),
          'gender': p['gender'], 'age': p['age']}


_PERSON_FIELDS = {
    'train': ['body_bbox', 'annotations_categories', 'annotations_continuous', 'gender', 'age'],
    'val': ['body_bbox', 'annotations_categories', 'combined_categories', 'annotations_continuous',
            'combined_continuous', 'gender', 'age'],
}
_MAT_HEADER = b'MATLAB 5.0 MAT-file, written by tfds_builders/emotic/make_dummy_data.py (FAKE EMOTIC data)'


def mat_bytes(release: dict) -> bytes:
  """Annotations.mat of `release` (RELEASE or a changed copy of it), byte-for-byte reproducible (the
  header's creation date is replaced by a fixed text)."""
  import scipy.io  # pylint: disable=import-outside-toplevel
  mdict = {}
  for split, images in release.items():
    rows = []
    for spec in images:
      # A test may list fields to leave out of a struct array ('omit' in any of its people).
      omit = {f for p in spec['people'] for f in p.get('omit', ())}
      fields = [f for f in _PERSON_FIELDS['train' if split == 'train' else 'val'] if f not in omit]
      people = [_person(split, p) for p in spec['people']]
      # 'annotated_size': a test may annotate another size than the image file's.
      w, h = spec.get('annotated_size', spec['size'])
      rows.append({'filename': spec['filename'], 'folder': spec['folder'],
                   'image_size': {'n_col': float(w), 'n_row': float(h)},
                   'original_database': {'name': spec['folder'].split('/')[0]},
                   'person': _struct_array(fields, people)})
    mdict[split] = _struct_array(['filename', 'folder', 'image_size', 'original_database', 'person'], rows)
  buf = io.BytesIO()
  scipy.io.savemat(buf, mdict)
  data = bytearray(buf.getvalue())
  data[:116] = _MAT_HEADER.ljust(116)
  return bytes(data)


def release_files(release: dict = None) -> dict[str, bytes]:
  """{relative path: bytes} of dummy_data/release/."""
  release = RELEASE if release is None else release
  files = {'Annotations/Annotations.mat': mat_bytes(release)}
  seed = 0
  for images in release.values():
    for spec in images:
      seed += 1
      files[f'emotic/{spec["folder"]}/{spec["filename"]}'] = image_bytes(spec, seed)
  return files


def _decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _kept(split: str, p: dict) -> bool:
  """mat2py keeps a person with categories and no NaN valence / arousal / dominance."""
  names = p['categories'] if split == 'train' else p['combined_categories']
  vad = p['vad'] if split == 'train' else p['combined_vad']
  return bool(names) and not any(math.isnan(v) for v in vad)


def _npy(value) -> bytes:
  buf = io.BytesIO()
  np.save(buf, value, allow_pickle=False)
  return buf.getvalue()


def pre_files(release: dict = None) -> dict[str, bytes]:
  """{relative path: bytes} of dummy_data/pre/: mat2py's CSV rows and arrays for the kept people."""
  from fer_jax.data import emotic  # pylint: disable=import-outside-toplevel
  release = RELEASE if release is None else release
  images_data = release_files(release)
  files = {}
  for split, images in release.items():
    rows, context, body, cat, cont = [], [], [], [], []
    for spec in images:
      w, h = spec['size']
      pixels = _decode(images_data[f'emotic/{spec["folder"]}/{spec["filename"]}'])
      for p in spec['people']:
        if not _kept(split, p):
          continue
        # mat2py: clamp x to the first Image Size entry, y to the second, then int().
        x1, y1, x2, y2 = p['box']
        box = [int(min(w, max(0, x1))), int(min(h, max(0, y1))), int(min(w, max(0, x2))),
               int(min(h, max(0, y2)))]
        names = p['categories'] if split == 'train' else p['combined_categories']
        vad = [float(v) for v in (p['vad'] if split == 'train' else p['combined_vad'])]
        # Image Size as floats (MATLAB doubles) in train, as ints elsewhere: both are accepted.
        size = [float(w), float(h)] if split == 'train' else [w, h]
        rows.append([len(rows), spec['folder'], spec['filename'], size, box, list(names), vad,
                     p['gender'], p['age']])
        context.append(_resize(pixels, PRE_CONTEXT))
        body.append(_resize(pixels[box[1]:box[3], box[0]:box[2]], PRE_BODY))
        cat.append(emotic.categories_to_multi_hot(names).astype(np.float64))
        cont.append(np.array(vad, np.float64))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=',', dialect='excel')
    writer.writerow(['Index', 'Folder', 'Filename', 'Image Size', 'BBox', 'Categorical_Labels',
                     'Continuous_Labels', 'Gender', 'Age'])
    writer.writerows(rows)
    files[f'{split}.csv'] = buf.getvalue().encode()
    files[f'{split}_context_arr.npy'] = _npy(np.stack(context))
    files[f'{split}_body_arr.npy'] = _npy(np.stack(body))
    files[f'{split}_cat_arr.npy'] = _npy(np.stack(cat))
    files[f'{split}_cont_arr.npy'] = _npy(np.stack(cont))
  return files


def write(files: dict[str, bytes], out) -> None:
  out = pathlib.Path(out)
  for rel, data in files.items():
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def changed_release() -> dict:
  """A deep copy of RELEASE for tests to change."""
  return copy.deepcopy(RELEASE)


def main(out=OUT):
  out = pathlib.Path(out)
  write(release_files(), out / 'release')
  write(pre_files(), out / 'pre')


if __name__ == '__main__':
  main()
