"""Training samplers (fer_jax.data.samplers) against NumPy / closed-form references.

The source is an in-memory list of {'image', 'label', 'id'} records with imbalanced labels
(500 / 50 / 5). Statistical checks use binomial 4-sigma bounds.
"""

import pickle

import grain
import ml_collections
import numpy as np
import pytest

from fer_jax.data import pipeline, samplers
from fer_jax.registry import SAMPLERS

COUNTS = (500, 50, 5)


def _labels(counts=COUNTS, seed=0):
  return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def _source(labels):
  return [{"image": np.full((4, 4, 1), i % 256, np.uint8), "label": int(y), "id": i}
          for i, y in enumerate(labels)]


LABELS = _labels()
SOURCE = _source(LABELS)


def _build(name, seed=7, labels=LABELS, source=SOURCE, **kw):
  sampler = samplers.from_config(dict(name=name, **kw))
  return sampler.dataset(source, seed=seed, labels=labels if sampler.needs_labels else None)


def _ids(ds, start, stop):
  return np.array([ds[k]["id"] for k in range(start, stop)])


def _within_4_sigma(count, n, p):
  return abs(count - n * p) <= 4 * np.sqrt(n * p * (1 - p))


ALL = [("uniform", {}), ("class_balanced", {}), ("undersample", {}),
       ("class_subset", dict(classes=[2, 1], relabel=True)),
       ("class_subset", dict(classes=[0, 2], order="class_balanced"))]


def test_registry_and_needs_labels():
  assert {"uniform", "class_balanced", "undersample", "class_subset"} <= set(SAMPLERS.names())
  assert SAMPLERS.get("uniform").needs_labels is False
  for name in ("class_balanced", "undersample", "class_subset"):
    assert SAMPLERS.get(name).needs_labels is True
  assert isinstance(samplers.from_config(None), SAMPLERS.get("uniform"))
  assert isinstance(samplers.from_config("undersample"), SAMPLERS.get("undersample"))
  cfg = ml_collections.ConfigDict(dict(sampler=dict(name="class_subset", classes=[3, 5])))
  s = samplers.from_config(cfg.sampler)
  assert s.classes == (3, 5) and s.relabel is False and s.order == "uniform"
  hash(s)  # frozen, hashable options


# --------------------------------------------------------------------------------------- uniform ---

def test_uniform_is_the_pipeline_order_with_the_same_augmentation():
  """The pipeline reads the sampler's single-process stream, augmented by global index; on N processes
  process p reads block p of each global batch (process-count invariant batches)."""
  aug = pipeline.AugmentConfig(resize=6, crop=4, rotation=10.0, hflip=True, vflip=True)
  src = _source(_labels((20, 11, 6)))  # 37 examples
  ds = samplers.Uniform().dataset(src, seed=3, labels=None)
  ref = iter(ds.random_map(pipeline.TrainTransform(aug)).batch(8, drop_remainder=True)
             .to_iter_dataset(grain.ReadOptions(num_threads=1)))
  one = iter(pipeline.train_dataset(src, aug, batch_size=8, seed=3, num_threads=1))
  two = [iter(pipeline.train_dataset(src, aug, batch_size=4, seed=3, process_index=p, process_count=2,
                                     num_threads=1)) for p in range(2)]
  for _ in range(12):  # > 2 epochs
    want, a = next(ref), next(one)
    parts = [next(t) for t in two]
    for key in ("image", "label"):
      np.testing.assert_array_equal(a[key], want[key])
      np.testing.assert_array_equal(np.concatenate([q[key] for q in parts]), want[key])


def test_uniform_reshuffles_every_epoch():
  n = len(SOURCE)
  ds = _build("uniform")
  epochs = [_ids(ds, e * n, (e + 1) * n) for e in range(3)]
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


# -------------------------------------------------------------------------------- class_balanced ---

def test_class_balanced_frequencies():
  n = 30_000
  ds = _build("class_balanced", seed=11)
  ids = _ids(ds, 0, n)
  y = LABELS[ids]
  for c, count in enumerate(np.bincount(y, minlength=3)):
    assert _within_4_sigma(count, n, 1 / 3), (c, count)
  # Within the rarest class (5 examples) every member is equally likely.
  rare = ids[y == 2]
  members = np.flatnonzero(LABELS == 2)
  assert set(rare) == set(members)
  for m in members:
    assert _within_4_sigma(np.sum(rare == m), len(rare), 1 / 5)
  # Records are the source's, unmodified.
  assert all(ds[k] is SOURCE[ds[k]["id"]] for k in range(50))


def test_class_balanced_weights():
  n = 12_000
  ids = _ids(_build("class_balanced", seed=2, class_weights={0: 2.0, 1: 1.0, 2: 1.0}), 0, n)
  counts = np.bincount(LABELS[ids], minlength=3)
  for c, p in enumerate((0.5, 0.25, 0.25)):
    assert _within_4_sigma(counts[c], n, p), (c, counts)
  # A list indexed by label; weight 0 drops a class.
  ids = _ids(_build("class_balanced", class_weights=[1, 0, 1]), 0, 2000)
  assert set(LABELS[ids]) == {0, 2}


# ---------------------------------------------------------------------------------- undersample ---

def test_undersample_epochs():
  m, k = min(COUNTS), len(COUNTS)
  ds = _build("undersample", seed=5)
  epochs = [_ids(ds, e * m * k, (e + 1) * m * k) for e in range(300)]
  for ids in epochs:
    assert len(set(ids)) == m * k  # no duplicates within an epoch
    np.testing.assert_array_equal(np.bincount(LABELS[ids], minlength=k), [m] * k)
  assert len({tuple(np.sort(e)) for e in epochs[:10]}) == 10  # a fresh subset every epoch
  assert len({tuple(LABELS[e]) for e in epochs[:10]}) == 10  # classes mixed afresh every epoch
  assert len({tuple(e[LABELS[e] == 2]) for e in epochs[:10]}) > 1  # all of class 2, new order
  # Over 300 epochs each member of class 1 is chosen with probability 5 / 50 per epoch.
  chosen = np.concatenate(epochs)
  for i in np.flatnonzero(LABELS == 1):
    assert _within_4_sigma(np.sum(chosen == i), 300, m / COUNTS[1]), i
  # per_class option.
  ids = _ids(_build("undersample", per_class=3), 0, 9)
  np.testing.assert_array_equal(np.bincount(LABELS[ids], minlength=3), [3, 3, 3])


# --------------------------------------------------------------------------------- class_subset ---

def test_class_subset_uniform_relabel():
  subset = np.flatnonzero(np.isin(LABELS, [1, 2]))
  ds = _build("class_subset", classes=[2, 1], relabel=True)
  for e in range(3):
    ids = _ids(ds, e * len(subset), (e + 1) * len(subset))
    np.testing.assert_array_equal(np.sort(ids), subset)  # one pass over the subset per epoch
  for k in range(200):
    rec = ds[k]
    assert rec["label"] == {2: 0, 1: 1}[LABELS[rec["id"]]]
    assert rec["image"] is SOURCE[rec["id"]]["image"]
  assert [r["label"] for r in SOURCE] == LABELS.tolist()  # the source is not modified
  # Without relabel the records are untouched.
  plain = _build("class_subset", classes=[1, 2])
  recs = [plain[k] for k in range(100)]
  assert all(r is SOURCE[r["id"]] and r["label"] in (1, 2) for r in recs)


def test_class_subset_class_balanced():
  n = 6000
  ids = _ids(_build("class_subset", seed=4, classes=[0, 2], order="class_balanced"), 0, n)
  y = LABELS[ids]
  assert set(y) == {0, 2}
  assert _within_4_sigma(np.sum(y == 2), n, 0.5)


# ------------------------------------------------------------------- determinism, shards, resume ---

@pytest.mark.parametrize("name,kw", ALL)
def test_deterministic_given_seed(name, kw):
  a = _ids(_build(name, seed=1, **kw), 0, 300)
  np.testing.assert_array_equal(a, _ids(_build(name, seed=1, **kw), 0, 300))
  assert not np.array_equal(a, _ids(_build(name, seed=2, **kw), 0, 300))


@pytest.mark.parametrize("name,kw", ALL[1:])
def test_label_samplers_through_the_pipeline_on_three_processes(name, kw):
  """Process p reads block p of each global batch of the sampler's one stream (pipeline.ProcessBlocks)."""
  sampler = samplers.from_config(dict(name=name, **kw))
  aug = pipeline.AugmentConfig()

  def batches(p, n, b):
    ds = pipeline.train_dataset(SOURCE, aug, batch_size=b, seed=7, process_index=p, process_count=n,
                                transform=_IdTransform(), sampler=sampler, labels=LABELS, num_threads=1)
    it = iter(ds)
    return np.concatenate([next(it)["id"] for _ in range(10)])

  one = batches(0, 1, 12).reshape(10, 12)
  parts = [batches(p, 3, 4).reshape(10, 4) for p in range(3)]
  np.testing.assert_array_equal(np.concatenate(parts, 1), one)
  np.testing.assert_array_equal(one.ravel(), _ids(sampler.dataset(SOURCE, seed=7, labels=LABELS), 0, 120))


class _IdTransform(grain.transforms.RandomMap):
  def random_map(self, record, rng):
    return {"id": np.int64(record["id"])}


def _noise(record, rng):
  return {"id": record["id"], "label": record["label"], "noise": rng.random()}


@pytest.mark.parametrize("name,kw", ALL)
def test_checkpoint_restore(name, kw):
  ds = _build(name, **kw)

  def make():
    return iter(ds.random_map(_noise).batch(4).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))

  it = make()
  first = [next(it) for _ in range(7)]
  state = it.get_state()
  after = [next(it) for _ in range(5)]
  it2 = make()
  it2.set_state(state)
  for a, b in zip(after, [next(it2) for _ in range(5)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # The batches are the indexed stream, in order.
  np.testing.assert_array_equal(np.concatenate([b["id"] for b in first + after]), _ids(ds, 0, 48))


def test_pickles_for_worker_processes():
  for name, kw in ALL:
    ds = _build(name, **kw)
    ds2 = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(_ids(ds2, 0, 40), _ids(ds, 0, 40))


# ------------------------------------------------------------------------------------ read_labels ---

class _BatchSource:
  """A source with ``__getitems__`` (as TFDS / grain array_record sources have)."""

  def __init__(self, records):
    self.records, self.batches = records, 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def __getitems__(self, idx):
    self.batches += 1
    return [self.records[i] for i in idx]


def test_read_labels():
  np.testing.assert_array_equal(samplers.read_labels(SOURCE, "label", chunk_size=64), LABELS)
  src = _BatchSource([{"y": np.int64(v), "image": 0} for v in LABELS])
  got = samplers.read_labels(src, "y", num_threads=3, chunk_size=100)
  assert got.dtype == np.int64 and src.batches == 6
  np.testing.assert_array_equal(got, LABELS)
  assert samplers.read_labels([], "label").shape == (0,)
  with pytest.raises(ValueError, match=r"no field 'emotion'.*\['id', 'image', 'label'\]"):
    samplers.read_labels(SOURCE, "emotion")
  with pytest.raises(ValueError, match="'image'.*integer class label"):
    samplers.read_labels(SOURCE, "image")


# --------------------------------------------------------------------------------------- errors ---

@pytest.mark.parametrize("spec,match", [
    (dict(name="class_subset"), "classes"),
    (dict(name="class_subset", classes=[1], order="random"),
     "order.*'uniform', 'class_balanced' or 'undersample'"),
    (dict(name="class_subset", classes=[1, 1]), "more than once"),
    (dict(name="class_subset", classes=["a"]), "classes"),
    (dict(name="undersample", per_class=0), "per_class"),
    (dict(name="class_balanced", class_weights={0: -1.0}), "class_weights.*>= 0"),
    (dict(name="class_balanced", class_weights="x"), "class_weights"),
    (dict(name="uniform", classes=[1]), r"no options \['classes'\]"),
    (dict(classes=[1]), "no 'name'"),
])
def test_option_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    samplers.from_config(spec)


def test_unknown_sampler_name():
  with pytest.raises(KeyError, match="class_balanced"):
    samplers.from_config("class_balance")


@pytest.mark.parametrize("spec,kw,match", [
    (dict(name="class_subset", classes=[1, 9]), {}, r"classes \[9\] have no examples"),
    (dict(name="undersample", per_class=6), {}, "per_class=6 exceeds the smallest class count 5"),
    (dict(name="class_balanced", class_weights={0: 1, 1: 1}), {}, r"no weight for classes \[2\]"),
    (dict(name="class_balanced", class_weights=[1, 1, 1, 1]), {}, r"classes \[3\] that have no"),
    (dict(name="class_balanced"), dict(labels=None), "needs the labels.*read_labels"),
    (dict(name="undersample"), dict(labels=LABELS[:-1]), r"shape \(554,\); expected \(555,\)"),
    (dict(name="undersample"), dict(labels=LABELS.astype(float)), "expected integers"),
    (dict(name="undersample"), dict(seed=-1), "seed"),
])
def test_dataset_errors(spec, kw, match):
  sampler = samplers.from_config(spec)
  args = dict(seed=0, labels=LABELS)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    sampler.dataset(SOURCE, **args)
