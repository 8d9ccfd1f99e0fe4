"""FER2013 and FER+ facial-expression datasets (manual download).

FER2013: Goodfellow et al., "Challenges in Representation Learning: A report on
three machine learning contests", ICONIP 2013 (arXiv 1307.0414). 48x48 grey
faces, 7 classes, Kaggle CSV `emotion,pixels,Usage`.

FER+: Barsoum et al., "Training Deep Networks for Facial Expression Recognition
with Crowd-Sourced Label Distribution", ICMI 2016 (arXiv 1608.01041). Ten crowd
votes per FER2013 image over 8 emotions + unknown + not-a-face
(`fer2013new.csv` from github.com/microsoft/FERPlus).

The CSV parsing and validation live in plain functions (`iter_fer2013_rows`,
`read_fer2013_csv`, `read_ferplus_csv`, `ferplus_majority_labels`,
`align_ferplus`, `find_manual_files`) so they can be tested without TFDS.
Every malformed row stops the build with a `CsvFormatError` naming the file,
the line number, the bad value and what was expected; nothing is skipped
silently (the only rows left out are the FER+ rows the documented vote rule
drops).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import gzip
import io
from collections.abc import Iterator, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE

FER2013_LABEL_NAMES = (
    'angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
FERPLUS_LABEL_NAMES = (
    'neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear',
    'contempt')
FERPLUS_VOTE_NAMES = FERPLUS_LABEL_NAMES + ('unknown', 'NF')

FER2013_HEADER = ('emotion', 'pixels', 'Usage')
FERPLUS_HEADER = ('Usage', 'Image name') + FERPLUS_VOTE_NAMES

# Kaggle `Usage` value -> TFDS split name, in canonical file order.
USAGE_TO_SPLIT = {
    'Training': 'train',
    'PublicTest': 'validation',
    'PrivateTest': 'test',
}

FER2013_FILENAMES = ('fer2013.csv', 'fer2013.csv.gz')
FERPLUS_FILENAME = 'fer2013new.csv'

_LABEL_STRINGS = {str(i): i for i in range(len(FER2013_LABEL_NAMES))}
_DIGITS_AND_SPACE = b'0123456789 '

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
FER2013 cannot be downloaded automatically (Kaggle account and challenge
rules required).

1. Download `fer2013.csv` (inside `fer2013.tar.gz`) from the Kaggle challenge
   page "Challenges in Representation Learning: Facial Expression Recognition
   Challenge":
   https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data
   Extract it and place `fer2013.csv` (or a gzipped `fer2013.csv.gz`) directly
   in the manual directory: `~/tensorflow_datasets/downloads/manual/` by
   default, or the folder given by `--manual_dir` /
   `tfds.download.DownloadConfig(manual_dir=...)`.
   Expected header: `emotion,pixels,Usage`. Any subset of the Usage values
   Training / PublicTest / PrivateTest is accepted; only the splits present
   (train / validation / test) are built.
2. For the `ferplus` config also download `fer2013new.csv` from Microsoft's
   FERPlus repository (https://github.com/microsoft/FERPlus, MIT licence) and
   place it beside `fer2013.csv` in the same manual directory.
"""


class CsvFormatError(ValueError):
  """A malformed FER2013 / FER+ CSV; names file, line and bad value."""

  def __init__(self, path, line: int, message: str):
    self.path = str(path)
    self.line = line
    super().__init__(f'{self.path}, line {line}: {message}')


# ----------------------------------------------------------------- files ----


def find_manual_files(manual_dir, *, ferplus: bool) -> dict[str, epath.Path]:
  """Locates the input files in `manual_dir`.

  Args:
    manual_dir: the TFDS manual directory.
    ferplus: whether `fer2013new.csv` is needed too.

  Returns:
    {'fer2013': path} (plus {'ferplus': path} when `ferplus`). When both
    `fer2013.csv` and `fer2013.csv.gz` exist the plain CSV is used.

  Raises:
    FileNotFoundError: listing every expected path when a file is missing.
  """
  manual_dir = epath.Path(manual_dir)
  candidates = [manual_dir / name for name in FER2013_FILENAMES]
  found = {}
  for path in candidates:
    if path.exists():
      found['fer2013'] = path
      break
  ferplus_path = manual_dir / FERPLUS_FILENAME
  if ferplus and ferplus_path.exists():
    found['ferplus'] = ferplus_path
  wanted = {'fer2013'} | ({'ferplus'} if ferplus else set())
  if set(found) != wanted:
    expected = [f'  {p}  (one of these two)' for p in candidates]
    if ferplus:
      expected.append(f'  {ferplus_path}')
    missing = sorted(wanted - set(found))
    raise FileNotFoundError(
        f'Missing FER2013 input file(s) {missing} in manual dir {manual_dir}.'
        ' Expected:\n' + '\n'.join(expected) + '\n\n'
        + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  return found


@contextlib.contextmanager
def _open_text(path: epath.Path):
  """Opens a CSV (plain or `.gz`) as text; BOM-tolerant, csv-safe newlines.

  Undecodable bytes become U+FFFD, so the row validation reports them with
  their exact line number instead of a decoder error somewhere in a chunk.
  """
  with contextlib.ExitStack() as stack:
    f = stack.enter_context(path.open('rb'))
    if path.name.endswith('.gz'):
      f = stack.enter_context(gzip.GzipFile(fileobj=f, mode='rb'))
    yield stack.enter_context(
        io.TextIOWrapper(f, encoding='utf-8-sig', errors='replace',
                         newline=''))


QUOTE_LIMIT = 200  # Characters of a CSV line quoted in an error message.


def _quote_cut(text: str, limit: int = QUOTE_LIMIT) -> str:
  """`repr(text)`, cut to `limit` characters plus '...' and the full length.

  A FER2013 data row is ~8 KB (2304 pixel values), so quoting a whole row
  (e.g. a data row where the header should be) would flood the message.
  """
  if len(text) <= limit:
    return repr(text)
  return f'{text[:limit]!r}... ({len(text)} characters)'


def _iter_csv(path: epath.Path, header: Sequence[str]):
  """Yields (line_number, row) after checking the header; wraps I/O errors."""
  with _open_text(path) as f:
    reader = csv.reader(f)
    line = 0  # Last line fully read; errors are reported at line + 1.
    try:
      first = next(reader, None)
      if first is None:
        raise CsvFormatError(
            path, 1, f'empty file, expected header {",".join(header)!r}')
      if tuple(c.strip() for c in first) != tuple(header):
        hint = (' (the file seems to have no header row: line 1 looks like '
                'data)' if first and first[0].strip() in _LABEL_STRINGS
                and header == FER2013_HEADER else '')
        raise CsvFormatError(
            path, 1, f'bad header {_quote_cut(",".join(first))}, expected '
            f'{",".join(header)!r}{hint}')
      line = reader.line_num
      for row in reader:
        line = reader.line_num
        yield line, row
    except (csv.Error, OSError, EOFError) as e:
      raise CsvFormatError(
          path, line + 1, f'cannot read CSV ({type(e).__name__}: {e})') from e


def _check_columns(path, line, row, header):
  if len(row) != len(header):
    raise CsvFormatError(
        path, line, f'{len(row)} columns (row starts {",".join(row)[:60]!r}), '
        f'expected {len(header)} ({",".join(header)})')


def _parse_usage(path, line, text: str) -> str:
  usage = text.strip()
  if usage not in USAGE_TO_SPLIT:
    raise CsvFormatError(
        path, line, f'unknown Usage {text!r}, expected one of '
        f'{list(USAGE_TO_SPLIT)}')
  return usage


# ---------------------------------------------------------------- FER2013 ----


def parse_pixels(text: str, *, path='<string>', line: int = 0) -> np.ndarray:
  """Parses the `pixels` field into a (48, 48, 1) uint8 image (row-major).

  Requires exactly 2304 space-separated decimal integers in 0..255.
  """
  # Fast path: only ASCII digits and spaces, right count, right range.
  raw = text.encode('utf-8')
  if raw and not raw.translate(None, _DIGITS_AND_SPACE):
    values = np.fromstring(text, dtype=np.int64, sep=' ')
    if values.size == NUM_PIXELS and values.max() <= 255:
      return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 1)
  # Slow path: find what is wrong and say so.
  tokens = [t for t in text.split(' ') if t]
  if len(tokens) != NUM_PIXELS:
    raise CsvFormatError(
        path, line, f'pixels has {len(tokens)} values ({text[:40]!r}...), '
        f'expected {NUM_PIXELS} (= {IMAGE_SIZE}x{IMAGE_SIZE})')
  for k, tok in enumerate(tokens):
    if not (tok.isascii() and tok.isdigit()):
      raise CsvFormatError(
          path, line, f'pixel {k} is {tok!r}, expected an integer in 0..255')
    if int(tok) > 255:
      raise CsvFormatError(
          path, line, f'pixel {k} is {tok}, expected an integer in 0..255')
  raise AssertionError(f'unreachable: {path} line {line}')  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class Fer2013Row:
  index: int  # 0-based data-row index in the CSV (header excluded).
  line: int  # 1-based line number in the file (header is line 1).
  label: int  # 0..6, see FER2013_LABEL_NAMES.
  usage: str  # Training / PublicTest / PrivateTest.
  image: np.ndarray  # (48, 48, 1) uint8.


def iter_fer2013_rows(path) -> Iterator[Fer2013Row]:
  """Streams and validates the rows of `fer2013.csv` / `fer2013.csv.gz`."""
  path = epath.Path(path)
  for index, (line, row) in enumerate(_iter_csv(path, FER2013_HEADER)):
    _check_columns(path, line, row, FER2013_HEADER)
    emotion, pixels, usage = row
    label = _LABEL_STRINGS.get(emotion.strip())
    if label is None:
      raise CsvFormatError(
          path, line, f'bad emotion label {emotion!r}, expected an integer in '
          f'0..{len(FER2013_LABEL_NAMES) - 1}')
    usage = _parse_usage(path, line, usage)
    image = parse_pixels(pixels, path=path, line=line)
    yield Fer2013Row(index=index, line=line, label=label, usage=usage,
                     image=image)


@dataclasses.dataclass(frozen=True)
class Fer2013Split:
  """All rows of one Usage value, in file order."""
  usage: str
  indices: np.ndarray  # (n,) int64 data-row index in fer2013.csv.
  labels: np.ndarray  # (n,) int64.
  images: np.ndarray  # (n, 48, 48, 1) uint8.

  def __len__(self) -> int:
    return len(self.indices)


def read_fer2013_csv(path) -> dict[str, Fer2013Split]:
  """Reads the whole CSV, grouped by Usage (canonical order; absent omitted)."""
  groups = collections.defaultdict(lambda: ([], [], []))
  for row in iter_fer2013_rows(path):
    idx, lab, img = groups[row.usage]
    idx.append(row.index)
    lab.append(row.label)
    img.append(row.image)
  if not groups:
    raise CsvFormatError(path, 2, 'no data rows after the header')
  out = {}
  for usage in USAGE_TO_SPLIT:
    if usage in groups:
      idx, lab, img = groups[usage]
      out[usage] = Fer2013Split(
          usage=usage, indices=np.asarray(idx, np.int64),
          labels=np.asarray(lab, np.int64), images=np.stack(img))
  return out


# ------------------------------------------------------------------- FER+ ----


@dataclasses.dataclass(frozen=True)
class FerPlusSplit:
  """All rows of one Usage value of fer2013new.csv, in file order."""
  usage: str
  lines: np.ndarray  # (n,) int64 line numbers in fer2013new.csv.
  image_names: tuple[str, ...]  # '' where FER+ has no image name.
  votes: np.ndarray  # (n, 10) int64 in FERPLUS_VOTE_NAMES order.

  def __len__(self) -> int:
    return len(self.lines)


def read_ferplus_csv(path) -> dict[str, FerPlusSplit]:
  """Reads and validates `fer2013new.csv`, grouped by Usage."""
  path = epath.Path(path)
  groups = collections.defaultdict(lambda: ([], [], []))
  for line, row in _iter_csv(path, FERPLUS_HEADER):
    _check_columns(path, line, row, FERPLUS_HEADER)
    usage = _parse_usage(path, line, row[0])
    votes = []
    for name, text in zip(FERPLUS_VOTE_NAMES, row[2:]):
      t = text.strip()
      if not (t.isascii() and t.isdigit()):
        raise CsvFormatError(
            path, line, f'{name} votes is {text!r}, expected a non-negative '
            'integer')
      votes.append(int(t))
    lines, names, vs = groups[usage]
    lines.append(line)
    names.append(row[1].strip())
    vs.append(votes)
  if not groups:
    raise CsvFormatError(path, 2, 'no data rows after the header')
  return {
      usage: FerPlusSplit(
          usage=usage, lines=np.asarray(groups[usage][0], np.int64),
          image_names=tuple(groups[usage][1]),
          votes=np.asarray(groups[usage][2], np.int64).reshape(-1, 10))
      for usage in USAGE_TO_SPLIT if usage in groups
  }


def ferplus_majority_labels(votes) -> np.ndarray:
  """FER+ label per row, "majority voting" scheme of Barsoum et al. 2016.

  Rule (as in Microsoft's FERPlus reference code, `majority` mode), applied to
  the 10 vote counts (8 emotions, unknown, NF = not a face) of each row:
    1. outlier removal: every count <= 1 is set to 0;
    2. with s = sum of the remaining counts over all 10 columns and m their
       maximum at column k, the row is valid only if m > s / 2 (strict: a tie
       or exactly half is invalid, so is a row whose votes were all removed;
       a strict majority makes k unique);
    3. the label is k if the row is valid and k is one of the 8 emotions;
       otherwise (no strict majority, or majority unknown / not-a-face) -1.

  Args:
    votes: (..., 10) integer vote counts in FERPLUS_VOTE_NAMES order.

  Returns:
    (...) int64 labels in 0..7 (FERPLUS_LABEL_NAMES), -1 for dropped rows.
  """
  v = np.asarray(votes)
  if v.shape[-1:] != (len(FERPLUS_VOTE_NAMES),):
    raise ValueError(f'votes must have shape (..., 10), got {v.shape}')
  if not np.issubdtype(v.dtype, np.integer):
    raise ValueError(f'votes must be integers, got dtype {v.dtype}')
  v = np.where(v <= 1, 0, v).astype(np.int64)
  total = v.sum(-1)
  top = v.argmax(-1)
  top_votes = v.max(-1)
  keep = (2 * top_votes > total) & (top < len(FERPLUS_LABEL_NAMES))
  return np.where(keep, top, -1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FerPlusExamples:
  """FER2013 rows of one Usage with their FER+ labels (dropped rows removed)."""
  usage: str
  indices: np.ndarray  # (n,) int64 data-row index in fer2013.csv.
  labels: np.ndarray  # (n,) int64 FER+ label 0..7.
  fer2013_labels: np.ndarray  # (n,) int64 original FER2013 label 0..6.
  votes: np.ndarray  # (n, 10) int64 raw votes.
  images: np.ndarray  # (n, 48, 48, 1) uint8.

  def __len__(self) -> int:
    return len(self.indices)


def align_ferplus(fer: Mapping[str, Fer2013Split],
                  ferplus: Mapping[str, FerPlusSplit], *,
                  fer_path='fer2013.csv',
                  ferplus_path=FERPLUS_FILENAME) -> dict[str, FerPlusExamples]:
  """Pairs FER2013 and FER+ rows by order within each Usage.

  The i-th `Training` row of fer2013.csv is the i-th `Training` row of
  fer2013new.csv (likewise PublicTest / PrivateTest), so a fer2013.csv that
  lacks a Usage (e.g. PrivateTest withheld) still aligns. Rows with an empty
  FER+ image name, or whose `ferplus_majority_labels` is -1, are dropped.

  Raises:
    ValueError: when a Usage present in fer2013.csv has a different row count
      in fer2013new.csv.
  """
  out = {}
  for usage, split in fer.items():
    plus = ferplus.get(usage)
    n_plus = 0 if plus is None else len(plus)
    if n_plus != len(split):
      counts = {u: len(s) for u, s in ferplus.items()}
      raise ValueError(
          f'FER+ rows do not align with FER2013: {fer_path} has {len(split)} '
          f'{usage!r} rows but {ferplus_path} has {n_plus} (its Usage counts: '
          f'{counts}); expected the same count, since fer2013new.csv has one '
          'row per FER2013 row in the same order.')
    labels = ferplus_majority_labels(plus.votes)
    named = np.array([bool(n) for n in plus.image_names], dtype=bool)
    keep = np.flatnonzero((labels >= 0) & named)
    out[usage] = FerPlusExamples(
        usage=usage, indices=split.indices[keep], labels=labels[keep],
        fer2013_labels=split.labels[keep], votes=plus.votes[keep],
        images=split.images[keep])
  return out


# ---------------------------------------------------------------- builder ----


class Builder(tfds.core.GeneratorBasedBuilder):
  """FER2013 (7 classes) and FER+ (8-class majority vote), 48x48x1 uint8.

  Splits: Usage Training -> 'train', PublicTest -> 'validation', PrivateTest
  -> 'test'; only the Usage values present in the CSV become splits.
  Features: 'image' (48, 48, 1) uint8 stored as a bytes-encoded `Tensor`
  (exact; `tfds.data_source` decodes it without an image codec), 'label',
  'index' (0-based data-row index in fer2013.csv). `ferplus` adds 'votes'
  (10 raw counts: neutral, happiness, surprise, sadness, anger, disgust, fear,
  contempt, unknown, NF) and 'fer2013_label'; its labels follow
  `ferplus_majority_labels` (rows it gives -1, and rows without an image
  name, are dropped).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: configs fer2013 (7 classes) and ferplus '
               '(FER+ majority vote, 8 classes); manual download; splits '
               'from Usage.',
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='fer2013',
          description='Original Kaggle labels: angry, disgust, fear, happy, '
                      'sad, surprise, neutral.'),
      tfds.core.BuilderConfig(
          name='ferplus',
          description='FER+ crowd labels (fer2013new.csv), majority vote '
                      'over 8 emotions; unknown / not-a-face rows dropped.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'fer2013'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

  @property
  def _is_ferplus(self) -> bool:
    return self.builder_config.name == 'ferplus'

  def _info(self) -> tfds.core.DatasetInfo:
    # Raw bytes: exact, no codec, fastest to write and to read (README.md).
    image = tfds.features.Tensor(
        shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8,
        encoding=tfds.features.Encoding.BYTES)
    if self._is_ferplus:
      features = {
          'image': image,
          'label': tfds.features.ClassLabel(names=FERPLUS_LABEL_NAMES),
          'index': np.int64,
          'votes': tfds.features.Tensor(
              shape=(len(FERPLUS_VOTE_NAMES),), dtype=np.int64),
          'fer2013_label': tfds.features.ClassLabel(
              names=FER2013_LABEL_NAMES),
      }
    else:
      features = {
          'image': image,
          'label': tfds.features.ClassLabel(names=FER2013_LABEL_NAMES),
          'index': np.int64,
      }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        homepage='https://www.kaggle.com/c/challenges-in-representation-'
                 'learning-facial-expression-recognition-challenge',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    paths = find_manual_files(dl_manager.manual_dir, ferplus=self._is_ferplus)
    fer = read_fer2013_csv(paths['fer2013'])
    if self._is_ferplus:
      data = align_ferplus(
          fer, read_ferplus_csv(paths['ferplus']),
          fer_path=paths['fer2013'], ferplus_path=paths['ferplus'])
    else:
      data = fer
    return {
        USAGE_TO_SPLIT[usage]: self._generate_examples(split)
        for usage, split in data.items()
    }

  def _generate_examples(self, split):
    """Yields (index, example); `split` is a Fer2013Split / FerPlusExamples."""
    for i in range(len(split)):
      index = int(split.indices[i])
      example = {
          'image': split.images[i],
          'label': int(split.labels[i]),
          'index': index,
      }
      if self._is_ferplus:
        example['votes'] = split.votes[i]
        example['fer2013_label'] = int(split.fer2013_labels[i])
      yield index, example
