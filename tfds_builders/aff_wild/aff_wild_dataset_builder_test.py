"""Tests of the aff_wild builder on FAKE dummy data (see make_dummy_data.py).

References are independent of the builder: frames decoded with PyAV directly,
.pts / label files read with plain string splitting and `np.loadtxt`, crops
cut with `np.pad` + slicing and resized with PIL and with a NumPy
triangle-filter resampler written here; clip starts and split counts are
worked out by hand.
"""

import hashlib
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import testing
from tfds_builders.aff_wild import aff_wild_dataset_builder as ab
from tfds_builders.aff_wild import make_dummy_data

try:
  import av  # pylint: disable=g-import-not-at-top
except ImportError:  # The parser tests still run without the video extra.
  av = None
requires_av = pytest.mark.skipif(
    av is None, reason="PyAV not installed: pip install 'fer_jax[video]'")

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'

# Decoded frames per dummy video (make_dummy_data.VIDEOS), checked below.
NUM_FRAMES = {'101': 22, '102': 9, '103': 17, '104': 16, '201': 20, '202': 12}
PARTITION = {'101': 'train', '102': 'train', '103': 'train', '104': 'train',
             '201': 'test', '202': 'test'}

TINY = ab.AffWildConfig(
    name='tiny', description='test config with overlapping clips',
    crop_size=24, clip_length=5, hop=3, margin=0.5, validation_fraction=0.5,
    frame_encoding='bytes')

# Clip starts worked out by hand: 0, hop, 2 hop, ... up to the first clip
# that reaches the last frame. E.g. 22 frames, T=5, hop=3: 18 + 5 >= 22.
EXPECTED_STARTS = {
    'crop_96': {'101': [0, 16], '102': [0], '103': [0, 16], '104': [0],
                '201': [0, 16], '202': [0]},
    'tiny': {'101': [0, 3, 6, 9, 12, 15, 18], '102': [0, 3, 6],
             '103': [0, 3, 6, 9, 12], '104': [0, 3, 6, 9, 12],
             '201': [0, 3, 6, 9, 12, 15], '202': [0, 3, 6, 9]},
}
# Validation videos: sha256 ranks of 101..104 are 101 < 102 < 103 < 104
# (16dc.., 3783.., 454f.., 5ef6..); fraction 0.1 of 4 -> 1, 0.5 -> 2.
EXPECTED_SPLIT_VIDEOS = {
    'crop_96': {'train': {'102', '103', '104'}, 'validation': {'101'},
                'test': {'201', '202'}},
    'tiny': {'train': {'103', '104'}, 'validation': {'101', '102'},
             'test': {'201', '202'}},
}
CONFIGS = {'crop_96': 'crop_96', 'tiny': TINY}


def _build(data_dir, config, manual_dir=DUMMY):
  return testing.build_array_record(ab.Builder, data_dir, config, manual_dir)


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def built(request, tmp_path_factory):
  """Builds each config once per module into array_record files."""
  if av is None:
    pytest.skip("PyAV not installed: pip install 'fer_jax[video]'")
  name = request.param
  data_dir = tmp_path_factory.mktemp(name)
  builder = _build(data_dir, CONFIGS[name])
  records = {split: [builder.as_data_source(split)[i]
                     for i in range(builder.info.splits[split].num_examples)]
             for split in builder.info.splits}
  return name, data_dir, builder, records


# ------------------------------------------------ independent references ----


def _decode(path):
  with av.open(str(path)) as container:
    return [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]


def _video_path(vid):
  (path,) = (DUMMY / 'videos' / PARTITION[vid]).glob(f'{vid}.*')
  return path


def _points(path):
  lines = path.read_text().splitlines()
  n = int(lines[1].split(':')[1])
  return np.array([[float(v) for v in line.split()] for line in lines[3:3 + n]])


def _face_points(vid, index):
  """Bbox points of frame `index` (0-based), else landmarks, else None."""
  for kind in ('bboxes', 'landmarks'):
    path = DUMMY / kind / PARTITION[vid] / vid / f'{index + 1}.pts'
    if path.exists():
      return _points(path)
  return None


def _labels(vid, dim):
  path = DUMMY / 'annotations' / PARTITION[vid] / dim / f'{vid}.txt'
  return np.loadtxt(path, dtype=np.float64, ndmin=1)


def _reference_square(frame, points, margin):
  """Zero-padded square around the points' extent, by np.pad + slicing."""
  x0, y0 = points.min(0)
  x1, y1 = points.max(0)
  side = int(np.floor(max(x1 - x0, y1 - y0) * (1 + margin) + 0.5))
  left = int(np.floor((x0 + x1) / 2 - side / 2 + 0.5))
  top = int(np.floor((y0 + y1) / 2 - side / 2 + 0.5))
  pad = 2 * side + max(frame.shape)
  big = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)))
  return big[top + pad:top + pad + side, left + pad:left + pad + side]


def _resize_pil(square, size):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(square).resize((size, size),
                                                   Image.Resampling.BILINEAR))


def _triangle_weights(n_in, n_out):
  """(n_out, n_in) bilinear weights, widened by the scale when shrinking.

  Output pixel i has centre (i + 0.5) * n_in / n_out in input coordinates;
  input pixel j (centre j + 0.5) weighs max(0, 1 - |d| / support) with
  support = max(n_in / n_out, 1); rows are normalised (edges renormalise).
  """
  scale = n_in / n_out
  support = max(scale, 1.0)
  centres = (np.arange(n_out) + 0.5)[:, None] * scale
  k = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in) + 0.5 - centres) / support)
  return k / k.sum(1, keepdims=True)


def _resize_numpy(square, size):
  rows = np.tensordot(_triangle_weights(square.shape[0], size),
                      square.astype(np.float64), axes=(1, 0))  # (S, w, 3)
  out = np.einsum('owc,pw->opc', rows,
                  _triangle_weights(square.shape[1], size), optimize=True)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


# -------------------------------------------------------- built datasets ----


def test_registered_and_configs():
  assert tfds.builder_cls('aff_wild') is ab.Builder  # Registered on import.
  assert ab.Builder.name == 'aff_wild'
  assert ab.Builder.DEFAULT_BUILDER_CONFIG_NAME == 'crop_96'
  configs = {c.name: c for c in ab.Builder.BUILDER_CONFIGS}
  assert list(configs) == ['crop_96', 'crop_299']
  assert [(c.crop_size, c.clip_length, c.hop, c.margin)
          for c in configs.values()] == [(96, 16, 16, 0.2), (299, 16, 16, 0.2)]
  assert str(ab.Builder.VERSION) == '1.0.0'
  assert '1.0.0' in ab.Builder.RELEASE_NOTES
  info = tfds.builder('aff_wild/crop_299').info  # Not built: info only.
  assert info.features['frames'].shape == (16, 299, 299, 3)


@requires_av
def test_dummy_videos_decode_to_the_documented_counts():
  for vid, n in NUM_FRAMES.items():
    frames = _decode(_video_path(vid))
    assert len(frames) == n, vid
    assert frames[0].shape == (64, 80, 3)
    assert list(ab.decode_video(_video_path(vid)))[3].tobytes() == (
        frames[3].tobytes())


def test_info(built):
  name, _, builder, _ = built
  cfg = builder.builder_config
  t, s = cfg.clip_length, cfg.crop_size
  f = builder.info.features
  assert f['frames'].shape == (t, s, s, 3) and f['frames'].np_dtype == np.uint8
  for key, dtype in (('valence', np.float32), ('arousal', np.float32),
                     ('frame_mask', np.bool_), ('face_mask', np.bool_),
                     ('label_mask', np.bool_), ('frame_index', np.int64)):
    assert f[key].shape == (t,) and f[key].np_dtype == dtype, key
  assert f['face_box'].shape == (t, 4)
  assert set(f) == {'frames', 'valence', 'arousal', 'frame_mask', 'face_mask',
                    'label_mask', 'frame_index', 'face_box', 'video_id',
                    'clip_start'}
  assert 'Kollias' in builder.info.citation
  assert 'Zafeiriou' in builder.info.citation
  assert 'Aff-Wild' in builder.info.description
  assert builder.info.file_format.value == 'array_record'
  del name


def test_splits_by_video_and_clip_starts(built):
  name, _, builder, records = built
  want = EXPECTED_SPLIT_VIDEOS[name]
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {split: sum(len(EXPECTED_STARTS[name][v]) for v in vids)
                    for split, vids in want.items()}
  videos_of = {}
  for split, recs in records.items():
    videos_of[split] = {r['video_id'].decode() for r in recs}
    for vid in videos_of[split]:
      starts = sorted(r['clip_start'] for r in recs
                      if r['video_id'].decode() == vid)
      assert starts == EXPECTED_STARTS[name][vid], (split, vid)
  assert videos_of == want
  # No video in two splits.
  all_ids = [v for ids in videos_of.values() for v in ids]
  assert len(all_ids) == len(set(all_ids)) == len(NUM_FRAMES)


def test_registered_config_reads_through_tfds_data_source(built):
  name, data_dir, builder, records = built
  if name != 'crop_96':
    pytest.skip('custom configs are read through builder.as_data_source')
  reloaded = tfds.builder('aff_wild/crop_96', data_dir=data_dir)
  assert {k: v.num_examples for k, v in reloaded.info.splits.items()} == {
      k: v.num_examples for k, v in builder.info.splits.items()}
  source = tfds.data_source('aff_wild/crop_96', split='test',
                            data_dir=data_dir)
  got = sorted((r['video_id'], r['clip_start'], r['frames'].tobytes())
               for r in source)
  want = sorted((r['video_id'], r['clip_start'], r['frames'].tobytes())
                for r in records['test'])
  assert got == want


def test_records_equal_independent_reference(built):
  """Every frame of every clip: crop, box, labels, masks, index."""
  name, _, builder, records = built
  cfg = builder.builder_config
  t, s = cfg.clip_length, cfg.crop_size
  decoded = {vid: _decode(_video_path(vid)) for vid in NUM_FRAMES}
  labels = {vid: (_labels(vid, 'valence'), _labels(vid, 'arousal'))
            for vid in NUM_FRAMES}
  covered = {vid: set() for vid in NUM_FRAMES}
  checked_faces = 0
  for recs in records.values():
    for r in recs:
      vid, start = r['video_id'].decode(), int(r['clip_start'])
      n = NUM_FRAMES[vid]
      valence, arousal = labels[vid]
      assert r['frames'].shape == (t, s, s, 3) and r['frames'].dtype == np.uint8
      for j in range(t):
        i = start + j
        if i >= n:  # Padding after the last frame.
          assert r['frame_index'][j] == -1
          assert not (r['frame_mask'][j] or r['face_mask'][j]
                      or r['label_mask'][j])
          assert r['valence'][j] == r['arousal'][j] == 0
          assert not r['frames'][j].any() and not r['face_box'][j].any()
          continue
        covered[vid].add(i)
        assert r['frame_index'][j] == i
        has_label = i < len(valence)
        assert r['label_mask'][j] == has_label
        if has_label:
          assert r['valence'][j] == np.float32(valence[i])
          assert r['arousal'][j] == np.float32(arousal[i])
        else:
          assert r['valence'][j] == r['arousal'][j] == 0
        points = _face_points(vid, i)
        assert r['face_mask'][j] == (points is not None)
        assert r['frame_mask'][j] == (has_label and points is not None)
        if points is None:
          assert not r['frames'][j].any() and not r['face_box'][j].any()
          continue
        np.testing.assert_allclose(
            r['face_box'][j], np.concatenate([points.min(0), points.max(0)]),
            rtol=0, atol=1e-4)
        square = _reference_square(decoded[vid][i], points, cfg.margin)
        # Exact against the same filter; within 1 grey level of the NumPy
        # triangle filter (PIL works in fixed point).
        np.testing.assert_array_equal(r['frames'][j], _resize_pil(square, s))
        diff = np.abs(r['frames'][j].astype(int)
                      - _resize_numpy(square, s).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.3, (vid, i, diff.max())
        checked_faces += 1
  # Every frame of every video is in some clip; faces were really compared.
  assert covered == {vid: set(range(n)) for vid, n in NUM_FRAMES.items()}
  assert checked_faces >= sum(NUM_FRAMES.values()) - 6


def test_dummy_special_frames(built):
  """The hand-placed cases of make_dummy_data.VIDEOS, by value."""
  _, _, _, records = built
  frames = {}
  for recs in records.values():
    for r in recs:
      for j, i in enumerate(r['frame_index']):
        if i >= 0:
          frames[(r['video_id'].decode(), int(i))] = {
              k: r[k][j] for k in ('face_mask', 'label_mask', 'valence',
                                   'arousal', 'face_box', 'frames')}
  # 101: exact -1 / 1 labels on lines 1-2; frames 5, 6 cropped from the
  # landmark extent (narrower than the bbox); frame 7 has no face.
  assert (frames[('101', 0)]['valence'], frames[('101', 0)]['arousal']) == (
      1.0, -1.0)
  assert (frames[('101', 1)]['valence'], frames[('101', 1)]['arousal']) == (
      -1.0, 1.0)
  lm = _points(DUMMY / 'landmarks/train/101/6.pts')
  np.testing.assert_allclose(frames[('101', 5)]['face_box'],
                             [*lm.min(0), *lm.max(0)], atol=1e-4)
  assert not (DUMMY / 'bboxes/train/101/6.pts').exists()
  assert not frames[('101', 7)]['face_mask'] and frames[('101', 7)][
      'label_mask']
  # 103: 17 frames, 16 lines: last frame unlabelled; frames 0, 1 no face.
  assert not frames[('103', 16)]['label_mask']
  assert frames[('103', 15)]['label_mask']
  assert not frames[('103', 0)]['face_mask'] and frames[('103', 2)][
      'face_mask']
  # 104: the box runs past the top / right border: zero padding there.
  box = frames[('104', 0)]['face_box']
  assert box[1] < 0 and box[2] > 80
  crop = frames[('104', 0)]['frames']
  assert not crop[0].any() and not crop[:, -1].any() and crop[-1, 0].any()
  # 202: 12 frames, 13 lines: every frame labelled, line 13 dropped.
  assert all(frames[('202', i)]['label_mask'] for i in range(12))
  assert ('202', 12) not in frames


@requires_av
def test_dummy_data_is_what_the_script_writes(tmp_path):
  want = testing.dummy_files_written_by(make_dummy_data.main, tmp_path, DUMMY)
  for rel in want:
    if rel.suffix in ('.txt', '.pts'):
      assert (tmp_path / rel).read_bytes() == (DUMMY / rel).read_bytes(), rel
    else:  # Encoded video: same decoded frames (bytes may differ by FFmpeg).
      a, b = _decode(tmp_path / rel), _decode(DUMMY / rel)
      assert len(a) == len(b), rel
      assert max(np.abs(x.astype(int) - y).mean() for x, y in zip(a, b)) < 1


# ------------------------------- tfds.testing.DatasetBuilderTestCase ----
# TFDS's own harness on the default tfrecord format (see
# tfds_builders.testing.tfds_harness).
_HARNESS = testing.tfds_harness()


def test_tfds_dataset_builder_test_case_available():
  testing.skip_without_harness(_HARNESS)


if _HARNESS[0] is not None:

  @requires_av
  class AffWildTfdsTest(_HARNESS[0]):
    DATASET_CLASS = ab.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['crop_96']
    SPLITS = {'train': 4, 'validation': 2, 'test': 3}


# ---------------------------------------------------------- clip planning ----


@pytest.mark.parametrize('n,t,hop,starts', [
    (22, 16, 16, [0, 16]), (16, 16, 16, [0]), (17, 16, 16, [0, 16]),
    (9, 16, 16, [0]), (1, 1, 1, [0]), (3, 1, 1, [0, 1, 2]), (5, 5, 1, [0]),
    (6, 5, 1, [0, 1]), (22, 5, 3, [0, 3, 6, 9, 12, 15, 18]),
    (20, 5, 3, [0, 3, 6, 9, 12, 15]), (10, 4, 2, [0, 2, 4, 6]),
])
def test_clip_starts_hand_cases(n, t, hop, starts):
  assert ab.clip_starts(n, t, hop) == starts


def test_clip_starts_rejects_bad_arguments():
  with pytest.raises(ValueError, match=r'hop must be in \[1, clip_length=4\], '
                     'got 5'):
    ab.clip_starts(10, 4, 5)
  with pytest.raises(ValueError, match='got 0'):
    ab.clip_starts(10, 4, 0)
  with pytest.raises(ValueError, match='num_frames must be >= 1, got 0'):
    ab.clip_starts(0, 4, 2)


def _write_labels(folder, vid, values):
  paths = []
  for dim in ab.DIMENSIONS:
    path = folder / dim / f'{vid}.txt'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(f'{v}\n' for v in values))
    paths.append(path)
  return paths


def _synthetic_video(tmp_path, n_lines, vid='7'):
  valence, arousal = _write_labels(
      tmp_path, vid, [round(0.01 * k, 2) for k in range(n_lines)])
  return ab.VideoFiles(
      video_id=vid, partition='train', video=tmp_path / f'{vid}.mp4',
      valence=valence, arousal=arousal, bbox_dir=tmp_path / 'none',
      landmark_dir=tmp_path / 'none')


@pytest.mark.parametrize('n,t,hop', [(1, 4, 4), (4, 4, 4), (5, 4, 4),
                                     (13, 4, 3), (12, 4, 1), (7, 3, 2)])
def test_streamed_clips_follow_the_plan(tmp_path, n, t, hop):
  """iter_video_clips (streaming) == clip_starts, frames in order, padded."""
  video = _synthetic_video(tmp_path, n)
  frames = [np.full((6, 8, 3), k, np.uint8) for k in range(n)]
  clips = list(ab.iter_video_clips(
      video, crop_size=4, clip_length=t, hop=hop, margin=0.0,
      max_frame_mismatch=0, frames=iter(frames)))
  assert [c['clip_start'] for c in clips] == ab.clip_starts(n, t, hop)
  for c in clips:
    idx = np.arange(c['clip_start'], c['clip_start'] + t)
    np.testing.assert_array_equal(c['frame_index'], np.where(idx < n, idx, -1))
    np.testing.assert_array_equal(c['label_mask'], idx < n)
    np.testing.assert_allclose(c['valence'], np.where(idx < n, 0.01 * idx, 0),
                               atol=1e-6)
    assert not c['face_mask'].any() and not c['frame_mask'].any()
    assert c['video_id'] == '7'


# -------------------------------------------------------------- crops ----


def test_crop_face_exact_and_padded():
  frame = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
  np.testing.assert_array_equal(
      ab.crop_face(frame, (2, 2, 5, 5), size=3, margin=0.0), frame[2:5, 2:5])
  # Box at the top-left corner: rows / columns -2, -1 are zeros.
  out = ab.crop_face(frame, (-2, -2, 2, 2), size=4, margin=0.0)
  assert not out[:2].any() and not out[:, :2].any()
  np.testing.assert_array_equal(out[2:, 2:], frame[:2, :2])
  with pytest.raises(ab.AffWildFormatError,
                     match=r'x\.pts: face box .* lies outside the 10x10 frame'):
    ab.crop_face(frame, (20, 20, 25, 25), size=4, margin=0.0, path='x.pts')


# ---------------------------------------------------------------- splits ----


def test_validation_video_ids_rule():
  ids = [f'v{k}' for k in range(20)]
  got = ab.validation_video_ids(ids, 0.1)
  ranked = sorted(ids, key=lambda v: hashlib.sha256(v.encode()).hexdigest())
  assert got == set(ranked[:2])
  assert got != {'v0', 'v1'}  # Not the lexical order.
  assert ab.validation_video_ids(reversed(ids), 0.1) == got  # Order-free.
  assert ab.validation_video_ids(ids, 0.0) == set()
  assert ab.validation_video_ids(['a'], 0.5) == set()  # n < 2.
  assert len(ab.validation_video_ids(ids, 0.01)) == 1  # At least one.
  assert len(ab.validation_video_ids(['a', 'b'], 0.9)) == 1  # n - 1 at most.
  assert len(ab.validation_video_ids(ids, 0.525)) == 11  # 10.5 rounds up.
  with pytest.raises(ValueError, match=r'\[0, 1\), got 1.0'):
    ab.validation_video_ids(ids, 1.0)


def test_assign_splits_is_a_partition_of_the_videos():
  parts = ab.find_partitions(DUMMY)
  splits = ab.assign_splits(parts, 0.5)
  ids = [v.video_id for vids in splits.values() for v in vids]
  assert sorted(ids) == sorted(NUM_FRAMES)
  assert {k: {v.video_id for v in vids} for k, vids in splits.items()} == (
      EXPECTED_SPLIT_VIDEOS['tiny'])
  assert set(ab.assign_splits(parts, 0.0)) == {'train', 'test'}


# ------------------------------------------------------ parser: labels ----


def test_read_annotation_file_good(tmp_path):
  path = tmp_path / 'v.txt'
  path.write_bytes('\ufeff0.5\r\n -1 \r\n1.0\r\n.25\r\n-0.125e0\r\n\r\n  \n'
                   .encode('utf-8'))
  np.testing.assert_array_equal(ab.read_annotation_file(path),
                                np.float32([0.5, -1, 1, 0.25, -0.125]))
  np.testing.assert_array_equal(
      ab.read_annotation_file(DUMMY / 'annotations/train/valence/102.txt'),
      np.loadtxt(DUMMY / 'annotations/train/valence/102.txt',
                 dtype=np.float32))


BAD_LABELS = {
    'text': ('happy', r"'happy' is not a number"),
    'two_values': ('0.1 0.2', r"'0.1 0.2' is not a number"),
    'comma_pair': ('0.1,0.2', r"'0.1,0.2' is not a number"),
    'decimal_comma': ('0,5', r"'0,5' is not a number"),
    'blank_inside': ('', r"'' is not a number"),
    'nan': ('nan', r"'nan' is not a number"),
    'inf': ('-inf', r"'-inf' is not a number"),
    'underscore': ('1_0', r"'1_0' is not a number"),
    'above_one': ('1.5', r'value 1\.5 is outside \[-1, 1\]'),
    'below_minus_one': ('-1.0001', r'value -1\.0001 is outside \[-1, 1\]'),
    'huge': ('1e999', r'value 1e999 is outside'),
}


@pytest.mark.parametrize('kind', sorted(BAD_LABELS))
def test_malformed_annotation_line_names_file_and_line(tmp_path, kind):
  bad, pattern = BAD_LABELS[kind]
  path = tmp_path / 'valence' / '12.txt'
  path.parent.mkdir()
  path.write_text(f'0.1\n0.2\n-0.3\n{bad}\n0.5\n')  # Bad value on line 4.
  with pytest.raises(ab.AffWildFormatError) as e:
    ab.read_annotation_file(path)
  assert e.value.line == 4 and e.value.path == str(path)
  assert re.search(re.escape(f'{path}, line 4: ') + pattern, str(e.value)), (
      str(e.value))


def test_empty_annotation_file_and_count_mismatch(tmp_path):
  empty = tmp_path / 'e.txt'
  empty.write_text('\n\n')
  with pytest.raises(ab.AffWildFormatError, match=r'e\.txt, line 1: empty'):
    ab.read_annotation_file(empty)
  val, aro = tmp_path / 'val.txt', tmp_path / 'aro.txt'
  val.write_text('0.1\n0.2\n0.3\n')
  aro.write_text('0.1\n0.2\n')
  with pytest.raises(ab.AffWildFormatError,
                     match=rf'aro\.txt: 2 values but {re.escape(str(val))} '
                     'has 3'):
    ab.read_valence_arousal(val, aro)


# --------------------------------------------------------- parser: .pts ----

_GOOD_PTS = 'version: 1\nn_points: 4\n{\n1 2\n3.5 2\n3.5 -4.25\n1 -4.25\n}\n'


def test_read_pts_good(tmp_path):
  path = tmp_path / '1.pts'
  path.write_text(_GOOD_PTS.replace('\n', '\r\n') + '\n\n')
  np.testing.assert_array_equal(
      ab.read_pts(path, expected_points=4),
      [[1, 2], [3.5, 2], [3.5, -4.25], [1, -4.25]])
  path.write_text('version:1\nn_points:  2\n{\n  1e1  2 \n0 0\n}')
  np.testing.assert_array_equal(ab.read_pts(path), [[10, 2], [0, 0]])
  real = DUMMY / 'landmarks/train/101/1.pts'
  np.testing.assert_array_equal(ab.read_pts(real), _points(real))
  assert ab.read_pts(real).shape == (68, 2)


BAD_PTS = {
    # kind: (file text, expected points, line, regex)
    'version_2': (_GOOD_PTS.replace('version: 1', 'version: 2'), 4, 1,
                  r"version '2', expected 1"),
    'no_version': (_GOOD_PTS.replace('version: 1\n', ''), 4, 1,
                   r"'n_points: 4', expected `version: \.\.\.`"),
    'n_points_text': (_GOOD_PTS.replace('n_points: 4', 'n_points: four'), 4,
                      2, r"n_points 'four', expected a positive integer"),
    'n_points_zero': (_GOOD_PTS.replace('n_points: 4', 'n_points: 0'), None,
                      2, r"n_points '0', expected a positive integer"),
    'wrong_count_for_bbox': (
        'version: 1\nn_points: 5\n{\n1 2\n3 2\n3 4\n1 4\n2 3\n}\n', 4, 2,
        r'n_points is 5, expected 4'),
    'fewer_points_than_n_points': (
        _GOOD_PTS.replace('1 -4.25\n', ''), 4, 7,
        r'`}` after 3 points, but n_points is 4'),
    'more_points_than_n_points': (
        _GOOD_PTS.replace('}', '9 9\n}'), 4, 8,
        r"'9 9', expected `}` after 4 points"),
    'no_open_brace': (_GOOD_PTS.replace('{\n', '[\n'), 4, 3,
                      r"'\[', expected `{`"),
    'one_coordinate': (_GOOD_PTS.replace('3.5 2', '3.5'), 4, 5,
                       r"'3\.5', expected two numbers `x y`"),
    'text_coordinate': (_GOOD_PTS.replace('3.5 2', '3.5 y'), 4, 5,
                        r"'3\.5 y', expected two numbers"),
    'comma_coordinate': (_GOOD_PTS.replace('3.5 2', '3.5,2'), 4, 5,
                         r"'3\.5,2', expected two numbers"),
    'infinite': (_GOOD_PTS.replace('3.5 2', '1e999 2'), 4, 5,
                 r"'1e999 2' is not finite"),
    'truncated': ('version: 1\nn_points: 4\n{\n1 2\n', 4, 5,
                  r'unexpected end of file'),
    'junk_after_brace': (_GOOD_PTS + 'extra\n', 4, 9,
                         r"'extra' after the closing `}`"),
    'empty': ('', 4, 1, r'unexpected end of file, expected `version: 1`'),
}


@pytest.mark.parametrize('kind', sorted(BAD_PTS))
def test_malformed_pts_names_file_and_line(tmp_path, kind):
  text, expected, line, pattern = BAD_PTS[kind]
  path = tmp_path / '17.pts'
  path.write_text(text)
  with pytest.raises(ab.AffWildFormatError) as e:
    ab.read_pts(path, expected_points=expected)
  assert e.value.line == line, str(e.value)
  assert re.search(re.escape(f'{path}, line {line}: ') + pattern,
                   str(e.value)), str(e.value)


def test_degenerate_box(tmp_path):
  path = tmp_path / '3.pts'
  path.write_text('version: 1\nn_points: 4\n{\n5 5\n5 5\n5 5\n5 5\n}\n')
  with pytest.raises(ab.AffWildFormatError, match=r'3\.pts: degenerate face'):
    ab.box_from_points(ab.read_pts(path), path=path)


def test_list_pts_frames(tmp_path):
  assert ab.list_pts_frames(tmp_path / 'missing') == {}
  for name in ('1.pts', '10.pts', '2.pts', 'notes.txt'):
    (tmp_path / name).write_text(_GOOD_PTS)
  assert ab.list_pts_frames(tmp_path) == {
      1: tmp_path / '1.pts', 2: tmp_path / '2.pts', 10: tmp_path / '10.pts'}
  (tmp_path / '0.pts').write_text(_GOOD_PTS)
  with pytest.raises(ab.AffWildFormatError,
                     match=r"0\.pts: frame number '0' is not an integer >= 1 "
                     r'\(the \.pts files are named by 1-based'):
    ab.list_pts_frames(tmp_path)
  (tmp_path / '0.pts').unlink()
  (tmp_path / 'frame3.pts').write_text(_GOOD_PTS)
  with pytest.raises(ab.AffWildFormatError, match=r"'frame3' is not"):
    ab.list_pts_frames(tmp_path)
  (tmp_path / 'frame3.pts').unlink()
  (tmp_path / '002.pts').write_text(_GOOD_PTS)
  with pytest.raises(ab.AffWildFormatError, match=r'frame 2 also has'):
    ab.list_pts_frames(tmp_path)


# ------------------------------------------------ layout and frame counts ----


def _copy_dummy(tmp_path, partitions=('train', 'test')):
  """A writable copy of the dummy manual dir (only `partitions`)."""
  manual = tmp_path / 'manual'
  for top in ('videos', 'annotations', 'bboxes', 'landmarks'):
    for part in partitions:
      shutil.copytree(DUMMY / top / part, manual / top / part)
  return manual


def _one_video(manual, vid='102'):
  (video,) = [v for v in ab.list_videos(manual, PARTITION[vid])
              if v.video_id == vid]
  return video


def _clips(video, mismatch=2):
  return list(ab.iter_video_clips(video, crop_size=8, clip_length=4, hop=4,
                                  margin=0.2, max_frame_mismatch=mismatch))


@requires_av
@pytest.mark.parametrize('lines', [6, 12])  # Video 102 has 9 frames.
def test_frame_count_mismatch_names_both_counts(tmp_path, lines):
  manual = _copy_dummy(tmp_path, ('train',))
  _write_labels(manual / 'annotations/train', '102', [0.5] * lines)
  video = _one_video(manual)
  with pytest.raises(ab.AffWildFormatError) as e:
    _clips(video)
  msg = str(e.value)
  assert msg.startswith(f'{video.video}: decoded 9 frames but ')
  assert f'{video.valence} and {video.arousal} have {lines} lines' in msg
  assert 'at most 2 is tolerated' in msg
  # Within the tolerance: frames aligned from the first, extra ones unlabelled.
  _write_labels(manual / 'annotations/train', '102', [0.5] * 7)
  clips = _clips(video)
  mask = np.concatenate([c['label_mask'] for c in clips])
  np.testing.assert_array_equal(mask, np.arange(12) < 7)
  with pytest.raises(ab.AffWildFormatError, match='decoded 9 frames'):
    _clips(video, mismatch=1)


@requires_av
def test_pts_beyond_the_last_frame(tmp_path):
  manual = _copy_dummy(tmp_path, ('train',))
  # Video 102 decodes to 9 frames; frames 10, 11 are within the tolerance 2.
  shutil.copy(manual / 'bboxes/train/102/1.pts',
              manual / 'bboxes/train/102/11.pts')
  assert [c['clip_start'] for c in _clips(_one_video(manual))] == [0, 4, 8]
  shutil.copy(manual / 'landmarks/train/102/1.pts',
              manual / 'landmarks/train/102/12.pts')
  with pytest.raises(ab.AffWildFormatError,
                     match=r'12\.pts: landmarks file for frame 12 but '
                     r'.*102\.avi decodes to 9 frames \(1-based frame numbers '
                     r'1\.\.9, 2 more tolerated\)'):
    _clips(_one_video(manual))


@requires_av
def test_malformed_pts_inside_a_video(tmp_path):
  manual = _copy_dummy(tmp_path, ('train',))
  path = manual / 'bboxes/train/102/3.pts'
  path.write_text(_GOOD_PTS.replace('n_points: 4', 'n_points: 68'))
  with pytest.raises(ab.AffWildFormatError,
                     match=re.escape(f'{path}, line 2: n_points is 68, '
                                     'expected 4')):
    _clips(_one_video(manual))


@requires_av
def test_corrupt_video_names_file(tmp_path):
  manual = _copy_dummy(tmp_path, ('train',))
  path = manual / 'videos/train/102.avi'
  path.write_bytes(b'RIFF' + b'\x00' * 64)
  with pytest.raises(ab.AffWildFormatError,
                     match=re.escape(f'{path}: cannot decode video')):
    _clips(_one_video(manual))


def test_missing_pyav_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, 'av', None)  # `import av` now fails.
  with pytest.raises(ImportError,
                     match=re.escape("pip install 'fer_jax[video]'")):
    next(ab.decode_video(_video_path('102')))


def test_list_videos_cross_checks(tmp_path):
  manual = _copy_dummy(tmp_path, ('train',))
  assert [v.video_id for v in ab.list_videos(manual, 'train')] == [
      '101', '102', '103', '104']
  assert ab.list_videos(manual, 'train')[1].video.name == '102.avi'
  # A video without arousal labels.
  aro = manual / 'annotations/train/arousal/103.txt'
  aro.rename(tmp_path / 'aside.txt')
  with pytest.raises(FileNotFoundError,
                     match=r'103\.mp4 has no arousal annotation: expected '
                     + re.escape(str(aro))):
    ab.list_videos(manual, 'train')
  (tmp_path / 'aside.txt').rename(aro)
  # Labels without a video.
  shutil.copy(aro, manual / 'annotations/train/arousal/999.txt')
  with pytest.raises(FileNotFoundError, match=r'999\.txt has no video'):
    ab.list_videos(manual, 'train')
  (manual / 'annotations/train/arousal/999.txt').unlink()
  # Two files for one id.
  shutil.copy(manual / 'videos/train/104.mp4', manual / 'videos/train/104.avi')
  with pytest.raises(ab.AffWildFormatError, match=r"video id '104' has 2 "):
    ab.list_videos(manual, 'train')
  (manual / 'videos/train/104.avi').unlink()
  # No bboxes and no landmarks folder.
  shutil.rmtree(manual / 'bboxes/train/104')
  shutil.rmtree(manual / 'landmarks/train/104')
  with pytest.raises(FileNotFoundError, match=r'104\.mp4 has no face boxes: '
                     r'expected the folder .*bboxes/train/104 or '
                     r'.*landmarks/train/104'):
    ab.list_videos(manual, 'train')


def test_test_videos_without_labels_are_skipped(tmp_path):
  manual = _copy_dummy(tmp_path)
  shutil.rmtree(manual / 'annotations/test')
  assert list(ab.find_partitions(manual)) == ['train']
  # An id in both partitions is an error.
  manual = _copy_dummy(tmp_path / 'b')
  shutil.copy(manual / 'videos/test/201.mp4', manual / 'videos/train/201.mp4')
  shutil.copytree(manual / 'bboxes/test/201', manual / 'bboxes/train/201')
  _write_labels(manual / 'annotations/train', '201', [0.1] * 20)
  with pytest.raises(ab.AffWildFormatError, match=r"\['201'\] are in both"):
    ab.find_partitions(manual)


# -------------------------------------------------- errors from a build ----


@requires_av
def test_malformed_annotation_line_stops_the_build(tmp_path):
  manual = _copy_dummy(tmp_path, ('train',))
  path = manual / 'annotations/train/valence/104.txt'
  lines = path.read_text().splitlines()
  lines[6] = '0.3.1'
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(ab.AffWildFormatError,
                     match=re.escape(f"{path}, line 7: '0.3.1' is not a number")):
    _build(tmp_path / 'data', 'crop_96', manual)


def test_build_without_manual_dir_gives_instructions(tmp_path):
  builder = ab.Builder(config='crop_96', data_dir=tmp_path / 'data')
  with pytest.raises(AssertionError, match='does not exist or is empty') as e:
    testing.prepare(builder, tmp_path / 'nowhere')
  assert 'first-affect-wild-challenge' in str(e.value)


def test_build_with_unrelated_files_lists_expected_paths(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'readme.txt').write_text('not the data')
  builder = ab.Builder(config='crop_96', data_dir=tmp_path / 'data')
  with pytest.raises(FileNotFoundError) as e:
    testing.prepare(builder, manual)
  msg = str(e.value)
  for part in ('train', 'test'):
    for sub in (f'videos/{part}/<id>.mp4|.avi',
                f'annotations/{part}/valence/<id>.txt',
                f'annotations/{part}/arousal/<id>.txt',
                f'bboxes/{part}/<id>/<frame>.pts',
                f'landmarks/{part}/<id>/<frame>.pts'):
      assert str(manual / sub) in msg, sub
  assert 'd.kollias@qmul.ac.uk' in msg


def test_manual_download_instructions():
  text = ab.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  for needle in ('ibug.doc.ic.ac.uk/resources/first-affect-wild-challenge',
                 'EULA', 'videos/train/<id>.mp4 or <id>.avi',
                 'annotations/train/valence/<id>.txt',
                 'bboxes/train/<id>/<frame>.pts',
                 'landmarks/test/<id>/<frame>.pts',
                 '~/tensorflow_datasets/downloads/manual/', '--manual_dir',
                 "pip install 'fer_jax[video]'"):
    assert needle in text, needle


@pytest.mark.parametrize('kwargs,pattern', [
    ({'hop': 17}, r'hop must be in \[1, clip_length=16\]'),
    ({'hop': 0}, r'hop must be in'),
    ({'crop_size': 0}, r'must be >= 1'),
    ({'clip_length': 2.0}, r'clip_length must be an int'),
    ({'margin': -0.1}, r'margin must be >= 0'),
    ({'validation_fraction': 1.0}, r'validation_fraction must be in \[0, 1\)'),
    ({'max_frame_mismatch': -1}, r'max_frame_mismatch must be >= 0'),
    ({'frame_encoding': 'png'},
     r"frame_encoding must be one of \['bytes', 'zlib'\], got 'png'"),
])
def test_config_validation(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    ab.AffWildConfig(name='bad', **kwargs)
