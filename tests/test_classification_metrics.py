"""Confusion-matrix metrics against hand-computed values and a direct NumPy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.metrics import classification


def test_hand_computed_case():
  labels = np.array([0, 0, 1, 1, 1, 2])
  preds = np.array([0, 1, 1, 1, 0, 1])
  cm = classification.confusion_matrix(labels, preds, 3)
  np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [0, 1, 0]])
  s = classification.scores_from_confusion(cm)
  assert s["accuracy"] == pytest.approx(3 / 6)
  # class 0: P=1/2 R=1/2 F1=1/2; class 1: P=2/4 R=2/3 F1=4/7; class 2: 0.
  np.testing.assert_allclose(s["precision"], [0.5, 0.5, 0.0])
  np.testing.assert_allclose(s["recall"], [0.5, 2 / 3, 0.0])
  np.testing.assert_allclose(s["f1"], [0.5, 4 / 7, 0.0])
  assert s["macro_f1"] == pytest.approx((0.5 + 4 / 7) / 3)


def _reference_f1(labels, preds, k):
  out = []
  for c in range(k):
    tp = np.sum((preds == c) & (labels == c))
    fp = np.sum((preds == c) & (labels != c))
    fn = np.sum((preds != c) & (labels == c))
    out.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
  return np.array(out)


def test_streaming_equals_one_shot_with_uneven_batches_and_mask():
  rng = np.random.default_rng(0)
  k, n = 7, 1003
  labels = rng.integers(0, k, n)
  preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
  mask = rng.random(n) < 0.9
  metric = classification.ConfusionMatrix.empty(k)
  for lo, hi in [(0, 1), (1, 400), (400, 401), (401, 1003)]:
    metric = metric.merge(classification.ConfusionMatrix.from_model_output(
        predictions=jnp.asarray(preds[lo:hi]), labels=jnp.asarray(labels[lo:hi]),
        mask=jnp.asarray(mask[lo:hi]), num_classes=k))
  s = metric.compute()
  l, p = labels[mask], preds[mask]
  assert s["accuracy"] == pytest.approx(np.mean(l == p))
  np.testing.assert_allclose(s["f1"], _reference_f1(l, p, k), rtol=1e-12)
  np.testing.assert_array_equal(s["support"], np.bincount(l, minlength=k))


def test_bad_label_is_reported():
  with pytest.raises(ValueError, match="Label 9 outside"):
    classification.confusion_matrix(np.array([9]), np.array([0]), 7)


def _streamed_scores(labels, preds, mask, k, bounds):
  metric = classification.ConfusionMatrix.empty(k)
  for lo, hi in bounds:
    metric = metric.merge(classification.ConfusionMatrix.from_model_output(
        predictions=jnp.asarray(preds[lo:hi]), labels=jnp.asarray(labels[lo:hi]),
        mask=jnp.asarray(mask[lo:hi]), num_classes=k))
  return metric.compute()


def test_streaming_equals_sklearn_accuracy_and_prfs():
  from sklearn.metrics import accuracy_score, precision_recall_fscore_support
  rng = np.random.default_rng(1)
  k, n = 8, 2011
  labels = rng.integers(0, k - 2, n)  # class 6: predicted but never true; class 7: never seen at all
  preds = np.where(rng.random(n) < 0.55, labels, rng.integers(0, k - 1, n))
  mask = rng.random(n) < 0.8
  s = _streamed_scores(labels, preds, mask, k, [(0, 3), (3, 1024), (1024, 1025), (1025, 2011)])
  l, p = labels[mask], preds[mask]
  assert s["accuracy"] == pytest.approx(accuracy_score(l, p), abs=1e-15)
  prec, rec, f1, support = precision_recall_fscore_support(
      l, p, labels=np.arange(k), average=None, zero_division=0)
  np.testing.assert_allclose(s["precision"], prec, rtol=1e-12)
  np.testing.assert_allclose(s["recall"], rec, rtol=1e-12)
  np.testing.assert_allclose(s["f1"], f1, rtol=1e-12)
  np.testing.assert_array_equal(s["support"], support)
  assert s["precision"][6] == 0 and s["f1"][7] == 0 and s["support"][6] == 0
  _, _, macro_f1, _ = precision_recall_fscore_support(l, p, labels=np.arange(k), average="macro",
                                                      zero_division=0)
  assert s["macro_f1"] == pytest.approx(macro_f1, abs=1e-12)


def test_masked_padding_rows_do_not_count():
  # A padded final batch: garbage labels/predictions in padded rows must not change any score.
  from sklearn.metrics import precision_recall_fscore_support
  rng = np.random.default_rng(2)
  k = 5
  labels = rng.integers(0, k, 300)
  preds = rng.integers(0, k, 300)
  mask = np.ones(300, bool)
  mask[250:] = False
  garbage = labels.copy()
  garbage[250:] = 0
  s = _streamed_scores(garbage, preds, mask, k, [(0, 128), (128, 256), (256, 300)])
  ref = precision_recall_fscore_support(labels[:250], preds[:250], labels=np.arange(k), zero_division=0)
  for got, want in zip((s["precision"], s["recall"], s["f1"], s["support"]), ref):
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_balanced_accuracy_equals_sklearn_with_an_absent_class():
  import warnings

  from sklearn.metrics import balanced_accuracy_score
  rng = np.random.default_rng(3)
  labels = rng.choice([0, 1, 3, 4], 200, p=[0.6, 0.25, 0.1, 0.05])  # class 2 never a label
  predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))  # 2 is predicted
  scores = classification.scores_from_confusion(classification.confusion_matrix(labels, predictions, 5))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    want = balanced_accuracy_score(labels, predictions)
  np.testing.assert_allclose(scores["balanced_accuracy"], want, rtol=1e-12)
  assert abs(scores["balanced_accuracy"] - scores["accuracy"]) > 0.01  # imbalance makes them differ
