"""Aff-Wild (first Affect-in-the-Wild challenge, 2017) as fixed-length face clips.

Zafeiriou et al., "Aff-Wild: Valence and Arousal 'in-the-wild' Challenge",
CVPR Workshops 2017; Kollias et al., "Deep Affect Prediction in-the-wild:
Aff-Wild Database and Challenge, Deep Architectures, and Beyond", IJCV 2019.
298 YouTube videos (252 train, 46 test), valence and arousal in [-1, 1] for
every frame, plus per-frame face boxes and 68 landmarks.

Input layout (manual download; README.md):
  videos/<part>/<id>.mp4 | <id>.avi
  annotations/<part>/valence/<id>.txt, annotations/<part>/arousal/<id>.txt
      one float in [-1, 1] per line, line k = k-th decoded frame;
  bboxes/<part>/<id>/<frame>.pts (4 corner points) and
  landmarks/<part>/<id>/<frame>.pts (68 points), iBUG .pts format, <frame>
      the 1-based frame number; no file where no face was found;
with <part> = train or test.

Each example is a clip of `clip_length` consecutive frames of one video
(starts 0, hop, 2 hop, ...; the last clip is padded so that no frame is
lost): square face crops resized to `crop_size`, per-frame labels, masks and
frame indices. Frame models read the valid frames of a clip, sequence models
the whole clip, from the same records. Splits are by video.

The parsers (`read_annotation_file`, `read_valence_arousal`, `read_pts`,
`list_pts_frames`, `list_videos`, `find_partitions`, `validation_video_ids`,
`clip_starts`, `square_crop_box`, `crop_face`, `decode_video`,
`iter_video_clips`) work without TFDS. A malformed file stops the build with
an `AffWildFormatError` naming the file, the line and the bad value.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data import align
from fer_jax.data.align import square_crop_box  # noqa: F401  (parser API)
from tfds_builders.clip_windows import clip_starts  # noqa: F401  (parser API)

PARTITIONS = ('train', 'test')
VIDEO_EXTENSIONS = ('.mp4', '.avi')
DIMENSIONS = ('valence', 'arousal')
# `<frame>.pts` names the 1-based frame number: 1.pts is the first frame.
PTS_FIRST_FRAME = 1
BBOX_POINTS = 4

_PIP_HINT = "pip install 'fer_jax[video]'"
# A decimal number as the release writes them (no underscores, nan or inf).
_NUMBER = re.compile(r'[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?')

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Aff-Wild cannot be downloaded automatically: it is released under an End
User Licence Agreement for academic research only.

1. Request the original Aff-Wild (2017; the database of the CVPR 2017
   challenge and the IJCV 2019 paper, not Aff-Wild2) from the organisers as
   described on https://ibug.doc.ic.ac.uk/resources/first-affect-wild-challenge/
   (email d.kollias@qmul.ac.uk saying that you want Aff-Wild, with the signed
   EULA).
2. Extract the archives (and any inner .tar.gz / .zip) so that the manual
   directory holds exactly:
     videos/train/<id>.mp4 or <id>.avi            (252 videos)
     videos/test/<id>.mp4 or <id>.avi             (46 videos)
     annotations/train/valence/<id>.txt
     annotations/train/arousal/<id>.txt
     annotations/test/valence/<id>.txt            (optional: the test labels,
     annotations/test/arousal/<id>.txt             released after the challenge)
     bboxes/train/<id>/<frame>.pts, bboxes/test/<id>/<frame>.pts
     landmarks/train/<id>/<frame>.pts, landmarks/test/<id>/<frame>.pts
   If an archive extracts into an extra level (e.g. bboxes/train/train/<id>/),
   move its contents up one level.
   The manual directory is `~/tensorflow_datasets/downloads/manual/aff_wild/`
   by default, or the folder given by `--manual_dir` /
   `tfds.download.DownloadConfig(manual_dir=...)`.
3. Install the video extra (PyAV, with its own FFmpeg):
   pip install 'fer_jax[video]'
Only the partitions present are built: train (+ validation, held-out train
videos) needs videos/train and annotations/train; test needs videos/test and
annotations/test.
"""


class AffWildFormatError(ValueError):
  """A malformed Aff-Wild input file; names the file, the line and the value."""

  def __init__(self, path, line: int | None, message: str):
    self.path = str(path)
    self.line = line
    where = self.path if line is None else f'{self.path}, line {line}'
    super().__init__(f'{where}: {message}')


# ---------------------------------------------------------------- parsers ----


def _read_lines(path: epath.Path) -> list[str]:
  """Text lines of a file (BOM and CRLF tolerated; bad bytes -> U+FFFD)."""
  try:
    data = path.read_bytes()
  except OSError as e:
    raise AffWildFormatError(
        path, None, f'cannot read file ({type(e).__name__}: {e})') from e
  text = data.decode('utf-8', errors='replace')
  if text.startswith('\ufeff'):
    text = text[1:]
  return text.splitlines()


def _strip_trailing_blank(lines: list[str]) -> list[str]:
  end = len(lines)
  while end and not lines[end - 1].strip():
    end -= 1
  return lines[:end]


def read_annotation_file(path) -> np.ndarray:
  """Reads an Aff-Wild valence or arousal file: one float in [-1, 1] a line.

  Line k (1-based) is the label of the k-th decoded frame. Surrounding spaces,
  CRLF and trailing blank lines are accepted; anything else (a blank line
  before the last value, two values on a line, text, nan/inf, a value outside
  [-1, 1], an empty file) raises `AffWildFormatError` with the line number.

  Returns:
    (num_lines,) float32.
  """
  path = epath.Path(path)
  lines = _strip_trailing_blank(_read_lines(path))
  if not lines:
    raise AffWildFormatError(
        path, 1, 'empty file, expected one value in [-1, 1] per frame')
  values = np.empty(len(lines), np.float64)
  for i, text in enumerate(lines):
    token = text.strip()
    if not _NUMBER.fullmatch(token):
      raise AffWildFormatError(
          path, i + 1, f'{text!r} is not a number, expected one float in '
          '[-1, 1] per line')
    value = float(token)
    if not -1.0 <= value <= 1.0:
      raise AffWildFormatError(
          path, i + 1, f'value {token} is outside [-1, 1]')
    values[i] = value
  return values.astype(np.float32)


def read_valence_arousal(valence_path, arousal_path):
  """Reads both label files of a video; their line counts must agree.

  Returns:
    (valence, arousal), each (n,) float32.
  """
  valence = read_annotation_file(valence_path)
  arousal = read_annotation_file(arousal_path)
  if len(valence) != len(arousal):
    raise AffWildFormatError(
        arousal_path, None, f'{len(arousal)} values but {valence_path} has '
        f'{len(valence)}; expected one line per frame in both files')
  return valence, arousal


def read_pts(path, *, expected_points: int | None = None) -> np.ndarray:
  """Reads an iBUG .pts file.

  Format: `version: 1`, `n_points: N`, `{`, N lines `x y`, `}` (blank lines
  after `}` are ignored). x is the column and y the row, in pixels.

  Args:
    path: the .pts file.
    expected_points: if given, N must equal it (4 for Aff-Wild bboxes).

  Returns:
    (N, 2) float64 points (x, y).
  """
  path = epath.Path(path)
  lines = _strip_trailing_blank(_read_lines(path))

  def line(i: int) -> str:
    if i >= len(lines):
      raise AffWildFormatError(
          path, i + 1, 'unexpected end of file, expected '
          + ('`}`' if i >= 3 else ['`version: 1`', '`n_points: N`', '`{`'][i]))
    return lines[i].strip()

  def header(i: int, key: str) -> str:
    text = line(i)
    name, sep, value = text.partition(':')
    if not sep or name.strip() != key:
      raise AffWildFormatError(
          path, i + 1, f'{lines[i]!r}, expected `{key}: ...`')
    return value.strip()

  version = header(0, 'version')
  if version != '1':
    raise AffWildFormatError(path, 1, f'version {version!r}, expected 1')
  count_text = header(1, 'n_points')
  if not (count_text.isascii() and count_text.isdigit()) or int(count_text) < 1:
    raise AffWildFormatError(
        path, 2, f'n_points {count_text!r}, expected a positive integer')
  n = int(count_text)
  if expected_points is not None and n != expected_points:
    raise AffWildFormatError(
        path, 2, f'n_points is {n}, expected {expected_points}')
  if line(2) != '{':
    raise AffWildFormatError(path, 3, f'{lines[2]!r}, expected `{{`')
  points = np.empty((n, 2), np.float64)
  for k in range(n):
    text = line(3 + k)
    if text == '}':
      raise AffWildFormatError(
          path, 4 + k, f'`}}` after {k} points, but n_points is {n}')
    tokens = text.split()
    if len(tokens) != 2 or not all(_NUMBER.fullmatch(t) for t in tokens):
      raise AffWildFormatError(
          path, 4 + k, f'{lines[3 + k]!r}, expected two numbers `x y`')
    points[k] = [float(t) for t in tokens]
    if not np.isfinite(points[k]).all():
      raise AffWildFormatError(
          path, 4 + k, f'{lines[3 + k]!r} is not finite, expected `x y`')
  if line(3 + n) != '}':
    raise AffWildFormatError(
        path, 4 + n, f'{lines[3 + n]!r}, expected `}}` after {n} points '
        '(n_points)')
  if len(lines) > 4 + n:
    raise AffWildFormatError(
        path, 5 + n, f'{lines[4 + n]!r} after the closing `}}`')
  return points


def list_pts_frames(directory) -> dict[int, epath.Path]:
  """Maps 1-based frame number -> .pts path in one video's folder.

  Names are positive integers, optionally zero-padded (`12.pts`,
  `00012.pts`). A missing folder gives {}; any other .pts name, or two names
  for one frame, raises `AffWildFormatError`. Other files are ignored.
  """
  directory = epath.Path(directory)
  if not directory.is_dir():
    return {}
  frames = {}
  for path in sorted(directory.iterdir()):
    if path.suffix != '.pts':
      continue
    stem = path.stem
    if not (stem.isascii() and stem.isdigit()) or int(stem) < PTS_FIRST_FRAME:
      raise AffWildFormatError(
          path, None, f'frame number {stem!r} is not an integer >= '
          f'{PTS_FIRST_FRAME} (the .pts files are named by 1-based frame '
          'number, 1.pts = first frame)')
    frame = int(stem)
    if frame in frames:
      raise AffWildFormatError(
          path, None, f'frame {frame} also has {frames[frame]}')
    frames[frame] = path
  return frames


def box_from_points(points: np.ndarray, *, path='<points>') -> np.ndarray:
  """(x0, y0, x1, y1) extent of (N, 2) points; rejects a zero-size extent."""
  points = np.asarray(points, np.float64)
  x0, y0 = points.min(0)
  x1, y1 = points.max(0)
  if max(x1 - x0, y1 - y0) <= 0:
    raise AffWildFormatError(
        path, None, f'degenerate face box ({x0}, {y0}, {x1}, {y1}): all points '
        'coincide')
  return np.array([x0, y0, x1, y1], np.float64)


# ------------------------------------------------------------------ files ----


@dataclasses.dataclass(frozen=True)
class VideoFiles:
  """The input files of one Aff-Wild video."""
  video_id: str
  partition: str  # 'train' or 'test'.
  video: epath.Path
  valence: epath.Path
  arousal: epath.Path
  bbox_dir: epath.Path
  landmark_dir: epath.Path


def _partition_paths(manual_dir: epath.Path, partition: str):
  return {
      'videos': manual_dir / 'videos' / partition,
      'valence': manual_dir / 'annotations' / partition / 'valence',
      'arousal': manual_dir / 'annotations' / partition / 'arousal',
      'bboxes': manual_dir / 'bboxes' / partition,
      'landmarks': manual_dir / 'landmarks' / partition,
  }


def _stems(directory: epath.Path, suffixes: Sequence[str]):
  out = collections.defaultdict(list)
  for path in sorted(directory.iterdir()):
    if path.suffix.lower() in suffixes and not path.name.startswith('.'):
      out[path.stem].append(path)
  return out


def list_videos(manual_dir, partition: str) -> list[VideoFiles]:
  """Lists and cross-checks one partition's videos, sorted by video id.

  Requires videos/<partition>/ with at least one .mp4 / .avi and both
  annotation folders; every video needs valence and arousal files and every
  annotation file a video (a missing partner is an error naming it), and each
  video needs a bboxes/ or landmarks/ folder. Frames without any .pts file
  are the frames where no face was found.

  Raises:
    FileNotFoundError: a folder or a partner file is missing.
    AffWildFormatError: one id has both an .mp4 and an .avi.
  """
  if partition not in PARTITIONS:
    raise ValueError(f'partition must be one of {PARTITIONS}, got {partition!r}')
  paths = _partition_paths(epath.Path(manual_dir), partition)
  for key in ('videos', 'valence', 'arousal'):
    if not paths[key].is_dir():
      raise FileNotFoundError(
          f'Missing Aff-Wild folder {paths[key]} for the {partition!r} '
          'partition.\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  videos = _stems(paths['videos'], VIDEO_EXTENSIONS)
  if not videos:
    raise FileNotFoundError(
        f'No .mp4 / .avi video in {paths["videos"]}.\n\n'
        + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  labels = {d: _stems(paths[d], ('.txt',)) for d in DIMENSIONS}
  for vid, files in videos.items():
    if len(files) > 1:
      raise AffWildFormatError(
          files[1], None, f'video id {vid!r} has {len(files)} files '
          f'({", ".join(f.name for f in files)}), expected one')
  for d in DIMENSIONS:
    extra = sorted(set(labels[d]) - set(videos))
    if extra:
      raise FileNotFoundError(
          f'{labels[d][extra[0]][0]} has no video: expected '
          f'{paths["videos"] / extra[0]}.mp4 or .avi ({len(extra)} '
          f'{d} file(s) without video: {extra[:10]})')
  out = []
  for vid in sorted(videos):
    for d in DIMENSIONS:
      if vid not in labels[d]:
        raise FileNotFoundError(
            f'Video {videos[vid][0]} has no {d} annotation: expected '
            f'{paths[d] / (vid + ".txt")}')
    bbox_dir, landmark_dir = paths['bboxes'] / vid, paths['landmarks'] / vid
    if not bbox_dir.is_dir() and not landmark_dir.is_dir():
      raise FileNotFoundError(
          f'Video {videos[vid][0]} has no face boxes: expected the folder '
          f'{bbox_dir} or {landmark_dir} of <frame>.pts files')
    out.append(VideoFiles(
        video_id=vid, partition=partition, video=videos[vid][0],
        valence=labels['valence'][vid][0], arousal=labels['arousal'][vid][0],
        bbox_dir=bbox_dir, landmark_dir=landmark_dir))
  return out


def find_partitions(manual_dir) -> dict[str, list[VideoFiles]]:
  """The partitions present in `manual_dir` (train and / or test).

  A partition is present when videos/<part>/ exists; a video id may not be
  in both partitions. Test videos without test annotations are skipped with
  a warning (the test labels were released after the challenge); train
  videos without annotations are an error.

  Raises:
    FileNotFoundError: listing every expected path when no partition exists.
  """
  manual_dir = epath.Path(manual_dir)
  out = {}
  for part in PARTITIONS:
    paths = _partition_paths(manual_dir, part)
    if not paths['videos'].is_dir():
      continue
    if part == 'test' and not (paths['valence'].is_dir()
                               or paths['arousal'].is_dir()):
      logging.warning(
          'Aff-Wild: %s exists but %s does not; the test split is not built.',
          paths['videos'], paths['valence'].parent)
      continue
    out[part] = list_videos(manual_dir, part)
  if len(out) == 2:
    both = sorted({v.video_id for v in out['train']}
                  & {v.video_id for v in out['test']})
    if both:
      raise AffWildFormatError(
          _partition_paths(manual_dir, 'test')['videos'], None,
          f'video id(s) {both[:10]} are in both videos/train and videos/test; '
          'expected each video in one partition')
  if not out:
    expected = []
    for part in PARTITIONS:
      p = _partition_paths(manual_dir, part)
      expected += [f'  {p["videos"]}/<id>.mp4|.avi', f'  {p["valence"]}/<id>.txt',
                   f'  {p["arousal"]}/<id>.txt',
                   f'  {p["bboxes"]}/<id>/<frame>.pts',
                   f'  {p["landmarks"]}/<id>/<frame>.pts']
    raise FileNotFoundError(
        f'No Aff-Wild partition found in manual dir {manual_dir}. Expected:\n'
        + '\n'.join(expected) + '\n\n' + _MANUAL_DOWNLOAD_INSTRUCTIONS)
  return out


def validation_video_ids(video_ids: Iterable[str],
                         fraction: float) -> frozenset[str]:
  """The training videos held out as the validation split.

  Videos are ranked by the SHA-256 hex digest of their id (stable, independent
  of listing order and of the other ids' names) and the first
  k = round(fraction * n) are taken, at least 1 and at most n - 1 when
  fraction > 0 and n >= 2 (none when fraction == 0 or n < 2).
  """
  ids = sorted(set(video_ids))
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'validation fraction must be in [0, 1), got {fraction}')
  n = len(ids)
  if fraction == 0 or n < 2:
    return frozenset()
  k = min(n - 1, max(1, int(math.floor(fraction * n + 0.5))))
  ranked = sorted(ids, key=lambda v: hashlib.sha256(v.encode()).hexdigest())
  return frozenset(ranked[:k])


def assign_splits(parts: Mapping[str, Sequence[VideoFiles]],
                  validation_fraction: float) -> dict[str, list[VideoFiles]]:
  """Split name -> videos; every video is in exactly one split.

  'train' and 'validation' divide the train partition (`validation_video_ids`),
  'test' is the test partition. Empty splits are left out.
  """
  splits = {}
  if 'train' in parts:
    held_out = validation_video_ids(
        [v.video_id for v in parts['train']], validation_fraction)
    splits['train'] = [v for v in parts['train'] if v.video_id not in held_out]
    splits['validation'] = [v for v in parts['train']
                            if v.video_id in held_out]
  if 'test' in parts:
    splits['test'] = list(parts['test'])
  return {name: videos for name, videos in splits.items() if videos}


# ------------------------------------------------------------------ clips ----


def crop_face(frame: np.ndarray, box, *, size: int, margin: float,
              path='<frame>') -> np.ndarray:
  """Square face crop of an (H, W, 3) uint8 frame, resized to (size, size, 3).

  `fer_jax.data.align.crop_face_box`: the square of `square_crop_box(box,
  margin)` is cut out (zeros where it runs past the frame) and resized with
  PIL's bilinear filter (antialiased when shrinking). A square entirely
  outside the frame raises `AffWildFormatError` naming `path` (the .pts file).
  """
  try:
    return align.crop_face_box(frame, box, size, margin)
  except align.FaceOutsideFrameError as e:
    raise AffWildFormatError(path, None, str(e)) from e


def _import_av():
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'Decoding Aff-Wild videos needs PyAV, an optional dependency of '
        f'fer_jax: {_PIP_HINT}') from e
  return av


def decode_video(path) -> Iterator[np.ndarray]:
  """Streams the frames of a video as (H, W, 3) uint8 RGB arrays (PyAV).

  Frames are yielded in presentation order, one at a time, so memory stays
  bounded. Decoder errors raise `AffWildFormatError` naming the file.
  """
  av = _import_av()
  path = epath.Path(path)
  try:
    with contextlib.ExitStack() as stack:
      target = os.fspath(path)
      if '://' in target:  # Cloud storage: read through a file object.
        target = stack.enter_context(path.open('rb'))
      container = stack.enter_context(av.open(target))
      if not container.streams.video:
        raise AffWildFormatError(path, None, 'no video stream')
      stream = container.streams.video[0]
      stream.thread_type = 'AUTO'
      for frame in container.decode(stream):
        yield frame.to_ndarray(format='rgb24')
  except AffWildFormatError:
    raise
  except (av.FFmpegError, OSError, ValueError) as e:
    raise AffWildFormatError(
        path, None, f'cannot decode video ({type(e).__name__}: {e})') from e


@dataclasses.dataclass
class _Frame:
  index: int
  crop: np.ndarray
  box: np.ndarray  # (4,) float32, zeros if no face.
  has_face: bool
  has_label: bool
  valence: float
  arousal: float


def _make_clip(video_id: str, start: int, frames: Sequence[_Frame],
               clip_length: int, size: int) -> dict:
  t = clip_length
  crops = np.zeros((t, size, size, 3), np.uint8)
  out = {
      'valence': np.zeros(t, np.float32),
      'arousal': np.zeros(t, np.float32),
      'face_mask': np.zeros(t, bool),
      'label_mask': np.zeros(t, bool),
      'frame_index': np.full(t, -1, np.int64),
      'face_box': np.zeros((t, 4), np.float32),
  }
  for j, f in enumerate(frames):
    assert f.index == start + j, (f.index, start, j)
    crops[j] = f.crop
    out['valence'][j] = f.valence
    out['arousal'][j] = f.arousal
    out['face_mask'][j] = f.has_face
    out['label_mask'][j] = f.has_label
    out['frame_index'][j] = f.index
    out['face_box'][j] = f.box
  out['frame_mask'] = out['face_mask'] & out['label_mask']
  out['frames'] = crops
  out['video_id'] = video_id
  out['clip_start'] = start
  return out


def iter_video_clips(video: VideoFiles, *, crop_size: int, clip_length: int,
                     hop: int, margin: float, max_frame_mismatch: int,
                     frames: Iterable[np.ndarray] | None = None
                     ) -> Iterator[dict]:
  """Streams the clips of one video (see `Builder` for the fields).

  Frame i (0-based) takes line i + 1 of the annotation files and the face box
  of `bboxes/.../<i + 1>.pts`, else the extent of `landmarks/.../<i + 1>.pts`,
  else has no face (zero crop, face_mask False). The decoded frame count N
  and the annotation line count L may differ by at most `max_frame_mismatch`
  (frames aligned from the first): frames >= L get label_mask False, lines
  > N and .pts files for frames N + 1 .. N + max_frame_mismatch are unused;
  a larger difference, or a .pts file for a later frame, raises
  `AffWildFormatError` naming both counts. Only the crops of the current clip
  are held in memory.

  Args:
    video: the files of the video.
    crop_size, clip_length, hop, margin, max_frame_mismatch: see
      `AffWildConfig`.
    frames: decoded (H, W, 3) frames; default `decode_video(video.video)`.
  """
  if not 1 <= hop <= clip_length:
    raise ValueError(
        f'hop must be in [1, clip_length={clip_length}], got {hop}')
  valence, arousal = read_valence_arousal(video.valence, video.arousal)
  bboxes = list_pts_frames(video.bbox_dir)
  landmarks = list_pts_frames(video.landmark_dir)
  if frames is None:
    frames = decode_video(video.video)
  buffer = collections.deque()
  start, last_end, n = 0, -1, 0
  empty = np.zeros((crop_size, crop_size, 3), np.uint8)
  for i, image in enumerate(frames):
    n = i + 1
    number = i + PTS_FIRST_FRAME
    box, pts_path = None, None
    if number in bboxes:
      pts_path = bboxes[number]
      points = read_pts(pts_path, expected_points=BBOX_POINTS)
    elif number in landmarks:
      pts_path = landmarks[number]
      points = read_pts(pts_path)
    if pts_path is not None:
      box = box_from_points(points, path=pts_path)
      crop = crop_face(image, box, size=crop_size, margin=margin,
                       path=pts_path)
    has_label = i < len(valence)
    buffer.append(_Frame(
        index=i, crop=empty if box is None else crop,
        box=np.zeros(4, np.float32) if box is None else box.astype(np.float32),
        has_face=box is not None, has_label=has_label,
        valence=float(valence[i]) if has_label else 0.0,
        arousal=float(arousal[i]) if has_label else 0.0))
    if i == start + clip_length - 1:
      yield _make_clip(video.video_id, start, buffer, clip_length, crop_size)
      last_end = i
      start += hop
      for _ in range(hop):
        buffer.popleft()
  if n == 0:
    raise AffWildFormatError(video.video, None, 'no frames decoded')
  if abs(n - len(valence)) > max_frame_mismatch:
    raise AffWildFormatError(
        video.video, None, f'decoded {n} frames but {video.valence} and '
        f'{video.arousal} have {len(valence)} lines; expected one line per '
        f'frame (a difference of at most {max_frame_mismatch} is tolerated)')
  if n != len(valence):
    logging.warning(
        'Aff-Wild %s: %d decoded frames, %d annotation lines (tolerated, '
        'aligned from the first frame).', video.video, n, len(valence))
  last = n - 1 + PTS_FIRST_FRAME  # Number of the last decoded frame.
  for kind, found in (('bboxes', bboxes), ('landmarks', landmarks)):
    beyond = [k for k in found if k > last + max_frame_mismatch]
    if beyond:
      raise AffWildFormatError(
          found[min(beyond)], None, f'{kind} file for frame {min(beyond)} but '
          f'{video.video} decodes to {n} frames (1-based frame numbers 1..{n}, '
          f'{max_frame_mismatch} more tolerated)')
  if last_end < n - 1:
    yield _make_clip(video.video_id, start, buffer, clip_length, crop_size)


# ---------------------------------------------------------------- builder ----

_FRAME_ENCODINGS = {
    'zlib': tfds.features.Encoding.ZLIB,
    'bytes': tfds.features.Encoding.BYTES,
}


@dataclasses.dataclass(eq=False)
class AffWildConfig(tfds.core.BuilderConfig):
  """Clip and crop options.

  Attributes:
    crop_size: side of the square face crops, pixels.
    clip_length: frames per example (T).
    hop: frames between clip starts, 1..clip_length (== clip_length: no
      overlap).
    margin: the crop square's side is max(box w, box h) * (1 + margin).
    validation_fraction: share of training videos held out as 'validation'
      (`validation_video_ids`); 0 builds no validation split.
    max_frame_mismatch: tolerated |decoded frames - annotation lines| per
      video (`iter_video_clips`).
    frame_encoding: how `frames` is stored: 'zlib' (compressed, the
      default) or 'bytes' (raw: faster to build and read, larger). Both are
      lossless and read back as one (T, S, S, 3) uint8 array.
  """

  crop_size: int = 96
  clip_length: int = 16
  hop: int = 16
  margin: float = 0.2
  validation_fraction: float = 0.1
  max_frame_mismatch: int = 2
  frame_encoding: str = 'zlib'

  def __post_init__(self):
    for field in ('crop_size', 'clip_length', 'hop', 'max_frame_mismatch'):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f'{field} must be an int, got {value!r}')
    if self.crop_size < 1 or self.clip_length < 1:
      raise ValueError(
          f'crop_size and clip_length must be >= 1, got {self.crop_size}, '
          f'{self.clip_length}')
    if not 1 <= self.hop <= self.clip_length:
      raise ValueError(
          f'hop must be in [1, clip_length={self.clip_length}] so that no '
          f'frame is skipped, got {self.hop}')
    if self.max_frame_mismatch < 0:
      raise ValueError(
          f'max_frame_mismatch must be >= 0, got {self.max_frame_mismatch}')
    if not (math.isfinite(self.margin) and self.margin >= 0):
      raise ValueError(f'margin must be >= 0, got {self.margin!r}')
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(
          'validation_fraction must be in [0, 1), got '
          f'{self.validation_fraction!r}')
    if self.frame_encoding not in _FRAME_ENCODINGS:
      raise ValueError(
          f'frame_encoding must be one of {sorted(_FRAME_ENCODINGS)}, got '
          f'{self.frame_encoding!r}')


class Builder(tfds.core.GeneratorBasedBuilder):
  """Aff-Wild face clips with per-frame valence / arousal (manual download).

  Splits (by video, never by frame): 'train' and 'validation' (training
  videos, `validation_video_ids`), 'test' (test videos, when their
  annotations are present). Features of a clip of T = clip_length frames:
    frames       (T, S, S, 3) uint8 face crops (zeros where no face / padding)
    valence, arousal  (T,) float32 (0 where label_mask is False)
    face_mask    (T,) bool, a bbox or landmark .pts exists for the frame
    label_mask   (T,) bool, the frame has an annotation line
    frame_mask   (T,) bool, face_mask & label_mask (False on padding)
    frame_index  (T,) int64 0-based frame index in the video, -1 on padding
    face_box     (T, 4) float32 (x0, y0, x1, y1) face extent in frame pixels
                 (before the margin), zeros where no face
    video_id     str;  clip_start  int64 = frame_index[0]
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: fixed-length clips of square face crops '
               '(configs crop_96, crop_299); splits by video.',
  }
  BUILDER_CONFIGS = [
      AffWildConfig(
          name='crop_96',
          description='96x96 face crops, 16-frame clips, hop 16, margin 0.2.',
          crop_size=96),
      AffWildConfig(
          name='crop_299',
          description='299x299 face crops (input size of Hasani & Mahoor '
                      '2017), 16-frame clips, hop 16, margin 0.2.',
          crop_size=299),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'crop_96'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    t, s = cfg.clip_length, cfg.crop_size

    def per_frame(dtype, *shape):
      return tfds.features.Tensor(shape=(t, *shape), dtype=dtype)

    features = {
        # Raw (optionally zlib-compressed) bytes: exact, decoded to one
        # (T, S, S, 3) array by tfds.data_source without an image codec
        # (README.md, "Storage choice").
        'frames': tfds.features.Tensor(
            shape=(t, s, s, 3), dtype=np.uint8,
            encoding=_FRAME_ENCODINGS[cfg.frame_encoding]),
        'valence': per_frame(np.float32),
        'arousal': per_frame(np.float32),
        'frame_mask': per_frame(np.bool_),
        'face_mask': per_frame(np.bool_),
        'label_mask': per_frame(np.bool_),
        'frame_index': per_frame(np.int64),
        'face_box': per_frame(np.float32, 4),
        'video_id': tfds.features.Text(),
        'clip_start': np.int64,
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        homepage='https://ibug.doc.ic.ac.uk/resources/first-affect-wild-'
                 'challenge/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    splits = assign_splits(find_partitions(dl_manager.manual_dir),
                           self.builder_config.validation_fraction)
    _import_av()  # Fail before decoding anything when PyAV is missing.
    return {name: self._generate_examples(videos)
            for name, videos in splits.items()}

  def _generate_examples(self, videos: Sequence[VideoFiles]):
    """Yields ('<video_id>/<clip_start>', clip) for every clip of `videos`."""
    cfg = self.builder_config
    for video in videos:
      for clip in iter_video_clips(
          video, crop_size=cfg.crop_size, clip_length=cfg.clip_length,
          hop=cfg.hop, margin=cfg.margin,
          max_frame_mismatch=cfg.max_frame_mismatch):
        yield f'{video.video_id}/{clip["clip_start"]}', clip
