"""Tests of the fer2013 builder on FAKE dummy data (see make_dummy_data.py)."""

import csv
import gzip
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import testing
from tfds_builders.fer2013 import fer2013_dataset_builder as fb
from tfds_builders.fer2013 import make_dummy_data

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
NO_PRIVATE = DUMMY / 'no_private_test'

# FER+ labels of the 18 dummy rows, worked out by hand from the votes in
# make_dummy_data.ROWS (-1 = dropped). E.g. row 0 (4,0,0,1,3,2,0,0,0,0): the
# single sadness vote is removed, 4 of the 9 left is not a majority -> -1;
# row 11 (5,1,1,1,1,1,...): the five single votes are removed -> neutral.
DUMMY_FERPLUS = {
    0: -1, 1: 1, 2: -1, 3: -1, 4: 7, 5: -1, 6: -1, 7: -1, 8: 3, 9: 6, 10: -1,
    11: 0, 12: -1, 13: 4, 14: 2, 15: 5, 16: 0, 17: -1}
SPLIT_OF_USAGE = {'Training': 'train', 'PublicTest': 'validation',
                  'PrivateTest': 'test'}


# (config, manual dir) -> exact split counts of the dummy data.
EXPECTED_SPLITS = {
    ('fer2013', 'csv'): {'train': 11, 'validation': 4, 'test': 3},
    ('ferplus', 'csv'): {'train': 4, 'validation': 3, 'test': 2},
    ('fer2013', 'gz'): {'train': 11, 'validation': 4},  # PrivateTest withheld.
    ('ferplus', 'gz'): {'train': 4, 'validation': 3},
}
MANUAL_DIRS = {'csv': DUMMY, 'gz': NO_PRIVATE}


def _build(data_dir, config, manual_dir):
  return testing.build_array_record(fb.Builder, data_dir, config, manual_dir)


@pytest.fixture(scope='module', params=sorted(EXPECTED_SPLITS),
                ids=lambda p: '-'.join(p))
def built(request, tmp_path_factory):
  """Builds (config, dummy dir) once per module into array_record files."""
  config, kind = request.param
  data_dir = tmp_path_factory.mktemp(f'{config}_{kind}')
  builder = _build(data_dir, config, MANUAL_DIRS[kind])
  return config, kind, data_dir, builder


# -------------- array_record equivalents of DatasetBuilderTestCase checks ----


def test_registered_and_default_config():
  assert tfds.builder_cls('fer2013') is fb.Builder  # Registered on import.
  assert fb.Builder.name == 'fer2013'
  assert fb.Builder.DEFAULT_BUILDER_CONFIG_NAME == 'fer2013'
  assert [c.name for c in fb.Builder.BUILDER_CONFIGS] == ['fer2013', 'ferplus']
  assert str(fb.Builder.VERSION) == '1.0.0'
  assert '1.0.0' in fb.Builder.RELEASE_NOTES


def test_splits_counts_and_reload(built):
  config, kind, data_dir, builder = built
  expected = EXPECTED_SPLITS[(config, kind)]
  assert builder.info.file_format.value == 'array_record'
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == expected
  assert builder.info.splits.total_num_examples == sum(expected.values())
  # Reload from disk (new builder, by registered name) and read every split.
  reloaded = tfds.builder(f'fer2013/{config}', data_dir=data_dir)
  counts = {k: v.num_examples for k, v in reloaded.info.splits.items()}
  assert counts == expected
  seen = []
  for split, n in expected.items():
    source = tfds.data_source(f'fer2013/{config}', split=split,
                              data_dir=data_dir)
    assert len(source) == n
    seen.extend(source[i]['index'] for i in range(n))
  assert len(seen) == len(set(seen))  # No example in two splits.


def test_info(built):
  config, _, _, builder = built
  info = builder.info
  assert info.supervised_keys == ('image', 'label')
  assert info.features['image'].shape == (48, 48, 1)
  assert info.features['image'].np_dtype == np.uint8
  assert 'Goodfellow' in info.citation
  assert 'FER2013' in info.description
  assert builder.builder_config.description not in info.description
  if config == 'fer2013':
    assert set(info.features) == {'image', 'label', 'index'}
    assert info.features['label'].names == list(fb.FER2013_LABEL_NAMES)
  else:
    assert set(info.features) == {'image', 'label', 'index', 'votes',
                                  'fer2013_label'}
    assert info.features['label'].names == list(fb.FERPLUS_LABEL_NAMES)
    assert info.features['votes'].shape == (10,)
    assert 'Barsoum' in info.citation


# ------------------------------- tfds.testing.DatasetBuilderTestCase ----
# TFDS's own harness on the default tfrecord format (see
# tfds_builders.testing.tfds_harness).
_HARNESS = testing.tfds_harness()


def test_tfds_dataset_builder_test_case_available():
  testing.skip_without_harness(_HARNESS)


if _HARNESS[0] is not None:

  class Fer2013TfdsTest(_HARNESS[0]):
    DATASET_CLASS = fb.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['fer2013']
    SPLITS = EXPECTED_SPLITS[('fer2013', 'csv')]

  class FerPlusTfdsTest(_HARNESS[0]):
    DATASET_CLASS = fb.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['ferplus']
    SPLITS = EXPECTED_SPLITS[('ferplus', 'csv')]

  class Fer2013NoPrivateGzTfdsTest(_HARNESS[0]):
    DATASET_CLASS = fb.Builder
    EXAMPLE_DIR = str(NO_PRIVATE)
    BUILDER_CONFIG_NAMES_TO_TEST = ['fer2013']
    SPLITS = EXPECTED_SPLITS[('fer2013', 'gz')]

  class FerPlusNoPrivateGzTfdsTest(_HARNESS[0]):
    DATASET_CLASS = fb.Builder
    EXAMPLE_DIR = str(NO_PRIVATE)
    BUILDER_CONFIG_NAMES_TO_TEST = ['ferplus']
    SPLITS = EXPECTED_SPLITS[('ferplus', 'gz')]


# ------------------------------------------------ independent references ----


def _read_reference(path):
  """Independent read of a FER2013 CSV with the csv module + NumPy."""
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'rt', newline='') as f:
    rows = list(csv.reader(f))[1:]
  return [(i, r[2], int(r[0]),
           np.array([int(p) for p in r[1].split()],
                    np.uint8).reshape(48, 48, 1))
          for i, r in enumerate(rows)]


def _read_votes(path):
  with open(path, newline='') as f:
    return [(r[0], r[1], [int(v) for v in r[2:]])
            for r in list(csv.reader(f))[1:]]


def test_records_equal_independent_reference(built):
  """Every stored record equals a csv-module read + hand-made FER+ labels."""
  config, kind, data_dir, builder = built
  ref = _read_reference(DUMMY / 'fer2013.csv')
  votes = _read_votes(DUMMY / 'fer2013new.csv')
  if kind == 'gz':
    ref = [r for r in ref if r[1] != 'PrivateTest']
  if config == 'ferplus':
    ref = [r for r in ref if DUMMY_FERPLUS[r[0]] >= 0]
  assert set(builder.info.splits) == {SPLIT_OF_USAGE[r[1]] for r in ref}
  for split in builder.info.splits:
    source = tfds.data_source(f'fer2013/{config}', split=split,
                              data_dir=data_dir)
    got = sorted((source[i] for i in range(len(source))),
                 key=lambda r: r['index'])
    want = [r for r in ref if SPLIT_OF_USAGE[r[1]] == split]
    assert [g['index'] for g in got] == [w[0] for w in want]
    for g, (index, _, fer_label, image) in zip(got, want):
      assert g['image'].dtype == np.uint8
      np.testing.assert_array_equal(g['image'], image)
      if config == 'fer2013':
        assert g['label'] == fer_label
      else:
        assert g['label'] == DUMMY_FERPLUS[index]
        assert g['fer2013_label'] == fer_label
        np.testing.assert_array_equal(g['votes'], votes[index][2])
        assert votes[index][1]  # Rows without an image name are dropped.


def test_dummy_data_is_what_the_script_writes(tmp_path):
  make_dummy_data.main(tmp_path)
  for name in ('fer2013.csv', 'fer2013new.csv',
               'no_private_test/fer2013.csv.gz',
               'no_private_test/fer2013new.csv'):
    assert (tmp_path / name).read_bytes() == (DUMMY / name).read_bytes(), name


# ------------------------------------------------------- parser: errors ----

_HEADER = 'emotion,pixels,Usage'


def _pixels(n=2304, value='7'):
  return ' '.join([value] * n)


def _good_row(label=3, usage='Training'):
  return f'{label},{_pixels()},{usage}'


def _write(tmp_path, lines, name='fer2013.csv'):
  path = tmp_path / name
  data = ''.join(line + '\n' for line in lines).encode()
  if name.endswith('.gz'):
    path.write_bytes(gzip.compress(data, mtime=0))
  else:
    path.write_bytes(data)
  return path


BAD_ROWS = {
    # kind: (bad row, regex the message must contain)
    'too_few_pixels': (f'3,{_pixels(2303)},Training',
                       r'pixels has 2303 values.*expected 2304'),
    'too_many_pixels': (f'3,{_pixels(2305)},Training',
                        r'pixels has 2305 values.*expected 2304'),
    'float_pixel': (f'3,{_pixels(2303)} 12.5,Training',
                    r"pixel 2303 is '12\.5', expected an integer in 0\.\.255"),
    'text_pixel': (f'3,abc {_pixels(2303)},Training',
                   r"pixel 0 is 'abc', expected an integer in 0\.\.255"),
    'negative_pixel': (f'3,{_pixels(100)} -1 {_pixels(2203)},Training',
                       r"pixel 100 is '-1', expected an integer in 0\.\.255"),
    'pixel_256': (f'3,{_pixels(5)} 256 {_pixels(2298)},Training',
                  r'pixel 5 is 256, expected an integer in 0\.\.255'),
    'huge_pixel': (f'3,{_pixels(2303)} 99999999999999999999999,Training',
                   r'pixel 2303 is 99999999999999999999999, expected'),
    'tab_separator': (f'3,{_pixels(2302)} 1\t2,Training',
                      r'pixels has 2303 values'),
    'empty_pixels': ('3,,Training', r'pixels has 0 values.*expected 2304'),
    'label_7': (_good_row(label=7), r"bad emotion label '7', expected an "
                r'integer in 0\.\.6'),
    'label_negative': (_good_row(label=-1), r"bad emotion label '-1'"),
    'label_text': (_good_row(label='happy'), r"bad emotion label 'happy'"),
    'label_empty': (_good_row(label=''), r"bad emotion label ''"),
    'usage_unknown': (_good_row(usage='Test'), r"unknown Usage 'Test', "
                      r"expected one of \['Training', 'PublicTest', "
                      r"'PrivateTest'\]"),
    'usage_lowercase': (_good_row(usage='training'),
                        r"unknown Usage 'training'"),
    'extra_column': (_good_row() + ',x', r'4 columns.*expected 3'),
    'missing_column': (f'3,{_pixels()}', r'2 columns.*expected 3'),
    'blank_line': ('', r'0 columns.*expected 3'),
}


@pytest.mark.parametrize('kind', sorted(BAD_ROWS))
@pytest.mark.parametrize('name', ['fer2013.csv', 'fer2013.csv.gz'])
def test_malformed_row_names_file_line_and_value(tmp_path, kind, name):
  bad, pattern = BAD_ROWS[kind]
  # Bad row is data row 3 -> line 4 (header is line 1).
  path = _write(tmp_path, [_HEADER, _good_row(), _good_row(0), bad,
                           _good_row(6)], name)
  with pytest.raises(fb.CsvFormatError) as e:
    list(fb.iter_fer2013_rows(path))
  assert e.value.line == 4
  assert str(path) in str(e.value)
  assert re.search(r', line 4: ' + pattern, str(e.value)), str(e.value)


@pytest.mark.parametrize('header', [
    'emotion,pixels', 'emotion,pixels,Usage,extra', 'label,pixels,Usage',
    'pixels,emotion,Usage', _good_row()])
def test_bad_header(tmp_path, header):
  path = _write(tmp_path, [header, _good_row()])
  with pytest.raises(fb.CsvFormatError, match=r', line 1: bad header .*'
                     r"expected 'emotion,pixels,Usage'") as e:
    fb.read_fer2013_csv(path)
  assert e.value.line == 1


def test_header_with_bom_and_crlf_is_accepted(tmp_path):
  path = tmp_path / 'fer2013.csv'
  path.write_bytes(('\ufeff' + _HEADER + '\r\n' + _good_row(5) + '\r\n')
                   .encode('utf-8'))
  (row,) = list(fb.iter_fer2013_rows(path))
  assert (row.index, row.line, row.label, row.usage) == (0, 2, 5, 'Training')
  assert row.image.shape == (48, 48, 1) and (row.image == 7).all()


def test_empty_and_header_only_files(tmp_path):
  with pytest.raises(fb.CsvFormatError, match=r'line 1: empty file'):
    fb.read_fer2013_csv(_write(tmp_path, [], 'a.csv'))
  with pytest.raises(fb.CsvFormatError, match=r'line 2: no data rows'):
    fb.read_fer2013_csv(_write(tmp_path, [_HEADER], 'b.csv'))


def test_invalid_utf8_and_nul_give_exact_line(tmp_path):
  path = tmp_path / 'fer2013.csv'
  head = (_HEADER + '\n' + _good_row() + '\n').encode()
  path.write_bytes(head + b'3,7 \xff 7,Training\n' + _good_row().encode())
  with pytest.raises(fb.CsvFormatError, match=r', line 3: pixels has 3 '):
    fb.read_fer2013_csv(path)
  path.write_bytes(head + f'3,{_pixels(2303)} 1\x002,Training\n'.encode())
  with pytest.raises(fb.CsvFormatError,
                     match=r", line 3: pixel 2303 is '1\\x002', expected"):
    fb.read_fer2013_csv(path)
  path.write_bytes(head + b'\xff,' + _pixels().encode() + b',Training\n')
  with pytest.raises(fb.CsvFormatError,
                     match=r", line 3: bad emotion label '\ufffd'"):
    fb.read_fer2013_csv(path)


def test_corrupt_gzip_names_file(tmp_path):
  path = tmp_path / 'fer2013.csv.gz'
  path.write_bytes(gzip.compress(b'emotion,pixels,Usage\n0,1 2')[:-12])
  with pytest.raises(fb.CsvFormatError, match=re.escape(str(path))):
    fb.read_fer2013_csv(path)


def test_pixels_parse_row_major():
  values = np.arange(2304) % 256
  image = fb.parse_pixels(' '.join(map(str, values)))
  assert image.dtype == np.uint8 and image.shape == (48, 48, 1)
  # Row-major: pixel (r, c) is value 48 * r + c.
  assert image[1, 0, 0] == 48 and image[5, 7, 0] == (5 * 48 + 7) % 256
  np.testing.assert_array_equal(image.ravel(), values)
  # Extra spaces are tolerated; leading zeros are still integers.
  spaced = '  ' + '   '.join(['007'] + ['255'] * 2303) + ' '
  out = fb.parse_pixels(spaced)
  assert out[0, 0, 0] == 7 and out[47, 47, 0] == 255


def test_gz_and_plain_give_identical_records(tmp_path):
  data = (DUMMY / 'fer2013.csv').read_bytes()
  gz = tmp_path / 'fer2013.csv.gz'
  gz.write_bytes(gzip.compress(data))
  plain = fb.read_fer2013_csv(DUMMY / 'fer2013.csv')
  zipped = fb.read_fer2013_csv(gz)
  assert list(plain) == list(zipped) == ['Training', 'PublicTest',
                                         'PrivateTest']
  for usage in plain:
    for field in ('indices', 'labels', 'images'):
      np.testing.assert_array_equal(getattr(plain[usage], field),
                                    getattr(zipped[usage], field))
  # And both equal the independent csv-module read.
  ref = _read_reference(DUMMY / 'fer2013.csv')
  np.testing.assert_array_equal(
      plain['PublicTest'].images, np.stack([r[3] for r in ref[11:15]]))
  np.testing.assert_array_equal(plain['Training'].labels,
                                [r[2] for r in ref[:11]])
  # The committed no_private_test gz holds the same first 15 rows.
  withheld = fb.read_fer2013_csv(NO_PRIVATE / 'fer2013.csv.gz')
  assert list(withheld) == ['Training', 'PublicTest']
  np.testing.assert_array_equal(withheld['Training'].images,
                                plain['Training'].images)


def test_only_present_usages_become_splits(tmp_path):
  path = _write(tmp_path, [_HEADER, _good_row(1, 'PrivateTest'),
                           _good_row(2, 'Training'),
                           _good_row(3, 'PrivateTest')])
  data = fb.read_fer2013_csv(path)
  assert list(data) == ['Training', 'PrivateTest']
  np.testing.assert_array_equal(data['PrivateTest'].indices, [0, 2])
  np.testing.assert_array_equal(data['PrivateTest'].labels, [1, 3])
  np.testing.assert_array_equal(data['Training'].indices, [1])


def test_malformed_row_stops_the_build(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  _write(manual, [_HEADER, _good_row(), f'3,{_pixels(2303)},Training'])
  builder = fb.Builder(config='fer2013', data_dir=tmp_path / 'data')
  with pytest.raises(fb.CsvFormatError, match=r'line 3: pixels has 2303'):
    testing.prepare(builder, manual, file_format='array_record')


# ----------------------------------------------------------- manual files ----


def test_missing_files_list_every_expected_path(tmp_path):
  (tmp_path / 'unrelated.txt').write_text('x')
  with pytest.raises(FileNotFoundError) as e:
    fb.find_manual_files(tmp_path, ferplus=False)
  msg = str(e.value)
  assert str(tmp_path / 'fer2013.csv') in msg
  assert str(tmp_path / 'fer2013.csv.gz') in msg
  assert 'fer2013new.csv' not in msg.split('\n\n')[0]
  with pytest.raises(FileNotFoundError) as e:
    fb.find_manual_files(tmp_path, ferplus=True)
  for name in ('fer2013.csv', 'fer2013.csv.gz', 'fer2013new.csv'):
    assert str(tmp_path / name) in str(e.value)
  # FER2013 present but FER+ votes missing: still named.
  (tmp_path / 'fer2013.csv.gz').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match=r"\['ferplus'\]") as e:
    fb.find_manual_files(tmp_path, ferplus=True)
  assert str(tmp_path / 'fer2013new.csv') in str(e.value)
  assert fb.find_manual_files(tmp_path, ferplus=False) == {
      'fer2013': tmp_path / 'fer2013.csv.gz'}
  (tmp_path / 'fer2013.csv').write_bytes(b'')
  assert fb.find_manual_files(tmp_path, ferplus=False) == {
      'fer2013': tmp_path / 'fer2013.csv'}


def test_build_without_files_raises_listing_paths(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'readme.txt').write_text('not the data')
  builder = fb.Builder(config='ferplus', data_dir=tmp_path / 'data')
  with pytest.raises(FileNotFoundError) as e:
    testing.prepare(builder, manual)
  for name in ('fer2013.csv', 'fer2013.csv.gz', 'fer2013new.csv'):
    assert str(manual / name) in str(e.value)
  assert 'kaggle.com' in str(e.value)


def test_manual_download_instructions():
  text = fb.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  for needle in ('kaggle.com/c/challenges-in-representation-learning',
                 'fer2013.csv', 'fer2013.csv.gz',
                 '~/tensorflow_datasets/downloads/manual/', '--manual_dir',
                 'fer2013new.csv', 'github.com/microsoft/FERPlus'):
    assert needle in text, needle


# ------------------------------------------------------------ FER+ votes ----

# (votes: neutral, happiness, surprise, sadness, anger, disgust, fear,
#  contempt, unknown, NF) -> label; each worked out by hand.
VOTE_CASES = [
    ((10, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0),   # unanimous neutral
    ((0, 6, 1, 1, 0, 0, 0, 0, 2, 0), 1),    # 6 of 8 after outliers
    ((4, 0, 0, 1, 3, 2, 0, 0, 0, 0), -1),   # 4 of 9 after outliers
    ((5, 1, 1, 1, 1, 1, 0, 0, 0, 0), 0),    # 5 of 10 raw, 5 of 5 after
    ((5, 5, 0, 0, 0, 0, 0, 0, 0, 0), -1),   # tie: 5 is not > 10 / 2
    ((4, 2, 2, 0, 0, 0, 0, 0, 2, 0), -1),   # 4 of 10: below half
    ((3, 3, 0, 0, 0, 0, 0, 0, 0, 0), -1),   # 3 of 6: exactly half
    ((4, 3, 0, 0, 0, 0, 0, 0, 0, 0), 0),    # 4 of 7
    ((0, 0, 0, 0, 0, 0, 0, 0, 6, 4), -1),   # majority unknown
    ((0, 0, 0, 0, 0, 0, 0, 0, 3, 7), -1),   # majority not-a-face
    ((0, 0, 0, 0, 0, 0, 0, 6, 0, 4), 7),    # contempt 6 of 10
    ((0, 0, 0, 0, 0, 0, 5, 0, 1, 4), 6),    # fear: 5 of 9 (unknown 1 removed)
    ((0, 0, 0, 0, 0, 0, 4, 0, 2, 4), -1),   # 4 of 10
    ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1), -1),   # every vote removed
    ((0, 0, 0, 0, 0, 0, 0, 0, 0, 0), -1),   # no votes
    ((0, 0, 2, 0, 0, 0, 0, 0, 0, 1), 2),    # 2 of 2 (single NF removed)
    ((0, 0, 0, 2, 2, 1, 1, 1, 1, 1), -1),   # 2 of 4
    ((0, 0, 0, 3, 2, 1, 1, 1, 1, 1), 3),    # 3 of 5
    ((0, 0, 0, 0, 7, 3, 0, 0, 0, 0), 4),    # anger 7 of 10
    ((0, 0, 0, 0, 0, 8, 2, 0, 0, 0), 5),    # disgust 8 of 10
]


@pytest.mark.parametrize('votes,label', VOTE_CASES)
def test_ferplus_vote_rule_single(votes, label):
  assert fb.ferplus_majority_labels(np.array(votes)) == label


def test_ferplus_vote_rule_batched_and_validated():
  votes = np.array([v for v, _ in VOTE_CASES], dtype=np.int32)
  np.testing.assert_array_equal(fb.ferplus_majority_labels(votes),
                                [l for _, l in VOTE_CASES])
  with pytest.raises(ValueError, match=r'shape \(\.\.\., 10\), got \(3, 8\)'):
    fb.ferplus_majority_labels(np.zeros((3, 8), np.int64))
  with pytest.raises(ValueError, match='must be integers, got dtype float'):
    fb.ferplus_majority_labels(np.zeros((3, 10)))


_PLUS_HEADER = ('Usage,Image name,neutral,happiness,surprise,sadness,anger,'
                'disgust,fear,contempt,unknown,NF')


@pytest.mark.parametrize('bad,pattern', [
    ('Training,a.png,1,2,3,4,0,0,0,0,0', r'11 columns.*expected 12'),
    ('Training,a.png,1,2,3,4,0,0,0,0,0,0,0', r'13 columns.*expected 12'),
    ('Training,a.png,1,2,x,4,0,0,0,0,0,0',
     r"surprise votes is 'x', expected a non-negative integer"),
    ('Training,a.png,1,2,3,4,0,0,0,0,-1,0',
     r"unknown votes is '-1', expected a non-negative integer"),
    ('Training,a.png,1,2,3,4,0,0,0,0,0,1.5',
     r"NF votes is '1\.5', expected a non-negative integer"),
    ('Validation,a.png,1,2,3,4,0,0,0,0,0,0', r"unknown Usage 'Validation'"),
])
def test_ferplus_malformed_rows(tmp_path, bad, pattern):
  good = 'Training,b.png,10,0,0,0,0,0,0,0,0,0'
  path = _write(tmp_path, [_PLUS_HEADER, good, bad], 'fer2013new.csv')
  with pytest.raises(fb.CsvFormatError, match=r', line 3: ' + pattern):
    fb.read_ferplus_csv(path)


def test_ferplus_bad_header(tmp_path):
  path = _write(tmp_path, [_PLUS_HEADER.replace('NF', 'notface')],
                'fer2013new.csv')
  with pytest.raises(fb.CsvFormatError, match=r'line 1: bad header'):
    fb.read_ferplus_csv(path)


def test_align_ferplus_by_order_within_usage():
  fer = fb.read_fer2013_csv(NO_PRIVATE / 'fer2013.csv.gz')  # no PrivateTest
  plus = fb.read_ferplus_csv(DUMMY / 'fer2013new.csv')  # has PrivateTest
  out = fb.align_ferplus(fer, plus)
  assert list(out) == ['Training', 'PublicTest']
  np.testing.assert_array_equal(out['Training'].indices, [1, 4, 8, 9])
  np.testing.assert_array_equal(out['Training'].labels, [1, 7, 3, 6])
  np.testing.assert_array_equal(out['Training'].fer2013_labels, [1, 4, 1, 2])
  np.testing.assert_array_equal(out['PublicTest'].indices, [11, 13, 14])
  np.testing.assert_array_equal(out['PublicTest'].labels, [0, 4, 2])
  np.testing.assert_array_equal(out['PublicTest'].votes[1],
                                [0, 0, 0, 0, 9, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(out['PublicTest'].images[0],
                                fer['PublicTest'].images[0])


def test_align_ferplus_count_mismatch(tmp_path):
  fer = fb.read_fer2013_csv(DUMMY / 'fer2013.csv')
  lines = (DUMMY / 'fer2013new.csv').read_text().splitlines()
  # One PrivateTest row less.
  short = _write(tmp_path, lines[:-1], 'fer2013new.csv')
  with pytest.raises(ValueError, match=r"has 3 'PrivateTest' rows but .*"
                     r'fer2013new.csv has 2'):
    fb.align_ferplus(fer, fb.read_ferplus_csv(short), ferplus_path=short)
  only_train = _write(tmp_path, lines[:12], 'only_train.csv')
  with pytest.raises(ValueError, match=r"has 4 'PublicTest' rows but .* has 0"):
    fb.align_ferplus(fer, fb.read_ferplus_csv(only_train))
