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
