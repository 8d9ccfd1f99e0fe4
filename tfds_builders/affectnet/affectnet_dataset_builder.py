"""AffectNet: in-the-wild faces with expression, valence / arousal and 68 landmarks (manual download).

Mollahosseini, Hasani and Mahoor, "AffectNet: A Database for Facial Expression, Valence, and Arousal
Computing in the Wild", IEEE Transactions on Affective Computing 10(1), 2019 (online 2017). About
420,000 manually annotated web images; expressions 0-10 = neutral, happy, sad, surprise, fear,
disgust, anger, contempt, none, uncertain, no-face; valence / arousal in [-1, 1] (-2 = not rated).

Two manual-dir layouts are read (README.md): the official release (`Manually_Annotated_Images/` and
`Manually_Annotated_file_lists/{training,validation}.csv`) and the re-packaged copy (`train_set/` and
`val_set/`, each with `images/N.jpg` and `annotations/N_{exp,val,aro,lnd}.npy`). Expressions 8-10
are dropped; the 8-class configs keep 0-7, the 7-class configs 0-6. Splits: `test` = the official
validation set; `train` / `validation` = the official training set, split by a SHA-1 hash of each
image's relative path (`in_validation`, 2 % to validation).

Each example is a face crop: the annotated face box made square, padded with black where it runs
past the photo and resized (`box`, `fer_jax.data.align.crop_face_box`), or a similarity alignment of
the 68 landmarks' 5-point subset to the ArcFace 112x112 template (`aligned`,
`fer_jax.data.align.warp_affine`), with the landmarks mapped into the crop.

The file handling and validation live in plain functions (`detect_layout`, `read_official_csv`,
`read_repackaged_set`, `read_skip_list`, `read_rows`, `in_validation`, `assign_splits`,
`decode_image`, `box_crop`, `aligned_crop`, `make_example`) so they can be tested without TFDS.
Malformed annotations stop the build with an `AffectNetFormatError` naming the file, the line and
what was expected; unreadable images stop it too, after the split is read through, listing every
such image (they can be left out explicitly with `skip_images.txt`, see README.md).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

EXPRESSION_NAMES = ('neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt',
                    'none', 'uncertain', 'no-face')
LABEL_NAMES = {8: EXPRESSION_NAMES[:8], 7: EXPRESSION_NAMES[:7]}
NUM_EXPRESSIONS = len(EXPRESSION_NAMES)  # Annotated ids 0..10; 8..10 are always dropped.
KEPT_EXPRESSIONS = 8  # Ids 0..7 are read in full; 8..10 only counted.
NUM_LANDMARKS = 68
NOT_RATED = -2.0  # Valence / arousal of rows that were not rated (uncertain, no-face).

CSV_HEADER = ('subDirectory_filePath', 'face_x', 'face_y', 'face_width', 'face_height',
              'facial_landmarks', 'expression', 'valence', 'arousal')
OFFICIAL_IMAGES = 'Manually_Annotated_Images'
OFFICIAL_LISTS = 'Manually_Annotated_file_lists'
# Official file list -> the split it feeds (training.csv -> train + validation by hash).
OFFICIAL_CSVS = {'training.csv': 'train', 'validation.csv': 'test'}
REPACKAGED_SETS = {'train_set': 'train', 'val_set': 'test'}
NPY_SUFFIXES = ('exp', 'val', 'aro', 'lnd')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
SKIP_FILE = 'skip_images.txt'

# By-image hash slice of the training set: SHA-1 of the image's relative path (`filename`), first 8
# bytes as a big-endian integer, modulo HASH_BUCKETS; buckets below VALIDATION_BUCKETS -> validation.
HASH_BUCKETS = 10_000
VALIDATION_BUCKETS = 200  # 2.00 %
SPLITS = ('train', 'validation', 'test')

_MAX_LISTED = 20  # Problem files listed in an error, then "... and N more".

_MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
AffectNet cannot be downloaded automatically: access is granted per request under its licence
(academic research only).

1. Request AffectNet at http://mohammadmahoor.com/affectnet/ (the request form and licence
   agreement are on that page; the download links come by email). Download the manually annotated
   part: the `Manually_Annotated_Images` archive(s) and `Manually_Annotated_file_lists.zip`.
2. Extract them into the manual directory (`~/tensorflow_datasets/downloads/manual/` by default,
   or the folder given by `--manual_dir` / `tfds.download.DownloadConfig(manual_dir=...)` /
   `--config.dataset.manual_dir`), so that it holds:
     {OFFICIAL_LISTS}/training.csv     (header subDirectory_filePath, face_x, ...)
     {OFFICIAL_LISTS}/validation.csv   (with or without that header)
     {OFFICIAL_IMAGES}/<subDirectory_filePath>, e.g. {OFFICIAL_IMAGES}/689/<hash>.jpg
   Either file list alone is accepted (only its splits are built).
   Or, for the re-packaged copy (224x224 face crops with .npy annotations):
     train_set/images/<N>.jpg, train_set/annotations/<N>_exp.npy, <N>_val.npy, <N>_aro.npy,
       <N>_lnd.npy
     val_set/images/<N>.jpg,   val_set/annotations/<N>_exp.npy, ...
3. Build, e.g. `python -c "from fer_jax.data import sources; sources.get_builder(
   'affectnet/expr8_112', manual_dir='DIR')"`, or through the trainer
   (`--config.dataset.manual_dir=DIR`, first use only). Configs: expr8_112, expr8_224,
   expr8_112_aligned (classes 0-7) and expr7_112, expr7_224, expr7_112_aligned (classes 0-6).
4. Missing or unreadable images stop the build, which lists them (more than 20: all their names
   in a text file it names). To leave such images out, list their `filename` (e.g.
   `{OFFICIAL_IMAGES}/689/<hash>.jpg`), one per line, in `{SKIP_FILE}` in the manual
   directory and build again.
"""


class AffectNetFormatError(ValueError):
  """Malformed AffectNet input; names the file (and line) and what was expected."""

  def __init__(self, path, message: str, *, line: int | None = None):
    self.path = str(path)
    self.line = line
    where = self.path if line is None else f'{self.path}, line {line}'
    super().__init__(f'{where}: {message}')


# ------------------------------------------------------------------ layout ----


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which layout `manual_dir` holds and its annotation sources, in split order.

  sources: {source split ('train' | 'test'): path}, where path is an official CSV file or a
  re-packaged set folder (`train_set/`, `val_set/`). Only existing sources are listed.
  """
  kind: str  # 'official' or 'repackaged'.
  manual_dir: epath.Path
  sources: Mapping[str, epath.Path]


def _expected_paths(manual_dir: epath.Path) -> list[str]:
  lists = manual_dir / OFFICIAL_LISTS
  out = ['official release:',
         f'  {lists / "training.csv"}  (and / or validation.csv)',
         f'  {lists / "validation.csv"}',
         f'  {manual_dir / OFFICIAL_IMAGES}/<subDirectory_filePath>',
         're-packaged copy (train_set and / or val_set):']
  for name in REPACKAGED_SETS:
    out.append(f'  {manual_dir / name / "images"}/<N>.jpg')
    out.append(f'  {manual_dir / name / "annotations"}/<N>_exp.npy, <N>_val.npy, <N>_aro.npy, '
               '<N>_lnd.npy')
  return out


def detect_layout(manual_dir) -> Layout:
  """Finds which AffectNet layout `manual_dir` holds.

  Official: `Manually_Annotated_file_lists/training.csv` and / or `validation.csv` exist (then
  `Manually_Annotated_Images/` must too). Re-packaged: `train_set/annotations/` and / or
  `val_set/annotations/` exist (with `images/` beside them).

  Raises:
    FileNotFoundError: neither layout (listing every expected path of both), or a layout without its
      image folder.
    AffectNetFormatError: both layouts in the same folder.
  """
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(
        f'AffectNet manual dir {manual_dir} does not exist. Expected:\n'
        + '\n'.join(_expected_paths(manual_dir)) + '\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  official = {split: manual_dir / OFFICIAL_LISTS / name for name, split in OFFICIAL_CSVS.items()
              if (manual_dir / OFFICIAL_LISTS / name).is_file()}
  repackaged = {split: manual_dir / name for name, split in REPACKAGED_SETS.items()
                if (manual_dir / name / 'annotations').is_dir()}
  if official and repackaged:
    raise AffectNetFormatError(
        manual_dir, f'holds both AffectNet layouts (official {sorted(map(str, official.values()))} '
        f'and re-packaged {sorted(map(str, repackaged.values()))}); expected one: point the manual '
        'dir at a folder with only one of them')
  if official:
    images = manual_dir / OFFICIAL_IMAGES
    if not images.is_dir():
      raise FileNotFoundError(
          f'AffectNet file lists found ({", ".join(str(p) for p in official.values())}) but not the '
          f'image folder {images}; expected the extracted {OFFICIAL_IMAGES} archive there.\n\n'
          + _MANUAL_DOWNLOAD_INSTRUCTIONS)
    return Layout('official', manual_dir, dict(sorted(official.items(), key=_split_order)))
  if repackaged:
    for path in repackaged.values():
      if not (path / 'images').is_dir():
        raise FileNotFoundError(
            f'AffectNet annotations found in {path / "annotations"} but no image folder '
            f'{path / "images"}; expected images/<N>.jpg beside annotations/.\n\n'
            + _MANUAL_DOWNLOAD_INSTRUCTIONS)
    return Layout('repackaged', manual_dir, dict(sorted(repackaged.items(), key=_split_order)))
  raise FileNotFoundError(
      f'No AffectNet files found in manual dir {manual_dir}. Expected either layout:\n'
      + '\n'.join(_expected_paths(manual_dir)) + '\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)


def _split_order(item):
  return SPLITS.index(item[0])


# ------------------------------------------------------------- annotations ----


@dataclasses.dataclass(frozen=True)
class Row:
  """One annotated image (expressions 0..7 only; 8..10 are counted, not kept)."""
  filename: str  # Path relative to the manual dir, '/'-separated (the `filename` feature).
  expression: int  # 0..7.
  valence: float  # [-1, 1], or -2 if not rated.
  arousal: float
  landmarks: np.ndarray  # (68, 2) float32 (x, y) in pixels of the image file.
  box: tuple[float, float, float, float] | None  # (x0, y0, x1, y1) pixel edges; None: whole image.
  where: str  # The annotation it comes from, for messages ('.../training.csv, line 7').


@dataclasses.dataclass
class SourceRows:
  """The rows of one annotation source (an official CSV or a re-packaged set)."""
  rows: list[Row]
  dropped: np.ndarray  # (11,) int64 count of rows per expression id that were not kept (8..10).


def _number(text: str) -> float | None:
  """Finite float of `text`, or None."""
  try:
    value = float(text)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) else None


def _parse_expression(path, line, text) -> int:
  t = str(text).strip()
  value = _number(t)
  if value is None or value != int(value) or not 0 <= value < NUM_EXPRESSIONS:
    raise AffectNetFormatError(
        path, f'expression is {text!r}, expected an integer in 0..{NUM_EXPRESSIONS - 1} '
        f'({", ".join(f"{i} {n}" for i, n in enumerate(EXPRESSION_NAMES))})', line=line)
  return int(value)


def _parse_affect(path, line, name, text) -> float:
  value = _number(str(text).strip())
  if value is None or not (-1.0 <= value <= 1.0 or value == NOT_RATED):
    raise AffectNetFormatError(
        path, f'{name} is {text!r}, expected a number in [-1, 1] or -2 (not rated)', line=line)
  return value


def _parse_landmarks(path, line, values: Sequence) -> np.ndarray:
  """136 numbers x1, y1, x2, y2, ... -> (68, 2) float32."""
  if len(values) != 2 * NUM_LANDMARKS:
    raise AffectNetFormatError(
        path, f'facial_landmarks has {len(values)} values, expected {2 * NUM_LANDMARKS} '
        f'({NUM_LANDMARKS} points as x1;y1;x2;y2;...)', line=line)
  try:  # Fast path: every value a finite number.
    out = np.asarray(values, np.float64)
    if np.isfinite(out).all():
      return out.reshape(NUM_LANDMARKS, 2).astype(np.float32)
  except (TypeError, ValueError):
    pass
  out = np.empty(2 * NUM_LANDMARKS, np.float64)
  for i, v in enumerate(values):
    value = _number(str(v).strip())
    if value is None:
      raise AffectNetFormatError(
          path, f'facial_landmarks value {i} is {v!r}, expected a finite number', line=line)
    out[i] = value
  return out.reshape(NUM_LANDMARKS, 2).astype(np.float32)


def _check_relative(path, line, rel: str) -> str:
  rel = rel.strip().replace('\\', '/')
  parts = rel.split('/')
  if not rel or rel.startswith('/') or '..' in parts or '' in parts:
    raise AffectNetFormatError(
        path, f'subDirectory_filePath is {rel!r}, expected a relative path such as '
        "'689/<hash>.jpg'", line=line)
  return rel


def _looks_like_data(row: Sequence[str]) -> bool:
  return len(row) == len(CSV_HEADER) and _number(row[1]) is not None


def _iter_csv(path: epath.Path) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of an official file list, without its header if it has one."""
  with path.open('rb') as raw, io.TextIOWrapper(raw, encoding='utf-8-sig', errors='replace',
                                                  newline='') as f:
    reader = csv.reader(f)
    line = 0
    try:
      for row in reader:
        start, line = line + 1, reader.line_num
        if start == 1:
          if tuple(c.strip() for c in row) == CSV_HEADER:
            continue
          if not _looks_like_data(row):
            raise AffectNetFormatError(
                path, f'bad header {",".join(row)[:200]!r}, expected {",".join(CSV_HEADER)!r} '
                '(or no header: a data row)', line=1)
        if not row:  # A blank line.
          continue
        yield start, row
    except csv.Error as e:
      raise AffectNetFormatError(path, f'cannot read CSV ({e})', line=line + 1) from e


def read_official_csv(path, images_prefix: str = OFFICIAL_IMAGES) -> SourceRows:
  """Reads and validates one official file list (`training.csv` or `validation.csv`).

  Every row must have 9 columns and an integer expression in 0..10. Rows with expression 0..7 must
  also have a numeric face box (width and height > 0), 136 finite landmark values and valence /
  arousal in [-1, 1] or -2; rows 8..10 (never kept) are only counted. A header row is optional.
  The same image twice is an error. Images are not opened here. `filename` = images_prefix +
  '/' + subDirectory_filePath (the path relative to the manual dir).
  """
  path = epath.Path(path)
  rows, seen = [], {}
  dropped = np.zeros(NUM_EXPRESSIONS, np.int64)
  for line, fields in _iter_csv(path):
    if len(fields) != len(CSV_HEADER):
      raise AffectNetFormatError(
          path, f'{len(fields)} columns (row starts {",".join(fields)[:60]!r}), expected '
          f'{len(CSV_HEADER)} ({",".join(CSV_HEADER)})', line=line)
    rel = _check_relative(path, line, fields[0])
    expression = _parse_expression(path, line, fields[6])
    if expression >= KEPT_EXPRESSIONS:
      dropped[expression] += 1
      continue
    box = []
    for name, text in zip(CSV_HEADER[1:5], fields[1:5]):
      value = _number(text.strip())
      if value is None:
        raise AffectNetFormatError(path, f'{name} is {text!r}, expected a number', line=line)
      box.append(value)
    x, y, w, h = box
    if not (w > 0 and h > 0):
      raise AffectNetFormatError(
          path, f'face box has width {w:g}, height {h:g}, expected both > 0', line=line)
    landmarks = _parse_landmarks(path, line, fields[5].split(';'))
    valence = _parse_affect(path, line, 'valence', fields[7])
    arousal = _parse_affect(path, line, 'arousal', fields[8])
    filename = f'{images_prefix}/{rel}'
    if filename in seen:
      raise AffectNetFormatError(
          path, f'image {rel!r} is listed twice (also line {seen[filename]}), expected each image '
          'once', line=line)
    seen[filename] = line
    rows.append(Row(filename, expression, valence, arousal, landmarks, (x, y, x + w, y + h),
                    f'{path}, line {line}'))
  return SourceRows(rows, dropped)


def _load_npy(path: epath.Path) -> np.ndarray:
  try:
    with path.open('rb') as f:
      return np.load(f, allow_pickle=False)
  except FileNotFoundError as e:
    raise AffectNetFormatError(path, 'annotation file is missing (expected beside the others of '
                               'this image)') from e
  except (OSError, ValueError, EOFError) as e:
    raise AffectNetFormatError(
        path, f'cannot read as .npy without pickle ({type(e).__name__}: {e}); expected a string '
        'or numeric array') from e


def _npy_values(path, arr: np.ndarray) -> list:
  """The elements of an npy array as Python str / numbers (strings decoded, stripped)."""
  if arr.dtype.kind not in 'USiuf':
    raise AffectNetFormatError(
        path, f'holds dtype {arr.dtype}, expected strings or numbers')
  out = arr.reshape(-1).tolist()
  return [v.decode('utf-8', 'replace').strip() if isinstance(v, bytes)
          else v.strip() if isinstance(v, str) else v for v in out]


def _npy_scalar(path, arr: np.ndarray):
  values = _npy_values(path, arr)
  if len(values) != 1:
    raise AffectNetFormatError(path, f'holds {len(values)} values (shape {arr.shape}), expected 1')
  return values[0]


def _image_ids(images_dir: epath.Path) -> list[tuple[str, str]]:
  """(id, file name) of every image in a re-packaged `images/` folder, numeric ids in order."""
  out = []
  for p in images_dir.iterdir():
    if p.name.startswith('.') or not p.name.lower().endswith(IMAGE_SUFFIXES):
      continue
    out.append((p.name.rsplit('.', 1)[0], p.name))
  out.sort(key=lambda t: (not t[0].isdigit(), int(t[0]) if t[0].isdigit() else 0, t[0]))
  for (a, na), (b, nb) in zip(out, out[1:]):
    if a == b:
      raise AffectNetFormatError(images_dir, f'images {na!r} and {nb!r} have the same id {a!r}; '
                                 'expected one image per annotation id')
  return out


def read_repackaged_set(set_dir) -> SourceRows:
  """Reads and validates one re-packaged set (`train_set/` or `val_set/`).

  Every image `images/<N>.jpg` (or .jpeg / .png) needs `annotations/<N>_exp.npy`: an expression
  0..10 stored as a string ('3') or a number. For expressions 0..7 also `<N>_val.npy`, `<N>_aro.npy`
  (a number in [-1, 1] or -2, as a string or a number) and `<N>_lnd.npy` (136 numbers, x1, y1, ...).
  Annotation files without an image are ignored (logged). The box is the whole image. `filename` =
  '<set folder name>/images/<file>' (relative to the manual dir holding the set folder).
  """
  set_dir = epath.Path(set_dir)
  images_dir, ann_dir = set_dir / 'images', set_dir / 'annotations'
  prefix = f'{set_dir.name}/images'
  rows = []
  dropped = np.zeros(NUM_EXPRESSIONS, np.int64)
  ids = _image_ids(images_dir)
  for image_id, name in ids:
    where = ann_dir / f'{image_id}_exp.npy'
    expression = _parse_expression(where, None, _npy_scalar(where, _load_npy(where)))
    if expression >= KEPT_EXPRESSIONS:
      dropped[expression] += 1
      continue
    affect = []
    for suffix, what in (('val', 'valence'), ('aro', 'arousal')):
      p = ann_dir / f'{image_id}_{suffix}.npy'
      affect.append(_parse_affect(p, None, what, _npy_scalar(p, _load_npy(p))))
    p = ann_dir / f'{image_id}_lnd.npy'
    landmarks = _parse_landmarks(p, None, _npy_values(p, _load_npy(p)))
    rows.append(Row(f'{prefix}/{name}', expression, affect[0], affect[1], landmarks, None,
                    str(where)))
  n_ann = sum(1 for p in ann_dir.iterdir() if p.name.endswith('_exp.npy'))
  if n_ann > len(ids):
    logging.warning('%s: %d expression annotation(s) without an image in %s are ignored.', ann_dir,
                    n_ann - len(ids), images_dir)
  return SourceRows(rows, dropped)


def read_skip_list(manual_dir) -> frozenset[str]:
  """The `filename`s listed in `<manual_dir>/skip_images.txt` ('#' comments, blank lines ignored)."""
  path = epath.Path(manual_dir) / SKIP_FILE
  if not path.exists():
    return frozenset()
  out = set()
  for line in path.read_text(encoding='utf-8-sig').splitlines():
    entry = line.split('#', 1)[0].strip().replace('\\', '/')
    if entry:
      out.add(entry)
  return frozenset(out)


def _listed(lines: Sequence[str], filenames: Sequence[str]) -> str:
  """The first lines, then where the full list of `filenames` (one per line, the format of
  skip_images.txt) was written when there are more."""
  shown = [f'  {p}' for p in lines[:_MAX_LISTED]]
  if len(lines) > _MAX_LISTED:
    with tempfile.NamedTemporaryFile('w', prefix='affectnet_problem_images_', suffix='.txt',
                                     delete=False) as f:
      f.write(''.join(f'{n}\n' for n in filenames))
    shown.append(f'  ... and {len(lines) - _MAX_LISTED} more (all {len(filenames)} file names: '
                 f'{f.name})')
  return '\n'.join(shown)


def read_rows(layout: Layout, *, check_images: bool = True) -> dict[str, list[Row]]:
  """{source split: rows with expression 0..7} of every source of `layout`.

  Images listed in `skip_images.txt` are removed (logged; an entry matching no image is logged as
  unused). With `check_images`, every remaining image file must exist (else an error listing the
  missing ones).
  """
  skip = read_skip_list(layout.manual_dir)
  used = set()
  out = {}
  for split, path in layout.sources.items():
    if layout.kind == 'official':
      source = read_official_csv(path)
    else:
      source = read_repackaged_set(path)
    rows = [r for r in source.rows if r.filename not in skip]
    used.update(r.filename for r in source.rows if r.filename in skip)
    counts = np.bincount([r.expression for r in rows], minlength=KEPT_EXPRESSIONS)
    logging.info('AffectNet %s: %d images with expression 0-7 (per class %s); dropped %d none, '
                 '%d uncertain, %d no-face; %d skipped (%s).', path, len(rows), counts.tolist(),
                 *source.dropped[KEPT_EXPRESSIONS:].tolist(), len(source.rows) - len(rows),
                 SKIP_FILE)
    out[split] = rows
  missing = [r.filename for rows in out.values() for r in rows
             if check_images and not (layout.manual_dir / r.filename).is_file()]
  if missing:
    raise AffectNetFormatError(
        layout.manual_dir, f'{len(missing)} annotated image(s) missing:\n' + _listed(missing, missing)
        + f'\nRestore them, or list them in {layout.manual_dir / SKIP_FILE} to leave them out.')
  unused = sorted(skip - used)
  if unused:
    logging.warning('%s: %d entr(y/ies) match no annotated image with expression 0-7: %s',
                    layout.manual_dir / SKIP_FILE, len(unused), unused[:_MAX_LISTED])
  return out


# ------------------------------------------------------------------ splits ----


def hash_bucket(filename: str) -> int:
  """int(first 8 bytes of SHA-1(filename), big-endian) % 10000: fixed per image on every machine."""
  digest = hashlib.sha1(filename.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') % HASH_BUCKETS


def in_validation(filename: str) -> bool:
  """Whether a training-set image goes to `validation` (2 % of images, by `hash_bucket`)."""
  return hash_bucket(filename) < VALIDATION_BUCKETS


def assign_splits(rows: Mapping[str, Sequence[Row]], classes: int) -> dict[str, list[Row]]:
  """{split: rows} with expression < `classes`; empty splits are left out.

  Source 'train' (training.csv / train_set) -> 'train' or 'validation' by `in_validation`; source
  'test' (validation.csv / val_set) -> 'test'. Rows keep their source order.
  """
  if classes not in LABEL_NAMES:
    raise ValueError(f'classes must be 7 or 8, got {classes!r}')
  out = {split: [] for split in SPLITS}
  for source, source_rows in rows.items():
    for r in source_rows:
      if r.expression >= classes:
        continue
      if source == 'train':
        out['validation' if in_validation(r.filename) else 'train'].append(r)
      else:
        out['test'].append(r)
  return {split: r for split, r in out.items() if r}


# ------------------------------------------------------------------- crops ----


def decode_image(path) -> np.ndarray:
  """Image file (JPEG, PNG, anything PIL reads) -> (H, W, 3) uint8 RGB, pixels as stored.

  EXIF orientation is not applied (the annotations are taken to be in the stored pixel grid).
  Raises AffectNetFormatError naming the file when PIL cannot decode it.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  try:
    with path.open('rb') as f, Image.open(f) as im:
      im.load()
      return np.asarray(im.convert('RGB'), np.uint8)
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise AffectNetFormatError(path, f'cannot decode image ({type(e).__name__}: {e})') from e


def box_crop(image: np.ndarray, box, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Square face crop (size, size, 3) uint8 and the (2, 3) map of image -> crop pixel centres.

  `box` (x0, y0, x1, y1) in pixel edges (None: the whole image). The square of side
  round(max(w, h)) centred on the box (`fer_jax.data.align.square_crop_box`, margin 0) is cut out
  with black where it runs past the image and resized with PIL's bilinear filter
  (`align.crop_face_box`). A point x maps to (x - left + 0.5) * size / side - 0.5 (likewise y).
  Raises `align.FaceOutsideFrameError` if the square misses the image.
  """
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  if box is None:
    box = (0.0, 0.0, float(w), float(h))
  crop = align.crop_face_box(image, box, size, margin=0.0)
  left, top, side = align.square_crop_box(box, 0.0)
  k = size / side
  matrix = np.array([[k, 0.0, k * (0.5 - left) - 0.5], [0.0, k, k * (0.5 - top) - 0.5]])
  return crop, matrix


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
  """Mean over f x f blocks (float32); `image` height and width are multiples of f."""
  h, w, c = image.shape
  return image.reshape(h // f, f, w // f, f, c).astype(np.float32).mean(axis=(1, 3))


@functools.lru_cache(maxsize=None)
def _template(template: str, size: int, scale: float) -> np.ndarray:
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  return align.template_points(template, size, scale)


def similarity_matrix(landmarks: np.ndarray, template: str = '5', size: int = 112,
                      scale: float = 1.0) -> np.ndarray:
  """(2, 3) float64 least-squares similarity of the landmarks onto `template` in a `size` crop.

  68 landmarks are reduced to 5 (eye centres, nose tip, mouth corners;
  `fer_jax.data.align.landmarks_68_to_5`) for the 5-point templates, as in `align.align_face`.
  """
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  lm = np.asarray(landmarks, np.float32)
  src = lm if template == '68' else np.asarray(align.landmarks_68_to_5(lm))
  return np.asarray(align.estimate_similarity(src, _template(template, size, scale)), np.float64)


def reduce_factor(matrix: np.ndarray, supersample: int) -> int:
  """Integer pre-shrink f >= 1 so that the warp shrinks by at most `supersample` (see aligned_crop)."""
  k = math.hypot(matrix[0, 0], matrix[1, 0])  # Crop pixels per image pixel.
  return max(1, math.ceil(1.0 / (k * supersample) - 1e-6))


_BUCKET = 64  # Warp inputs are zero-padded to a square of a multiple of this (few jit shapes).


def aligned_crop(image: np.ndarray, matrix: np.ndarray, size: int,
                 supersample: int = 4) -> np.ndarray:
  """The crop (size, size, 3) uint8 of `image` under the forward map `matrix` (image -> crop).

  Equivalent to `fer_jax.data.align.warp_affine(reduced, M', size, supersample=n)` rounded
  half-to-even and clipped to 0..255, where, with f = `reduce_factor(matrix, n)`, `reduced` is the
  image zero-padded at the bottom / right to multiples of f and averaged over f x f blocks (so the
  bilinear supersampled warp never shrinks by more than n), and M' = M composed with the block
  centres' positions (reduced pixel j <-> image x = f j + (f - 1) / 2). Outside the image is black.
  Only the part of the image that the crop samples is reduced and warped, zero-padded to a square
  side that is a multiple of 64, so every photo size compiles one of a few warp programs.
  """
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  f = reduce_factor(matrix, supersample)
  to_image = np.array([[f, 0.0, (f - 1) / 2], [0.0, f, (f - 1) / 2], [0.0, 0.0, 1.0]])
  m_red = np.vstack([matrix, [0.0, 0.0, 1.0]]) @ to_image  # reduced coords -> crop.
  inv = np.linalg.inv(m_red)
  corners = np.array([[-0.5, -0.5, 1.0], [size - 0.5, -0.5, 1.0], [-0.5, size - 0.5, 1.0],
                      [size - 0.5, size - 0.5, 1.0]])
  pts = corners @ inv[:2].T  # (4, 2) reduced coords of the crop's corners.
  h, w = image.shape[:2]
  hr, wr = -(-h // f), -(-w // f)
  x0 = max(int(math.floor(pts[:, 0].min())) - 1, 0)
  y0 = max(int(math.floor(pts[:, 1].min())) - 1, 0)
  x1 = min(int(math.floor(pts[:, 0].max())) + 3, wr)
  y1 = min(int(math.floor(pts[:, 1].max())) + 3, hr)
  if x0 >= x1 or y0 >= y1:
    raise align.FaceOutsideFrameError(
        f'the aligned crop lies outside the {w}x{h} image (landmarks far outside it?)')
  part = np.zeros(((y1 - y0) * f, (x1 - x0) * f, 3), np.uint8)
  src = image[y0 * f:y1 * f, x0 * f:x1 * f]
  part[:src.shape[0], :src.shape[1]] = src
  region = _block_mean(part, f) if f > 1 else part.astype(np.float32)
  side = _BUCKET * -(-max(region.shape[:2]) // _BUCKET)
  padded = np.zeros((side, side, 3), np.float32)
  padded[:region.shape[0], :region.shape[1]] = region
  shift = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
  m_region = (m_red @ shift)[:2]
  out = align.warp_affine(padded, m_region.astype(np.float32), size, supersample=supersample)
  return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def map_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(N, 2) points under a (2, 3) forward map, float32."""
  p = np.asarray(points, np.float64)
  return (p @ np.asarray(matrix, np.float64)[:, :2].T + matrix[:, 2]).astype(np.float32)


# ----------------------------------------------------------------- builder ----


@dataclasses.dataclass(eq=False)
class AffectNetConfig(tfds.core.BuilderConfig):
  """Classes and crop of an AffectNet build.

  Attributes:
    classes: 8 (expressions 0-7) or 7 (0-6, contempt dropped).
    crop: 'box' (`box_crop`: the face box made square, resized) or 'aligned' (`aligned_crop`:
      similarity of the landmarks onto `template`).
    size: crop height = width in pixels.
    template: '5' (ArcFace 5-point, from the 68 landmarks) or '68' (`align.MEAN_SHAPE_68`); aligned.
    scale: zoom-out of the template (1.0: the ArcFace framing); aligned only.
    supersample: samples per output pixel per axis in the aligned warp (anti-aliasing).
  """

  classes: int = 8
  crop: str = 'box'
  size: int = 112
  template: str = '5'
  scale: float = 1.0
  supersample: int = 4

  def __post_init__(self):
    if self.classes not in LABEL_NAMES:
      raise ValueError(f'classes must be 7 or 8, got {self.classes!r}')
    if self.crop not in ('box', 'aligned'):
      raise ValueError(f"crop must be 'box' or 'aligned', got {self.crop!r}")
    if self.template not in ('5', '68'):
      raise ValueError(f"template must be '5' or '68', got {self.template!r}")
    for name in ('size', 'supersample'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    if not self.scale > 0:
      raise ValueError(f'scale must be > 0, got {self.scale!r}')


def _configs() -> list[AffectNetConfig]:
  out = []
  for classes in (8, 7):
    what = ('expressions 0-7 (neutral ... contempt)' if classes == 8
            else 'expressions 0-6 (neutral ... anger; contempt dropped)')
    for size in (112, 224):
      out.append(AffectNetConfig(
          name=f'expr{classes}_{size}', classes=classes, crop='box', size=size,
          description=f'{what}; {size}x{size} RGB crops of the face box made square (black where '
                      'it runs past the photo).'))
    out.append(AffectNetConfig(
        name=f'expr{classes}_112_aligned', classes=classes, crop='aligned', size=112, template='5',
        scale=1.0, supersample=4,
        description=f'{what}; 112x112 RGB crops aligned by a similarity of the 68 landmarks\' eye '
                    'centres, nose tip and mouth corners onto the ArcFace 5-point template.'))
  return out


def make_example(row: Row, manual_dir, cfg: AffectNetConfig) -> dict:
  """The example of one row (decodes and crops its image). Raises AffectNetFormatError naming the
  image (and its annotation) if the image cannot be decoded or the crop misses it."""
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  path = epath.Path(manual_dir) / row.filename
  image = decode_image(path)
  try:
    if cfg.crop == 'box':
      crop, matrix = box_crop(image, row.box, cfg.size)
    else:
      matrix = similarity_matrix(row.landmarks, cfg.template, cfg.size, cfg.scale)
      crop = aligned_crop(image, matrix, cfg.size, cfg.supersample)
  except align.FaceOutsideFrameError as e:
    raise AffectNetFormatError(path, f'{e} (annotation: {row.where})') from e
  return {
      'image': crop,
      'label': row.expression,
      'valence': np.float32(row.valence),
      'arousal': np.float32(row.arousal),
      'landmarks': map_points(matrix, row.landmarks),
      'filename': row.filename,
  }


class Builder(tfds.core.GeneratorBasedBuilder):
  """AffectNet face crops with expression label, valence / arousal and landmarks.

  Features (S = size): 'image' (S, S, 3) uint8 (raw bytes), 'label' (ClassLabel:
  neutral, happy, sad, surprise, fear, disgust, anger[, contempt]), 'valence', 'arousal' (float32
  in [-1, 1]; -2 where not rated), 'landmarks' (68, 2) float32 in crop pixels, 'filename' (the
  image path relative to the manual dir). Splits: 'train', 'validation' (2 % of the training set
  by `in_validation`), 'test' (the official validation set); each only when it has images.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: official and re-packaged layouts; 7 / 8 classes; box crops at '
               '112 / 224 px and ArcFace-aligned 112-px crops; 2 % hash validation slice.',
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'expr8_112'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    s = cfg.size
    features = tfds.features.FeaturesDict({
        # Raw bytes: exact, no codec, fastest to read (README.md, Storage).
        'image': tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.BYTES),
        'label': tfds.features.ClassLabel(names=LABEL_NAMES[cfg.classes]),
        'valence': np.float32,
        'arousal': np.float32,
        'landmarks': tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32),
        'filename': tfds.features.Text(),
    })
    return self.dataset_info_from_configs(
        features=features,
        supervised_keys=('image', 'label'),
        homepage='http://mohammadmahoor.com/affectnet/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    layout = detect_layout(dl_manager.manual_dir)
    splits = assign_splits(read_rows(layout), self.builder_config.classes)
    return {split: self._generate_examples(rows, layout.manual_dir)
            for split, rows in splits.items()}

  def _generate_examples(self, rows: Sequence[Row], manual_dir):
    """Yields (filename, example); images that fail are collected and raised together at the end."""
    cfg = self.builder_config
    failed = []
    for row in rows:
      try:
        example = make_example(row, manual_dir, cfg)
      except AffectNetFormatError as e:
        failed.append((row.filename, str(e)))
        continue
      yield row.filename, example
    if failed:
      raise AffectNetFormatError(
          manual_dir, f'{len(failed)} image(s) could not be used:\n'
          + _listed([m for _, m in failed], [n for n, _ in failed])
          + f'\nRepair them, or list their paths (relative to the manual dir, one per line) in '
          f'{epath.Path(manual_dir) / SKIP_FILE} to leave them out, then build again.')

