"""Tests of the afew_va builder on FAKE dummy data (see make_dummy_data.py)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault(
    'XLA_FLAGS', '--xla_backend_optimization_level=0 '
    '--xla_llvm_disable_expensive_passes=true')

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import dataclasses
import io
import json
import pathlib
import re
import zipfile

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import tensorflow_datasets as tfds

from fer_jax.data import align
from fer_jax.testing import umeyama_reference
from tfds_builders import testing
from tfds_builders.afew_va import afew_va_dataset_builder as ab
from tfds_builders.afew_va import make_dummy_data

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
ZIP = DUMMY / make_dummy_data.ZIP_NAME

# Fold 0 of 5 (by the canonical clip table): 007 is in fold 0, 003 in fold 1,
# 001 / 002 in fold 3 and 011 in fold 4. 001 has 18 frames -> 2 windows.
EXPECTED_SPLITS = {'train': 4, 'validation': 1, 'test': 1}
SPLIT_CLIPS = {'train': ['001', '002', '011'], 'validation': ['003'],
               'test': ['007']}
CONFIGS = ('crop_96', 'aligned_112')


def _build(data_dir, config, manual_dir=DUMMY):
  return testing.build_array_record(ab.Builder, data_dir, config, manual_dir)


@pytest.fixture(scope='module', params=CONFIGS)
def built(request, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp(request.param)
  return request.param, data_dir, _build(data_dir, request.param)


def _records(config, data_dir, split):
  source = tfds.data_source(f'afew_va/{config}', split=split,
                            data_dir=data_dir)
  return [source[i] for i in range(len(source))]


# ------------------------------------------------ independent references ----


def _read_dummy_clip(clip_id):
  """{name: bytes} of a dummy clip, read with zipfile / pathlib directly."""
  folder = DUMMY / clip_id
  if folder.is_dir():
    return {p.name: p.read_bytes() for p in folder.iterdir()}
  with zipfile.ZipFile(ZIP) as zf:
    return {n.split('/')[1]: zf.read(n) for n in zf.namelist()
            if n.startswith(clip_id + '/')}


def _reference_clip(clip_id):
  """(frame numbers, valence, arousal, landmarks, frames, actor), sorted."""
  files = _read_dummy_clip(clip_id)
  doc = json.loads(files[f'{clip_id}.json'])
  keys = sorted(doc['frames'], key=int)
  frames = []
  for k in keys:
    img = np.asarray(Image.open(io.BytesIO(files[k + '.png'])))
    frames.append(np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img)
  get = lambda name: np.array([doc['frames'][k][name] for k in keys])
  return ([int(k) for k in keys], get('valence'), get('arousal'),
          get('landmarks').astype(np.float64), frames, doc['actor'])


def _reference_matrix(lm, cfg):
  s = cfg.size
  if cfg.crop == 'box':
    lo, hi = lm.min(0), lm.max(0)
    centre = (lo + hi) / 2
    k = s / (cfg.scale * (hi - lo).max())
    return np.array([[k, 0, (s - 1) / 2 - k * centre[0]],
                     [0, k, (s - 1) / 2 - k * centre[1]]])
  dst = (align.TEMPLATES[cfg.template] - 55.5) * s / 112 / cfg.scale + (
      s - 1) / 2
  return umeyama_reference(lm, dst)


def _reference_crop(frame, matrix, size, n):
  """Mean of n x n bilinear samples per output pixel (scipy, zero outside)."""
  inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
  off = (np.arange(n) + 0.5) / n - 0.5
  ys = (np.arange(size)[:, None] + off[None, :]).reshape(-1)
  xs = ys.copy()
  gy, gx = np.meshgrid(ys, xs, indexing='ij')
  sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
  sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
  out = np.stack([
      ndimage.map_coordinates(frame[..., c].astype(np.float64), [sy, sx],
                              order=1, mode='grid-constant', cval=0.0,
                              prefilter=False)
      for c in range(3)], -1)
  out = out.reshape(size, n, size, n, 3).mean(axis=(1, 3))
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------ the builds ----


def test_registered_and_configs():
  assert tfds.builder_cls('afew_va') is ab.Builder
  assert ab.Builder.name == 'afew_va'
  names = [c.name for c in ab.Builder.BUILDER_CONFIGS]
  assert names == ['crop_96'] + [f'crop_96_fold{k}' for k in range(1, 5)] + [
      'aligned_112'] + [f'aligned_112_fold{k}' for k in range(1, 5)]
  assert ab.Builder.DEFAULT_BUILDER_CONFIG_NAME == 'aligned_112'
  cfg = {c.name: c for c in ab.Builder.BUILDER_CONFIGS}
  assert (cfg['crop_96'].crop, cfg['crop_96'].size, cfg['crop_96'].fold) == (
      'box', 96, 0)
  assert (cfg['aligned_112_fold3'].crop, cfg['aligned_112_fold3'].size,
          cfg['aligned_112_fold3'].fold) == ('aligned', 112, 3)
  assert all((c.clip_length, c.hop, c.num_folds) == (16, 16, 5)
             for c in cfg.values())
  assert str(ab.Builder.VERSION) in ab.Builder.RELEASE_NOTES


def test_splits_info_and_reload(built):
  config, data_dir, builder = built
  assert builder.info.file_format.value == 'array_record'
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == EXPECTED_SPLITS
  info = tfds.builder(f'afew_va/{config}', data_dir=data_dir).info
  assert {k: v.num_examples for k, v in info.splits.items()} == counts
  s = 96 if config == 'crop_96' else 112
  f = info.features
  assert f['frames'].shape == (16, s, s, 3)
  assert f['frames'].np_dtype == np.uint8
  assert f['landmarks'].shape == (16, 68, 2)
  assert f['frame_mask'].np_dtype == np.bool_
  assert 'Kossaifi' in info.citation
  assert 'AFEW-VA' in info.description


def test_splits_are_by_clip_and_disjoint(built):
  config, data_dir, _ = built
  seen = {}
  for split, clips in SPLIT_CLIPS.items():
    ids = {r['clip_id'].decode() for r in _records(config, data_dir, split)}
    assert sorted(ids) == clips
    seen[split] = ids
  assert not (seen['train'] & seen['validation'])
  assert not (seen['train'] & seen['test'])
  assert not (seen['validation'] & seen['test'])


def test_records_equal_independent_reference(built):
  """Crops, landmarks and labels vs a json + PIL + scipy recomputation."""
  config, data_dir, builder = built
  cfg = builder.builder_config
  covered = collections.Counter()
  for split, clips in SPLIT_CLIPS.items():
    records = _records(config, data_dir, split)
    # Stored in (clip_id, clip_start) order.
    assert [(r['clip_id'].decode(), r['clip_start']) for r in records] == (
        sorted((r['clip_id'].decode(), r['clip_start']) for r in records))
    for r in records:
      clip_id, start = r['clip_id'].decode(), int(r['clip_start'])
      numbers, val, aro, lms, frames, actor = _reference_clip(clip_id)
      n = min(16, len(numbers) - start)
      assert r['actor'].decode() == actor
      np.testing.assert_array_equal(r['frame_mask'], np.arange(16) < n)
      np.testing.assert_array_equal(r['frame_index'][:n],
                                    numbers[start:start + n])
      assert (r['frame_index'][n:] == -1).all()
      np.testing.assert_array_equal(
          r['valence'], np.pad(val[start:start + n] / 10, (0, 16 - n)).astype(
              np.float32))
      np.testing.assert_array_equal(
          r['arousal'], np.pad(aro[start:start + n] / 10, (0, 16 - n)).astype(
              np.float32))
      assert (r['frames'][n:] == 0).all() and (r['landmarks'][n:] == 0).all()
      for j in range(n):
        covered[(clip_id, r['frame_index'][j])] += 1
        lm = lms[start + j]
        m = _reference_matrix(lm, cfg)
        np.testing.assert_allclose(r['landmarks'][j], lm @ m[:, :2].T + m[:, 2],
                                   atol=2e-3)
        want = _reference_crop(frames[start + j], m, cfg.size, cfg.supersample)
        diff = np.abs(r['frames'][j].astype(int) - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (clip_id, j)
  # Every annotated frame is in exactly one window; 002's unannotated
  # 00004.png is not.
  want = collections.Counter(
      (c, k) for c in sum(SPLIT_CLIPS.values(), [])
      for k in _reference_clip(c)[0])
  assert covered == want
  assert ('002', 4) not in covered


def test_overlapping_windows_without_tfds():
  """clip_length 4, hop 3 on the 18-frame clip: starts 0 3 ... 15, padded."""
  cfg = ab.AfewVaConfig(name='t', crop='box', size=16, clip_length=4, hop=3,
                        supersample=1)
  source = ab.find_clips(DUMMY)['001']
  ann = ab.read_clip(source)
  examples = list(ab.clip_examples(source, ann, cfg))
  assert [s for s, _ in examples] == [0, 3, 6, 9, 12, 15]
  numbers, val, _, lms, frames, _ = _reference_clip('001')
  for start, ex in examples:
    n = min(4, 18 - start)
    np.testing.assert_array_equal(ex['frame_index'][:n],
                                  numbers[start:start + n])
    np.testing.assert_array_equal(ex['frame_mask'], np.arange(4) < n)
    for j in range(n):
      want = _reference_crop(frames[start + j],
                             _reference_matrix(lms[start + j], cfg), 16, 1)
      assert np.abs(ex['frames'][j].astype(int) - want).max() <= 1
  last = examples[-1][1]
  assert last['frame_index'].tolist() == [15, 16, 17, -1]


def test_dummy_data_is_what_the_script_writes(tmp_path):
  want = testing.dummy_files_written_by(make_dummy_data.main, tmp_path, DUMMY)
  for rel in want:
    assert (tmp_path / rel).read_bytes() == (DUMMY / rel).read_bytes(), rel
  assert sum((DUMMY / rel).stat().st_size for rel in want) < 400_000


# ------------------------------------------------------------ manual dir ----


def test_find_clips_on_dummy_data():
  clips = ab.find_clips(DUMMY)
  assert list(clips) == ['001', '002', '003', '007', '011']
  assert [c.in_zip for c in clips.values()] == [False] * 3 + [True] * 2
  assert clips['007'].display('00001.png') == f'{ZIP}:007/00001.png'
  assert clips['001'].display('00001.png') == str(DUMMY / '001' / '00001.png')


def _copy_clip_folder(clip_id, dest):
  dest.mkdir(parents=True)
  for name, data in _read_dummy_clip(clip_id).items():
    (dest / name).write_bytes(data)


def test_find_clips_prefixes_nesting_and_precedence(tmp_path):
  manual = tmp_path / 'manual'
  # A zip whose clips sit under a prefix, and a nested extracted folder.
  (manual / 'AFEW-VA' / 'part').mkdir(parents=True)
  with zipfile.ZipFile(manual / 'AFEW-VA' / '05.zip', 'w') as zf:
    for name, data in _read_dummy_clip('007').items():
      zf.writestr(f'AFEW-VA/05/007/{name}', data)
    for name, data in _read_dummy_clip('003').items():
      zf.writestr(f'AFEW-VA/05/003/{name}', data)
  _copy_clip_folder('003', manual / 'AFEW-VA' / 'part' / '003')
  clips = ab.find_clips(manual)
  assert list(clips) == ['003', '007']
  assert clips['007'].member_dir == 'AFEW-VA/05/007'
  assert not clips['003'].in_zip  # The folder wins over the zip.
  assert ab.read_clip(clips['007']).frame_index.tolist() == [0, 1, 2]
  # The same clip twice as a folder is an error naming both places.
  _copy_clip_folder('003', manual / 'other' / '003')
  with pytest.raises(ab.AfewVaFormatError, match="clip '003' found twice") as e:
    ab.find_clips(manual)
  assert str(manual / 'other' / '003' / '003.json') in str(e.value)
  assert str(manual / 'AFEW-VA' / 'part' / '003' / '003.json') in str(e.value)


def test_corrupt_zip_names_file(tmp_path):
  (tmp_path / '03.zip').write_bytes(b'PK\x03\x04 not really a zip')
  with pytest.raises(ab.AfewVaFormatError,
                     match=re.escape(str(tmp_path / '03.zip'))):
    ab.find_clips(tmp_path)


def test_missing_clips_list_expected_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist') as e:
    ab.find_clips(tmp_path / 'nowhere')
  assert 'ibug.doc.ic.ac.uk' in str(e.value)
  (tmp_path / 'readme.txt').write_text('not the data')
  (tmp_path / '001').mkdir()  # A clip folder without its JSON is no clip.
  (tmp_path / '001' / '00000.png').write_bytes(b'')
  with pytest.raises(FileNotFoundError) as e:
    ab.find_clips(tmp_path)
  msg = str(e.value)
  for needle in (str(tmp_path / '01.zip'), str(tmp_path / '12.zip'),
                 str(tmp_path / '001' / '001.json'), 'ibug.doc.ic.ac.uk',
                 '--manual_dir'):
    assert needle in msg, needle


def test_build_without_manual_dir_raises_with_instructions(tmp_path):
  builder = ab.Builder(config='crop_96', data_dir=tmp_path / 'data')
  with pytest.raises(AssertionError, match='does not exist or is empty') as e:
    testing.prepare(builder, tmp_path / 'missing')
  assert 'ibug.doc.ic.ac.uk/resources/afew-va-database' in str(e.value)
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'notes.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match='No AFEW-VA clip found') as e:
    testing.prepare(builder, manual)
  assert str(manual / '01.zip') in str(e.value)


def test_malformed_clip_stops_the_build(tmp_path):
  manual = tmp_path / 'manual'
  _copy_clip_folder('002', manual / '002')
  doc = json.loads((manual / '002' / '002.json').read_text())
  doc['frames']['00002']['arousal'] = 11
  (manual / '002' / '002.json').write_text(json.dumps(doc))
  builder = ab.Builder(config='crop_96', data_dir=tmp_path / 'data')
  with pytest.raises(ab.AfewVaFormatError,
                     match=r"002\.json, frame '00002': arousal is 11, "
                     r'expected a number in -10\.\.10'):
    testing.prepare(builder, manual, file_format='array_record')


def test_manual_download_instructions():
  text = ab.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  for needle in ('https://ibug.doc.ic.ac.uk/resources/afew-va-database/',
                 '01.zip', '12.zip', '~/tensorflow_datasets/downloads/manual/',
                 '--manual_dir', '001/001.json', '00000.png'):
    assert needle in text, needle


# ------------------------------------------------------------- parsing ----


def _frame(valence=1, arousal=-2, landmarks=None, **extra):
  if landmarks is None:
    landmarks = [[float(i), 2.5 * i] for i in range(68)]
  return dict(valence=valence, arousal=arousal, landmarks=landmarks, **extra)


def _doc(frames):
  return json.dumps({'actor': 'A', 'frames': frames, 'video_id': '042'})


def test_parse_good_clip_sorted_scaled():
  frames = {'00010': _frame(10, -10), '00002': _frame(-3, 7),
            '00000': _frame(0, 1, note='extra keys are ignored')}
  ann = ab.parse_clip_json(_doc(frames).encode('utf-8'), path='x.json')
  assert ann.frame_keys == ('00000', '00002', '00010')
  assert (ann.actor, ann.video_id) == ('A', '042')
  np.testing.assert_array_equal(ann.frame_index, [0, 2, 10])
  assert ann.frame_index.dtype == np.int64
  np.testing.assert_array_equal(ann.valence, np.float32([0, -0.3, 1]))
  np.testing.assert_array_equal(ann.arousal, np.float32([0.1, 0.7, -1]))
  assert ann.valence.dtype == np.float32 and ann.landmarks.dtype == np.float32
  assert ann.landmarks.shape == (3, 68, 2)
  np.testing.assert_array_equal(ann.landmarks[1, 5], [5.0, 12.5])
  # A UTF-8 BOM is accepted; actor / video_id are optional.
  bare = json.dumps({'frames': {'7': _frame()}})
  ann = ab.parse_clip_json(b'\xef\xbb\xbf' + bare.encode())
  assert (ann.actor, ann.video_id, ann.frame_index.tolist()) == ('', '', [7])


def test_parse_dummy_clip_with_gaps_and_unsorted_keys():
  raw = (DUMMY / '003' / '003.json').read_bytes()
  assert list(json.loads(raw)['frames'])[0] == '00006'  # Stored unsorted.
  ann = ab.parse_clip_json(raw)
  assert ann.frame_keys == ('00000', '00001', '00003', '00004', '00006')
  numbers, val, aro, lms, _, _ = _reference_clip('003')
  np.testing.assert_array_equal(ann.frame_index, numbers)
  np.testing.assert_array_equal(ann.valence, (val / 10).astype(np.float32))
  np.testing.assert_array_equal(ann.landmarks, lms.astype(np.float32))


_LM = [[1.0, 2.0]] * 68
BAD_FRAMES = {
    # kind: (frame value, regex after "frame '00001': ")
    'missing_arousal': ({'valence': 1, 'landmarks': _LM},
                        r"missing key\(s\) \['arousal'\]; has \['landmarks', "
                        r"'valence'\]"),
    'missing_landmarks': ({'valence': 1, 'arousal': 1},
                          r"missing key\(s\) \['landmarks'\]"),
    'valence_11': (_frame(valence=11),
                   r'valence is 11, expected a number in -10\.\.10'),
    'valence_minus_10_5': (_frame(valence=-10.5), r'valence is -10\.5'),
    'arousal_text': (_frame(arousal='3'), r"arousal is '3', expected a number"),
    'arousal_bool': (_frame(arousal=True), r'arousal is True, expected'),
    'arousal_null': (_frame(arousal=None), r'arousal is None, expected'),
    'landmarks_67': (_frame(landmarks=_LM[:67]),
                     r'landmarks has 67 points, expected 68'),
    'landmarks_69': (_frame(landmarks=_LM + [[0, 0]]),
                     r'landmarks has 69 points, expected 68'),
    'landmark_3d': (_frame(landmarks=_LM[:5] + [[1, 2, 3]] + _LM[6:]),
                    r'landmark 5 is \[1, 2, 3\], expected an \[x, y\] pair'),
    'landmark_text': (_frame(landmarks=_LM[:67] + [['1', 2]]),
                      r"landmark 67 is \['1', 2\]"),
    'landmarks_flat': (_frame(landmarks=[1.0] * 136),
                       r'landmarks has 136 points, expected 68'),
    'landmarks_dict': (_frame(landmarks={'x': 1}), r'landmarks is dict'),
    'frame_not_object': ([1, 2, 3], r'annotation is .*expected an object'),
}


@pytest.mark.parametrize('kind', sorted(BAD_FRAMES))
def test_malformed_frame_names_file_frame_and_value(kind):
  bad, pattern = BAD_FRAMES[kind]
  text = _doc({'00000': _frame(), '00001': bad, '00002': _frame()})
  with pytest.raises(ab.AfewVaFormatError) as e:
    ab.parse_clip_json(text, path='/data/042/042.json')
  assert e.value.frame == '00001' and e.value.path == '/data/042/042.json'
  assert re.search(r"^/data/042/042\.json, frame '00001': " + pattern,
                   str(e.value)), str(e.value)


def test_nan_label_and_nan_landmark_rejected():
  text = _doc({'00000': _frame()}).replace('"valence": 1', '"valence": NaN')
  with pytest.raises(ab.AfewVaFormatError, match=r'valence is nan'):
    ab.parse_clip_json(text)
  lm = json.dumps(_LM).replace('[1.0, 2.0]', '[Infinity, 2.0]', 1)
  text = _doc({'00000': _frame()}).replace(json.dumps(_frame()['landmarks']),
                                           lm)
  with pytest.raises(ab.AfewVaFormatError, match=r'landmark 0 is \[inf, 2'):
    ab.parse_clip_json(text)


@pytest.mark.parametrize('text,pattern', [
    ('{"frames": {"00000": {"valence": 1,,}}}',
     r'x\.json, line 1: malformed JSON at column 36 \(Expecting'),
    ('{\n"actor": "A",\n"frames": {\n', r'x\.json, line 4: malformed JSON'),
    ('', r'x\.json, line 1: malformed JSON at column 1'),
    ('[1, 2]', r'top level is a JSON list, expected an object'),
    ('{"actor": "A"}', r'"frames" is \'None\', expected a non-empty object'),
    ('{"frames": {}}', r'"frames" is \'{}\', expected a non-empty object'),
    ('{"frames": [1]}', r'"frames" is \'\[1\]\''),
    ('{"frames": {"frame0": {}}}', r"frame key 'frame0' is not a frame number"),
    ('{"frames": {"-1": {}}}', r"frame key '-1' is not a frame number"),
    ('{"frames": {"01": {}, "1": {}}}',
     r"frame keys '01' and '1' are the same frame number 1"),
])
def test_malformed_json(text, pattern):
  with pytest.raises(ab.AfewVaFormatError) as e:
    ab.parse_clip_json(text, path='x.json')
  assert re.search(r'^x\.json(, line \d+)?: ', str(e.value)), str(e.value)
  assert re.search(pattern, str(e.value)), str(e.value)


def test_invalid_utf8(tmp_path):
  with pytest.raises(ab.AfewVaFormatError, match=r'x\.json: not UTF-8 text'):
    ab.parse_clip_json(b'{"frames": "\xff"}', path='x.json')


@pytest.mark.parametrize('where', ['folder', 'zip'])
def test_annotated_frame_without_png(tmp_path, where):
  files = _read_dummy_clip('002')
  del files['00002.png']
  manual = tmp_path / 'manual'
  manual.mkdir()
  if where == 'folder':
    (manual / '002').mkdir()
    for name, data in files.items():
      (manual / '002' / name).write_bytes(data)
    json_path = str(manual / '002' / '002.json')
    png_path = str(manual / '002' / '00002.png')
  else:
    with zipfile.ZipFile(manual / '09.zip', 'w') as zf:
      for name, data in files.items():
        zf.writestr(f'002/{name}', data)
    json_path = f'{manual / "09.zip"}:002/002.json'
    png_path = f'{manual / "09.zip"}:002/00002.png'
  source = ab.find_clips(manual)['002']
  with pytest.raises(ab.AfewVaFormatError) as e:
    ab.read_clip(source)
  assert str(e.value) == (f"{json_path}, frame '00002': annotated frame has "
                          f'no image: expected {png_path}')
  # Opt-in: the frame is dropped (and logged), the others keep their labels.
  ann = ab.read_clip(source, skip_missing_frames=True)
  numbers, val, _, lms, _, _ = _reference_clip('002')
  assert ann.frame_keys == ('00000', '00001', '00003')
  np.testing.assert_array_equal(ann.frame_index, [0, 1, 3])
  np.testing.assert_array_equal(ann.valence,
                                (val[[0, 1, 3]] / 10).astype(np.float32))
  np.testing.assert_array_equal(ann.landmarks,
                                lms[[0, 1, 3]].astype(np.float32))
  assert numbers == [0, 1, 2, 3]


def test_skip_missing_frames_with_no_frame_left(tmp_path):
  files = _read_dummy_clip('007')
  (tmp_path / '007').mkdir()
  (tmp_path / '007' / '007.json').write_bytes(files['007.json'])
  source = ab.find_clips(tmp_path)['007']
  with pytest.raises(ab.AfewVaFormatError,
                     match=r'007\.json: none of the 3 annotated frames has an '
                     r'image'):
    ab.read_clip(source, skip_missing_frames=True)


def test_decode_png_grey_rgba_and_garbage():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  buf = io.BytesIO()
  Image.fromarray(grey).save(buf, format='PNG')
  out = ab.decode_png(buf.getvalue())
  assert out.shape == (3, 4, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
  rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgba).save(buf, format='PNG')
  np.testing.assert_array_equal(ab.decode_png(buf.getvalue()), rgba[..., :3])
  with pytest.raises(ab.AfewVaFormatError,
                     match=r'^/d/001/00003\.png: cannot decode image'):
    ab.decode_png(b'\x89PNG\r\n\x1a\n truncated', path='/d/001/00003.png')


# --------------------------------------------------- windows and splits ----


@pytest.mark.parametrize('n,t,hop,starts', [
    (18, 16, 16, [0, 16]),
    (16, 16, 16, [0]),
    (17, 16, 16, [0, 16]),
    (5, 16, 16, [0]),
    (1, 1, 1, [0]),
    (20, 8, 4, [0, 4, 8, 12]),
    (21, 8, 4, [0, 4, 8, 12, 16]),
    (10, 4, 3, [0, 3, 6]),
    (11, 4, 3, [0, 3, 6, 9]),
    (33, 16, 8, [0, 8, 16, 24]),
])
def test_window_starts_by_hand(n, t, hop, starts):
  assert ab.window_starts(n, t, hop) == starts


def test_window_starts_cover_every_frame():
  rng = np.random.default_rng(0)
  for _ in range(300):
    t = int(rng.integers(1, 20))
    hop = int(rng.integers(1, t + 1))
    n = int(rng.integers(1, 80))
    starts = ab.window_starts(n, t, hop)
    count = np.zeros(n, int)
    for s in starts:
      count[s:s + t] += 1
    assert (count >= 1).all() and starts == sorted(set(starts))
    assert starts[0] == 0 and all(b - a == hop for a, b in zip(starts,
                                                               starts[1:]))
    assert starts[-1] < n and starts[-1] + t >= n
    if hop == t:
      assert (count == 1).all()
  with pytest.raises(ValueError,
                     match=r'hop must be in \[1, clip_length=4\], got 5'):
    ab.window_starts(10, 4, 5)


def test_folds_balanced_stable_and_partition():
  ids = [f'{i:03d}' for i in range(1, 601)]
  for k in (3, 5, 10):
    folds = collections.Counter(ab.clip_fold(c, k) for c in ids)
    assert sorted(folds) == list(range(k)) and set(folds.values()) == {600 // k}
  # A clip's fold does not depend on which other clips are present.
  assert ab.split_clips(['001', '007', '003'])['test'] == ['007']
  assert [ab.clip_fold(c) for c in ('001', '003', '007', '011')] == [3, 1, 0, 4]
  # Each clip is a test clip in exactly one of the 5 folds, a validation clip
  # in exactly one, and the three splits of a fold partition the clips.
  tested, validated = collections.Counter(), collections.Counter()
  for fold in range(5):
    s = ab.split_clips(ids, 5, fold)
    assert sorted(s['train'] + s['validation'] + s['test']) == ids
    assert (len(s['train']), len(s['validation']), len(s['test'])) == (
        360, 120, 120)
    tested.update(s['test'])
    validated.update(s['validation'])
    assert set(s['validation']) == set(ab.split_clips(ids, 5, (fold + 1) % 5)[
        'test'])
  assert set(tested.values()) == {1} and set(validated.values()) == {1}
  # Ids outside 001..600 fall back to the hash (deterministic).
  assert ab.clip_fold('movie_x') == ab.clip_fold('movie_x') in range(5)
  with pytest.raises(ValueError, match='num_folds must be an integer >= 3'):
    ab.clip_fold('001', 2)
  with pytest.raises(ValueError, match=r'fold must be an integer in 0\.\.4'):
    ab.split_clips(ids, 5, 5)


@pytest.mark.parametrize('kwargs,pattern', [
    (dict(crop='affine'), r"crop must be 'box' or 'aligned', got 'affine'"),
    (dict(template='3'), r"template must be '68' or '5', got '3'"),
    (dict(size=0), r'size must be a positive int, got 0'),
    (dict(hop=17), r'hop \(17\) must be <= clip_length \(16\)'),
    (dict(fold=5), r'0 <= fold < num_folds, got num_folds=5, fold=5'),
    (dict(scale=0.0), r'scale must be > 0'),
])
def test_config_validation(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    ab.AfewVaConfig(name='bad', **kwargs)


def test_config_is_a_dataclass_with_documented_defaults():
  fields = {f.name: f.default for f in dataclasses.fields(ab.AfewVaConfig)
            if f.name in ('crop', 'size', 'scale', 'template', 'supersample',
                          'clip_length', 'hop', 'num_folds', 'fold',
                          'skip_missing_frames')}
  assert fields == dict(crop='box', size=96, scale=1.25, template='68',
                        supersample=4, clip_length=16, hop=16, num_folds=5,
                        fold=0, skip_missing_frames=False)
  assert not any(c.skip_missing_frames for c in ab.Builder.BUILDER_CONFIGS)


# ------------------------------- tfds.testing.DatasetBuilderTestCase ----
# TFDS's own harness on the default tfrecord format (see
# tfds_builders.testing.tfds_harness).
_HARNESS = testing.tfds_harness()


def test_tfds_dataset_builder_test_case_available():
  testing.skip_without_harness(_HARNESS)


if _HARNESS[0] is not None:

  class AfewVaTfdsTest(_HARNESS[0]):
    DATASET_CLASS = ab.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['crop_96']
    SPLITS = EXPECTED_SPLITS
