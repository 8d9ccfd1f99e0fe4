"""Tests of the emotic builder and fer_jax.data.emotic on FAKE dummy data (see make_dummy_data.py)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import ast
import csv
import math
import pathlib
import re
import shutil

import numpy as np
from PIL import Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

from fer_jax.data import emotic
from tfds_builders import testing
from tfds_builders.emotic import emotic_dataset_builder as eb
from tfds_builders.emotic import make_dummy_data as mdd

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
LAYOUTS = {'release': DUMMY / 'release', 'pre': DUMMY / 'pre'}
MAT = LAYOUTS['release'] / 'Annotations' / 'Annotations.mat'

# Independent copies of the label conventions (the paper's category order; codes of the record schema).
PAPER_CATEGORIES = [
    'Affection', 'Anger', 'Annoyance', 'Anticipation', 'Aversion', 'Confidence', 'Disapproval',
    'Disconnection', 'Disquietment', 'Doubt/Confusion', 'Embarrassment', 'Engagement', 'Esteem',
    'Excitement', 'Fatigue', 'Fear', 'Happiness', 'Pain', 'Peace', 'Pleasure', 'Sadness', 'Sensitivity',
    'Suffering', 'Surprise', 'Sympathy', 'Yearning']
GENDER = {'Male': 0, 'Female': 1, 'Unknown': -1, '': -1}
AGE = {'Kid': 0, 'Teenager': 1, 'Adult': 2, 'Unknown': -1, '': -1}
SPLIT_OF = {'train': 'train', 'val': 'validation', 'test': 'test'}
CODE = {'train': 0, 'validation': 1, 'test': 2}
# Kept people: train 1 + 2 (frame_0001 person 2 has no category) + 1 (pattern person 1 has a NaN
# valence) + 1; validation 1 + 2; test 1 + 1 (COCO_val..77 persons 0 and 1 left out).
EXPECTED_SPLITS = {'train': 5, 'validation': 3, 'test': 2}


def _build(data_dir, config, manual_dir):
  return testing.build_array_record(eb.Builder, data_dir, config, manual_dir)


def _records(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def _all_records(builder):
  return {split: _records(builder, split) for split in builder.info.splits}


@pytest.fixture(scope='module')
def release_build(tmp_path_factory):
  return _build(tmp_path_factory.mktemp('release'), 'c224_b128', LAYOUTS['release'])


@pytest.fixture(scope='module')
def exact_build(tmp_path_factory):
  """Context 48 px (the pattern PNG's size: stored as is) and body 16 px (its 16 x 16 box: as is)."""
  config = eb.EmoticConfig(name='exact48', context_size=48, body_size=16)
  return _build(tmp_path_factory.mktemp('exact'), config, LAYOUTS['release'])


@pytest.fixture(scope='module')
def pre_build(tmp_path_factory):
  return _build(tmp_path_factory.mktemp('pre'), 'c112_b64', LAYOUTS['pre'])


# ------------------------------------------------ independent references ----


def _multi_hot(names):
  v = np.zeros(26, np.float32)
  for n in names:
    v[PAPER_CATEGORIES.index(n)] = 1.0
  return v


def _read_rgb(path):
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def _pil_resize(a, size):
  if a.shape[:2] == (size, size):
    return a
  return np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))


def _reference_release():
  """{(split, image_id, person): expected labels} from make_dummy_data.RELEASE by the documented rules:
  kept iff it has categories and finite VAD; train labels = its annotation, val / test = combined;
  VAD (v - 1) / 9; box clamped to the image by hand; crop rows floor(y1):ceil(y2), cols floor(x1):ceil(x2)."""
  out = {}
  for name, images in mdd.RELEASE.items():
    split = SPLIT_OF[name]
    for i, spec in enumerate(images):
      w, h = spec['size']
      image_id = f'{spec["folder"]}/{spec["filename"]}'
      for p, person in enumerate(spec['people']):
        names = person['categories'] if name == 'train' else person['combined_categories']
        vad = person['vad'] if name == 'train' else person['combined_vad']
        if not names or any(math.isnan(v) for v in vad):
          continue
        x1, y1, x2, y2 = person['box']
        box = (max(x1, 0), max(y1, 0), min(x2, w), min(y2, h))
        out[(split, image_id, p)] = dict(
            index=i, size=(w, h), categories=_multi_hot(names),
            vad=np.array([(v - 1) / 9 for v in vad], np.float32),
            bbox=np.array([box[0] / w, box[1] / h, box[2] / w, box[3] / h], np.float32),
            pixels=(math.floor(box[1]), math.ceil(box[3]), math.floor(box[0]), math.ceil(box[2])),
            gender=GENDER[person['gender']], age=AGE[person['age']])
  return out


def _reference_pre():
  """{(split, Index): row} of the dummy CSVs read with csv + ast, and the raw .npy arrays."""
  rows, arrays = {}, {}
  for name, split in SPLIT_OF.items():
    with open(LAYOUTS['pre'] / f'{name}.csv', newline='') as f:
      for r in csv.DictReader(f):
        rows[(split, int(r['Index']))] = r
    for a in eb.NPY_ARRAYS:
      arrays[(split, a)] = np.load(LAYOUTS['pre'] / f'{name}_{a}_arr.npy')
  return rows, arrays


# ------------------------------------------------------------ the builds ----


def test_registered_configs_and_constants():
  assert tfds.builder_cls('emotic') is eb.Builder
  assert [c.name for c in eb.Builder.BUILDER_CONFIGS] == ['c224_b128', 'c112_b64']
  assert eb.Builder.DEFAULT_BUILDER_CONFIG_NAME == 'c224_b128'
  default = eb.Builder.BUILDER_CONFIGS[0]
  assert (default.context_size, default.body_size, default.layout) == (224, 128, 'auto')
  assert (emotic.CONTEXT_SIZE, emotic.BODY_SIZE) == (224, 128)
  assert list(emotic.EMOTIC_CATEGORIES) == PAPER_CATEGORIES and emotic.NUM_CATEGORIES == 26
  assert str(eb.Builder.VERSION) in eb.Builder.RELEASE_NOTES


@pytest.mark.parametrize('layout', ['release', 'pre'])
def test_splits_info_and_features(layout, release_build, pre_build):
  builder = release_build if layout == 'release' else pre_build
  assert builder.info.file_format.value == 'array_record'
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == EXPECTED_SPLITS
  f = builder.info.features
  cfg = builder.builder_config
  assert f['context'].shape == (cfg.context_size,) * 2 + (3,) and f['context'].np_dtype == np.uint8
  assert f['body'].shape == (cfg.body_size,) * 2 + (3,) and f['body'].np_dtype == np.uint8
  assert (f['categories'].shape, f['vad'].shape, f['bbox'].shape) == ((26,), (3,), (4,))
  assert f['id'].np_dtype == np.int64 and f['gender'].np_dtype == np.int32
  assert 'Kosti' in builder.info.citation and 'EMOTIC' in builder.info.description


def test_release_records_equal_reference(release_build):
  """Every record vs make_dummy_data.RELEASE by hand-written rules; crops vs NumPy slices of the
  decoded image resized with PIL."""
  ref = _reference_release()
  seen = set()
  for split, records in _all_records(release_build).items():
    for r in records:
      image_id = r['image_id'].decode()
      key = (split, image_id, int(r['person']))
      assert key in ref and key not in seen, key
      seen.add(key)
      want = ref[key]
      np.testing.assert_array_equal(r['categories'], want['categories'], err_msg=str(key))
      np.testing.assert_allclose(r['vad'], want['vad'], rtol=0, atol=1e-7, err_msg=str(key))
      np.testing.assert_allclose(r['bbox'], want['bbox'], rtol=0, atol=1e-7, err_msg=str(key))
      assert (r['gender'], r['age']) == (want['gender'], want['age']), key
      assert r['id'] == CODE[split] * 10**9 + want['index'] * 1000 + key[2]
      image = _read_rgb(LAYOUTS['release'] / 'emotic' / image_id)
      assert image.shape[:2] == want['size'][::-1]
      np.testing.assert_array_equal(r['context'], _pil_resize(image, 224), err_msg=str(key))
      r0, r1, c0, c1 = want['pixels']
      np.testing.assert_array_equal(r['body'], _pil_resize(image[r0:r1, c0:c1], 128), err_msg=str(key))
  assert seen == set(ref)


def _find(builder, image_id, person):
  for split, records in _all_records(builder).items():
    for r in records:
      if r['image_id'].decode() == image_id and r['person'] == person:
        return split, r
  raise AssertionError(f'no record of {image_id} person {person}')


def test_hand_computed_cases(exact_build):
  """Crop of a known box on the pattern PNG, clamping, fractional boxes, multi-hot, VAD ends, codes,
  combined labels of a three-annotator person, one-annotator structs and dropped people."""
  pattern = mdd.pattern_pixels()
  split, r = _find(exact_build, mdd.PATTERN_ID, 0)
  assert split == 'train'
  np.testing.assert_array_equal(r['context'], pattern)  # 48 x 48 PNG, context 48: as stored.
  np.testing.assert_array_equal(r['body'], pattern[6:22, 10:26])  # Box (10, 6, 26, 22).
  assert r['body'][0, 0].tolist() == [50, 30, 60] and r['body'][-1, -1].tolist() == [125, 105, 13]
  np.testing.assert_array_equal(np.flatnonzero(r['categories']), [24])  # Sympathy.
  np.testing.assert_allclose(r['vad'], [0.0, 1.0, 5 / 9], atol=1e-7)  # (1, 10, 6).
  np.testing.assert_allclose(r['bbox'], [10 / 48, 6 / 48, 26 / 48, 22 / 48], atol=1e-7)
  assert (r['gender'], r['age'], r['id']) == (-1, 2, 2 * 1000)
  # Box (-5, 2, 30, 50) in a 72 x 40 image: clamped to (0, 2, 30, 40).
  image = _read_rgb(LAYOUTS['release'] / 'emotic/framesdb/images/frame_0001.jpg')
  _, r = _find(exact_build, 'framesdb/images/frame_0001.jpg', 0)
  np.testing.assert_allclose(r['bbox'], [0, 2 / 40, 30 / 72, 1.0], atol=1e-7)
  np.testing.assert_array_equal(r['body'], _pil_resize(image[2:40, 0:30], 16))
  assert (r['gender'], r['age']) == (1, 0)
  np.testing.assert_allclose(r['vad'], [1.0, 0.0, 4 / 9], atol=1e-7)  # (10, 1, 5).
  np.testing.assert_array_equal(np.flatnonzero(r['categories']), [18])  # Peace (a 1 x 1 cell).
  _, r = _find(exact_build, 'framesdb/images/frame_0001.jpg', 1)
  np.testing.assert_array_equal(np.flatnonzero(r['categories']), [0, 9, 25])  # Affection, Doubt, Yearning.
  # Fractional box (3.5, 2.25, 20.75, 30.5) in a grey 50 x 40 JPEG: rows 2:31, columns 3:21.
  grey = _read_rgb(LAYOUTS['release'] / 'emotic/ade20k/images/ADE_train_00000001.jpg')
  assert (grey[..., 0] == grey[..., 2]).all()
  _, r = _find(exact_build, 'ade20k/images/ADE_train_00000001.jpg', 0)
  np.testing.assert_array_equal(r['body'], _pil_resize(grey[2:31, 3:21], 16))
  np.testing.assert_allclose(r['bbox'], [3.5 / 50, 2.25 / 40, 20.75 / 50, 30.5 / 40], atol=1e-7)
  # Three annotators: the combined categories (Engagement, Happiness), not their union (which adds
  # Excitement, Pleasure, Peace); combined VAD (6, 5, 7), not one annotator's.
  split, r = _find(exact_build, 'mscoco/images/COCO_val2014_000000000042.jpg', 0)
  assert split == 'validation'
  np.testing.assert_array_equal(np.flatnonzero(r['categories']), [11, 16])
  np.testing.assert_allclose(r['vad'], [5 / 9, 4 / 9, 6 / 9], atol=1e-7)
  assert r['id'] == 10**9
  _, r = _find(exact_build, 'framesdb/images/frame_0100.jpg', 1)
  np.testing.assert_allclose(r['vad'], [1.5 / 9, 7.5 / 9, 2 / 9], atol=1e-7)  # (2.5, 8.5, 3).
  _, r = _find(exact_build, 'framesdb/images/frame_0100.jpg', 0)  # One annotator: a struct.
  np.testing.assert_array_equal(np.flatnonzero(r['categories']), [3])
  # Test image 77: persons 0 (no combined category) and 1 (NaN VAD) left out; person 2 with '' and
  # 'Unknown' gender / age; its id keeps the person index 2.
  split, r = _find(exact_build, 'mscoco/images/COCO_val2014_000000000077.jpg', 2)
  assert (split, r['gender'], r['age'], r['id']) == ('test', -1, -1, 2 * 10**9 + 1000 + 2)
  for person in (0, 1):
    with pytest.raises(AssertionError, match='no record'):
      _find(exact_build, 'mscoco/images/COCO_val2014_000000000077.jpg', person)


def test_pre_records_equal_csv_and_arrays(pre_build, release_build):
  """emotic_pre records vs the CSV (csv + ast) and the .npy arrays (resized 24 -> 112, 16 -> 64), and
  the labels vs the release build of the same people."""
  rows, arrays = _reference_pre()
  release = {}  # (split, image_id) -> its kept people in person order.
  for s, recs in _all_records(release_build).items():
    for r in sorted(recs, key=lambda r: int(r['person'])):
      release.setdefault((s, r['image_id'].decode()), []).append(r)
  seen = set()
  for split, records in _all_records(pre_build).items():
    for r in records:
      index = int(r['id']) - CODE[split] * 10**9
      row = rows[(split, index)]
      seen.add((split, index))
      assert r['image_id'].decode() == f'{row["Folder"]}/{row["Filename"]}'
      np.testing.assert_array_equal(r['context'], _pil_resize(arrays[(split, 'context')][index], 112))
      np.testing.assert_array_equal(r['body'], _pil_resize(arrays[(split, 'body')][index], 64))
      np.testing.assert_array_equal(r['categories'], _multi_hot(ast.literal_eval(row['Categorical_Labels'])))
      np.testing.assert_array_equal(r['categories'], arrays[(split, 'cat')][index])
      np.testing.assert_allclose(r['vad'], (arrays[(split, 'cont')][index] - 1) / 9, atol=1e-7)
      w, h = ast.literal_eval(row['Image Size'])
      x1, y1, x2, y2 = ast.literal_eval(row['BBox'])
      np.testing.assert_allclose(r['bbox'], [x1 / w, y1 / h, x2 / w, y2 / h], atol=1e-7)
      assert (r['gender'], r['age']) == (GENDER[row['Gender']], AGE[row['Age']])
      # emotic_pre's person = rank among the image's kept people (test image 77: 0 here, 2 there).
      same = release[(split, r['image_id'].decode())][int(r['person'])]
      for k in ('categories', 'vad', 'gender', 'age'):
        np.testing.assert_array_equal(r[k], same[k], err_msg=k)
      np.testing.assert_allclose(r['bbox'], same['bbox'], atol=1 / 40)  # mat2py truncates to int.
  assert seen == set(rows) and len(seen) == sum(EXPECTED_SPLITS.values())


def test_pre_arrays_pass_through_at_their_size():
  data = eb.read_pre(eb.detect_layout(LAYOUTS['pre']))
  stored = np.load(LAYOUTS['pre'] / 'val_context_arr.npy')
  body = np.load(LAYOUTS['pre'] / 'val_body_arr.npy')
  for row in data['validation'].rows:
    key, ex = eb.make_pre_example(row, data['validation'], 'validation', 24, 16)
    assert key == 10**9 + row.index
    np.testing.assert_array_equal(ex['context'], stored[row.index])
    np.testing.assert_array_equal(ex['body'], body[row.index])
  assert [r.person for r in data['validation'].rows] == [0, 0, 1]  # frame_0100 has two people.


def test_dummy_data_is_what_the_script_writes(tmp_path):
  want = testing.dummy_files_written_by(mdd.main, tmp_path, DUMMY)
  for rel in want:
    assert (tmp_path / rel).read_bytes() == (DUMMY / rel).read_bytes(), rel
  assert sum((DUMMY / rel).stat().st_size for rel in want) < 100_000


def test_mat_file_structure_as_the_release():
  """The dummy .mat read as public loaders read the release (struct arrays; squeezed 1 x 1 cells)."""
  m = scipy.io.loadmat(MAT, squeeze_me=True, struct_as_record=False)
  assert m['train'].shape == (4,) and m['train'][0].image_size.n_col == 64
  assert isinstance(m['train'][0].person, scipy.io.matlab.mat_struct)  # One person: a struct.
  assert m['train'][1].person[0].annotations_categories.categories == 'Peace'
  val = m['val'][0].person
  assert len(val.annotations_categories) == 3 and list(val.combined_categories) == ['Engagement',
                                                                                    'Happiness']
  assert val.combined_continuous.arousal == 5.0
  raw = scipy.io.loadmat(MAT)  # mat2py's indexing: image[4][0][person][k].
  assert raw['train'][0][1][4][0][1][3][0] == 'Male'


def test_sources_get_builder_and_fingerprint(tmp_path):
  from fer_jax.data import sources  # pylint: disable=g-import-not-at-top
  builder = sources.get_builder('emotic/c112_b64', data_dir=str(tmp_path),
                                manual_dir=str(LAYOUTS['pre']))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == EXPECTED_SPLITS
  assert (pathlib.Path(builder.data_dir) / sources.FINGERPRINT_FILE).is_file()


# ----------------------------------------------------------- layouts ----


def test_layout_detection(tmp_path):
  lay = eb.detect_layout(LAYOUTS['release'])
  assert lay.kind == 'release' and list(lay.sources) == ['annotations']
  lay = eb.detect_layout(LAYOUTS['pre'])
  assert lay.kind == 'pre' and list(lay.sources) == ['train', 'validation', 'test']
  # Tandon's data dir: Annotations/, emotic/ and emotic_pre/ side by side -> the release, unless 'pre'.
  both = tmp_path / 'both'
  shutil.copytree(LAYOUTS['release'], both)
  shutil.copytree(LAYOUTS['pre'], both / 'emotic_pre')
  assert eb.detect_layout(both).kind == 'release'
  lay = eb.detect_layout(both, 'pre')
  assert lay.kind == 'pre' and lay.sources['test'] == both / 'emotic_pre'
  builder = _build(tmp_path / 'data', eb.EmoticConfig(name='pre_only', context_size=24, body_size=16,
                                                      layout='pre'), both)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == EXPECTED_SPLITS
  # One CSV only: only its split.
  (both / 'emotic_pre' / 'train.csv').unlink()
  (both / 'emotic_pre' / 'val.csv').unlink()
  assert list(eb.detect_layout(both, 'pre').sources) == ['test']
  # The annotations without the images.
  shutil.rmtree(both / 'emotic')
  with pytest.raises(FileNotFoundError, match=r'image folder .*emotic; expected emotic/<folder>'):
    eb.detect_layout(both)
  with pytest.raises(FileNotFoundError, match=r'No EMOTIC files \(the release\) found'):
    eb.detect_layout(tmp_path / 'both' / 'emotic_pre', 'release')


def test_missing_manual_dir_lists_expected_paths(tmp_path):
  builder = eb.Builder(config='c224_b128', data_dir=tmp_path / 'data')
  with pytest.raises(AssertionError, match='does not exist or is empty'):
    testing.prepare(builder, tmp_path / 'missing')
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'notes.txt').write_text('not the data')
  with pytest.raises(FileNotFoundError, match='No EMOTIC files') as e:
    testing.prepare(builder, manual)
  for needle in ('Annotations/Annotations.mat', 'emotic/<folder>/<filename>', 'train.csv',
                 '<split>_context_arr.npy', 'emotic_pre', 'sunai.uoc.edu/emotic'):
    assert needle in str(e.value), needle
  with pytest.raises(FileNotFoundError, match='does not exist'):
    eb.detect_layout(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match="layout must be 'auto', 'release' or 'pre', got 'mat'"):
    eb.detect_layout(manual, 'mat')


# ------------------------------------------------- malformed release ----


def _write_release(root, release):
  mdd.write(mdd.release_files(release), root)
  return root / 'Annotations' / 'Annotations.mat'


def _set(release, split, image, person, **change):
  release[split][image]['people'][person].update(change)


_TRAIN1 = 'train[1] (framesdb/images/frame_0001.jpg), person 1'
_VAL1 = 'val[1] (framesdb/images/frame_0100.jpg), person 1'


@pytest.mark.parametrize('edit,entry,pattern', [
    (lambda r: _set(r, 'train', 1, 1, categories=['Peace', 3]), _TRAIN1,
     r"annotations_categories.categories holds 3, expected category names \(strings\)"),
    (lambda r: _set(r, 'train', 1, 1, categories=['Peace', 'Happyness']), _TRAIN1,
     r"unknown EMOTIC category 'Happyness'; expected one of Affection, Anger, .*Yearning"),
    (lambda r: _set(r, 'val', 1, 1, combined_categories=['Fear', 'Joy']), _VAL1,
     r"unknown EMOTIC category 'Joy'"),
    (lambda r: _set(r, 'train', 1, 1, box=(40, 5, 30, 38)), _TRAIN1,
     r'body box \(40.0, 5.0, 30.0, 38.0\) is inverted or empty: expected x1 < x2 and y1 < y2'),
    (lambda r: _set(r, 'train', 1, 1, box=(80, 5, 90, 38)), _TRAIN1,
     r'body box \(80.0, 5.0, 90.0, 38.0\) lies outside the 72x40 image \(image_size n_col=72, n_row=40\)'),
    (lambda r: _set(r, 'val', 1, 1, box=(10, 60, 20, 70)), _VAL1, r'lies outside the 56x56 image'),
    (lambda r: _set(r, 'train', 1, 1, box=(1, 2, 3)), _TRAIN1, r'expected 4 finite numbers'),
    (lambda r: _set(r, 'train', 1, 1, vad=(0, 5, 5)), _TRAIN1,
     r'annotations_continuous: valence is 0.0, expected a number in \[1, 10\]'),
    (lambda r: _set(r, 'val', 1, 1, combined_vad=(5, 11, 5)), _VAL1,
     r'combined_continuous: arousal is 11.0, expected a number in \[1, 10\]'),
    (lambda r: _set(r, 'train', 1, 1, gender='Robot'), _TRAIN1,
     r"gender is 'Robot', expected one of Male, Female \(case-insensitive\) or unknown"),
    (lambda r: _set(r, 'val', 1, 1, age='Elder'), _VAL1, r"age is 'Elder', expected one of Kid, Teenager, Adult"),
    # A field left out of a struct array is missing for every person of the image: person 0 fails.
    (lambda r: _set(r, 'val', 1, 1, omit=['combined_categories']), _VAL1[:-1] + '0',
     r"person has no field 'combined_categories' \(it has body_bbox, annotations_categories, "
     r'annotations_continuous, combined_continuous, gender, age\)'),
    (lambda r: _set(r, 'train', 1, 1, omit=['annotations_continuous']), _TRAIN1[:-1] + '0',
     r"person has no field 'annotations_continuous'"),
    (lambda r: r['train'][2].update(annotated_size=(0, 48)), 'train[2] (emodb_small/images/pattern_0001.png)',
     r'image_size.n_col is 0.0, expected a positive integer'),
    (lambda r: r['train'][3].update(folder='../ade20k'), 'train[3]',
     r"folder is '../ade20k', expected a relative path"),
    (lambda r: r['test'].append(dict(r['test'][0])), 'test[2] (emodb_small/images/abc123def456.jpg)',
     r'image listed twice in test \(also test\[0\]\)'),
])
def test_malformed_release_names_file_and_entry(tmp_path, edit, entry, pattern):
  release = mdd.changed_release()
  edit(release)
  mat = _write_release(tmp_path, release)
  with pytest.raises(eb.EmoticFormatError) as e:
    eb.read_release(eb.detect_layout(tmp_path))
  assert str(e.value).startswith(f'{mat}, {entry}: '), str(e.value)
  assert re.search(pattern, str(e.value)), str(e.value)


def test_empty_category_strings_are_absent(tmp_path):
  """An empty MATLAB char in a category cell is no category: ('', 'Peace') -> Peace; ('',) -> left out."""
  release = mdd.changed_release()
  _set(release, 'train', 1, 0, categories=['', 'Peace'])
  _set(release, 'train', 1, 1, categories=[''])
  _write_release(tmp_path, release)
  images = eb.read_release(eb.detect_layout(tmp_path))['train']
  frame = [im for im in images if im.image_id == 'framesdb/images/frame_0001.jpg'][0]
  assert [p.person for p in frame.people] == [0]
  np.testing.assert_array_equal(np.flatnonzero(frame.people[0].categories), [18])


def test_unreadable_or_empty_mat(tmp_path):
  mat = _write_release(tmp_path, mdd.changed_release())
  mat.write_bytes(b'not a MAT file at all' * 10)
  with pytest.raises(eb.EmoticFormatError, match=re.escape(f'{mat}: cannot read as a MAT file')):
    eb.read_release(eb.detect_layout(tmp_path))
  scipy.io.savemat(mat, {'annotations': np.zeros(3)})
  with pytest.raises(eb.EmoticFormatError, match=r"holds the variables \['annotations'\], expected one or "
                     'more of train, val, test'):
    eb.read_release(eb.detect_layout(tmp_path))


def test_missing_unreadable_wrong_size_images_and_skip_list(tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(LAYOUTS['release'], manual)
  images = manual / 'emotic'
  # A missing image stops the build before any image is decoded, listing it.
  (images / 'framesdb/images/frame_0100.jpg').unlink()
  with pytest.raises(eb.EmoticFormatError, match=r'1 annotated image\(s\) missing') as e:
    eb.read_release(eb.detect_layout(manual))
  assert 'framesdb/images/frame_0100.jpg' in str(e.value) and 'skip_images.txt' in str(e.value)
  # An undecodable image and one whose size is not image_size: listed after the split is read through.
  shutil.copy(LAYOUTS['release'] / 'emotic/framesdb/images/frame_0100.jpg', images / 'framesdb/images')
  (images / 'mscoco/images/COCO_train2014_000000000009.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a JPEG')
  Image.new('RGB', (50, 41)).save(images / 'ade20k/images/ADE_train_00000001.jpg', format='JPEG')
  with pytest.raises(eb.EmoticFormatError, match=r'2 image\(s\) could not be used') as e:
    _build(tmp_path / 'data', 'c112_b64', manual)
  msg = str(e.value)
  assert f'{images / "mscoco/images/COCO_train2014_000000000009.jpg"}: cannot decode image' in msg
  assert (f'{images / "ade20k/images/ADE_train_00000001.jpg"}: image is 50x41 (width x height), the '
          'annotation says 50x40 (image_size.n_col x n_row; ' in msg)
  assert f'{MAT.name}, train[3] (ade20k/images/ADE_train_00000001.jpg))' in msg
  # Listed in skip_images.txt, they are left out.
  (manual / 'skip_images.txt').write_text('# broken\nmscoco/images/COCO_train2014_000000000009.jpg\n\n'
                                          'ade20k/images/ADE_train_00000001.jpg  # resized\n')
  builder = _build(tmp_path / 'data2', 'c112_b64', manual)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == dict(EXPECTED_SPLITS, train=3)


# -------------------------------------------------- malformed emotic_pre ----


def _copy_pre(tmp_path):
  root = tmp_path / 'pre'
  shutil.copytree(LAYOUTS['pre'], root)
  return root


def _edit_csv(path, line, column, value):
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  if column is None:
    rows[line - 1] = rows[line - 1] + [value]
  else:
    rows[line - 1][rows[0].index(column)] = value
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows(rows)


@pytest.mark.parametrize('column,value,entry,pattern', [
    ('BBox', 'oops', 'line 3 (Index 1)', r"BBox is 'oops', expected \[x1, y1, x2, y2\]: 4 numbers"),
    ('BBox', '[0, 2, 30]', 'line 3 (Index 1)', r'BBox is .*expected \[x1, y1, x2, y2\]'),
    ('BBox', '[30, 2, 0, 40]', 'line 3 (Index 1)', r'BBox \[30, 2, 0, 40\] is inverted or empty'),
    ('BBox', '[0, 2, 80, 40]', 'line 3 (Index 1)', r'BBox \[0, 2, 80, 40\] runs outside the 72x40 image'),
    ('Image Size', '[72.0]', 'line 3 (Index 1)', r"Image Size is '\[72.0\]', expected \[width, height\]"),
    ('Image Size', '[72.5, 40]', 'line 3 (Index 1)', r'expected \[width, height\]: 2 positive integers'),
    ('Categorical_Labels', "['Peace', 'Joy']", 'line 3 (Index 1)', r"unknown EMOTIC category 'Joy'"),
    ('Categorical_Labels', 'Peace', 'line 3 (Index 1)', r"Categorical_Labels is 'Peace', expected a list"),
    ('Categorical_Labels', '[]', 'line 3 (Index 1)', r'Categorical_Labels is empty'),
    ('Categorical_Labels', "__import__('os').getcwd()", 'line 3 (Index 1)', r'expected a list of category'),
    ('Continuous_Labels', '[10.0, 1.0]', 'line 3 (Index 1)', r'expected \[valence, arousal, dominance\]'),
    ('Continuous_Labels', '[10.5, 1.0, 5.0]', 'line 3 (Index 1)', r'valence is 10.5, expected a number in'),
    ('Gender', 'Robot', 'line 3 (Index 1)', r"gender is 'Robot'"),
    ('Folder', '/abs/images', 'line 3 (Index 1)', r"Folder is '/abs/images', expected a relative path"),
    ('Index', '7', 'line 3', r"Index is '7', expected 1 \(rows numbered from 0"),
    (None, 'extra', 'line 3', r'10 columns, expected 9 \(Index, Folder, Filename, Image Size'),
])
def test_malformed_csv_names_file_line_and_index(tmp_path, column, value, entry, pattern):
  root = _copy_pre(tmp_path)
  path = root / 'train.csv'
  _edit_csv(path, 3, column, value)
  with pytest.raises(eb.EmoticFormatError) as e:
    eb.read_pre(eb.detect_layout(root))
  assert str(e.value).startswith(f'{path}, {entry}: '), str(e.value)
  assert re.search(pattern, str(e.value)), str(e.value)


def test_csv_header_checked(tmp_path):
  root = _copy_pre(tmp_path)
  _edit_csv(root / 'val.csv', 1, 'BBox', 'Box')
  with pytest.raises(eb.EmoticFormatError, match=r"val.csv, line 1: header is .*'Box'.*, expected "
                     "'Index,Folder,Filename,Image Size,BBox,"):
    eb.read_pre(eb.detect_layout(root))


def _npy_edit(name, change):
  def edit(root):
    path = root / name
    if change == 'delete':
      path.unlink()
    elif change == 'pickle':
      np.save(path, np.array([{'x': 1}], dtype=object), allow_pickle=True)
    else:
      np.save(path, change(np.load(path)))
    return path
  return edit


def _flip_cat(a):
  a = a.copy()
  a[0, 0] = 1.0  # Row 0 (Engagement, Happiness) gains Affection.
  return a


def _bump_cont(a):
  a = a.copy()
  a[4, 0] += 1.0  # Row 4: (2, 2, 4) -> (3, 2, 4).
  return a


@pytest.mark.parametrize('edit,pattern', [
    (_npy_edit('train_context_arr.npy', lambda a: a[:4]),
     r'holds uint8 \(4, 24, 24, 3\), expected uint8 \(5, S, S, 3\) \(S = 224 from mat2py\) for the 5 rows'),
    (_npy_edit('train_body_arr.npy', lambda a: a.astype(np.float32)),
     r'holds float32 \(5, 16, 16, 3\), expected uint8 \(5, S, S, 3\) \(S = 128'),
    (_npy_edit('train_context_arr.npy', lambda a: a[:, :, :20]), r'holds uint8 \(5, 24, 20, 3\)'),
    (_npy_edit('train_cat_arr.npy', lambda a: a[:, :25]), r'holds float64 \(5, 25\), expected numbers \(5, 26\)'),
    (_npy_edit('train_cont_arr.npy', lambda a: a[:, :2]), r'holds float64 \(5, 2\), expected numbers \(5, 3\)'),
    (_npy_edit('train_cat_arr.npy', _flip_cat),
     r"row 0: row 0 is .*\(categories \['Affection', 'Engagement', 'Happiness'\]\), expected the "
     r"multi-hot of \['Engagement', 'Happiness'\] \(Categorical_Labels of .*train.csv, Index 0\)"),
    (_npy_edit('train_cont_arr.npy', _bump_cont),
     r'row 4: row 4 is \[3.0, 2.0, 4.0\], expected \[2.0, 2.0, 4.0\] \(Continuous_Labels of'),
    (_npy_edit('train_body_arr.npy', 'delete'), r"file is missing \(expected beside the split's CSV\)"),
    (_npy_edit('train_cat_arr.npy', 'pickle'), r'cannot read as .npy without pickle'),
])
def test_npy_problems_name_the_file(tmp_path, edit, pattern):
  root = _copy_pre(tmp_path)
  path = edit(root)
  with pytest.raises(eb.EmoticFormatError) as e:
    eb.read_pre(eb.detect_layout(root))
  assert str(e.value).startswith(f'{path}'), str(e.value)
  assert re.search(pattern, str(e.value)), str(e.value)


# ------------------------------------------------- fer_jax.data.emotic ----


def test_label_helpers():
  v = emotic.categories_to_multi_hot(['Yearning', 'Affection', 'Affection'])
  assert v.dtype == np.float32 and np.flatnonzero(v).tolist() == [0, 25] and v.sum() == 2
  assert emotic.multi_hot_to_categories(v) == ('Affection', 'Yearning')
  with pytest.raises(ValueError, match=r"unknown EMOTIC category 'happiness'"):
    emotic.categories_to_multi_hot(['happiness'])  # Exact spelling.
  with pytest.raises(ValueError, match=r'unknown EMOTIC category 3'):
    emotic.categories_to_multi_hot([3])
  np.testing.assert_allclose(emotic.scale_vad([1, 10, 5.5]), [0, 1, 0.5], atol=1e-7)
  np.testing.assert_allclose(emotic.unscale_vad(emotic.scale_vad([2, 7.25, 9])), [2, 7.25, 9], atol=1e-5)
  for bad, pattern in (([1, 2], r'expected 3 values'), ([0.5, 2, 3], r'valence is 0.5'),
                       ([1, float('nan'), 3], r'arousal is nan'), ([1, 2, 10.01], r'dominance is 10.01')):
    with pytest.raises(ValueError, match=pattern):
      emotic.scale_vad(bad)
  assert [emotic.gender_code(s) for s in ('Male', 'female', ' FEMALE ', '', None, 'NA', 'Unknown')] == [
      0, 1, 1, -1, -1, -1, -1]
  assert [emotic.age_code(s) for s in ('Kid', 'teenager', 'Adult', 'n/a')] == [0, 1, 2, -1]
  with pytest.raises(ValueError, match=r"gender is 3, expected a string"):
    emotic.gender_code(3)


def test_box_helpers():
  assert emotic.clamp_box([-3, 4.5, 50, 20], 40, 30) == (0.0, 4.5, 40.0, 20.0)
  assert emotic.crop_pixels((0.0, 4.5, 39.2, 20.0), 40, 30) == (0, 4, 40, 20)
  assert emotic.crop_pixels((10.0, 10.0, 10.25, 10.5), 40, 30) == (10, 10, 11, 11)
  for box, pattern in (([5, 5, 5, 9], 'inverted or empty'), ([9, 5, 4, 9], 'inverted or empty'),
                       ([41, 5, 60, 9], r'lies outside the 40x30 image'),
                       ([-9, 5, -1, 9], 'lies outside'), ([1, 2, 3], '4 finite numbers'),
                       ([1, 2, 3, float('inf')], '4 finite numbers'), (['a', 1, 2, 3], 'not 4 numbers')):
    with pytest.raises(ValueError, match=pattern):
      emotic.clamp_box(box, 40, 30)
  image = np.arange(30 * 40 * 3, dtype=np.uint32).reshape(30, 40, 3).astype(np.uint8)
  np.testing.assert_array_equal(emotic.crop_body(image, (2.0, 3.5, 7.0, 9.0)), image[3:9, 2:7])
  np.testing.assert_allclose(emotic.normalise_box((2, 3, 40, 30), 40, 30), [0.05, 0.1, 1, 1])
  context, body, bbox = emotic.context_and_body(image, (-4, 3, 20, 31), 16, 8)
  np.testing.assert_array_equal(context, _pil_resize(image, 16))
  np.testing.assert_array_equal(body, _pil_resize(image[3:30, 0:20], 8))
  np.testing.assert_allclose(bbox, [0, 0.1, 0.5, 1.0])
  assert emotic.resize(image[:8, :8], 8) is not None and emotic.resize(image, 30).shape == (30, 30, 3)


def test_emotic_module_needs_no_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; import fer_jax.data.emotic as e; e.context_and_body(__import__("numpy").zeros('
          '(4, 6, 3), "uint8"), (1, 1, 3, 3), 8, 4); print(sorted(m for m in ("tensorflow", '
          '"tensorflow_datasets", "jax") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]', out.stdout + out.stderr


@pytest.mark.parametrize('kwargs,pattern', [
    (dict(context_size=0), r'context_size must be a positive int, got 0'),
    (dict(body_size=12.0), r'body_size must be a positive int, got 12.0'),
    (dict(layout='mat'), r"layout must be 'auto', 'release' or 'pre', got 'mat'"),
])
def test_config_validation(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    eb.EmoticConfig(name='bad', **kwargs)


def test_manual_download_instructions():
  text = eb.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  for needle in ('sunai.uoc.edu/emotic', 'Annotations/Annotations.mat', 'emotic/mscoco/images',
                 'emotic/ade20k/images', 'mat2py.py --generate_npy', 'train_context_arr.npy (N, 224, 224, 3)',
                 'train_body_arr.npy (N, 128, 128, 3)', 'emotic_pre', '--config.dataset.manual_dir',
                 'c224_b128', 'skip_images.txt', '~/tensorflow_datasets/downloads/manual/'):
    assert needle in text, needle


# ------------------------------- tfds.testing.DatasetBuilderTestCase ----
_HARNESS = testing.tfds_harness()


def test_tfds_dataset_builder_test_case_available():
  testing.skip_without_harness(_HARNESS)


if _HARNESS[0] is not None:

  class EmoticReleaseTfdsTest(_HARNESS[0]):
    DATASET_CLASS = eb.Builder
    EXAMPLE_DIR = str(LAYOUTS['release'])
    BUILDER_CONFIG_NAMES_TO_TEST = ['c112_b64']
    SPLITS = EXPECTED_SPLITS
