"""Training-example samplers: the order of the training stream (``SAMPLERS``).

``config.input.sampler = dict(name=..., **options)`` picks one (default ``'uniform'``, the order
``pipeline.train_dataset`` has always used). :func:`from_config` builds it; then ::

    labels = read_labels(source, 'label') if sampler.needs_labels else None   # once, at start
    ds = sampler.dataset(source, seed=seed, labels=labels)

``dataset`` returns the infinite global (single-process) stream, a ``grain.MapDataset`` of the source's
records (unmodified, except the label field under ``class_subset(relabel=True)``) carrying
``.seed(seed)`` so that downstream ``random_map`` is seeded. Element ``k`` depends only on
(seed, k, labels), so a grain iterator's checkpoint (the next index) restores the exact stream.
Sharding over processes is the pipeline's (``pipeline.ProcessBlocks``: process p reads block p of
each global batch), the same for every sampler.

Entries
  ``uniform``         global shuffle, a fresh permutation every epoch (grain ``shuffle`` reseeds with
                      ``seed + epoch``). No labels.
  ``class_balanced``  with replacement: each draw picks a class (uniformly, or by ``class_weights``),
                      then an example of that class uniformly.
  ``undersample``     epochs of ``per_class`` (default: the smallest class count) examples of every
                      class, a fresh random subset of each class every epoch, shuffled together.
  ``class_subset``    only examples whose label is in ``classes``; ``relabel=True`` maps
                      ``classes[i] -> i`` in the record's ``label_key`` field; ``order`` 'uniform'
                      (reshuffled every epoch) or 'class_balanced'.

Randomness of the label-based samplers is counter-based (independent of reading order or threads):
a SplitMix64 hash of (seed, purpose, position) for draws, and a keyed Feistel bijection (cycle
walking) for permutations, so element ``k`` costs O(1) with no per-epoch tables.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import math
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import grain
import numpy as np

from fer_jax.registry import SAMPLERS

INFINITE = sys.maxsize  # grain's length of an infinite (``repeat(None)``) MapDataset

# ----------------------------------------------------------------------------------------------------
# Labels.
# ----------------------------------------------------------------------------------------------------


def _label_of(record: Any, key: str, index: int) -> int:
  if not hasattr(record, "keys") or key not in record:
    fields = sorted(record.keys()) if hasattr(record, "keys") else type(record).__name__
    raise ValueError(f"read_labels: record {index} has no field {key!r}; its fields are {fields}")
  value = np.asarray(record[key])
  if value.ndim != 0 or value.dtype.kind not in "iub":
    raise ValueError(
        f"read_labels: field {key!r} of record {index} is {value.dtype} of shape {value.shape}; "
        "expected one integer class label")
  return int(value)


def read_labels(source: Any, key: str = "label", *, num_threads: int = 8,
                chunk_size: int = 512) -> np.ndarray:
  """Reads field ``key`` (an int class label) of every record of ``source``: int64 array (len,).

  Reads chunks of ``chunk_size`` records on ``num_threads`` threads (``source.__getitems__`` where
  the source has it, as TFDS / grain array_record sources do, else ``source[i]``). For image
  datasets this decodes every record once (28,709 48x48 PNG records of a TFDS array_record source:
  about 3 s; about 1 s from a source opened with ``decoders={'image': tfds.decode.SkipDecoding()}``,
  which a caller may use for this read only). Do it once at start and pass the result to
  ``Sampler.dataset(labels=...)``.
  """
  n = len(source)
  getitems = getattr(source, "__getitems__", None)

  def read(start: int):
    idx = list(range(start, min(start + chunk_size, n)))
    records = getitems(idx) if getitems is not None else [source[i] for i in idx]
    return [_label_of(r, key, i) for i, r in zip(idx, records)]

  starts = range(0, n, chunk_size)
  if num_threads <= 1 or len(starts) <= 1:
    chunks = [read(s) for s in starts]
  else:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      chunks = list(pool.map(read, starts))
  return np.fromiter((y for c in chunks for y in c), np.int64, count=n)


def _check_labels(labels: Optional[np.ndarray], n: int, sampler: str) -> np.ndarray:
  if labels is None:
    raise ValueError(f"sampler {sampler!r} needs the labels of the training split: pass "
                     "labels=read_labels(source, label_key) to dataset()")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != n:
    raise ValueError(f"sampler {sampler!r}: labels has shape {labels.shape}; expected ({n},), one "
                     "label per record of the source")
  if labels.dtype.kind not in "iub":
    raise ValueError(f"sampler {sampler!r}: labels have dtype {labels.dtype}; expected integers")
  return labels.astype(np.int64)


def _class_members(labels: np.ndarray) -> Dict[int, np.ndarray]:
  """{label: ascending source indices with that label} for every label present."""
  order = np.argsort(labels, kind="stable")
  values, starts = np.unique(labels[order], return_index=True)
  return {int(v): m for v, m in zip(values, np.split(order, starts[1:]))}


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"sampler seed={seed!r}; expected an integer in [0, 2**32)")
  return int(seed)


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _int_tuple(value: Any, option: str) -> Tuple[int, ...]:
  if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
    raise ValueError(f"{option}={value!r}; expected a list of integer class labels")
  out = tuple(value)
  bad = [v for v in out if not _is_int(v)]
  if bad:
    raise ValueError(f"{option}={value!r}: {bad} are not integers; expected integer class labels")
  if len(set(out)) != len(out):
    raise ValueError(f"{option}={value!r} lists a class more than once")
  return tuple(int(v) for v in out)


# ----------------------------------------------------------------------------------------------------
# Counter-based randomness and index plans (global stream position -> source index).
# ----------------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
  x = (x + 0x9E3779B97F4A7C15) & _M64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
  return x ^ (x >> 31)


def _hash(*words: int) -> int:
  """A 64-bit hash of non-negative ints (chained SplitMix64)."""
  h = 0x6A09E667F3BCC909
  for w in words:
    h = _splitmix64(h ^ (w & _M64))
  return h


_DRAW_CLASS, _DRAW_MEMBER, _EPOCH_PERM, _CLASS_PERM = 1, 2, 3, 4


_FEISTEL_ROUNDS = 6


def _shuffle(index: int, size: int, key: int) -> int:
  """Position of ``index`` in a pseudo-random permutation of range(size) chosen by ``key``.

  A balanced Feistel network on the smallest even bit width covering ``size`` (round function:
  SplitMix64 of the round key and the half-block), restricted to range(size) by cycle walking.
  """
  if size <= 1:
    return 0
  bits = max(2, (size - 1).bit_length())
  half = (bits + 1) // 2
  mask = (1 << half) - 1
  x = index
  while True:
    left, right = x >> half, x & mask
    for rnd in range(_FEISTEL_ROUNDS):
      round_key = (key + (rnd + 1) * 0xD1B54A32D192ED03) & _M64
      left, right = right, left ^ (_splitmix64(round_key ^ right) & mask)
    x = (left << half) | right
    if x < size:
      return x


class _BalancedPlan:
  """Draw ``g``: class ``c`` with probability ``p[c]``, then a uniform member of ``c``."""

  def __init__(self, seed: int, members: Sequence[np.ndarray], probs: Sequence[float]):
    self._seed = seed
    self._members = [np.asarray(m, np.int64) for m in members]
    cum = np.cumsum(np.asarray(probs, np.float64))
    self._cum = [float(c) for c in cum / cum[-1]]
    self._cum[-1] = 1.0

  def __call__(self, g: int) -> int:
    u = (_hash(self._seed, _DRAW_CLASS, g) >> 11) * 2.0**-53  # uniform in [0, 1)
    c = bisect.bisect_right(self._cum, u)
    m = self._members[c]
    return int(m[_hash(self._seed, _DRAW_MEMBER, g) % len(m)])


class _ShufflePlan:
  """``indices`` in a fresh permutation every epoch (epoch ``e`` = positions ``[e*n, (e+1)*n)``)."""

  def __init__(self, seed: int, indices: np.ndarray):
    self._seed, self._indices = seed, np.asarray(indices, np.int64)

  def __call__(self, g: int) -> int:
    n = len(self._indices)
    e, r = divmod(g, n)
    return int(self._indices[_shuffle(r, n, _hash(self._seed, _EPOCH_PERM, e))])


class _UndersamplePlan:
  """Epochs of ``per_class`` examples of each class, shuffled together.

  Epoch ``e``: class ``c`` contributes the first ``per_class`` entries of a fresh permutation of its
  members (seed from (seed, e, c)); the ``K * per_class`` slots are permuted (seed from (seed, e)).
  """

  def __init__(self, seed: int, members: Sequence[np.ndarray], per_class: int):
    self._seed, self._per_class = seed, per_class
    self._members = [np.asarray(m, np.int64) for m in members]
    self._epoch_len = per_class * len(self._members)

  def __call__(self, g: int) -> int:
    e, r = divmod(g, self._epoch_len)
    slot = _shuffle(r, self._epoch_len, _hash(self._seed, _EPOCH_PERM, e))
    c, j = divmod(slot, self._per_class)
    m = self._members[c]
    return int(m[_shuffle(j, len(m), _hash(self._seed, _CLASS_PERM, e, c))])


class _StreamSelection(grain.transforms.DatasetSelectionMap):
  """Element ``k`` -> (0, plan(k)); infinite."""

  def __init__(self, plan: Callable[[int], int]):
    self._plan = plan

  def __len__(self) -> int:
    return INFINITE

  def __getitem__(self, k: int) -> Tuple[int, int]:
    return 0, self._plan(k)

  def __repr__(self) -> str:
    return f"_StreamSelection({type(self._plan).__name__})"


def _stream(source: Any, plan: Callable[[int], int], seed: int) -> grain.MapDataset:
  ds = grain.MapDataset.select_from_datasets([grain.MapDataset.source(source)], _StreamSelection(plan))
  return ds.seed(seed)


def _nonempty_members(labels: Optional[np.ndarray], n: int, name: str) -> Dict[int, np.ndarray]:
  """Class -> indices of its examples (checked labels); an empty split raises, naming the sampler."""
  members = _class_members(_check_labels(labels, n, name))
  if not members:
    raise ValueError(f"sampler {name!r}: the training split is empty")
  return members


class _Relabel(grain.transforms.Map):
  """Replaces ``record[label_key]`` by ``mapping[record[label_key]]`` (in a new dict)."""

  def __init__(self, label_key: str, mapping: Mapping[int, int]):
    self.label_key, self.mapping = label_key, dict(mapping)

  def map(self, record: Any) -> Dict[str, Any]:
    if not hasattr(record, "keys") or self.label_key not in record:
      fields = sorted(record.keys()) if hasattr(record, "keys") else type(record).__name__
      raise ValueError(f"class_subset(relabel=True): record has no field {self.label_key!r} "
                       f"(label_key); its fields are {fields}")
    old = record[self.label_key]
    new = self.mapping.get(int(np.asarray(old)))
    if new is None:
      raise ValueError(f"class_subset: a record with {self.label_key}={old!r} reached relabel; "
                       f"expected one of {sorted(self.mapping)} (do the labels passed to "
                       "dataset() match the source?)")
    out = dict(record)
    out[self.label_key] = np.asarray(old).dtype.type(new)
    return out


def _check_weights(class_weights: Any, option: str) -> Optional[Tuple[Tuple[int, float], ...]]:
  """``{label: weight}`` or a list indexed by label -> sorted ((label, weight), ...)."""
  if class_weights is None:
    return None
  if hasattr(class_weights, "items"):
    pairs = list(class_weights.items())
  elif isinstance(class_weights, (Sequence, np.ndarray)) and not isinstance(class_weights, str):
    pairs = list(enumerate(class_weights))
  else:
    raise ValueError(f"{option}={class_weights!r}; expected {{label: weight}} or a list of weights "
                     "indexed by label")
  out = {}
  for k, v in pairs:
    try:
      label = int(k) if _is_int(k) or isinstance(k, str) else None
    except ValueError:
      label = None
    if label is None:
      raise ValueError(f"{option}: key {k!r} is not an integer class label")
    if (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number))
        or not math.isfinite(v) or v < 0):
      raise ValueError(f"{option}: weight {v!r} of class {label} is not a finite number >= 0")
    out[label] = float(v)
  if not any(w > 0 for w in out.values()):
    raise ValueError(f"{option}={class_weights!r}: no weight is positive")
  return tuple(sorted(out.items()))


def _weights(class_weights: Tuple[Tuple[int, float], ...], present: Sequence[int],
             option: str) -> list:
  """The weight of each present class; every present class needs one, absent ones must be 0."""
  table = dict(class_weights)
  missing = [c for c in present if c not in table]
  if missing:
    raise ValueError(f"{option} gives no weight for classes {missing} present in the labels "
                     f"(present: {list(present)}); give every class a weight (0 drops a class)")
  absent = [c for c, w in table.items() if c not in present and w > 0]
  if absent:
    raise ValueError(f"{option} gives positive weight to classes {absent} that have no examples "
                     f"(present: {list(present)})")
  if not any(table[c] > 0 for c in present):
    raise ValueError(f"{option}: every class present in the labels has weight 0")
  return [table[c] for c in present]


# ----------------------------------------------------------------------------------------------------
# Registry entries.
# ----------------------------------------------------------------------------------------------------


@SAMPLERS.register("uniform")
@dataclasses.dataclass(frozen=True)
class Uniform:
  """Global shuffle, reshuffled every epoch: ``pipeline.train_dataset``'s order, unchanged.

  ``MapDataset.source(source).seed(seed).shuffle().repeat(None)``: grain's shuffle maps index ``i`` to
  ``epoch = i // len`` and permutes within the epoch with seed ``shuffle_seed + epoch``.
  """

  needs_labels = False

  def dataset(self, source: Any, *, seed: int, labels: Optional[np.ndarray] = None) -> grain.MapDataset:
    seed = _check_seed(seed)
    if not len(source):
      raise ValueError("sampler 'uniform': the training split is empty")
    return grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)


@SAMPLERS.register("class_balanced")
@dataclasses.dataclass(frozen=True)
class ClassBalanced:
  """Each draw: a class (uniform, or with probability ~ ``class_weights``), then one of its examples.

  With replacement and without epochs (an example's weight is ``w[c] / count[c]``).
  ``class_weights``: ``{label: weight}`` or a list indexed by label, a weight >= 0 for every class
  present in the labels (0 drops the class).
  """

  class_weights: Any = None
  needs_labels = True

  def __post_init__(self):
    object.__setattr__(self, "class_weights",
                       _check_weights(self.class_weights, "sampler class_weights"))

  def dataset(self, source: Any, *, seed: int, labels: Optional[np.ndarray]) -> grain.MapDataset:
    seed = _check_seed(seed)
    members = _nonempty_members(labels, len(source), "class_balanced")
    present = list(members)
    probs = ([1.0] * len(present) if self.class_weights is None
             else _weights(self.class_weights, present, "sampler class_weights"))
    keep = [(c, w) for c, w in zip(present, probs) if w > 0]  # weight 0: never drawn
    plan = _BalancedPlan(seed, [members[c] for c, _ in keep], [w for _, w in keep])
    return _stream(source, plan, seed)


@SAMPLERS.register("undersample")
@dataclasses.dataclass(frozen=True)
class Undersample:
  """Equal under-sampling: every epoch, ``per_class`` fresh random examples of each class, shuffled.

  ``per_class``: examples per class per epoch; default (None) the smallest class count. No example
  repeats within an epoch.
  """

  per_class: Optional[int] = None
  needs_labels = True

  def __post_init__(self):
    if self.per_class is not None and not (_is_int(self.per_class) and self.per_class >= 1):
      raise ValueError(f"sampler per_class={self.per_class!r}; expected an integer >= 1 or None "
                       "(the smallest class count)")

  def dataset(self, source: Any, *, seed: int, labels: Optional[np.ndarray]) -> grain.MapDataset:
    seed = _check_seed(seed)
    members = _nonempty_members(labels, len(source), "undersample")
    smallest = min(len(m) for m in members.values())
    per_class = smallest if self.per_class is None else int(self.per_class)
    if per_class > smallest:
      counts = {c: len(m) for c, m in members.items()}
      raise ValueError(f"sampler per_class={per_class} exceeds the smallest class count "
                       f"{smallest} (class counts {counts})")
    plan = _UndersamplePlan(seed, list(members.values()), per_class)
    return _stream(source, plan, seed)


@SAMPLERS.register("class_subset")
@dataclasses.dataclass(frozen=True)
class ClassSubset:
  """Only the examples whose label is in ``classes``.

  ``relabel``: map ``classes[i] -> i`` (in the order given) in the record's ``label_key`` field.
  ``order``: 'uniform' (a fresh shuffle of the subset every epoch), 'class_balanced' (a class of
  ``classes`` uniformly, then one of its examples; with replacement: weights 1/count) or 'undersample'
  (epochs of the smallest subset class's count from each class, as ``undersample``).
  """

  classes: Tuple[int, ...] = ()
  relabel: bool = False
  label_key: str = "label"
  order: str = "uniform"
  needs_labels = True

  def __post_init__(self):
    object.__setattr__(self, "classes", _int_tuple(self.classes, "sampler classes"))
    if not self.classes:
      raise ValueError("sampler 'class_subset' needs classes=[...], the labels to keep")
    if not isinstance(self.relabel, (bool, np.bool_)):
      raise ValueError(f"sampler relabel={self.relabel!r}; expected true or false")
    if not isinstance(self.label_key, str) or not self.label_key:
      raise ValueError(f"sampler label_key={self.label_key!r}; expected a record field name")
    if self.order not in ("uniform", "class_balanced", "undersample"):
      raise ValueError(f"sampler order={self.order!r}; expected 'uniform', 'class_balanced' or 'undersample'")

  def dataset(self, source: Any, *, seed: int, labels: Optional[np.ndarray]) -> grain.MapDataset:
    seed = _check_seed(seed)
    members = _class_members(_check_labels(labels, len(source), "class_subset"))
    absent = [c for c in self.classes if c not in members]
    if absent:
      raise ValueError(f"sampler classes={list(self.classes)}: classes {absent} have no examples "
                       f"in the labels (present: {sorted(members)})")
    if self.order == "uniform":
      subset = np.sort(np.concatenate([members[c] for c in self.classes]))
      plan: Callable[[int], int] = _ShufflePlan(seed, subset)
    elif self.order == "undersample":
      plan = _UndersamplePlan(seed, [members[c] for c in self.classes],
                              min(len(members[c]) for c in self.classes))
    else:
      plan = _BalancedPlan(seed, [members[c] for c in self.classes], [1.0] * len(self.classes))
    ds = _stream(source, plan, seed)
    if self.relabel:
      ds = ds.map(_Relabel(self.label_key, {c: i for i, c in enumerate(self.classes)}))
    return ds


class SubsetSource:
  """Random-access view of the examples of ``source`` whose label is in ``classes``, in source order,
  relabelled ``classes[i] -> i`` (evaluation splits of ``config.dataset.classes``)."""

  def __init__(self, source: Any, labels: np.ndarray, classes: Sequence[int], label_key: str = "label"):
    labels = _check_labels(labels, len(source), "subset")
    self.classes = _int_tuple(classes, "dataset.classes")
    self._source = source
    self._indices = np.flatnonzero(np.isin(labels, self.classes))
    self._relabel = _Relabel(label_key, {c: i for i, c in enumerate(self.classes)})

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, k: int) -> Dict[str, Any]:
    return self._relabel.map(self._source[int(self._indices[k])])

  def __repr__(self) -> str:
    return f"SubsetSource(classes={list(self.classes)}, {len(self)} of {len(self._source)})"


_SUBSET_ORDERS = {"uniform": "uniform", "class_balanced": "class_balanced", "undersample": "undersample"}


def subset_sampler(spec: Any, classes: Sequence[int], label_key: str = "label") -> "ClassSubset":
  """The sampler of ``config.dataset.classes``: ``class_subset(classes, relabel=True)`` whose order is
  the configured ``config.input.sampler`` ('uniform', 'class_balanced' or 'undersample', no options)."""
  name = "uniform" if spec is None else spec if isinstance(spec, str) else dict(spec.items()).get("name")
  extra = {} if spec is None or isinstance(spec, str) else {k for k in spec.keys() if k != "name"}
  if name not in _SUBSET_ORDERS or extra:
    raise ValueError(f"config.input.sampler={spec!r} with config.dataset.classes={list(classes)}: expected "
                     f"one of {sorted(_SUBSET_ORDERS)} without options (the subset's training order)")
  return ClassSubset(classes=tuple(classes), relabel=True, label_key=label_key, order=_SUBSET_ORDERS[name])


# ----------------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------------


def from_config(spec: Any = None):
  """Builds the sampler of ``config.input.sampler``: None (-> 'uniform'), a name, or
  ``dict(name=..., **options)`` (a ConfigDict works too). Unknown options raise a ValueError
  listing the accepted ones."""
  if spec is None:
    return Uniform()
  if isinstance(spec, str):
    spec = {"name": spec}
  if not hasattr(spec, "items"):
    raise ValueError(f"config.input.sampler={spec!r}; expected a name or dict(name=..., **options)")
  options = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in spec.items()}
  if "name" not in options:
    raise ValueError(f"config.input.sampler={dict(options)} has no 'name'; known samplers: "
                     f"{SAMPLERS.names()}")
  name = options.pop("name")
  cls = SAMPLERS.get(name)
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(options) - set(fields))
  if unknown:
    raise ValueError(f"sampler {name!r} has no options {unknown}; its options are {fields or 'none'}")
  return cls(**options)
