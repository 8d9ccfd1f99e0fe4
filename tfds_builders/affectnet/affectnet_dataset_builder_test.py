"""Tests of the affectnet builder on FAKE dummy data (see make_dummy_data.py)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault(
    'XLA_FLAGS', '--xla_backend_optimization_level=0 '
    '--xla_llvm_disable_expensive_passes=true')

# pylint: disable=g-import-not-at-top,wrong-import-position
import csv
import hashlib
import math
import pathlib
import random
import re
import shutil

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import tensorflow_datasets as tfds

from fer_jax.data import align
from fer_jax.testing import umeyama_reference
from tfds_builders import testing
from tfds_builders.affectnet import affectnet_dataset_builder as ab
from tfds_builders.affectnet import make_dummy_data

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
LAYOUTS = {'official': DUMMY / 'official', 'repackaged': DUMMY / 'repackaged'}

# Exact split sizes of the dummy data. Official: training.csv has 3 rows per expression 0-10, of
# which the rows (1, 0), (4, 0), (5, 0), (7, 0) hash into validation; validation.csv has 2 per
# expression. Re-packaged: train_set 2 per expression, (4, 0), (5, 1), (7, 0) in validation;
# val_set 1 per expression. 8-10 dropped; the 7-class configs drop 7 (contempt) too.
EXPECTED_SPLITS = {
    ('official', 8): {'train': 20, 'validation': 4, 'test': 16},
    ('official', 7): {'train': 18, 'validation': 3, 'test': 14},
    ('repackaged', 8): {'train': 13, 'validation': 3, 'test': 8},
    ('repackaged', 7): {'train': 12, 'validation': 2, 'test': 7},
}
# Every config is built once, on one of the two layouts.
BUILDS = [('official', 'expr8_112'), ('official', 'expr7_224'), ('official', 'expr8_112_aligned'),
          ('repackaged', 'expr8_224'), ('repackaged', 'expr7_112'),
          ('repackaged', 'expr7_112_aligned')]
CONFIGS = {c.name: c for c in ab.Builder.BUILDER_CONFIGS}


def _build(data_dir, config, manual_dir):
  return testing.build_array_record(ab.Builder, data_dir, config, manual_dir)


@pytest.fixture(scope='module', params=BUILDS, ids=lambda p: '-'.join(p))
def built(request, tmp_path_factory):
  layout, config = request.param
  data_dir = tmp_path_factory.mktemp(f'{layout}_{config}')
  return layout, config, data_dir, _build(data_dir, config, LAYOUTS[layout])


def _records(config, data_dir, split):
  source = tfds.data_source(f'affectnet/{config}', split=split, data_dir=data_dir)
  return [source[i] for i in range(len(source))]


# ------------------------------------------------ independent references ----


def _sha1_validation(filename):
  digest = hashlib.sha1(filename.encode()).digest()
  return int.from_bytes(digest[:8], 'big') % 10_000 < 200


def _reference_rows(layout):
  """{filename: dict(split source, expression, valence, arousal, landmarks, box)}, read with the csv
  module / np.load directly (every expression, 8-10 too)."""
  root = LAYOUTS[layout]
  out = {}
  if layout == 'official':
    for name, source in (('training.csv', 'train'), ('validation.csv', 'test')):
      with open(root / 'Manually_Annotated_file_lists' / name, newline='') as f:
        rows = list(csv.reader(f))
      if rows[0][0] == 'subDirectory_filePath':
        rows = rows[1:]
      for r in rows:
        x, y, w, h = map(float, r[1:5])
        out['Manually_Annotated_Images/' + r[0]] = dict(
            source=source, expression=int(r[6]), valence=float(r[7]), arousal=float(r[8]),
            landmarks=np.array(r[5].split(';'), np.float64).reshape(68, 2), box=(x, y, x + w, y + h))
  else:
    for set_name, source in (('train_set', 'train'), ('val_set', 'test')):
      for image in sorted((root / set_name / 'images').iterdir()):
        ann = root / set_name / 'annotations' / image.name.split('.')[0]
        load = lambda s: np.load(f'{ann}_{s}.npy')  # noqa: E731
        out[f'{set_name}/images/{image.name}'] = dict(
            source=source, expression=int(str(load('exp'))), valence=float(str(load('val'))),
            arousal=float(str(load('aro'))),
            landmarks=np.array(load('lnd'), np.float64).reshape(68, 2), box=None)
  return out


def _reference_split(ref, filename, classes):
  r = ref[filename]
  if r['expression'] >= classes:
    return None
  if r['source'] == 'test':
    return 'test'
  return 'validation' if _sha1_validation(filename) else 'train'


def _read_rgb(path):
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def _reference_square(box):
  """(left, top, side): the square of side round(max(w, h)) centred on the box, halves rounded up."""
  x0, y0, x1, y1 = box
  side = max(1, math.floor(max(x1 - x0, y1 - y0) + 0.5))
  return (math.floor((x0 + x1) / 2 - side / 2 + 0.5), math.floor((y0 + y1) / 2 - side / 2 + 0.5),
          side)


def _reference_box_crop(image, box, size):
  """NumPy square cut (black past the image); PIL bilinear resize only when its side is not size."""
  h, w = image.shape[:2]
  if box is None:
    box = (0, 0, w, h)
  left, top, side = _reference_square(box)
  square = np.zeros((side, side, 3), np.uint8)
  r0, r1, c0, c1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
  square[r0 - top:r1 - top, c0 - left:c1 - left] = image[r0:r1, c0:c1]
  if side != size:
    square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))
  k = size / side
  matrix = np.array([[k, 0, k * (0.5 - left) - 0.5], [0, k, k * (0.5 - top) - 0.5]])
  return square, matrix


def _five_points(lm):
  return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def _reference_aligned(image, landmarks, size=112, n=4):
  """umeyama onto the ArcFace template; f x f block means (grid anchored at the image origin, zero
  padded) when the crop shrinks by more than n; mean of n x n bilinear samples (scipy)."""
  m = umeyama_reference(_five_points(landmarks), align.ARCFACE_TEMPLATE_112 * size / 112
                        + (size / 112 - 1) / 2)
  k = math.hypot(m[0, 0], m[1, 0])
  f = max(1, math.ceil(1 / (k * n) - 1e-6))
  h, w = image.shape[:2]
  padded = np.zeros((-(-h // f) * f, -(-w // f) * f, 3))
  padded[:h, :w] = image
  reduced = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, 3).mean(axis=(1, 3))
  m_red = np.vstack([m, [0, 0, 1]]) @ np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1]])
  inv = np.linalg.inv(m_red)
  off = (np.arange(n) + 0.5) / n - 0.5
  grid = (np.arange(size)[:, None] + off[None, :]).reshape(-1)
  gy, gx = np.meshgrid(grid, grid, indexing='ij')
  sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
  sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
  out = np.stack([ndimage.map_coordinates(reduced[..., c], [sy, sx], order=1, mode='grid-constant',
                                          cval=0.0, prefilter=False) for c in range(3)], -1)
  out = out.reshape(size, n, size, n, 3).mean(axis=(1, 3))
  return np.clip(np.rint(out), 0, 255).astype(np.uint8), m, f


# ------------------------------------------------------------ the builds ----


def test_registered_and_configs():
  assert tfds.builder_cls('affectnet') is ab.Builder
  assert ab.Builder.name == 'affectnet'
  assert list(CONFIGS) == ['expr8_112', 'expr8_224', 'expr8_112_aligned', 'expr7_112',
                           'expr7_224', 'expr7_112_aligned']
  assert ab.Builder.DEFAULT_BUILDER_CONFIG_NAME == 'expr8_112'
  got = {n: (c.classes, c.crop, c.size) for n, c in CONFIGS.items()}
  assert got == {'expr8_112': (8, 'box', 112), 'expr8_224': (8, 'box', 224),
                 'expr8_112_aligned': (8, 'aligned', 112), 'expr7_112': (7, 'box', 112),
                 'expr7_224': (7, 'box', 224), 'expr7_112_aligned': (7, 'aligned', 112)}
  aligned = CONFIGS['expr7_112_aligned']
  assert (aligned.template, aligned.scale, aligned.supersample) == ('5', 1.0, 4)
  assert str(ab.Builder.VERSION) in ab.Builder.RELEASE_NOTES


def test_splits_info_and_reload(built):
  layout, config, data_dir, builder = built
  cfg = CONFIGS[config]
  expected = EXPECTED_SPLITS[(layout, cfg.classes)]
  assert builder.info.file_format.value == 'array_record'
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == expected
  info = tfds.builder(f'affectnet/{config}', data_dir=data_dir).info
  assert {k: v.num_examples for k, v in info.splits.items()} == expected
  f = info.features
  assert f['image'].shape == (cfg.size, cfg.size, 3) and f['image'].np_dtype == np.uint8
  assert f['label'].names == list(ab.EXPRESSION_NAMES[:cfg.classes])
  assert f['label'].names[:7] == ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger']
  assert f['landmarks'].shape == (68, 2)
  assert info.supervised_keys == ('image', 'label')
  assert 'Mollahosseini' in info.citation and 'AffectNet' in info.description


def test_records_equal_independent_reference(built):
  """Labels, valence / arousal, split membership, crops and landmarks vs csv / np.load + NumPy /
  scipy recomputations; expressions 8-10 (and 7 for 7 classes) never appear."""
  layout, config, data_dir, builder = built
  cfg = CONFIGS[config]
  ref = _reference_rows(layout)
  seen = {}
  for split in builder.info.splits:
    for r in _records(config, data_dir, split):
      name = r['filename'].decode()
      assert name not in seen, name  # No image twice, in one split or across splits.
      seen[name] = split
      want = ref[name]
      assert _reference_split(ref, name, cfg.classes) == split, name
      assert r['label'] == want['expression'] < cfg.classes
      assert r['valence'] == np.float32(want['valence'])
      assert r['arousal'] == np.float32(want['arousal'])
      image = _read_rgb(LAYOUTS[layout] / name)
      if cfg.crop == 'box':
        crop, m = _reference_box_crop(image, want['box'], cfg.size)
        np.testing.assert_array_equal(r['image'], crop, err_msg=name)
        atol = 1e-4
      else:
        crop, m, _ = _reference_aligned(image, want['landmarks'])
        diff = np.abs(r['image'].astype(int) - crop)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, diff.max(), (diff > 0).mean())
        atol = 2e-3
      np.testing.assert_allclose(r['landmarks'], want['landmarks'] @ m[:, :2].T + m[:, 2],
                                 atol=atol, err_msg=name)
  kept = {n for n in ref if _reference_split(ref, n, cfg.classes)}
  assert set(seen) == kept
  assert all(ref[n]['expression'] >= cfg.classes for n in set(ref) - kept)
  # Valence / arousal ends kept (official training row (2, 0): -1 and 1).
  if layout == 'official':
    assert any(ref[n]['valence'] == -1.0 and ref[n]['arousal'] == 1.0 for n in seen)


@pytest.mark.parametrize('built', [b for b in BUILDS if b[0] == 'official' and 'aligned' not in b[1]],
                         indirect=True, ids=lambda p: '-'.join(p))
def test_box_crop_known_pattern(built):
  """The quadrant PNGs: a 56-px square box of four flat colours fills the crop, one per quadrant
  (away from the seams that bilinear resizing blends); the boxes running past the image give black
  columns."""
  layout, config, data_dir, builder = built
  cfg = CONFIGS[config]
  s, margin = cfg.size, cfg.size // 56 + 1
  found = 0
  for split in builder.info.splits:
    for r in _records(config, data_dir, split):
      name = r['filename'].decode()
      if name.endswith('.png'):
        found += 1
        img = r['image']
        a, b = s // 2 - margin, s // 2 + margin
        for (rows, cols), colour in zip(
            [(np.s_[:a], np.s_[:a]), (np.s_[:a], np.s_[b:]), (np.s_[b:], np.s_[:a]),
             (np.s_[b:], np.s_[b:])], make_dummy_data.PATTERN_COLOURS):
          assert (img[rows, cols] == colour).all(), (name, colour)
      box = _reference_rows(layout)[name]['box']
      if box[0] < 0:  # The 'outside' rows: x = -7, y = -5, so the crop starts black.
        left, top, side = _reference_square(box)
        # Columns whose bilinear taps (image x within 1 px) all lie left of the photo.
        dark = math.floor((-left - 0.5) * s / side - 0.5)
        assert dark > 0 and (r['image'][:, :dark] == 0).all()
        found += 1
  assert found >= 2


def test_hash_split_stable_disjoint_and_sized():
  names = [f'Manually_Annotated_Images/{i % 1000}/{i:056x}.jpg' for i in range(60_000)]
  flags = [ab.in_validation(n) for n in names]
  assert flags == [_sha1_validation(n) for n in names]
  assert 0.018 < np.mean(flags) < 0.022  # 2 %.
  # Fixed values (the split must not change across machines or releases of this code):
  # int(sha1(path)[:8], big-endian) % 10000.
  assert ab.hash_bucket('Manually_Annotated_Images/689/x.jpg') == 6001
  assert [ab.hash_bucket(f'train_set/images/{i}.jpg') for i in range(4)] == [5238, 5848, 4166, 5646]
  # Independent of row order, disjoint, and covering every kept row.
  rows = ab.read_rows(ab.detect_layout(LAYOUTS['official']))
  shuffled = {k: random.Random(0).sample(v, len(v)) for k, v in rows.items()}
  a, b = ab.assign_splits(rows, 8), ab.assign_splits(shuffled, 8)
  assert {k: {r.filename for r in v} for k, v in a.items()} == {
      k: {r.filename for r in v} for k, v in b.items()}
  assert not ({r.filename for r in a['train']} & {r.filename for r in a['validation']})
  assert sum(map(len, a.values())) == sum(len(v) for v in rows.values())
  with pytest.raises(ValueError, match='classes must be 7 or 8, got 6'):
    ab.assign_splits(rows, 6)


def test_dummy_data_is_what_the_script_writes(tmp_path):
  want = testing.dummy_files_written_by(make_dummy_data.main, tmp_path, DUMMY)
  for rel in want:
    assert (tmp_path / rel).read_bytes() == (DUMMY / rel).read_bytes(), rel
  assert sum((DUMMY / rel).stat().st_size for rel in want) < 400_000


def test_sources_get_builder_and_fingerprint(tmp_path):
  from fer_jax.data import sources  # pylint: disable=g-import-not-at-top
  builder = sources.get_builder('affectnet/expr8_112', data_dir=str(tmp_path),
                                manual_dir=str(LAYOUTS['official']))
  assert builder.is_prepared()
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == EXPECTED_SPLITS[
      ('official', 8)]
  assert (pathlib.Path(builder.data_dir) / sources.FINGERPRINT_FILE).is_file()
  source = sources.data_source('affectnet/expr8_112', 'validation', data_dir=str(tmp_path),
                               manual_dir=str(LAYOUTS['official']))
  assert sorted(source[i]['label'] for i in range(len(source))) == [1, 4, 5, 7]


# ------------------------------------------------------ manual dir, errors ----


def test_missing_manual_dir_lists_expected_paths(tmp_path):
  builder = ab.Builder(config='expr8_112', data_dir=tmp_path / 'data')
  with pytest.raises(AssertionError, match='does not exist or is empty') as e:
    testing.prepare(builder, tmp_path / 'missing')
  assert 'mohammadmahoor.com/affectnet' in str(e.value)
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'notes.txt').write_text('not the data')
  with pytest.raises(FileNotFoundError, match='No AffectNet files found') as e:
    testing.prepare(builder, manual)
  msg = str(e.value)
  for needle in ('Manually_Annotated_file_lists/training.csv',
                 'Manually_Annotated_file_lists/validation.csv', 'Manually_Annotated_Images/',
                 'train_set/images/<N>.jpg', 'val_set/images/<N>.jpg',
                 'train_set/annotations/<N>_exp.npy', 'val_set/annotations/<N>_exp.npy',
                 '<N>_lnd.npy', 'mohammadmahoor.com/affectnet'):
    assert needle in msg, needle
  assert str(manual) in msg
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ab.detect_layout(tmp_path / 'nowhere')


def test_layout_detection_variants(tmp_path):
  lay = ab.detect_layout(LAYOUTS['official'])
  assert lay.kind == 'official' and list(lay.sources) == ['train', 'test']
  lay = ab.detect_layout(LAYOUTS['repackaged'])
  assert lay.kind == 'repackaged' and list(lay.sources) == ['train', 'test']
  # One file list only: only its split.
  shutil.copytree(LAYOUTS['official'], tmp_path / 'one')
  (tmp_path / 'one' / 'Manually_Annotated_file_lists' / 'training.csv').unlink()
  assert list(ab.detect_layout(tmp_path / 'one').sources) == ['test']
  assert list(ab.assign_splits(ab.read_rows(ab.detect_layout(tmp_path / 'one')), 8)) == ['test']
  # File lists without the images.
  shutil.rmtree(tmp_path / 'one' / 'Manually_Annotated_Images')
  with pytest.raises(FileNotFoundError, match='Manually_Annotated_Images'):
    ab.detect_layout(tmp_path / 'one')
  # Both layouts in one folder.
  shutil.copytree(LAYOUTS['official'], tmp_path / 'both')
  shutil.copytree(LAYOUTS['repackaged'] / 'val_set', tmp_path / 'both' / 'val_set')
  with pytest.raises(ab.AffectNetFormatError, match='holds both AffectNet layouts'):
    ab.detect_layout(tmp_path / 'both')


_GOOD = ('1/a.jpg', '10', '12', '30', '32', ';'.join(['1.5'] * 136), '3', '0.25', '-0.5')
_HEADER = ','.join(ab.CSV_HEADER)


def _row(**change):
  fields = dict(zip(ab.CSV_HEADER, _GOOD))
  fields.update(change)
  return ','.join(fields.values())


@pytest.mark.parametrize('bad,pattern', [
    (_row() + ',x', r'10 columns .*expected 9 \(subDirectory_filePath,face_x'),
    ('1/a.jpg,10,12', r'3 columns .*expected 9'),
    (_row(face_x='ten'), r"face_x is 'ten', expected a number"),
    (_row(face_height=''), r"face_height is '', expected a number"),
    (_row(face_width='0'), r'face box has width 0, height 32, expected both > 0'),
    (_row(facial_landmarks=';'.join(['1'] * 135)),
     r'facial_landmarks has 135 values, expected 136 \(68 points as x1;y1;x2;y2;\.\.\.\)'),
    (_row(facial_landmarks=';'.join(['1'] * 137)), r'facial_landmarks has 137 values'),
    (_row(facial_landmarks=';'.join(['1'] * 100 + ['nan'] + ['1'] * 35)),
     r"facial_landmarks value 100 is 'nan', expected a finite number"),
    (_row(expression='11'), r"expression is '11', expected an integer in 0\.\.10 \(0 neutral"),
    (_row(expression='-1'), r"expression is '-1', expected an integer in 0\.\.10"),
    (_row(expression='happy'), r"expression is 'happy', expected an integer in 0\.\.10"),
    (_row(expression='2.5'), r"expression is '2\.5'"),
    (_row(valence='1.5'), r"valence is '1\.5', expected a number in \[-1, 1\] or -2"),
    (_row(arousal='-3'), r"arousal is '-3', expected a number in \[-1, 1\] or -2"),
    (_row(subDirectory_filePath='../x.jpg'), r"subDirectory_filePath is '\.\./x\.jpg', expected a "
     'relative path'),
    (_row(subDirectory_filePath='1/b.jpg', face_x='5'), None),  # Fine: a control row.
])
def test_malformed_csv_rows_name_file_and_line(tmp_path, bad, pattern):
  path = tmp_path / 'training.csv'
  path.write_text('\n'.join([_HEADER, _row(), _row(subDirectory_filePath='1/c.jpg'), bad]) + '\n')
  if pattern is None:
    assert len(ab.read_official_csv(path).rows) == 3
    return
  with pytest.raises(ab.AffectNetFormatError) as e:
    ab.read_official_csv(path)
  assert str(e.value).startswith(f'{path}, line 4: '), str(e.value)
  assert re.search(pattern, str(e.value)), str(e.value)


def test_csv_header_optional_duplicates_and_dropped_rows(tmp_path):
  path = tmp_path / 'validation.csv'
  # No header; an expression-9 row with garbage box / landmarks / -2 labels is only counted.
  path.write_text('\n'.join([_row(), '2/z.jpg,x,y,z,w,broken,9,-2,-2', _row(expression='10'),
                             _row(subDirectory_filePath='1/b.jpg', expression='0')]) + '\n')
  out = ab.read_official_csv(path)
  assert [(r.filename, r.expression) for r in out.rows] == [
      ('Manually_Annotated_Images/1/a.jpg', 3), ('Manually_Annotated_Images/1/b.jpg', 0)]
  assert out.dropped.tolist() == [0] * 9 + [1, 1]
  r = out.rows[0]
  assert r.box == (10.0, 12.0, 40.0, 44.0) and r.where == f'{path}, line 1'
  assert (r.valence, r.arousal) == (0.25, -0.5) and r.landmarks.shape == (68, 2)
  path.write_text('\n'.join([_HEADER.replace('face_x', 'facex'), _row()]) + '\n')
  with pytest.raises(ab.AffectNetFormatError, match=r'line 1: bad header'):
    ab.read_official_csv(path)
  path.write_text('\n'.join([_HEADER, _row(), _row(valence='0')]) + '\n')
  with pytest.raises(ab.AffectNetFormatError,
                     match=r"line 3: image '1/a\.jpg' is listed twice \(also line 2\)"):
    ab.read_official_csv(path)


def _copy_repackaged(tmp_path):
  root = tmp_path / 'rep'
  shutil.copytree(LAYOUTS['repackaged'], root)
  ann = root / 'train_set' / 'annotations'
  first = sorted((root / 'train_set' / 'images').iterdir())[0].name.split('.')[0]
  return root, ann, first


@pytest.mark.parametrize('suffix,value,pattern', [
    ('exp', np.array('12'), r"_exp\.npy: expression is '12', expected an integer in 0\.\.10"),
    ('exp', np.array(['1', '2']), r'_exp\.npy: holds 2 values \(shape \(2,\)\), expected 1'),
    ('val', np.array('high'), r"_val\.npy: valence is 'high', expected a number in \[-1, 1\]"),
    ('aro', np.float64(1.25), r'_aro\.npy: arousal is 1\.25'),
    ('lnd', np.zeros(134), r'_lnd\.npy: facial_landmarks has 134 values, expected 136'),
    ('lnd', np.array([True] * 136), r'_lnd\.npy: holds dtype bool, expected strings or numbers'),
    ('lnd', None, r'_lnd\.npy: cannot read as \.npy without pickle'),
    ('val', 'missing', r'_val\.npy: annotation file is missing'),
])
def test_malformed_repackaged_annotations(tmp_path, suffix, value, pattern):
  root, ann, first = _copy_repackaged(tmp_path)
  exp = int(str(np.load(ann / f'{first}_exp.npy')))
  if suffix != 'exp' and exp >= 8:
    pytest.fail(f'dummy image {first} has expression {exp}: pick a kept one')
  path = ann / f'{first}_{suffix}.npy'
  if value is None:
    np.save(path, np.array([{'x': 1}], dtype=object), allow_pickle=True)
  elif isinstance(value, str):
    path.unlink()
  else:
    np.save(path, value)
  with pytest.raises(ab.AffectNetFormatError, match=pattern) as e:
    ab.read_rows(ab.detect_layout(root))
  assert str(e.value).startswith(str(path)), str(e.value)


def test_unreadable_and_missing_images_and_skip_list(tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(LAYOUTS['official'], manual)
  rows = ab.assign_splits(ab.read_rows(ab.detect_layout(manual)), 8)
  broken = [rows['train'][3].filename, rows['test'][5].filename]
  (manual / broken[0]).write_bytes(b'\xff\xd8\xff\xe0 not really a JPEG')
  (manual / broken[1]).write_bytes((manual / broken[1]).read_bytes()[:300])  # Truncated.
  with pytest.raises(ab.AffectNetFormatError, match=r'1 image\(s\) could not be used') as e:
    _build(tmp_path / 'data', 'expr8_112', manual)
  msg = str(e.value)
  assert str(manual / broken[0]) in msg and 'cannot decode image' in msg
  assert str(manual / 'skip_images.txt') in msg
  # Listed in skip_images.txt, both are left out (one per split).
  (manual / 'skip_images.txt').write_text(f'# broken downloads\n{broken[0]}\n\n{broken[1]}  # cut\n')
  assert ab.read_skip_list(manual) == frozenset(broken)
  builder = _build(tmp_path / 'data2', 'expr8_112', manual)
  want = dict(EXPECTED_SPLITS[('official', 8)])
  want['train'] -= 1
  want['test'] -= 1
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == want
  # A missing image stops the build before any crop, listing it.
  (manual / rows['train'][4].filename).unlink()
  with pytest.raises(ab.AffectNetFormatError, match=r'1 annotated image\(s\) missing') as e:
    ab.read_rows(ab.detect_layout(manual))
  assert rows['train'][4].filename in str(e.value) and 'skip_images.txt' in str(e.value)
  # More than 20: the first 20 are listed, all of them written to a file in skip_images.txt format.
  gone = ([r.filename for r in rows['train'][4:]] + [r.filename for r in rows['validation']]
          + [r.filename for r in rows['test'][:2]])
  assert len(gone) == 22
  for name in gone[1:]:
    (manual / name).unlink()
  with pytest.raises(ab.AffectNetFormatError, match=r'22 annotated image\(s\) missing') as e:
    ab.read_rows(ab.detect_layout(manual))
  listed = re.search(r'\.\.\. and 2 more \(all 22 file names: (\S+)\)', str(e.value))
  assert listed, str(e.value)
  path = pathlib.Path(listed.group(1))
  assert sorted(path.read_text().splitlines()) == sorted(gone)
  path.unlink()


def test_decode_image_modes_and_garbage(tmp_path):
  grey = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
  Image.fromarray(grey).save(tmp_path / 'g.png')
  np.testing.assert_array_equal(ab.decode_image(tmp_path / 'g.png'),
                                np.repeat(grey[..., None], 3, -1))
  rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
  Image.fromarray(rgba).save(tmp_path / 'a.png')
  np.testing.assert_array_equal(ab.decode_image(tmp_path / 'a.png'), rgba[..., :3])
  (tmp_path / 'bad.jpg').write_bytes(b'GIF89a nope')
  with pytest.raises(ab.AffectNetFormatError, match=re.escape(f'{tmp_path / "bad.jpg"}: cannot '
                                                              'decode image')):
    ab.decode_image(tmp_path / 'bad.jpg')


def test_aligned_crop_of_a_big_photo_pre_shrinks():
  """A face ~8x bigger than the crop: f = 3 block means, then the 4 x 4 supersampled warp; the
  crop equals the NumPy / scipy reference, including the black outside the photo."""
  rng = np.random.default_rng(3)
  yy, xx = np.mgrid[0:700, 0:900]
  image = np.stack([(xx * 0.3 + yy * 0.1) % 256, (yy * 0.37) % 256, 128 + 60 * np.sin(xx / 9.0)],
                   -1)
  image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
  # A synthetic face's landmarks scaled up ~8x, rotated 20 degrees, near the photo's right edge.
  lm = align.MEAN_SHAPE_68 - 55.5
  t = math.radians(20)
  rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
  lm = (lm @ rot.T) * 8.3 + (760, 330)
  want, m, f = _reference_aligned(image, lm)
  assert f == 3
  got_m = ab.similarity_matrix(lm, '5', 112, 1.0)
  np.testing.assert_allclose(got_m, m, rtol=1e-5, atol=1e-3)
  assert ab.reduce_factor(got_m, 4) == f
  got = ab.aligned_crop(image, got_m, 112, 4)
  diff = np.abs(got.astype(int) - want)
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01
  assert (got[:, -5:] == 0).all()  # Past the right edge of the photo.
  with pytest.raises(align.FaceOutsideFrameError, match='outside the 900x700 image'):
    ab.aligned_crop(image, ab.similarity_matrix(lm + (5000, 0), '5', 112, 1.0), 112, 4)


@pytest.mark.parametrize('kwargs,pattern', [
    (dict(classes=6), r'classes must be 7 or 8, got 6'),
    (dict(crop='affine'), r"crop must be 'box' or 'aligned', got 'affine'"),
    (dict(template='3'), r"template must be '5' or '68', got '3'"),
    (dict(size=0), r'size must be a positive int, got 0'),
    (dict(scale=0.0), r'scale must be > 0'),
])
def test_config_validation(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    ab.AffectNetConfig(name='bad', **kwargs)


def test_manual_download_instructions():
  text = ab.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  for needle in ('http://mohammadmahoor.com/affectnet/', 'Manually_Annotated_Images',
                 'Manually_Annotated_file_lists/training.csv', 'validation.csv',
                 'train_set/images/<N>.jpg', '<N>_exp.npy', '~/tensorflow_datasets/downloads/manual/',
                 '--manual_dir', '--config.dataset.manual_dir', 'expr8_112', 'expr7_112_aligned',
                 'skip_images.txt'):
    assert needle in text, needle


# ------------------------------- tfds.testing.DatasetBuilderTestCase ----
# TFDS's own harness on the default tfrecord format (see tfds_builders.testing.tfds_harness).
_HARNESS = testing.tfds_harness()


def test_tfds_dataset_builder_test_case_available():
  testing.skip_without_harness(_HARNESS)


if _HARNESS[0] is not None:

  class AffectNetOfficialTfdsTest(_HARNESS[0]):
    DATASET_CLASS = ab.Builder
    EXAMPLE_DIR = str(LAYOUTS['official'])
    BUILDER_CONFIG_NAMES_TO_TEST = ['expr8_112']
    SPLITS = EXPECTED_SPLITS[('official', 8)]
