"""EMOTIC: people in context with 26 emotion categories and valence / arousal / dominance (manual download).

Kosti, Alvarez, Recasens and Lapedriza, "Context Based Emotion Recognition using EMOTIC Dataset", TPAMI
2019 (arXiv 2003.13401). About 23,500 images (MSCOCO, ADE20K, EMODB and FramesDB) with about 34,300
annotated people; splits train / val / test as released.

Two manual-dir layouts are read (README.md):
- the release: `Annotations/Annotations.mat` (structs `train`, `val`, `test`; read with
  `scipy.io.loadmat(squeeze_me=True, struct_as_record=False)`) and the images under
  `emotic/<folder>/<filename>`; the context and body inputs are made here from the full images;
- `emotic_pre` (Tandon-A/emotic `mat2py.py --generate_npy`): `{train,val,test}.csv` and
  `{split}_{context,body,cat,cont}_arr.npy`, whose already resized context / body arrays are used.

One example per annotated person: `context` (the whole image resized), `body` (the body crop resized),
`categories` (26 multi-hot, `fer_jax.data.emotic.EMOTIC_CATEGORIES` order), `vad` ((v - 1) / 9),
`bbox` (normalised x1, y1, x2, y2), `gender`, `age`, `image_id`, `person`, `id`. Training people use
their one annotation; validation / test people the release's `combined_categories` /
`combined_continuous` fields as stored (not recomputed from the per-annotator lists). People with no
category or a missing (NaN) valence / arousal / dominance are left out and counted, as in mat2py.

The reading and validation live in plain functions (`detect_layout`, `load_release`,
`read_release_split`, `read_pre_split`, `read_skip_list`, `make_release_examples`,
`make_pre_example`) so they can be tested without TFDS. Malformed annotations stop the build with an
`EmoticFormatError` naming the file and the entry (split, image index and path, person; or CSV line
and Index) and what was expected; missing images are listed together before any is decoded; images
that cannot be decoded or whose size differs from the annotation stop the build after the split is read
through, listing them all (they can be left out with `skip_images.txt`, see README.md).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data import emotic

SPLITS = ('train', 'validation', 'test')
RELEASE_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}  # struct / file name -> split
SPLIT_CODES = {'train': 0, 'validation': 1, 'test': 2}
ANNOTATIONS = 'Annotations/Annotations.mat'
IMAGES = 'emotic'  # Image root of the release: emotic/<folder>/<filename>.
PRE_DIR = 'emotic_pre'  # mat2py's default output folder name.
CSV_HEADER = ('Index', 'Folder', 'Filename', 'Image Size', 'BBox', 'Categorical_Labels',
              'Continuous_Labels', 'Gender', 'Age')
NPY_ARRAYS = ('context', 'body', 'cat', 'cont')
SKIP_FILE = 'skip_images.txt'
# id = SPLIT_CODES[split] * ID_SPLIT_STRIDE + (release: image index * ID_IMAGE_STRIDE + person;
# emotic_pre: the CSV Index).
ID_SPLIT_STRIDE = 10**9
ID_IMAGE_STRIDE = 1000

_MAX_LISTED = 20

_MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
EMOTIC cannot be downloaded automatically: access is granted per request, for non-commercial research
and education only.

1. Request access with the form linked from http://sunai.uoc.edu/emotic/download.html (the EMOTIC
   project page; https://github.com/rkosti/emotic) - the download link comes by email. Download the
   images and the annotations (`Annotations.mat`).
2. Put them in the manual directory (`~/tensorflow_datasets/downloads/manual/` by default, or the
   folder given by `--manual_dir` / `tfds.download.DownloadConfig(manual_dir=...)` /
   `--config.dataset.manual_dir`) so that it holds:
     {ANNOTATIONS}                (structs train, val, test)
     {IMAGES}/mscoco/images/..., {IMAGES}/framesdb/images/..., {IMAGES}/emodb_small/images/...,
     {IMAGES}/ade20k/images/...   (i.e. {IMAGES}/<folder>/<filename> of every annotated image)
   Or the `emotic_pre` folder written by Tandon-A/emotic's `mat2py.py --generate_npy` (the manual dir
   itself or a sub-folder `{PRE_DIR}/`):
     train.csv, val.csv, test.csv
     train_context_arr.npy (N, 224, 224, 3), train_body_arr.npy (N, 128, 128, 3),
     train_cat_arr.npy (N, 26), train_cont_arr.npy (N, 3); the same for val_ and test_
   With both, the release is used (config `layout='pre'` forces emotic_pre). A split whose files are
   missing is not built.
3. Build, e.g. `python -c "import tfds_builders.emotic; from fer_jax.data import sources;
   sources.get_builder('emotic/c224_b128', manual_dir='DIR')"`, or through the trainer
   (`--config.dataset.manual_dir=DIR`, first use only). Configs: c224_b128 (Kosti et al.: 224 px
   context, 128 px body), c112_b64.
4. Missing or unreadable images stop the build, which lists them. To leave images out, list their
   `image_id` (`<folder>/<filename>`, e.g. `mscoco/images/COCO_train2014_000000000123.jpg`), one per
   line, in `{SKIP_FILE}` in the manual directory and build again.
"""


class EmoticFormatError(ValueError):
  """Malformed EMOTIC input; names the file, the entry (image / person or CSV line) and what was expected."""

  def __init__(self, path, message: str, *, entry: str | None = None):
    self.path = str(path)
    self.entry = entry
    where = self.path if entry is None else f'{self.path}, {entry}'
    super().__init__(f'{where}: {message}')


# ------------------------------------------------------------------ layout ----


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which layout `manual_dir` holds.

  kind: 'release' (sources: {'annotations': Annotations.mat}) or 'pre' (sources: {split: the folder
  holding `<name>.csv` and the `.npy` files}, in split order; only splits whose CSV exists).
  """
  kind: str
  manual_dir: epath.Path
  sources: Mapping[str, epath.Path]


def _pre_root(manual_dir: epath.Path) -> epath.Path | None:
  for root in (manual_dir, manual_dir / PRE_DIR):
    if any((root / f'{name}.csv').is_file() for name in RELEASE_SPLITS):
      return root
  return None


def _expected_paths(manual_dir: epath.Path) -> list[str]:
  return ['release:',
          f'  {manual_dir / ANNOTATIONS}',
          f'  {manual_dir / IMAGES}/<folder>/<filename>  (e.g. mscoco/images/..., framesdb/images/...)',
          f'emotic_pre (in {manual_dir} or {manual_dir / PRE_DIR}):',
          '  train.csv, val.csv, test.csv (any of them)',
          '  <split>_context_arr.npy, <split>_body_arr.npy, <split>_cat_arr.npy, <split>_cont_arr.npy']


def detect_layout(manual_dir, prefer: str = 'auto') -> Layout:
  """The layout of `manual_dir`: the release if `Annotations/Annotations.mat` exists (unless
  prefer='pre'), else emotic_pre if a `{train,val,test}.csv` exists in it or in `emotic_pre/`.

  Raises:
    FileNotFoundError: no layout (listing every expected path), the preferred one missing, or the
      release's annotations without its `emotic/` image folder.
  """
  if prefer not in ('auto', 'release', 'pre'):
    raise ValueError(f"layout must be 'auto', 'release' or 'pre', got {prefer!r}")
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(
        f'EMOTIC manual dir {manual_dir} does not exist. Expected:\n' + '\n'.join(_expected_paths(manual_dir))
        + '\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  mat = manual_dir / ANNOTATIONS
  pre = _pre_root(manual_dir)
  if mat.is_file() and prefer != 'pre':
    if not (manual_dir / IMAGES).is_dir():
      raise FileNotFoundError(
          f'EMOTIC annotations {mat} found but not the image folder {manual_dir / IMAGES}; expected '
          f'{IMAGES}/<folder>/<filename> (e.g. {IMAGES}/mscoco/images/...).\n\n'
          + _MANUAL_DOWNLOAD_INSTRUCTIONS)
    if pre is not None:
      logging.info('EMOTIC: %s holds the release and emotic_pre files (%s); using the release.',
                   manual_dir, pre)
    return Layout('release', manual_dir, {'annotations': mat})
  if pre is not None and prefer != 'release':
    sources = {split: pre for name, split in RELEASE_SPLITS.items() if (pre / f'{name}.csv').is_file()}
    return Layout('pre', manual_dir, sources)
  wanted = {'auto': 'either layout', 'release': 'the release', 'pre': 'emotic_pre'}[prefer]
  raise FileNotFoundError(
      f'No EMOTIC files ({wanted}) found in manual dir {manual_dir}. Expected:\n'
      + '\n'.join(_expected_paths(manual_dir)) + '\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)


# ---------------------------------------------------------------- records ----


@dataclasses.dataclass(frozen=True)
class Person:
  """One kept person of the release: the labels, ready for the record."""
  person: int  # Index in the image's `person` array (0-based).
  box: tuple[float, float, float, float]  # Clamped to the image (pixel edges).
  categories: np.ndarray  # (26,) float32 multi-hot.
  vad: np.ndarray  # (3,) float32 in [0, 1].
  gender: int
  age: int


@dataclasses.dataclass(frozen=True)
class ReleaseImage:
  """One image of the release with its kept people."""
  index: int  # Index in the split's struct array (0-based).
  image_id: str  # '<folder>/<filename>'.
  width: int  # image_size.n_col
  height: int  # image_size.n_row
  people: tuple[Person, ...]
  where: str  # For messages: 'Annotations.mat, train[12] (mscoco/images/...)'.


@dataclasses.dataclass
class Counts:
  """What was read from one split (logged)."""
  images: int = 0
  people: int = 0
  kept: int = 0
  no_categories: int = 0
  no_vad: int = 0
  clamped: int = 0
  skipped: int = 0


# ---------------------------------------------------------- release (.mat) ----


def _mat_struct_type():
  from scipy.io.matlab import mat_struct  # pylint: disable=import-outside-toplevel
  return mat_struct


def _as_list(value) -> list:
  """A struct / cell array squeezed by loadmat -> list: arrays -> their elements, empty -> [],
  a scalar (one struct, one string) -> [it]."""
  if isinstance(value, np.ndarray):
    return list(value.reshape(-1))
  return [value]


def load_release(path) -> dict[str, list]:
  """{'train' | 'validation' | 'test': [image struct, ...]} of the splits `Annotations.mat` holds.

  Raises EmoticFormatError if the file is not a readable MAT file or holds none of train / val / test.
  """
  import scipy.io  # pylint: disable=import-outside-toplevel
  path = epath.Path(path)
  try:
    with path.open('rb') as f:
      mat = scipy.io.loadmat(io.BytesIO(f.read()), squeeze_me=True, struct_as_record=False)
  except Exception as e:  # pylint: disable=broad-except  # scipy raises several types for bad files.
    raise EmoticFormatError(path, f'cannot read as a MAT file ({type(e).__name__}: {e})') from e
  out = {split: _as_list(mat[name]) for name, split in RELEASE_SPLITS.items() if name in mat}
  if not out:
    names = sorted(k for k in mat if not k.startswith('__'))
    raise EmoticFormatError(path, f'holds the variables {names}, expected one or more of train, val, test '
                            '(struct arrays of images)')
  return out


def _field(struct, name: str, path, entry: str, what: str = 'struct'):
  if not isinstance(struct, _mat_struct_type()):
    raise EmoticFormatError(path, f'{what} is {type(struct).__name__}, expected a struct with field '
                            f'{name!r}', entry=entry)
  if name not in struct._fieldnames:  # pylint: disable=protected-access
    raise EmoticFormatError(
        path, f'{what} has no field {name!r} (it has {", ".join(struct._fieldnames)})',  # pylint: disable=protected-access
        entry=entry)
  return getattr(struct, name)


def _text(value, path, entry: str, what: str, allow_empty: bool = False) -> str | None:
  if isinstance(value, np.ndarray) and value.size == 0:
    value = ''
  if not isinstance(value, str):
    raise EmoticFormatError(path, f'{what} is {value!r}, expected a string', entry=entry)
  if not value and not allow_empty:
    raise EmoticFormatError(path, f'{what} is empty, expected a string', entry=entry)
  return value


def _safe_relative(text: str, path, entry: str, what: str) -> str:
  rel = text.strip().replace('\\', '/').strip('/') if text else ''
  parts = rel.split('/')
  if not rel or text.strip().startswith('/') or '..' in parts or '' in parts:
    raise EmoticFormatError(path, f'{what} is {text!r}, expected a relative path such as '
                            "'mscoco/images'", entry=entry)
  return rel


def _positive_int(value, path, entry: str, what: str) -> int:
  try:
    v = float(np.asarray(value, np.float64).reshape(()))
  except (TypeError, ValueError):
    v = float('nan')
  if not (math.isfinite(v) and v == int(v) and v > 0):
    raise EmoticFormatError(path, f'{what} is {value!r}, expected a positive integer', entry=entry)
  return int(v)


def _category_names(value, path, entry: str, what: str) -> list[str]:
  """The category names of a cell array / string; empty strings (an empty MATLAB char) are dropped."""
  names = ['' if isinstance(n, np.ndarray) and n.size == 0 else n for n in _as_list(value)]
  for name in names:
    if not isinstance(name, str):
      raise EmoticFormatError(path, f'{what} holds {name!r}, expected category names (strings)',
                              entry=entry)
  return [n for n in names if n.strip()]


def _vad_values(struct, path, entry: str, what: str) -> list[float]:
  out = []
  for name in emotic.VAD_NAMES:
    value = _field(struct, name, path, entry, what)
    if isinstance(value, np.ndarray) and value.size == 0:
      out.append(float('nan'))  # Not rated.
      continue
    try:
      out.append(float(np.asarray(value, np.float64).reshape(())))
    except (TypeError, ValueError) as e:
      raise EmoticFormatError(path, f'{what}.{name} is {value!r}, expected a number', entry=entry) from e
  return out


def _read_person(struct, split: str, path, entry: str, width: int, height: int,
                 counts: Counts, index: int) -> Person | None:
  """The kept person, or None (no category / NaN valence-arousal-dominance, counted)."""
  box = _field(struct, 'body_bbox', path, entry, 'person')
  try:
    clamped = emotic.clamp_box(box, width, height)
  except ValueError as e:
    raise EmoticFormatError(path, f'{e} (image_size n_col={width}, n_row={height})', entry=entry) from e
  if split == 'train':
    ann = _field(struct, 'annotations_categories', path, entry, 'person')
    if isinstance(ann, np.ndarray):
      raise EmoticFormatError(path, f'annotations_categories holds {ann.size} annotations, expected one '
                              'struct for a training person', entry=entry)
    names = _category_names(_field(ann, 'categories', path, entry, 'annotations_categories'), path,
                            entry, 'annotations_categories.categories')
    cont = _field(struct, 'annotations_continuous', path, entry, 'person')
    vad_what = 'annotations_continuous'
  else:
    names = _category_names(_field(struct, 'combined_categories', path, entry, 'person'), path, entry,
                            'combined_categories')
    cont = _field(struct, 'combined_continuous', path, entry, 'person')
    vad_what = 'combined_continuous'
  if isinstance(cont, np.ndarray) and cont.size == 0:
    vad = [float('nan')] * 3
  else:
    vad = _vad_values(cont, path, entry, vad_what)
  gender = _field(struct, 'gender', path, entry, 'person')
  age = _field(struct, 'age', path, entry, 'person')
  try:
    categories = emotic.categories_to_multi_hot(names)
    gender_code = emotic.gender_code(_text(gender, path, entry, 'gender', allow_empty=True))
    age_code = emotic.age_code(_text(age, path, entry, 'age', allow_empty=True))
  except ValueError as e:
    raise EmoticFormatError(path, str(e), entry=entry) from e
  if not names:
    counts.no_categories += 1
    return None
  if not all(math.isfinite(v) for v in vad):
    counts.no_vad += 1
    return None
  try:
    scaled = emotic.scale_vad(vad)
  except ValueError as e:
    raise EmoticFormatError(path, f'{vad_what}: {e}', entry=entry) from e
  b = np.asarray(box, np.float64).reshape(-1)
  counts.clamped += tuple(b) != clamped
  return Person(index, clamped, categories, scaled, gender_code, age_code)


def read_release_split(structs: Sequence, split: str, path, skip: frozenset[str] = frozenset(),
                       ) -> tuple[list[ReleaseImage], Counts]:
  """Validates the image structs of one split; returns the images with their kept people.

  Each image needs `filename`, `folder` (relative paths), `image_size.n_col` / `n_row` (positive
  integers: width / height) and `person` (one struct or an array). Each person needs `body_bbox`
  (x1, y1, x2, y2, clamped to the image; inverted or outside is an error), `gender`, `age` and, in
  train, `annotations_categories.categories` + `annotations_continuous.{valence,arousal,dominance}`;
  in validation / test `combined_categories` + `combined_continuous`. Images whose `image_id` is in
  `skip` are left out (counted). Images are not opened here.
  """
  name = {v: k for k, v in RELEASE_SPLITS.items()}[split]
  counts = Counts()
  images, seen = [], {}
  for i, struct in enumerate(structs):
    entry = f'{name}[{i}]'
    folder = _safe_relative(_text(_field(struct, 'folder', path, entry, 'image'), path, entry, 'folder'),
                            path, entry, 'folder')
    filename = _safe_relative(
        _text(_field(struct, 'filename', path, entry, 'image'), path, entry, 'filename'), path, entry,
        'filename')
    image_id = f'{folder}/{filename}'
    entry = f'{name}[{i}] ({image_id})'
    size = _field(struct, 'image_size', path, entry, 'image')
    width = _positive_int(_field(size, 'n_col', path, entry, 'image_size'), path, entry,
                          'image_size.n_col')
    height = _positive_int(_field(size, 'n_row', path, entry, 'image_size'), path, entry,
                           'image_size.n_row')
    if image_id in seen:
      raise EmoticFormatError(path, f'image listed twice in {name} (also {name}[{seen[image_id]}]), '
                              'expected each image once with all its people', entry=entry)
    seen[image_id] = i
    persons = _as_list(_field(struct, 'person', path, entry, 'image'))
    counts.images += 1
    counts.people += len(persons)
    if image_id in skip:
      counts.skipped += len(persons)
      continue
    if len(persons) >= ID_IMAGE_STRIDE or i >= ID_SPLIT_STRIDE // ID_IMAGE_STRIDE:
      raise EmoticFormatError(path, f'{len(persons)} people in image {i}, expected fewer than '
                              f'{ID_IMAGE_STRIDE} people and {ID_SPLIT_STRIDE // ID_IMAGE_STRIDE} images '
                              '(the id feature packs split, image and person)', entry=entry)
    people = []
    for p, person in enumerate(persons):
      kept = _read_person(person, split, path, f'{entry}, person {p}', width, height, counts, p)
      if kept is not None:
        people.append(kept)
    counts.kept += len(people)
    if people:
      images.append(ReleaseImage(i, image_id, width, height, tuple(people), f'{path}, {entry}'))
  return images, counts


def read_skip_list(manual_dir) -> frozenset[str]:
  """The image_ids listed in `<manual_dir>/skip_images.txt` ('#' comments and blank lines ignored)."""
  path = epath.Path(manual_dir) / SKIP_FILE
  if not path.exists():
    return frozenset()
  out = set()
  for line in path.read_text(encoding='utf-8-sig').splitlines():
    entry = line.split('#', 1)[0].strip().replace('\\', '/')
    if entry:
      out.add(entry)
  return frozenset(out)


def _listed(lines: Sequence[str], image_ids: Sequence[str]) -> str:
  shown = [f'  {p}' for p in lines[:_MAX_LISTED]]
  if len(lines) > _MAX_LISTED:
    with tempfile.NamedTemporaryFile('w', prefix='emotic_problem_images_', suffix='.txt',
                                     delete=False) as f:
      f.write(''.join(f'{n}\n' for n in image_ids))
    shown.append(f'  ... and {len(lines) - _MAX_LISTED} more (all {len(image_ids)} image ids: {f.name})')
  return '\n'.join(shown)


def _log_counts(source, split: str, counts: Counts) -> None:
  logging.info('EMOTIC %s %s: %d images, %d people; kept %d; left out %d without categories, %d '
               'without valence / arousal / dominance, %d skipped (%s); %d boxes clamped to the image.',
               source, split, counts.images, counts.people, counts.kept, counts.no_categories,
               counts.no_vad, counts.skipped, SKIP_FILE, counts.clamped)


def read_release(layout: Layout, *, check_images: bool = True) -> dict[str, list[ReleaseImage]]:
  """{split: images with kept people} of the release (splits without kept people are left out);
  with `check_images`, every image file must exist (else one error listing the missing ones)."""
  path = layout.sources['annotations']
  skip = read_skip_list(layout.manual_dir)
  out, used = {}, set()
  for split, structs in load_release(path).items():
    images, counts = read_release_split(structs, split, path, skip)
    _log_counts(path, split, counts)
    used.update(_image_ids(structs) & skip)
    if images:
      out[split] = images
  missing = [im.image_id for images in out.values() for im in images
             if check_images and not (layout.manual_dir / IMAGES / im.image_id).is_file()]
  if missing:
    raise EmoticFormatError(
        layout.manual_dir / IMAGES, f'{len(missing)} annotated image(s) missing:\n'
        + _listed(missing, missing)
        + f'\nRestore them, or list their image ids in {layout.manual_dir / SKIP_FILE} to leave them out.')
  if skip - used:
    logging.warning('%s: %d entr(y/ies) match no annotated image: %s', layout.manual_dir / SKIP_FILE,
                    len(skip - used), sorted(skip - used)[:_MAX_LISTED])
  return out


def _image_ids(structs) -> set[str]:
  out = set()
  for s in structs:
    try:
      out.add(f'{str(s.folder).strip("/")}/{str(s.filename).strip("/")}')
    except AttributeError:
      pass
  return out


def decode_image(path) -> np.ndarray:
  """Image file -> (H, W, 3) uint8 RGB as stored (EXIF orientation not applied). EmoticFormatError
  naming the file when PIL cannot decode it."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = epath.Path(path)
  try:
    with path.open('rb') as f, Image.open(f) as im:
      im.load()
      return np.asarray(im.convert('RGB'), np.uint8)
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise EmoticFormatError(path, f'cannot decode image ({type(e).__name__}: {e})') from e


def example_id(split: str, first: int, person: int | None = None) -> int:
  """The `id` feature: split code * 1e9 + (image index * 1000 + person | CSV Index)."""
  inner = first if person is None else first * ID_IMAGE_STRIDE + person
  return SPLIT_CODES[split] * ID_SPLIT_STRIDE + inner


def make_release_examples(image: ReleaseImage, split: str, manual_dir, context_size: int,
                          body_size: int) -> list[tuple[int, dict]]:
  """(id, example) of every kept person of one image (the image is decoded once).

  Raises EmoticFormatError naming the file and its annotation if it cannot be decoded or its size is
  not the annotated image_size.
  """
  path = epath.Path(manual_dir) / IMAGES / image.image_id
  pixels = decode_image(path)
  h, w = pixels.shape[:2]
  if (w, h) != (image.width, image.height):
    raise EmoticFormatError(path, f'image is {w}x{h} (width x height), the annotation says '
                            f'{image.width}x{image.height} (image_size.n_col x n_row; {image.where})')
  context = emotic.resize(pixels, context_size)
  out = []
  for p in image.people:
    body = emotic.resize(emotic.crop_body(pixels, p.box), body_size)
    key = example_id(split, image.index, p.person)
    out.append((key, {
        'context': context,
        'body': body,
        'categories': p.categories,
        'vad': p.vad,
        'bbox': emotic.normalise_box(p.box, w, h),
        'gender': np.int32(p.gender),
        'age': np.int32(p.age),
        'image_id': image.image_id,
        'person': np.int32(p.person),
        'id': np.int64(key),
    }))
  return out


# ------------------------------------------------------------- emotic_pre ----


@dataclasses.dataclass(frozen=True)
class PreRow:
  """One CSV row of emotic_pre (one person)."""
  index: int  # The CSV Index (= row of the .npy arrays).
  image_id: str
  person: int  # Occurrence of this image among the CSV rows so far (0-based).
  width: int
  height: int
  box: tuple[float, float, float, float]
  categories: np.ndarray  # (26,) float32 from Categorical_Labels.
  vad: np.ndarray  # (3,) float32 scaled, from Continuous_Labels.
  gender: int
  age: int


@dataclasses.dataclass
class PreSplit:
  """Rows and memory-mapped arrays of one emotic_pre split."""
  rows: list[PreRow]
  arrays: dict[str, np.ndarray]  # 'context', 'body', 'cat', 'cont'.
  paths: dict[str, epath.Path]
  csv_path: epath.Path


def _literal(text: str, csv_path, entry: str, column: str, want: str):
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
    raise EmoticFormatError(csv_path, f'{column} is {text!r}, expected {want}', entry=entry) from e


def _numbers(value, n: int, csv_path, entry: str, column: str, text: str, want: str) -> list[float]:
  ok = (isinstance(value, (list, tuple)) and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
  if not ok:
    raise EmoticFormatError(csv_path, f'{column} is {text!r}, expected {want}', entry=entry)
  return [float(v) for v in value]


def _parse_pre_row(fields: list[str], line: int, row_index: int, csv_path, seen: dict) -> PreRow:
  entry = f'line {line}'
  if len(fields) != len(CSV_HEADER):
    raise EmoticFormatError(csv_path, f'{len(fields)} columns, expected {len(CSV_HEADER)} '
                            f'({", ".join(CSV_HEADER)})', entry=entry)
  cell = dict(zip(CSV_HEADER, fields))
  try:
    index = int(cell['Index'].strip())
  except ValueError:
    index = None
  if index != row_index:
    raise EmoticFormatError(csv_path, f'Index is {cell["Index"]!r}, expected {row_index} (rows numbered '
                            'from 0 in file order, as mat2py writes them)', entry=entry)
  entry = f'line {line} (Index {index})'
  folder = _safe_relative(cell['Folder'], csv_path, entry, 'Folder')
  filename = _safe_relative(cell['Filename'], csv_path, entry, 'Filename')
  image_id = f'{folder}/{filename}'
  size_want = '[width, height]: 2 positive integers, e.g. [640, 480]'
  size = _numbers(_literal(cell['Image Size'], csv_path, entry, 'Image Size', size_want), 2, csv_path,
                  entry, 'Image Size', cell['Image Size'], size_want)
  if not all(v > 0 and v == int(v) for v in size):
    raise EmoticFormatError(csv_path, f'Image Size is {cell["Image Size"]!r}, expected {size_want}',
                            entry=entry)
  width, height = int(size[0]), int(size[1])
  box_want = '[x1, y1, x2, y2]: 4 numbers'
  box = _numbers(_literal(cell['BBox'], csv_path, entry, 'BBox', box_want), 4, csv_path, entry, 'BBox',
                 cell['BBox'], box_want)
  x1, y1, x2, y2 = box
  if not (x2 > x1 and y2 > y1):
    raise EmoticFormatError(csv_path, f'BBox {cell["BBox"]} is inverted or empty: expected x1 < x2 and '
                            'y1 < y2', entry=entry)
  if not (0 <= x1 and 0 <= y1 and x2 <= width and y2 <= height):
    raise EmoticFormatError(csv_path, f'BBox {cell["BBox"]} runs outside the {width}x{height} image '
                            '(Image Size); mat2py clamps boxes to the image, expected 0 <= x1 < x2 <= '
                            'width and 0 <= y1 < y2 <= height', entry=entry)
  cat_want = "a list of category names, e.g. ['Engagement', 'Happiness']"
  names = _literal(cell['Categorical_Labels'], csv_path, entry, 'Categorical_Labels', cat_want)
  if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
    raise EmoticFormatError(csv_path, f'Categorical_Labels is {cell["Categorical_Labels"]!r}, expected '
                            f'{cat_want}', entry=entry)
  if not names:
    raise EmoticFormatError(csv_path, 'Categorical_Labels is empty, expected at least one category '
                            '(mat2py keeps only annotated people)', entry=entry)
  vad_want = '[valence, arousal, dominance]: 3 numbers in [1, 10]'
  vad = _numbers(_literal(cell['Continuous_Labels'], csv_path, entry, 'Continuous_Labels', vad_want), 3,
                 csv_path, entry, 'Continuous_Labels', cell['Continuous_Labels'], vad_want)
  try:
    categories = emotic.categories_to_multi_hot(names)
    scaled = emotic.scale_vad(vad)
    gender = emotic.gender_code(cell['Gender'])
    age = emotic.age_code(cell['Age'])
  except ValueError as e:
    raise EmoticFormatError(csv_path, str(e), entry=entry) from e
  person = seen.get(image_id, 0)
  seen[image_id] = person + 1
  return PreRow(index, image_id, person, width, height, (x1, y1, x2, y2), categories, scaled, gender, age)


def _read_pre_csv(csv_path: epath.Path) -> list[PreRow]:
  rows, seen = [], {}
  with csv_path.open('rb') as raw, io.TextIOWrapper(raw, encoding='utf-8-sig', newline='') as f:
    reader = csv.reader(f)
    try:
      header = next(reader, None)
      if header is None or tuple(c.strip() for c in header) != CSV_HEADER:
        raise EmoticFormatError(csv_path, f'header is {header!r}, expected {",".join(CSV_HEADER)!r}',
                                entry='line 1')
      line = 1
      for fields in reader:
        start, line = line + 1, reader.line_num
        if not fields:
          continue
        rows.append(_parse_pre_row(fields, start, len(rows), csv_path, seen))
    except csv.Error as e:
      raise EmoticFormatError(csv_path, f'cannot read CSV ({e})', entry=f'line {line + 1}') from e
    except UnicodeDecodeError as e:
      raise EmoticFormatError(csv_path, f'not UTF-8 text ({e})') from e
  return rows


def _load_npy(path: epath.Path, mmap: bool) -> np.ndarray:
  if not path.is_file():
    raise EmoticFormatError(path, 'file is missing (expected beside the split\'s CSV)')
  try:
    if mmap:
      return np.load(os.fspath(path), mmap_mode='r', allow_pickle=False)
    with path.open('rb') as f:
      return np.load(f, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise EmoticFormatError(path, f'cannot read as .npy without pickle ({type(e).__name__}: {e})') from e


def read_pre_split(root, split: str, skip: frozenset[str] = frozenset()) -> PreSplit:
  """Reads and validates one emotic_pre split: `<name>.csv` and its four `.npy` files.

  Shapes: context (N, S, S, 3) uint8, body (N, B, B, 3) uint8 (mat2py: S = 224, B = 128), cat (N, 26)
  and cont (N, 3) numbers, N = the number of CSV rows; every cat row must be the multi-hot of the row's
  Categorical_Labels and every cont row its Continuous_Labels. Rows whose image_id is in `skip` are
  dropped (the arrays are memory-mapped and indexed by Index).
  """
  root = epath.Path(root)
  name = {v: k for k, v in RELEASE_SPLITS.items()}[split]
  csv_path = root / f'{name}.csv'
  rows = _read_pre_csv(csv_path)
  n = len(rows)
  paths = {a: root / f'{name}_{a}_arr.npy' for a in NPY_ARRAYS}
  arrays = {a: _load_npy(p, mmap=a in ('context', 'body')) for a, p in paths.items()}
  for a in ('context', 'body'):
    arr = arrays[a]
    if not (arr.ndim == 4 and arr.shape[0] == n and arr.shape[1] == arr.shape[2] > 0
            and arr.shape[3] == 3 and arr.dtype == np.uint8):
      side = {'context': 224, 'body': 128}[a]
      raise EmoticFormatError(paths[a], f'holds {arr.dtype} {arr.shape}, expected uint8 ({n}, S, S, 3) '
                              f'(S = {side} from mat2py) for the {n} rows of {csv_path}')
  for a, width in (('cat', emotic.NUM_CATEGORIES), ('cont', 3)):
    arr = arrays[a]
    if arr.shape != (n, width) or arr.dtype.kind not in 'iuf':
      raise EmoticFormatError(paths[a], f'holds {arr.dtype} {arr.shape}, expected numbers ({n}, {width}) '
                              f'for the {n} rows of {csv_path}')
  cat = np.asarray(arrays['cat'], np.float64)
  cont = np.asarray(arrays['cont'], np.float64)
  for r in rows:
    if not np.array_equal(cat[r.index], r.categories):
      got = [emotic.EMOTIC_CATEGORIES[i] for i in np.flatnonzero(cat[r.index])]
      raise EmoticFormatError(
          paths['cat'], f'row {r.index} is {cat[r.index].tolist()} (categories {got}), expected the '
          f'multi-hot of {list(emotic.multi_hot_to_categories(r.categories))} (Categorical_Labels of '
          f'{csv_path}, Index {r.index})', entry=f'row {r.index}')
    want = emotic.unscale_vad(r.vad).astype(np.float64)
    if not np.allclose(cont[r.index], want, rtol=0, atol=1e-4):
      raise EmoticFormatError(
          paths['cont'], f'row {r.index} is {cont[r.index].tolist()}, expected {want.round(4).tolist()} '
          f'(Continuous_Labels of {csv_path}, Index {r.index})', entry=f'row {r.index}')
  kept = [r for r in rows if r.image_id not in skip]
  counts = Counts(images=len({r.image_id for r in rows}), people=n, kept=len(kept), skipped=n - len(kept))
  _log_counts(csv_path, split, counts)
  return PreSplit(kept, arrays, paths, csv_path)


def read_pre(layout: Layout) -> dict[str, PreSplit]:
  """{split: PreSplit} of every emotic_pre split present (splits without rows left out)."""
  skip = read_skip_list(layout.manual_dir)
  out = {}
  for split, root in layout.sources.items():
    s = read_pre_split(root, split, skip)
    if s.rows:
      out[split] = s
  return out


def make_pre_example(row: PreRow, data: PreSplit, split: str, context_size: int,
                     body_size: int) -> tuple[int, dict]:
  """(id, example) of one emotic_pre row: its stored context / body arrays (resized only when the
  config's size differs from the stored one), labels from the CSV (checked against the .npy)."""
  key = example_id(split, row.index)
  return key, {
      'context': emotic.resize(np.asarray(data.arrays['context'][row.index]), context_size),
      'body': emotic.resize(np.asarray(data.arrays['body'][row.index]), body_size),
      'categories': row.categories,
      'vad': row.vad,
      'bbox': emotic.normalise_box(row.box, row.width, row.height),
      'gender': np.int32(row.gender),
      'age': np.int32(row.age),
      'image_id': row.image_id,
      'person': np.int32(row.person),
      'id': np.int64(key),
  }


# ----------------------------------------------------------------- builder ----


@dataclasses.dataclass(eq=False)
class EmoticConfig(tfds.core.BuilderConfig):
  """Input sizes and layout of an EMOTIC build.

  Attributes:
    context_size: side of the whole-image input (Kosti et al.: 224).
    body_size: side of the body-crop input (Kosti et al.: 128).
    layout: 'auto' (the release when present, else emotic_pre), 'release' or 'pre'.
  """

  context_size: int = emotic.CONTEXT_SIZE
  body_size: int = emotic.BODY_SIZE
  layout: str = 'auto'

  def __post_init__(self):
    for name in ('context_size', 'body_size'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    if self.layout not in ('auto', 'release', 'pre'):
      raise ValueError(f"layout must be 'auto', 'release' or 'pre', got {self.layout!r}")


def _configs() -> list[EmoticConfig]:
  return [
      EmoticConfig(name='c224_b128', context_size=224, body_size=128,
                   description='Kosti et al.: the whole image resized to 224x224, the body crop to '
                               '128x128.'),
      EmoticConfig(name='c112_b64', context_size=112, body_size=64,
                   description='Half size: the whole image resized to 112x112, the body crop to 64x64.'),
  ]


class Builder(tfds.core.GeneratorBasedBuilder):
  """EMOTIC people: whole-image context, body crop, 26 categories, valence / arousal / dominance.

  Features (C = context_size, B = body_size): 'context' (C, C, 3) uint8, 'body' (B, B, 3) uint8 (raw
  bytes), 'categories' (26,) float32 multi-hot in `EMOTIC_CATEGORIES` order, 'vad' (3,) float32 in
  [0, 1], 'bbox' (4,) float32 normalised x1, y1, x2, y2, 'gender' (0 male, 1 female, -1 unknown) and
  'age' (0 kid, 1 teenager, 2 adult, -1) int32, 'image_id' text, 'person' int32, 'id' int64.
  Splits: 'train', 'validation', 'test' = the release's train, val, test (each only when present).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: the original release (Annotations.mat + images) and the emotic_pre '
               're-packaging; one example per annotated person; combined labels for val / test.',
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'c224_b128'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    c, b = cfg.context_size, cfg.body_size
    features = tfds.features.FeaturesDict({
        'context': tfds.features.Tensor(shape=(c, c, 3), dtype=np.uint8,
                                        encoding=tfds.features.Encoding.BYTES),
        'body': tfds.features.Tensor(shape=(b, b, 3), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.BYTES),
        'categories': tfds.features.Tensor(shape=(emotic.NUM_CATEGORIES,), dtype=np.float32),
        'vad': tfds.features.Tensor(shape=(3,), dtype=np.float32),
        'bbox': tfds.features.Tensor(shape=(4,), dtype=np.float32),
        'gender': np.int32,
        'age': np.int32,
        'image_id': tfds.features.Text(),
        'person': np.int32,
        'id': np.int64,
    })
    return self.dataset_info_from_configs(
        features=features,
        homepage='https://github.com/rkosti/emotic',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    layout = detect_layout(dl_manager.manual_dir, self.builder_config.layout)
    splits = read_release(layout) if layout.kind == 'release' else read_pre(layout)
    return {split: self._generate_examples(layout, split, data) for split, data in splits.items()}

  def _generate_examples(self, layout: Layout, split: str, data):
    """Yields (id, example). Release images that fail are collected and raised together at the end."""
    cfg = self.builder_config
    if layout.kind == 'pre':
      for row in data.rows:
        yield make_pre_example(row, data, split, cfg.context_size, cfg.body_size)
      return
    failed = []
    for image in data:
      try:
        examples = make_release_examples(image, split, layout.manual_dir, cfg.context_size,
                                         cfg.body_size)
      except EmoticFormatError as e:
        failed.append((image.image_id, str(e)))
        continue
      yield from examples
    if failed:
      images = epath.Path(layout.manual_dir) / IMAGES
      raise EmoticFormatError(
          images, f'{len(failed)} image(s) could not be used:\n'
          + _listed([m for _, m in failed], [n for n, _ in failed])
          + f'\nRepair them, or list their image ids (<folder>/<filename>, one per line) in '
          f'{epath.Path(layout.manual_dir) / SKIP_FILE} to leave them out, then build again.')
