"""The fer2013 TFDS builder on the real shared FER2013 / FER+ files.

The data live outside the project (`<root>/../shared/data/fer2013/`); these
tests skip when they are absent. Each config is built once per module into a
temporary directory (array_record) and compared with an independent read of the
CSVs (csv module + NumPy).
"""

import collections
import csv
import gzip
import pathlib
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders.fer2013 import fer2013_dataset_builder as fb

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data' / 'fer2013'
FER_CSV = DATA / 'fer2013.csv.gz'
FERPLUS_CSV = DATA / 'fer2013new.csv'

pytestmark = pytest.mark.skipif(
    not FER_CSV.exists(),
    reason=f'real FER2013 data not found at {FER_CSV} (shared data folder '
           'absent, e.g. an outside checkout)')
needs_ferplus = pytest.mark.skipif(
    not FERPLUS_CSV.exists(), reason=f'FER+ votes not found at {FERPLUS_CSV}')

SPLIT = {'Training': 'train', 'PublicTest': 'validation',
         'PrivateTest': 'test'}


# ------------------------------------------------- independent reference ----


@pytest.fixture(scope='module')
def reference():
  """Usage and label of every fer2013.csv row (csv module), and the pixel
  text of the first and last 50 rows of each Usage (the rest is not kept, to
  save memory).
  """
  usage, labels, pixels, first, last = [], [], {}, {}, {}
  with gzip.open(FER_CSV, 'rt', newline='') as f:
    reader = csv.reader(f)
    assert next(reader) == ['emotion', 'pixels', 'Usage']
    for i, (emotion, pixel_text, u) in enumerate(reader):
      if len(first.setdefault(u, [])) < 50:
        first[u].append((i, pixel_text))
      last.setdefault(u, collections.deque(maxlen=50)).append((i, pixel_text))
      usage.append(u)
      labels.append(int(emotion))
  for u in first:
    pixels.update(first[u])
    pixels.update(last[u])
  return np.array(usage), np.array(labels), pixels


def _image(pixel_text):
  return np.array([int(p) for p in pixel_text.split(' ')],
                  dtype=np.uint8).reshape(48, 48, 1)


def _reference_ferplus_keep(votes, names):
  """Independent NumPy FER+ majority rule: (keep mask, labels).

  Outlier votes (count 1) are removed; the top emotion must hold a strict
  majority (> 50%) of what remains, and must not be unknown / not-a-face.
  """
  v = votes.astype(np.float64)
  v[v < 2] = 0.0
  order = np.argsort(-v, axis=1, kind='stable')
  top = order[:, 0]
  share = v[np.arange(len(v)), top] / np.maximum(v.sum(axis=1), 1.0)
  keep = (share > 0.5) & (top < 8) & (np.char.str_len(names) > 0)
  return keep, top


# ------------------------------------------------------------------ builds ----

BUILD_SECONDS = {}


def _build_and_read(tmp_path_factory, config):
  data_dir = tmp_path_factory.mktemp(f'fer2013_real_{config}')
  start = time.perf_counter()
  builder = fb.Builder(config=config, data_dir=data_dir)
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=str(DATA)))
  BUILD_SECONDS[config] = time.perf_counter() - start
  print(f'\nfer2013/{config}: built in {BUILD_SECONDS[config]:.1f} s')
  assert builder.info.file_format.value == 'array_record'
  records = {}
  for split in builder.info.splits:
    source = tfds.data_source(f'fer2013/{config}', split=split,
                              data_dir=data_dir)
    records[split] = [source[i] for i in range(len(source))]
  return builder, records


@pytest.fixture(scope='module')
def built_fer2013(tmp_path_factory):
  return _build_and_read(tmp_path_factory, 'fer2013')


@pytest.fixture(scope='module')
def built_ferplus(tmp_path_factory):
  return _build_and_read(tmp_path_factory, 'ferplus')


# ------------------------------------------------------------------- tests ----


def test_fer2013_splits(built_fer2013, reference):
  builder, records = built_fer2013
  usage, _, _ = reference
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {'train': 28709, 'validation': 3589}  # PrivateTest withheld.
  assert 'test' not in builder.info.splits
  assert collections.Counter(usage) == {'Training': 28709, 'PublicTest': 3589}
  for split, recs in records.items():
    assert len(recs) == counts[split]


def test_fer2013_labels_and_images_equal_csv(built_fer2013, reference):
  _, records = built_fer2013
  usage, labels, pixels = reference
  for u, split in (('Training', 'train'), ('PublicTest', 'validation')):
    want_idx = np.flatnonzero(usage == u)
    by_index = {r['index']: r for r in records[split]}
    assert sorted(by_index) == want_idx.tolist()
    got_labels = np.array([r['label'] for r in records[split]])
    np.testing.assert_array_equal(np.bincount(got_labels, minlength=7),
                                  np.bincount(labels[want_idx], minlength=7))
    # Every record's label equals its CSV row's label.
    np.testing.assert_array_equal(
        [by_index[i]['label'] for i in want_idx], labels[want_idx])
    for i in (want_idx[0], want_idx[-1]):  # First / last row of the split.
      assert by_index[i]['image'].dtype == np.uint8
      np.testing.assert_array_equal(by_index[i]['image'], _image(pixels[i]))


@needs_ferplus
def test_ferplus_counts_and_labels_equal_numpy_rule(built_ferplus, reference):
  builder, records = built_ferplus
  usage, labels, pixels = reference
  with open(FERPLUS_CSV, newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0][:2] == ['Usage', 'Image name']
  plus_usage = np.array([r[0] for r in rows[1:]])
  names = np.array([r[1] for r in rows[1:]])
  votes = np.array([[int(x) for x in r[2:]] for r in rows[1:]])
  keep, top = _reference_ferplus_keep(votes, names)

  assert 'test' not in builder.info.splits
  for u, split in (('Training', 'train'), ('PublicTest', 'validation')):
    fer_idx = np.flatnonzero(usage == u)
    plus_rows = np.flatnonzero(plus_usage == u)
    assert len(fer_idx) == len(plus_rows)  # Aligned by order within Usage.
    kept = keep[plus_rows]
    assert builder.info.splits[split].num_examples == kept.sum()
    recs = {r['index']: r for r in records[split]}
    assert sorted(recs) == fer_idx[kept].tolist()
    got = np.array([recs[i]['label'] for i in fer_idx[kept]])
    np.testing.assert_array_equal(got, top[plus_rows][kept])
    np.testing.assert_array_equal(
        [recs[i]['fer2013_label'] for i in fer_idx[kept]],
        labels[fer_idx[kept]])
    for j in (0, -1):  # First / last kept row: image and raw votes.
      i = fer_idx[kept][j]
      np.testing.assert_array_equal(recs[i]['image'], _image(pixels[i]))
      np.testing.assert_array_equal(recs[i]['votes'], votes[plus_rows][kept][j])
  print(f"\nferplus kept: train {builder.info.splits['train'].num_examples}, "
        f"validation {builder.info.splits['validation'].num_examples}")

