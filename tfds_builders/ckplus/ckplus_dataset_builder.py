"""CK+ (Extended Cohn-Kanade): posed expression sequences, emotion labels, FACS codes, landmarks.

Lucey, Cohn, Kanade, Saragih, Ambadar and Matthews, "The Extended Cohn-Kanade Dataset (CK+): A
complete dataset for action unit and emotion-specified expression", CVPR Workshops 2010. 593
sequences of 123 subjects, each from a neutral face to the peak of an expression; every sequence is
FACS coded at its peak frame, 327 also carry one of 7 emotion labels; AAM-tracked 68 landmarks per
frame. Manual download (licensed; see README.md and `MANUAL_DOWNLOAD_INSTRUCTIONS`).

One example per sequence: `num_frames` frames resampled from the sequence (the first, the peak and
evenly spaced frames between, `sample_positions`), each a square face crop around that frame's own
landmarks (`fer_jax.data.align.crop_face`), the landmarks in crop and in image pixels, the emotion
label (-1 = unlabelled), the FACS codes raw and as an intensity vector over
`fer_jax.data.synthetic.AU_NAMES` (`action_unit_vector`), and the subject's fold. Splits are by
subject: the subjects, sorted by id, are dealt round-robin into `num_folds` folds
(`subject_folds`); config fold k: `test` = fold k, `train` = the other folds; unlabelled sequences
go to `train_unlabelled` / `test_unlabelled` by the same rule (`split_of`).

The file handling and validation live in plain functions (`find_layout`, `find_sequences`,
`parse_emotion`, `parse_facs`, `parse_landmarks`, `decode_frame`, `sample_positions`,
`subject_folds`, `split_of`, `action_unit_vector`, `crop_frames`, `sequence_example`) so they can be
tested without TFDS. Malformed input stops the build with a `CkPlusFormatError` naming the file, the
line (text files) and what was expected; nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import re
from collections.abc import Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data.synthetic import AU_NAMES

EMOTION_NAMES = ('neutral', 'anger', 'contempt', 'disgust', 'fear', 'happy', 'sadness', 'surprise')
NUM_LANDMARKS = 68
MAX_FACS_CODES = 64  # `facs_codes` rows per example (zero-padded); CK+ peaks have far fewer.
MAX_INTENSITY = 5  # FACS intensity A..E = 1..5; 0 = present, intensity not coded.
UNLABELLED = -1  # `label` of a sequence without an emotion file.
# AU_NAMES column of each bilateral CK+ AU code; the one-sided columns (R12, L12, R14, L14) are never
# set: CK+ codes carry no side (README.md, "Action units").
AU_COLUMNS = {int(name[2:]): i for i, name in enumerate(AU_NAMES) if name.startswith('AU')}
ANNOTATED_AUS = tuple(name for name in AU_NAMES if name.startswith('AU'))
SPLITS = ('train', 'validation', 'test')

# Folder names of the unpacked archives (extended-cohn-kanade-images.zip, Emotion_labels.zip,
# Landmarks.zip, FACS_labels.zip).
FOLDERS = {'images': 'cohn-kanade-images', 'emotion': 'Emotion', 'landmarks': 'Landmarks',
           'facs': 'FACS'}
_MAX_DEPTH = 2  # Folder levels below the manual dir searched for FOLDERS.
_SKIP_DIRS = ('__MACOSX',)
_SUBJECT = re.compile(r'S\d+')
_SEQUENCE = re.compile(r'\d+')
_FRAME = re.compile(r'(S\d+)_(\d+)_(\d+)\.png')
_LABEL_FILE = re.compile(r'(S\d+)_(\d+)_(\d+)_(emotion|facs)\.txt')

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
CK+ cannot be downloaded automatically: it is licensed for non-commercial research by its
distributor (the Affect Analysis Group, University of Pittsburgh / Carnegie Mellon University).

1. Request CK+ at https://www.jeffcohn.net/Resources/ (the CK+ agreement form); the download
   link comes by email. Download these four archives:
     extended-cohn-kanade-images.zip   (cohn-kanade-images/S005/001/S005_001_00000001.png ...)
     Emotion_labels.zip                (Emotion/S005/001/S005_001_00000011_emotion.txt ...)
     Landmarks.zip                     (Landmarks/S005/001/S005_001_00000001_landmarks.txt ...)
     FACS_labels.zip                   (FACS/S005/001/S005_001_00000011_facs.txt ...)
2. Unpack all four into one folder, the manual directory (`~/tensorflow_datasets/downloads/manual/`
   by default, or the folder given by `--manual_dir` / `tfds.download.DownloadConfig(manual_dir=...)`
   / `--config.dataset.manual_dir`), so that it holds the folders
     cohn-kanade-images/  Emotion/  Landmarks/  FACS/
   (each may also sit one or two folder levels down, e.g. CK+/Emotion/; the zips are not read).
"""


class CkPlusFormatError(ValueError):
  """Malformed or missing CK+ input; names the file (and line) and what was expected."""

  def __init__(self, path, message: str, *, line: int | None = None):
    self.path = str(path)
    self.line = line
    where = self.path if line is None else f'{self.path}, line {line}'
    super().__init__(f'{where}: {message}')


class MissingLandmarksError(CkPlusFormatError):
  """A sampled frame has no landmark file (skippable with `skip_missing_landmarks`)."""


# ------------------------------------------------------------------ layout ----


@dataclasses.dataclass(frozen=True)
class Layout:
  """The four unpacked CK+ folders (keys of FOLDERS -> path)."""
  manual_dir: epath.Path
  images: epath.Path
  emotion: epath.Path
  landmarks: epath.Path
  facs: epath.Path


def _search(root: epath.Path, name: str, depth: int, out: list[epath.Path]):
  for entry in sorted(root.iterdir(), key=lambda e: e.name):
    if entry.name.startswith('.') or entry.name in _SKIP_DIRS or not entry.is_dir():
      continue
    if entry.name == name:
      out.append(entry)  # Not searched further down.
    elif depth < _MAX_DEPTH and not _SUBJECT.fullmatch(entry.name):
      _search(entry, name, depth + 1, out)


def find_layout(manual_dir) -> Layout:
  """Finds `cohn-kanade-images/`, `Emotion/`, `Landmarks/` and `FACS/` in `manual_dir` or up to two
  folder levels below it (hidden and `__MACOSX` folders ignored).

  Raises:
    FileNotFoundError: a folder is missing (listing every expected path, and the instructions).
    CkPlusFormatError: a folder found twice (naming both places).
  """
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f'CK+ manual dir {manual_dir} does not exist.\n\n'
                            + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  found, missing = {}, []
  for key, name in FOLDERS.items():
    hits: list[epath.Path] = []
    _search(manual_dir, name, 0, hits)
    if len(hits) > 1:
      raise CkPlusFormatError(
          hits[1], f'CK+ folder {name!r} found twice (also at {hits[0]}); expected it once: '
          'keep one copy of each unpacked archive in the manual dir')
    if hits:
      found[key] = hits[0]
    else:
      missing.append(name)
  if missing:
    expected = '\n'.join(f'  {manual_dir / name}/' for name in FOLDERS.values())
    raise FileNotFoundError(
        f'CK+ folder(s) {missing} not found in manual dir {manual_dir} (nor up to {_MAX_DEPTH} '
        f'folder levels below it). Expected:\n{expected}\n(found: '
        f'{ {k: str(v) for k, v in found.items()} })\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  return Layout(manual_dir, **found)


# --------------------------------------------------------------- sequences ----


@dataclasses.dataclass(frozen=True)
class SequenceFiles:
  """The files of one CK+ sequence, frames sorted by frame number and ending at the peak frame."""
  subject: str  # 'S005'.
  sequence: str  # '001'.
  frame_numbers: tuple[int, ...]  # Frame numbers of the PNG names (1-based in CK+).
  frames: tuple[epath.Path, ...]  # The PNGs, same order.
  emotion_file: epath.Path | None  # None: an unlabelled sequence.
  facs_file: epath.Path
  landmarks_dir: epath.Path
  dropped_after_peak: int = 0  # PNGs after the labelled peak frame, left out.

  @property
  def id(self) -> str:
    return f'{self.subject}/{self.sequence}'

  @property
  def labelled(self) -> bool:
    return self.emotion_file is not None

  def landmark_file(self, position: int) -> epath.Path:
    """The landmark file of frame `position`: `<PNG stem>_landmarks.txt` in the Landmarks folder."""
    stem = self.frames[position].name[:-len('.png')]
    return self.landmarks_dir / f'{stem}_landmarks.txt'


def _visible(folder: epath.Path) -> list[epath.Path]:
  if not folder.is_dir():
    return []
  return sorted((e for e in folder.iterdir() if not e.name.startswith('.')), key=lambda e: e.name)


def _label_file(folder: epath.Path, subject: str, sequence: str, kind: str
                ) -> tuple[epath.Path | None, int | None]:
  """(the `*_<kind>.txt` of a sequence folder, its frame number), or (None, None) if there is none."""
  hits = []
  for entry in _visible(folder):
    m = _LABEL_FILE.fullmatch(entry.name)
    if m and m.group(4) == kind:
      if (m.group(1), m.group(2)) != (subject, sequence):
        raise CkPlusFormatError(
            entry, f'{kind} file of another sequence ({m.group(1)}_{m.group(2)}) in the folder of '
            f'{subject}/{sequence}; expected {subject}_{sequence}_<frame>_{kind}.txt')
      hits.append((entry, int(m.group(3))))
  if len(hits) > 1:
    raise CkPlusFormatError(
        folder, f'{len(hits)} {kind} files ({", ".join(h.name for h, _ in hits)}); expected at most '
        f'one per sequence')
  return hits[0] if hits else (None, None)


def _sequence(layout: Layout, subject: str, sequence: str, folder: epath.Path) -> SequenceFiles | None:
  numbered = []
  for entry in _visible(folder):
    m = _FRAME.fullmatch(entry.name)
    if not m:
      logging.warning('CK+: ignoring %s (not a frame S<subject>_<sequence>_<frame>.png)', entry)
      continue
    if (m.group(1), m.group(2)) != (subject, sequence):
      raise CkPlusFormatError(
          entry, f'frame of another sequence ({m.group(1)}_{m.group(2)}) in the folder of '
          f'{subject}/{sequence}; expected {subject}_{sequence}_<frame>.png')
    numbered.append((int(m.group(3)), entry))
  if not numbered:
    logging.warning('CK+: sequence folder %s holds no frame; left out.', folder)
    return None
  numbered.sort(key=lambda x: (x[0], x[1].name))
  for (a, pa), (b, pb) in zip(numbered, numbered[1:]):
    if a == b:
      raise CkPlusFormatError(pb, f'same frame number {a} as {pa.name}; expected one PNG per frame')
  emotion, emotion_frame = _label_file(layout.emotion / subject / sequence, subject, sequence,
                                       'emotion')
  facs, facs_frame = _label_file(layout.facs / subject / sequence, subject, sequence, 'facs')
  if facs is None:
    raise CkPlusFormatError(
        layout.facs / subject / sequence, f'no FACS file for sequence {subject}/{sequence}; expected '
        f'{subject}_{sequence}_<peak frame>_facs.txt (every CK+ sequence is FACS coded)')
  if emotion is not None and emotion_frame != facs_frame:
    raise CkPlusFormatError(
        emotion, f'names frame {emotion_frame}, but the FACS file {facs} names frame {facs_frame}; '
        'expected both to name the peak frame')
  numbers = [n for n, _ in numbered]
  if facs_frame not in numbers:
    raise CkPlusFormatError(
        facs, f'names peak frame {facs_frame}, which has no image in {folder} (frames '
        f'{numbers[0]}..{numbers[-1]}); expected {subject}_{sequence}_{facs_frame:08d}.png')
  keep = numbers.index(facs_frame) + 1
  dropped = len(numbered) - keep
  if dropped:
    logging.warning('CK+ %s/%s: %d frame(s) after the peak frame %d (named by %s) left out.',
                    subject, sequence, dropped, facs_frame, facs.name)
  numbered = numbered[:keep]
  return SequenceFiles(subject, sequence, tuple(n for n, _ in numbered),
                       tuple(p for _, p in numbered), emotion, facs,
                       layout.landmarks / subject / sequence, dropped)


def _subject_key(subject: str) -> tuple[int, str]:
  return int(subject[1:]), subject


def find_sequences(layout: Layout) -> list[SequenceFiles]:
  """Every image sequence `cohn-kanade-images/S<subject>/<sequence>/` with its label files, sorted by
  (subject number, sequence).

  The peak frame is the frame named by the sequence's FACS file (and its emotion file, which must
  agree); frames after it are left out (logged). A sequence folder without PNGs is left out (logged);
  files that are not frames are ignored (logged).

  Raises:
    CkPlusFormatError: a subject / sequence folder with an unexpected name, a frame or label file of
      another sequence, two PNGs of one frame, two emotion or FACS files in one sequence, a sequence
      without a FACS file, label files naming different frames or a frame without an image.
    FileNotFoundError: no sequence at all.
  """
  out = []
  subjects = [e for e in _visible(layout.images) if e.is_dir()]
  for subject_dir in subjects:
    subject = subject_dir.name
    if not _SUBJECT.fullmatch(subject):
      raise CkPlusFormatError(subject_dir, f'folder name {subject!r} is not a CK+ subject id; '
                              "expected 'S' + digits, e.g. 'S005'")
    for seq_dir in (e for e in _visible(subject_dir) if e.is_dir()):
      if not _SEQUENCE.fullmatch(seq_dir.name):
        raise CkPlusFormatError(seq_dir, f'folder name {seq_dir.name!r} is not a sequence number; '
                                "expected digits, e.g. '001'")
      seq = _sequence(layout, subject, seq_dir.name, seq_dir)
      if seq is not None:
        out.append(seq)
  if not out:
    raise FileNotFoundError(
        f'No CK+ sequence found in {layout.images}; expected '
        f'{layout.images}/S005/001/S005_001_00000001.png ...\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  out.sort(key=lambda s: (_subject_key(s.subject), int(s.sequence), s.sequence))
  known = {(s.subject, s.sequence) for s in out}
  for kind, root in (('emotion', layout.emotion), ('facs', layout.facs)):
    for path in root.glob(f'*/*/*_{kind}.txt'):
      if (path.parent.parent.name, path.parent.name) not in known:
        logging.warning('CK+: %s belongs to no image sequence; ignored.', path)
  return out


# ------------------------------------------------------------- annotations ----


def _text_lines(path) -> list[tuple[int, list[str]]]:
  """[(1-based line number, whitespace-separated fields)] of the non-blank lines of a text file."""
  path = epath.Path(path)
  try:
    text = path.read_bytes().decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise CkPlusFormatError(path, f'not a text file ({e})') from e
  except OSError as e:
    raise CkPlusFormatError(path, f'cannot read ({type(e).__name__}: {e})') from e
  return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _number(path, line: int, text: str, what: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise CkPlusFormatError(path, f'{what} is {text!r}, expected a finite number', line=line)
  return value


def _integer(path, line: int, text: str, what: str, lo: int, hi: int | None) -> int:
  value = _number(path, line, text, what)
  if value != int(value) or value < lo or (hi is not None and value > hi):
    rng = f'{lo}..{hi}' if hi is not None else f'>= {lo}'
    raise CkPlusFormatError(path, f'{what} is {text!r}, expected an integer {rng}', line=line)
  return int(value)


def parse_emotion(path) -> int:
  """The label of an `_emotion.txt` file: one number, an integer in 0..7 (EMOTION_NAMES), e.g.
  `   3.0000000e+00` -> 3 (disgust)."""
  lines = _text_lines(path)
  if not lines:
    raise CkPlusFormatError(path, 'empty; expected one emotion label (an integer 0..7 such as '
                            '3.0000000e+00)')
  line, fields = lines[0]
  if len(fields) != 1:
    raise CkPlusFormatError(path, f'{len(fields)} values {" ".join(fields)[:60]!r}, expected one '
                            'emotion label (an integer 0..7)', line=line)
  if len(lines) > 1:
    raise CkPlusFormatError(path, f'extra line {" ".join(lines[1][1])[:60]!r}; expected one emotion '
                            'label per file', line=lines[1][0])
  names = ', '.join(f'{i} {n}' for i, n in enumerate(EMOTION_NAMES))
  value = _number(path, line, fields[0], 'emotion label')
  if value != int(value) or not 0 <= value < len(EMOTION_NAMES):
    raise CkPlusFormatError(path, f'emotion label is {fields[0]!r}, expected an integer in '
                            f'0..{len(EMOTION_NAMES) - 1} ({names})', line=line)
  return int(value)


def parse_facs(path) -> np.ndarray:
  """(n, 2) int32 rows (AU code, intensity) of a `_facs.txt` file, in file order.

  Each non-blank line holds two numbers: the AU code (an integer >= 0) and its intensity (an integer
  0..5: 1..5 = A..E, 0 = present but intensity not coded). An empty file gives (0, 2).
  """
  rows = []
  for line, fields in _text_lines(path):
    if len(fields) != 2:
      raise CkPlusFormatError(path, f'{len(fields)} value(s) {" ".join(fields)[:60]!r}, expected 2: '
                              'AU code and intensity', line=line)
    rows.append((_integer(path, line, fields[0], 'AU code', 0, None),
                 _integer(path, line, fields[1], 'intensity', 0, MAX_INTENSITY)))
  if len(rows) > MAX_FACS_CODES:
    raise CkPlusFormatError(path, f'{len(rows)} FACS codes, expected at most {MAX_FACS_CODES}')
  return np.asarray(rows, np.int32).reshape(-1, 2)


def parse_landmarks(path) -> np.ndarray:
  """(68, 2) float32 (x, y) of a `_landmarks.txt` file: 68 non-blank lines of two numbers."""
  points = []
  for line, fields in _text_lines(path):
    if len(points) == NUM_LANDMARKS:
      raise CkPlusFormatError(path, f'more than {NUM_LANDMARKS} landmark lines, expected '
                              f'{NUM_LANDMARKS}', line=line)
    if len(fields) != 2:
      raise CkPlusFormatError(path, f'{len(fields)} value(s) {" ".join(fields)[:60]!r}, expected 2: '
                              'x y', line=line)
    points.append([_number(path, line, f, f'landmark {len(points)} {c}')
                   for f, c in zip(fields, 'xy')])
  if len(points) != NUM_LANDMARKS:
    raise CkPlusFormatError(path, f'{len(points)} landmark lines, expected {NUM_LANDMARKS}')
  return np.asarray(points, np.float32)


def action_unit_vector(codes: np.ndarray, uncoded_intensity: float = 0.6) -> np.ndarray:
  """(len(AU_NAMES),) float32 intensities in [0, 1] from (AU code, intensity) rows.

  A CK+ code c goes to column 'AU<c>' of AU_NAMES with intensity / 5 (A..E = 0.2..1.0), or
  `uncoded_intensity` for intensity 0 (present, not coded); the larger value wins when a code is
  listed twice. Codes outside AU_NAMES are left out (kept in `facs_codes`); the one-sided columns
  R12, L12, R14, L14 stay 0.
  """
  out = np.zeros(len(AU_NAMES), np.float32)
  for code, intensity in np.asarray(codes).reshape(-1, 2):
    col = AU_COLUMNS.get(int(code))
    if col is not None:
      value = intensity / MAX_INTENSITY if intensity > 0 else uncoded_intensity
      out[col] = max(out[col], value)
  return out


def decode_frame(path, channels: int) -> np.ndarray:
  """PNG (anything PIL reads) -> (H, W, channels) uint8: PIL `convert('L')` (ITU-R 601-2 luma) for
  1 channel, `convert('RGB')` for 3. Raises CkPlusFormatError naming the file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as im:
      im.load()
      out = np.asarray(im.convert('L' if channels == 1 else 'RGB'), np.uint8)
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise CkPlusFormatError(path, f'cannot decode image ({type(e).__name__}: {e})') from e
  return out.reshape(out.shape[0], out.shape[1], channels)


# ------------------------------------------------------- frames and splits ----


def sample_positions(n: int, t: int) -> np.ndarray:
  """(t,) int64 positions into a sequence of n frames: round(i (n - 1) / (t - 1)), halves up, for
  i = 0..t-1 (integer arithmetic). The first is 0 (neutral), the last n - 1 (peak); positions repeat
  when n < t."""
  if t < 2 or n < 1:
    raise ValueError(f'need t >= 2 sampled frames and n >= 1 frames, got t={t}, n={n}')
  i = np.arange(t, dtype=np.int64)
  return (2 * i * (n - 1) + (t - 1)) // (2 * (t - 1))


def subject_folds(subjects: Sequence[str], num_folds: int = 10) -> dict[str, int]:
  """{subject: fold}: the distinct subjects sorted by number ('S005' < 'S010' < 'S100'), fold =
  rank % num_folds (round-robin)."""
  if isinstance(num_folds, bool) or int(num_folds) != num_folds or num_folds < 2:
    raise ValueError(f'num_folds must be an integer >= 2, got {num_folds!r}')
  ordered = sorted(set(subjects), key=_subject_key)
  return {s: rank % int(num_folds) for rank, s in enumerate(ordered)}


def split_of(fold: int, labelled: bool, test_fold: int, num_folds: int = 10,
             validation: bool = False) -> str:
  """Split of a sequence of subject fold `fold`: 'test' if fold == test_fold, 'validation' if
  `validation` and fold == test_fold + 1 (mod num_folds), else 'train'; '_unlabelled' appended for
  sequences without an emotion label."""
  if fold == test_fold:
    split = 'test'
  elif validation and fold == (test_fold + 1) % num_folds:
    split = 'validation'
  else:
    split = 'train'
  return split if labelled else f'{split}_unlabelled'


# ------------------------------------------------------------------ config ----


@dataclasses.dataclass(eq=False)
class CkPlusConfig(tfds.core.BuilderConfig):
  """Crop, frame, fold and AU options.

  Attributes:
    size: crop height = width in pixels.
    channels: 1 (grey, PIL luma) or 3 (RGB).
    num_frames: frames per example (T >= 2; `sample_positions`).
    scale: crop side / larger extent of the frame's landmarks (`align.crop_face`).
    supersample: bilinear samples per output pixel per axis (anti-aliasing).
    num_folds, fold: subject folds (`subject_folds`); test = fold `fold`.
    validation: also hold out fold `fold + 1` as `validation` (train = the other folds).
    uncoded_intensity: AU value of a FACS code with intensity 0 (present, not coded).
    landmark_offset: subtracted from the file's landmark coordinates (1.0 if they turn out to be
      1-based, MATLAB style; README.md).
    skip_missing_landmarks: leave out (and log) a sequence whose sampled frame has no landmark file,
      instead of stopping the build.
  """

  size: int = 96
  channels: int = 1
  num_frames: int = 16
  scale: float = 1.25
  supersample: int = 4
  num_folds: int = 10
  fold: int = 0
  validation: bool = False
  uncoded_intensity: float = 0.6
  landmark_offset: float = 0.0
  skip_missing_landmarks: bool = False

  def __post_init__(self):
    for name in ('size', 'supersample', 'num_frames', 'num_folds', 'fold'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f'{name} must be a non-negative int, got {value!r}')
    if self.size < 1 or self.supersample < 1:
      raise ValueError(f'size and supersample must be >= 1, got {self.size}, {self.supersample}')
    if self.channels not in (1, 3):
      raise ValueError(f'channels must be 1 or 3, got {self.channels!r}')
    if self.num_frames < 2:
      raise ValueError(f'num_frames must be >= 2 (the neutral and the peak frame), got '
                       f'{self.num_frames}')
    if not self.scale > 0:
      raise ValueError(f'scale must be > 0, got {self.scale!r}')
    if self.num_folds < 2 or not self.fold < self.num_folds:
      raise ValueError(f'need num_folds >= 2 and 0 <= fold < num_folds, got num_folds='
                       f'{self.num_folds}, fold={self.fold}')
    if self.validation and self.num_folds < 3:
      raise ValueError('validation=True needs num_folds >= 3')
    if not 0.0 <= self.uncoded_intensity <= 1.0:
      raise ValueError(f'uncoded_intensity must be in [0, 1], got {self.uncoded_intensity!r}')
    if not math.isfinite(self.landmark_offset):
      raise ValueError(f'landmark_offset must be finite, got {self.landmark_offset!r}')


def _configs() -> list[CkPlusConfig]:
  out = []
  for size, supersample in ((96, 4), (48, 8)):
    for fold in range(10):
      name = f'crop_{size}' if fold == 0 else f'crop_{size}_fold{fold}'
      out.append(CkPlusConfig(
          name=name, size=size, supersample=supersample, fold=fold,
          description=f'{size}x{size} grey square crops around each frame\'s landmarks (side 1.25 x '
                      f'their larger extent); 16 frames from neutral to peak; subject fold {fold} of '
                      '10 is the test split.'))
  return out


# ------------------------------------------------------------------- crops ----


@functools.lru_cache(maxsize=None)
def _crop_fn(size: int, scale: float, supersample: int):
  """Jitted per-frame crop of a config (compiled once per frame shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  fn = functools.partial(align.crop_face, out_size=size, scale=scale, supersample=supersample)
  return jax.jit(lambda frame, lm: fn(frame, lm)[:2])


def crop_frames(frames: Sequence[np.ndarray], landmarks: np.ndarray, cfg: CkPlusConfig
                ) -> tuple[np.ndarray, np.ndarray]:
  """Crops uint8 (n, S, S, C) and landmarks float32 (n, 68, 2) in crop pixels.

  Frame i is `fer_jax.data.align.crop_face(frame, landmarks[i], S, scale, supersample)` (the square
  centred on the landmarks' bounding box, side `scale` x its larger extent), rounded half-to-even
  and clipped to 0..255; outside the image is black.
  """
  s = cfg.size
  fn = _crop_fn(s, float(cfg.scale), cfg.supersample)
  crops = np.zeros((len(frames), s, s, cfg.channels), np.uint8)
  out_lm = np.zeros((len(frames), NUM_LANDMARKS, 2), np.float32)
  for i, (frame, lm) in enumerate(zip(frames, landmarks)):
    image, lm_out = fn(frame, lm)
    crops[i] = np.clip(np.rint(np.asarray(image)), 0, 255)
    out_lm[i] = np.asarray(lm_out)
  return crops, out_lm


def sequence_example(seq: SequenceFiles, fold: int, cfg: CkPlusConfig) -> dict:
  """The example of one sequence (reads its label files, sampled landmarks and frames).

  Raises:
    CkPlusFormatError: malformed label / landmark file or undecodable frame.
    MissingLandmarksError: a sampled frame without its landmark file.
  """
  label = parse_emotion(seq.emotion_file) if seq.labelled else UNLABELLED
  codes = parse_facs(seq.facs_file)
  positions = sample_positions(len(seq.frames), cfg.num_frames)
  distinct = sorted(set(positions.tolist()))
  landmarks = {}
  for p in distinct:
    path = seq.landmark_file(p)
    if not path.is_file():
      raise MissingLandmarksError(
          path, f'missing landmark file of frame {seq.frames[p]} (sequence {seq.id}); expected 68 '
          'lines "x y" (set skip_missing_landmarks=True to leave such sequences out)')
    landmarks[p] = parse_landmarks(path) - np.float32(cfg.landmark_offset)
  images = {p: decode_frame(seq.frames[p], cfg.channels) for p in distinct}
  crops, crop_lm = crop_frames([images[p] for p in distinct],
                               np.stack([landmarks[p] for p in distinct]), cfg)
  where = np.searchsorted(distinct, positions)
  facs = np.zeros((MAX_FACS_CODES, 2), np.int32)
  facs[:len(codes)] = codes
  return {
      'frames': crops[where],
      'landmarks': crop_lm[where],
      'landmarks_image': np.stack([landmarks[p] for p in positions.tolist()]).astype(np.float32),
      'frame_index': np.asarray(seq.frame_numbers, np.int64)[positions],
      'label': label,
      'labelled': seq.labelled,
      'action_units': action_unit_vector(codes, cfg.uncoded_intensity),
      'facs_codes': facs,
      'num_facs_codes': len(codes),
      'subject': seq.subject,
      'sequence': seq.sequence,
      'id': seq.id,
      'fold': fold,
      'num_source_frames': len(seq.frames),
  }


# ----------------------------------------------------------------- builder ----


class Builder(tfds.core.GeneratorBasedBuilder):
  """CK+ sequences as fixed-length stacks of face crops, with emotion label, AUs and landmarks.

  Features (T = num_frames, S = size, C = channels): 'frames' uint8 (T, S, S, C) (raw bytes),
  'landmarks' / 'landmarks_image' float32 (T, 68, 2) in crop / image pixels, 'frame_index' int64 (T,)
  (frame numbers of the PNG names), 'label' (ClassLabel EMOTION_NAMES; -1 unlabelled), 'labelled',
  'action_units' float32 (20,) over AU_NAMES, 'facs_codes' int32 (64, 2) (AU code, intensity;
  zero-padded), 'num_facs_codes', 'subject', 'sequence', 'id' (text), 'fold', 'num_source_frames'.
  Splits: 'train', 'test' (and 'validation' with `validation=True`) of the labelled sequences, the
  same with '_unlabelled' for the others; only splits with sequences are built.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: 16-frame neutral-to-peak stacks of grey 96 / 48 px landmark box '
               'crops, FACS codes and AU vector, 10 subject folds; manual download (unpacked).',
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'crop_96'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    t, s = cfg.num_frames, cfg.size
    features = tfds.features.FeaturesDict({
        'frames': tfds.features.Tensor(shape=(t, s, s, cfg.channels), dtype=np.uint8,
                                       encoding=tfds.features.Encoding.BYTES),
        'landmarks': tfds.features.Tensor(shape=(t, NUM_LANDMARKS, 2), dtype=np.float32),
        'landmarks_image': tfds.features.Tensor(shape=(t, NUM_LANDMARKS, 2), dtype=np.float32),
        'frame_index': tfds.features.Tensor(shape=(t,), dtype=np.int64),
        'label': tfds.features.ClassLabel(names=EMOTION_NAMES),
        'labelled': tfds.features.Tensor(shape=(), dtype=np.bool_),
        'action_units': tfds.features.Tensor(shape=(len(AU_NAMES),), dtype=np.float32),
        'facs_codes': tfds.features.Tensor(shape=(MAX_FACS_CODES, 2), dtype=np.int32),
        'num_facs_codes': np.int64,
        'subject': tfds.features.Text(),
        'sequence': tfds.features.Text(),
        'id': tfds.features.Text(),
        'fold': np.int64,
        'num_source_frames': np.int64,
    })
    return self.dataset_info_from_configs(
        features=features,
        supervised_keys=('frames', 'label'),
        disable_shuffling=True,
        homepage='https://www.jeffcohn.net/Resources/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    sequences = find_sequences(find_layout(dl_manager.manual_dir))
    folds = subject_folds([s.subject for s in sequences], cfg.num_folds)
    splits: dict[str, list[SequenceFiles]] = {}
    for seq in sequences:
      split = split_of(folds[seq.subject], seq.labelled, cfg.fold, cfg.num_folds, cfg.validation)
      splits.setdefault(split, []).append(seq)
    logging.info('CK+: %d sequences of %d subjects in %d folds; fold %d is test; %s.', len(sequences),
                 len(folds), cfg.num_folds, cfg.fold,
                 ', '.join(f'{k}: {len(v)}' for k, v in sorted(splits.items())))
    return {split: self._generate_examples(seqs, folds) for split, seqs in sorted(splits.items())}

  def _generate_examples(self, sequences: Sequence[SequenceFiles], folds: Mapping[str, int]):
    cfg = self.builder_config
    for seq in sequences:
      try:
        example = sequence_example(seq, folds[seq.subject], cfg)
      except MissingLandmarksError as e:
        if not cfg.skip_missing_landmarks:
          raise
        logging.warning('CK+: sequence %s left out (skip_missing_landmarks): %s', seq.id, e)
        continue
      yield seq.id, example
