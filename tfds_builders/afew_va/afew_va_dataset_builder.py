"""AFEW-VA: per-frame valence / arousal and 68 landmarks of 600 film clips.

Kossaifi, Tzimiropoulos, Todorovic and Pantic, "AFEW-VA database for valence
and arousal estimation in-the-wild", Image and Vision Computing 65, 2017.
Manual download (12 zip archives from the iBUG site); see README.md for the
layout, its assumptions, the crops and the folds.

Each example is a fixed-length window of one clip: face crops made from the
annotated landmarks by `fer_jax.data.align` (an axis-aligned square box or a
similarity alignment to a template), valence / arousal divided by 10 into
[-1, 1], the landmarks mapped into the crop, and a frame mask for the padded
tail. Splits are by clip (never by frame): `num_folds` folds, test = fold
`fold`, validation = fold `fold + 1`, train = the others.

The file handling and validation live in plain functions (`find_clips`,
`parse_clip_json`, `read_clip`, `decode_png`, `window_starts`, `clip_fold`,
`split_clips`, `crop_frames`, `clip_examples`) so they can be tested without
TFDS. Malformed input stops the build with an `AfewVaFormatError` naming the
file, the frame and the bad value; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# Window starts: 0, hop, 2 hop, ... up to the first window that reaches the
# clip's last frame (padded, frame_mask False, where it runs past it).
from tfds_builders.clip_windows import clip_starts as window_starts

NUM_LANDMARKS = 68
LABEL_RANGE = (-10, 10)  # Integer valence / arousal annotations.
LABEL_SCALE = 10.0  # Stored labels are annotation / 10, in [-1, 1].
FRAME_KEYS = ('valence', 'arousal', 'landmarks')
NUM_CANONICAL_CLIPS = 600
SPLITS = ('train', 'validation', 'test')
_MAX_DEPTH = 4  # Folder levels searched below the manual dir.
_SKIP_DIRS = ('__MACOSX',)
# Names never searched as folders (saves a stat per frame of other datasets).
_FILE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.json', '.csv', '.txt',
                  '.gz', '.tar', '.mp4', '.avi', '.npy', '.pkl')

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AFEW-VA cannot be downloaded automatically (the iBUG licence must be accepted).

1. Request access and download the 12 archives `01.zip` ... `12.zip` from
   https://ibug.doc.ic.ac.uk/resources/afew-va-database/
   (together they hold the 600 clip folders `001/` ... `600/`).
2. Put the archives, or their extracted contents, in the manual directory:
   `~/tensorflow_datasets/downloads/manual/` by default, or the folder given by
   `--manual_dir` / `tfds.download.DownloadConfig(manual_dir=...)`. Either form
   works, mixed too (an extracted clip folder wins over the same clip in a
   zip). Clip folders are found up to 4 folder levels down, e.g.
     manual/01.zip                      (zips are read in place)
     manual/001/001.json, manual/001/00000.png, manual/001/00001.png, ...
     manual/AFEW-VA/01/001/001.json ...
   A clip folder `<id>/` must hold `<id>.json` and one `<frame>.png` per
   annotated frame.
"""


class AfewVaFormatError(ValueError):
  """Malformed AFEW-VA input; names the file, the frame and the bad value."""

  def __init__(self, path, message: str, *, frame: str | None = None,
               line: int | None = None):
    self.path = str(path)
    self.frame = frame
    self.line = line
    where = self.path
    if line is not None:
      where += f', line {line}'
    if frame is not None:
      where += f', frame {frame!r}'
    super().__init__(f'{where}: {message}')


# ----------------------------------------------------------------- files ----


@dataclasses.dataclass(frozen=True)
class ClipSource:
  """Where one clip lives: a folder, or a folder inside a zip archive."""
  clip_id: str
  container: epath.Path  # The clip folder, or the zip archive.
  member_dir: str | None  # Folder inside the zip ('' = root); None: folder.
  files: frozenset[str]  # Names of the files in the clip folder.

  @property
  def in_zip(self) -> bool:
    return self.member_dir is not None

  def _member(self, name: str) -> str:
    return f'{self.member_dir}/{name}' if self.member_dir else name

  def display(self, name: str) -> str:
    """Human-readable path of a file of the clip (`archive.zip:dir/name`)."""
    if self.in_zip:
      return f'{self.container}:{self._member(name)}'
    return str(self.container / name)

  @property
  def json_name(self) -> str:
    return f'{self.clip_id}.json'

  @contextlib.contextmanager
  def reader(self) -> Iterator[Callable[[str], bytes]]:
    """Yields `read(name) -> bytes` for the files of the clip."""
    if not self.in_zip:
      yield lambda name: (self.container / name).read_bytes()
      return
    with self.container.open('rb') as f, zipfile.ZipFile(f) as zf:
      yield lambda name: zf.read(self._member(name))


def _zip_clips(path: epath.Path) -> list[ClipSource]:
  """Clip folders inside one zip archive (any folder prefix)."""
  try:
    with path.open('rb') as f, zipfile.ZipFile(f) as zf:
      names = [i.filename for i in zf.infolist() if not i.is_dir()]
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise AfewVaFormatError(
        path, f'cannot read zip archive ({type(e).__name__}: {e})') from e
  by_dir: dict[str, set[str]] = {}
  for name in names:
    parts = name.split('/')
    if any(p in _SKIP_DIRS for p in parts):
      continue
    by_dir.setdefault('/'.join(parts[:-1]), set()).add(parts[-1])
  clips = []
  for member_dir, files in by_dir.items():
    clip_id = member_dir.rsplit('/', 1)[-1]
    if member_dir and f'{clip_id}.json' in files:
      clips.append(ClipSource(clip_id, path, member_dir, frozenset(files)))
  return clips


def _walk(root: epath.Path, depth: int, folders: list[ClipSource],
          zips: list[epath.Path]):
  entries = list(root.iterdir())
  names = {e.name for e in entries}
  if depth > 0 and f'{root.name}.json' in names:
    folders.append(ClipSource(root.name, root, None, frozenset(names)))
    return  # A clip folder: frames only below.
  for entry in sorted(entries, key=lambda e: e.name):
    if entry.name in _SKIP_DIRS:
      continue
    lower = entry.name.lower()
    if lower.endswith(_FILE_SUFFIXES):
      continue
    if lower.endswith('.zip') and not entry.is_dir():
      zips.append(entry)
    elif depth < _MAX_DEPTH and entry.is_dir():
      _walk(entry, depth + 1, folders, zips)


def _unique(sources: Sequence[ClipSource], kind: str) -> dict[str, ClipSource]:
  out: dict[str, ClipSource] = {}
  for s in sources:
    if s.clip_id in out:
      raise AfewVaFormatError(
          s.display(s.json_name), f'clip {s.clip_id!r} found twice as a '
          f'{kind}: also at {out[s.clip_id].display(s.json_name)}; expected '
          'each clip once')
    out[s.clip_id] = s
  return out


def find_clips(manual_dir) -> dict[str, ClipSource]:
  """Finds every clip in `manual_dir` (extracted folders and zip archives).

  A clip is a folder `<id>/` holding `<id>.json`, in the manual dir, up to
  4 levels below it, or inside any `*.zip` found there. An extracted folder
  wins over the same clip id in a zip; the same id twice as a folder (or twice
  in zips) is an error.

  Returns:
    {clip_id: ClipSource}, sorted by clip id.

  Raises:
    FileNotFoundError: when no clip is found, with the download instructions.
    AfewVaFormatError: for an unreadable zip or a duplicated clip.
  """
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(
        f'AFEW-VA manual dir {manual_dir} does not exist.\n\n'
        + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  folders: list[ClipSource] = []
  zips: list[epath.Path] = []
  _walk(manual_dir, 0, folders, zips)
  found = _unique([c for z in zips for c in _zip_clips(z)], 'zip member')
  found.update(_unique(folders, 'folder'))
  if not found:
    raise FileNotFoundError(
        f'No AFEW-VA clip found in manual dir {manual_dir}: expected the zip '
        f'archives {manual_dir / "01.zip"} ... {manual_dir / "12.zip"}, or '
        f'extracted clip folders such as {manual_dir / "001" / "001.json"} '
        f'(zips seen: {[str(z) for z in zips]}).\n\n'
        + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  return dict(sorted(found.items()))


# ---------------------------------------------------------- annotations ----


@dataclasses.dataclass(frozen=True)
class ClipAnnotation:
  """The parsed `<id>.json` of one clip, frames sorted by frame number."""
  actor: str
  video_id: str
  frame_keys: tuple[str, ...]  # JSON keys, e.g. '00000'; PNG = key + '.png'.
  frame_index: np.ndarray  # (n,) int64 frame number (int of the key).
  valence: np.ndarray  # (n,) float32 annotation / 10, in [-1, 1].
  arousal: np.ndarray  # (n,) float32 annotation / 10, in [-1, 1].
  landmarks: np.ndarray  # (n, 68, 2) float32 (x, y) in frame pixels.

  def __len__(self) -> int:
    return len(self.frame_keys)


def _is_number(v) -> bool:
  return type(v) in (int, float) and math.isfinite(v)  # Not bool, NaN, inf.


def _parse_label(path, key, name, value) -> float:
  lo, hi = LABEL_RANGE
  if not _is_number(value) or not lo <= value <= hi:
    raise AfewVaFormatError(
        path, f'{name} is {value!r}, expected a number in {lo}..{hi}',
        frame=key)
  return value / LABEL_SCALE


def _parse_landmarks(path, key, value) -> np.ndarray:
  if not isinstance(value, list):
    raise AfewVaFormatError(
        path, f'landmarks is {type(value).__name__} {str(value)[:40]}, '
        f'expected a list of {NUM_LANDMARKS} [x, y] pairs', frame=key)
  if len(value) != NUM_LANDMARKS:
    raise AfewVaFormatError(
        path, f'landmarks has {len(value)} points, expected {NUM_LANDMARKS}',
        frame=key)
  for i, p in enumerate(value):
    if not (isinstance(p, list) and len(p) == 2 and all(map(_is_number, p))):
      raise AfewVaFormatError(
          path, f'landmark {i} is {p!r}, expected an [x, y] pair of finite '
          'numbers', frame=key)
  return np.asarray(value, np.float32)


def parse_clip_json(data: bytes | str, *, path='<string>') -> ClipAnnotation:
  """Parses and validates one clip's JSON (see README.md for the schema).

  Requires a top-level object with a non-empty `frames` object whose keys are
  frame numbers (ASCII digits, e.g. '00000'), each an object with `valence`
  and `arousal` (numbers in -10..10; integers in the release) and
  `landmarks` (68 [x, y] pairs of finite numbers). `actor` and `video_id` are
  optional (stored as text); other keys are ignored.

  Raises:
    AfewVaFormatError: naming `path`, the frame and the bad value.
  """
  if isinstance(data, bytes):
    try:
      data = data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
      raise AfewVaFormatError(path, f'not UTF-8 text ({e})') from e
  try:
    obj = json.loads(data)
  except json.JSONDecodeError as e:
    raise AfewVaFormatError(
        path, f'malformed JSON at column {e.colno} ({e.msg})',
        line=e.lineno) from e
  if not isinstance(obj, dict):
    raise AfewVaFormatError(
        path, f'top level is a JSON {type(obj).__name__}, expected an object '
        'with keys actor, frames, video_id')
  frames = obj.get('frames')
  if not isinstance(frames, dict) or not frames:
    raise AfewVaFormatError(
        path, f'"frames" is {str(frames)[:40]!r}, expected a non-empty object '
        'mapping frame numbers to annotations')
  numbered = []
  for key in frames:
    if not (key.isascii() and key.isdigit()):
      raise AfewVaFormatError(
          path, f'frame key {key!r} is not a frame number, expected ASCII '
          "digits such as '00000'")
    numbered.append((int(key), key))
  numbered.sort()
  for (n0, k0), (n1, k1) in zip(numbered, numbered[1:]):
    if n0 == n1:
      raise AfewVaFormatError(
          path, f'frame keys {k0!r} and {k1!r} are the same frame number {n0}')
  valence, arousal, landmarks = [], [], []
  for _, key in numbered:
    entry = frames[key]
    if not isinstance(entry, dict):
      raise AfewVaFormatError(
          path, f'annotation is {str(entry)[:40]!r}, expected an object with '
          f'keys {list(FRAME_KEYS)}', frame=key)
    missing = [k for k in FRAME_KEYS if k not in entry]
    if missing:
      raise AfewVaFormatError(
          path, f'missing key(s) {missing}; has {sorted(entry)}, expected '
          f'{list(FRAME_KEYS)}', frame=key)
    valence.append(_parse_label(path, key, 'valence', entry['valence']))
    arousal.append(_parse_label(path, key, 'arousal', entry['arousal']))
    landmarks.append(_parse_landmarks(path, key, entry['landmarks']))

  def text(name):
    value = obj.get(name)
    return '' if value is None else str(value)

  return ClipAnnotation(
      actor=text('actor'), video_id=text('video_id'),
      frame_keys=tuple(k for _, k in numbered),
      frame_index=np.asarray([n for n, _ in numbered], np.int64),
      valence=np.asarray(valence, np.float32),
      arousal=np.asarray(arousal, np.float32),
      landmarks=np.stack(landmarks).astype(np.float32))


def frame_file(key: str) -> str:
  return f'{key}.png'


def read_clip(source: ClipSource, *,
              skip_missing_frames: bool = False) -> ClipAnnotation:
  """Reads and validates a clip's JSON; checks every annotated frame's PNG.

  PNGs without an annotation are ignored (they carry no label). An annotated
  frame without its PNG is an error, or, with `skip_missing_frames`, dropped
  from the clip with a logged warning naming it (its number is then missing
  from `frame_index`).
  """
  path = source.display(source.json_name)
  with source.reader() as read:
    try:
      data = read(source.json_name)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
      raise AfewVaFormatError(
          path, f'cannot read ({type(e).__name__}: {e})') from e
  ann = parse_clip_json(data, path=path)
  present = [frame_file(k) in source.files for k in ann.frame_keys]
  if all(present):
    return ann
  missing = [k for k, p in zip(ann.frame_keys, present) if not p]
  if not skip_missing_frames:
    raise AfewVaFormatError(
        path, f'annotated frame has no image: expected '
        f'{source.display(frame_file(missing[0]))}', frame=missing[0])
  if len(missing) == len(ann):
    raise AfewVaFormatError(
        path, f'none of the {len(ann)} annotated frames has an image (e.g. '
        f'{source.display(frame_file(missing[0]))})')
  logging.warning('%s: skipping %d annotated frame(s) without a PNG: %s',
                  path, len(missing), missing)
  keep = np.flatnonzero(present)
  return dataclasses.replace(
      ann, frame_keys=tuple(ann.frame_keys[i] for i in keep),
      frame_index=ann.frame_index[keep], valence=ann.valence[keep],
      arousal=ann.arousal[keep], landmarks=ann.landmarks[keep])


def decode_png(data: bytes, *, path='<bytes>') -> np.ndarray:
  """Image bytes (PNG, or any format PIL reads) -> (H, W, 3) uint8 RGB.

  Grey, palette and alpha images are converted by PIL's `convert('RGB')`.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert('RGB'), np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    raise AfewVaFormatError(
        path, f'cannot decode image ({type(e).__name__}: {e})') from e


# ------------------------------------------------------- windows, splits ----


def _clip_hash(clip_id: str) -> bytes:
  return hashlib.sha256(f'afew_va:{clip_id}'.encode()).digest()


@functools.lru_cache(maxsize=None)
def _canonical_folds(num_folds: int) -> dict[str, int]:
  ids = [f'{i:03d}' for i in range(1, NUM_CANONICAL_CLIPS + 1)]
  order = sorted(ids, key=_clip_hash)
  return {clip_id: rank % num_folds for rank, clip_id in enumerate(order)}


def clip_fold(clip_id: str, num_folds: int = 5) -> int:
  """Fold of a clip, fixed whatever other clips are present.

  The 600 release ids '001'..'600' are sorted by sha256('afew_va:<id>') and
  dealt round-robin into the folds (rank % num_folds), so each fold holds
  600 / num_folds clips (120 for 5 folds). Any other id goes to fold
  int(first 8 bytes of that hash) % num_folds.
  """
  if int(num_folds) != num_folds or num_folds < 3:
    raise ValueError(f'num_folds must be an integer >= 3, got {num_folds!r}')
  table = _canonical_folds(int(num_folds))
  if clip_id in table:
    return table[clip_id]
  return int.from_bytes(_clip_hash(clip_id)[:8], 'big') % num_folds


def split_clips(clip_ids: Sequence[str], num_folds: int = 5,
                fold: int = 0) -> dict[str, list[str]]:
  """By-clip split: test = fold `fold`, validation = fold `fold + 1` (mod
  num_folds), train = the other folds. Returns sorted ids per split."""
  if int(fold) != fold or not 0 <= fold < num_folds:
    raise ValueError(f'fold must be an integer in 0..{num_folds - 1}, got '
                     f'{fold!r}')
  out = {split: [] for split in SPLITS}
  for clip_id in sorted(clip_ids):
    f = clip_fold(clip_id, num_folds)
    if f == fold:
      out['test'].append(clip_id)
    elif f == (fold + 1) % num_folds:
      out['validation'].append(clip_id)
    else:
      out['train'].append(clip_id)
  return out


# ----------------------------------------------------------------- crops ----


@dataclasses.dataclass(eq=False)
class AfewVaConfig(tfds.core.BuilderConfig):
  """Crop, window and fold options.

  Attributes:
    crop: 'box' (`fer_jax.data.align.crop_face`: axis-aligned square of side
      `scale` x the larger landmark extent) or 'aligned'
      (`fer_jax.data.align.align_face`: similarity to `template`, zoomed out
      by `scale`).
    size: crop height = width in pixels.
    scale: context factor (see `crop`).
    template: '68' or '5' (aligned crops only).
    supersample: samples per output pixel per axis (anti-aliasing).
    clip_length: frames per example; hop: frames between window starts.
    num_folds, fold: by-clip folds; test = fold, validation = fold + 1.
    skip_missing_frames: drop (and log) annotated frames without a PNG
      instead of stopping the build.
  """

  crop: str = 'box'
  size: int = 96
  scale: float = 1.25
  template: str = '68'
  supersample: int = 4
  clip_length: int = 16
  hop: int = 16
  num_folds: int = 5
  fold: int = 0
  skip_missing_frames: bool = False

  def __post_init__(self):
    if self.crop not in ('box', 'aligned'):
      raise ValueError(f"crop must be 'box' or 'aligned', got {self.crop!r}")
    if self.template not in ('68', '5'):
      raise ValueError(f"template must be '68' or '5', got {self.template!r}")
    for name in ('size', 'supersample', 'clip_length', 'hop', 'num_folds'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(
          value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    if not self.scale > 0:
      raise ValueError(f'scale must be > 0, got {self.scale!r}')
    if self.hop > self.clip_length:
      raise ValueError(f'hop ({self.hop}) must be <= clip_length '
                       f'({self.clip_length}), else frames are skipped')
    if self.num_folds < 3 or not 0 <= self.fold < self.num_folds:
      raise ValueError(f'need num_folds >= 3 and 0 <= fold < num_folds, got '
                       f'num_folds={self.num_folds}, fold={self.fold}')


@functools.lru_cache(maxsize=None)
def _crop_fn(crop: str, size: int, scale: float, template: str,
             supersample: int):
  """Jitted per-frame crop function of a config (compiled once per shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fer_jax.data import align  # pylint: disable=g-import-not-at-top
  if crop == 'box':
    fn = functools.partial(align.crop_face, out_size=size, scale=scale,
                           supersample=supersample)
  else:
    fn = functools.partial(align.align_face, template=template, out_size=size,
                           scale=scale, supersample=supersample)
  return jax.jit(lambda frame, lm: fn(frame, lm)[:2])


def crop_frames(frames: Sequence[np.ndarray], landmarks: np.ndarray,
                config: AfewVaConfig) -> tuple[np.ndarray, np.ndarray]:
  """Face crops uint8 (n, S, S, 3) and landmarks float32 (n, 68, 2) in them.

  Crops are `fer_jax.data.align.crop_face` ('box') or `align_face`
  ('aligned') outputs, rounded half-to-even and clipped to 0..255; outside
  the frame is black.
  """
  s = config.size
  fn = _crop_fn(config.crop, s, float(config.scale), config.template,
                config.supersample)
  crops = np.zeros((len(frames), s, s, 3), np.uint8)
  out_lm = np.zeros((len(frames), NUM_LANDMARKS, 2), np.float32)
  for i, (frame, lm) in enumerate(zip(frames, landmarks)):
    image, lm_out = fn(frame, lm)
    crops[i] = np.clip(np.rint(np.asarray(image)), 0, 255)
    out_lm[i] = np.asarray(lm_out)
  return crops, out_lm


# ---------------------------------------------------------------- builder ----


def _configs() -> list[AfewVaConfig]:
  box = dict(crop='box', size=96, scale=1.25)
  aligned = dict(crop='aligned', size=112, scale=1.25, template='68')
  out = []
  for base, kwargs, what in (
      ('crop_96', box, '96x96 axis-aligned square crops (side 1.25 x the '
       'landmark extent)'),
      ('aligned_112', aligned, '112x112 crops aligned to the 68-point mean '
       'shape (similarity, zoom-out 1.25)')):
    for fold in range(5):
      name = base if fold == 0 else f'{base}_fold{fold}'
      out.append(AfewVaConfig(
          name=name, fold=fold, **kwargs,
          description=f'{what}; 16-frame windows; fold {fold} of 5 '
                      f'(test = fold {fold}, validation = fold '
                      f'{(fold + 1) % 5}).'))
  return out


class Builder(tfds.core.GeneratorBasedBuilder):
  """AFEW-VA windows of face crops with per-frame valence / arousal.

  Features (T = clip_length, S = size): 'frames' uint8 (T, S, S, 3) (bytes
  encoded), 'valence' / 'arousal' float32 (T,) in [-1, 1], 'landmarks'
  float32 (T, 68, 2) in crop pixels, 'frame_mask' bool (T,) (False on the
  padding of a clip's last window), 'frame_index' int64 (T,) (frame number in
  the clip, -1 on padding), 'clip_id', 'actor' (text), 'clip_start' (position
  of the window's first frame among the clip's annotated frames). Padded
  frames are all zero. Records are stored in (clip_id, clip_start) order.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: box and aligned crops, 16-frame windows, '
               '5 by-clip folds; manual download (zips or folders).',
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'aligned_112'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    t, s = cfg.clip_length, cfg.size
    features = tfds.features.FeaturesDict({
        'frames': tfds.features.Tensor(
            shape=(t, s, s, 3), dtype=np.uint8,
            encoding=tfds.features.Encoding.BYTES),
        'valence': tfds.features.Tensor(shape=(t,), dtype=np.float32),
        'arousal': tfds.features.Tensor(shape=(t,), dtype=np.float32),
        'landmarks': tfds.features.Tensor(
            shape=(t, NUM_LANDMARKS, 2), dtype=np.float32),
        'frame_mask': tfds.features.Tensor(shape=(t,), dtype=np.bool_),
        'frame_index': tfds.features.Tensor(shape=(t,), dtype=np.int64),
        'clip_id': tfds.features.Text(),
        'actor': tfds.features.Text(),
        'clip_start': np.int64,
    })
    return self.dataset_info_from_configs(
        features=features,
        disable_shuffling=True,
        homepage='https://ibug.doc.ic.ac.uk/resources/afew-va-database/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    clips = find_clips(dl_manager.manual_dir)
    splits = split_clips(list(clips), cfg.num_folds, cfg.fold)
    return {
        split: self._generate_examples([clips[c] for c in ids])
        for split, ids in splits.items() if ids
    }

  def _generate_examples(self, sources: Sequence[ClipSource]):
    cfg = self.builder_config
    for source in sources:
      ann = read_clip(source, skip_missing_frames=cfg.skip_missing_frames)
      for start, example in clip_examples(source, ann, cfg):
        yield f'{source.clip_id}/{start:06d}', example


def clip_examples(source: ClipSource, ann: ClipAnnotation,
                   cfg: AfewVaConfig) -> Iterator[tuple[int, Mapping]]:
  """Yields (clip_start, example) for the windows of one clip."""
  t = cfg.clip_length
  with source.reader() as read:
    for start in window_starts(len(ann), t, cfg.hop):
      idx = np.arange(start, min(start + t, len(ann)))
      frames = []
      for i in idx:
        name = frame_file(ann.frame_keys[i])
        try:
          data = read(name)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
          raise AfewVaFormatError(
              source.display(name), f'cannot read ({type(e).__name__}: {e})',
              frame=ann.frame_keys[i]) from e
        frames.append(decode_png(data, path=source.display(name)))
      crops, lms = crop_frames(frames, ann.landmarks[idx], cfg)
      n = len(idx)
      pad = lambda x, fill: np.concatenate(  # noqa: E731
          [x, np.full((t - n,) + x.shape[1:], fill, x.dtype)])
      yield start, {
          'frames': pad(crops, 0),
          'valence': pad(ann.valence[idx], 0),
          'arousal': pad(ann.arousal[idx], 0),
          'landmarks': pad(lms, 0),
          'frame_mask': np.arange(t) < n,
          'frame_index': pad(ann.frame_index[idx], -1),
          'clip_id': source.clip_id,
          'actor': ann.actor,
          'clip_start': int(start),
      }
