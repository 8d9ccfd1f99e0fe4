"""Average precision / mAP against scikit-learn's average_precision_score and hand-computed cases; the
streaming MultiLabelAP against scikit-learn on the full set with uneven, masked batches."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fer_jax.metrics import multilabel


def _sk_ap(labels, scores, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "No positive class found in y_true"
    return average_precision_score(labels, scores, **kw)


def _emotic_like(n, k=26, seed=0, decimals=2):
  """Imbalanced multi-hot labels, informative scores rounded so that many scores tie."""
  rng = np.random.default_rng(seed)
  prevalence = rng.uniform(0.01, 0.4, k)
  labels = (rng.random((n, k)) < prevalence).astype(np.int64)
  scores = np.round(1 / (1 + np.exp(-(1.5 * labels + rng.normal(0, 1, (n, k))))), decimals)
  return scores, labels


def test_hand_computed_cases():
  # Ranks 1..4 labelled 1, 0, 1, 0: AP = 1/2 * 1 + 1/2 * 2/3.
  assert multilabel.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
  # Three tied top scores form one threshold (P = 2/3 at R = 1): no credit for a lucky order.
  assert multilabel.average_precision([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(2 / 3)
  assert multilabel.average_precision([0.5, 0.5, 0.5, 0.1], [0, 1, 1, 0]) == pytest.approx(2 / 3)


def test_per_label_ap_and_map_equal_sklearn_with_ties():
  scores, labels = _emotic_like(700)
  ap = multilabel.average_precision(scores, labels)
  np.testing.assert_allclose(ap, _sk_ap(labels, scores, average=None), rtol=0, atol=1e-12)
  assert multilabel.mean_average_precision(scores, labels) == pytest.approx(
      _sk_ap(labels, scores, average="macro"), abs=1e-12)
  # EMOTIC's evaluation: sklearn AP per category, then the mean over the 26 categories.
  emotic = np.mean([_sk_ap(labels[:, i], scores[:, i]) for i in range(26)])
  assert multilabel.mean_average_precision(scores, labels) == pytest.approx(emotic, abs=1e-12)
  # 1-D input is one label.
  assert multilabel.average_precision(scores[:, 3], labels[:, 3]) == pytest.approx(ap[3], abs=1e-15)


def test_label_without_positives():
  scores, labels = _emotic_like(300, k=5, seed=1)
  labels[:, 2] = 0
  zero = multilabel.average_precision(scores, labels)
  assert zero[2] == 0.0 and _sk_ap(labels[:, 2], scores[:, 2]) == 0.0  # sklearn's value, EMOTIC's mean
  assert multilabel.mean_average_precision(scores, labels) == pytest.approx(
      _sk_ap(labels, scores, average="macro"), abs=1e-12)
  excl = multilabel.average_precision(scores, labels, no_positives="exclude")
  assert np.isnan(excl[2])
  assert multilabel.mean_average_precision(scores, labels, no_positives="exclude") == pytest.approx(
      np.mean(zero[[0, 1, 3, 4]]))
  assert np.isnan(multilabel.mean_average_precision(scores[:, 2], labels[:, 2], no_positives="exclude"))


def test_masks_equal_subsetting():
  scores, labels = _emotic_like(400, k=6, seed=2)
  rng = np.random.default_rng(2)
  row_mask = rng.random(400) < 0.6
  np.testing.assert_allclose(multilabel.average_precision(scores, labels, row_mask),
                             _sk_ap(labels[row_mask], scores[row_mask], average=None), atol=1e-12)
  entry_mask = rng.random((400, 6)) < 0.6
  per_label = [_sk_ap(labels[entry_mask[:, k], k], scores[entry_mask[:, k], k]) for k in range(6)]
  np.testing.assert_allclose(multilabel.average_precision(scores, labels, entry_mask), per_label, atol=1e-12)


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"scores shape \(4, 2\) and labels shape \(4, 3\)"):
    multilabel.average_precision(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="labels must be 0/1.*2"):
    multilabel.average_precision(np.zeros(3), np.array([0, 2, 1]))
  with pytest.raises(ValueError, match="NaN"):
    multilabel.average_precision(np.array([0.1, np.nan]), np.array([0, 1]))
  with pytest.raises(ValueError, match=r"mask shape \(3,\)"):
    multilabel.average_precision(np.zeros((4, 2)), np.zeros((4, 2)), np.ones(3))
  with pytest.raises(ValueError, match="no_positives"):
    multilabel.average_precision(np.zeros(2), np.zeros(2), no_positives="skip")
  with pytest.raises(ValueError, match=r"predictions shape \(4, 2\)"):
    multilabel.MultiLabelAP.from_model_output(predictions=jnp.zeros((4, 2)), labels=jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match="empty metric"):
    multilabel.MultiLabelAP.empty().compute()


def test_streaming_equals_sklearn_with_uneven_masked_batches_any_merge_order():
  n = 1531
  scores, labels = _emotic_like(n, seed=3)
  mask = np.random.default_rng(3).random(n) < 0.85
  step = jax.jit(lambda s, y, m: multilabel.MultiLabelAP.from_model_output(predictions=s, labels=y, mask=m))
  bounds = [(0, 1), (1, 256), (256, 512), (512, 1500), (1500, 1531)]
  updates = [step(scores[lo:hi].astype(np.float32), labels[lo:hi], mask[lo:hi]) for lo, hi in bounds]
  forward = multilabel.MultiLabelAP.empty()
  for u in updates:
    forward = forward.merge(u)
  backward = multilabel.MultiLabelAP.empty()
  for u in updates[::-1]:
    backward = backward.merge(u)
  expected = _sk_ap(labels[mask], scores[mask].astype(np.float32), average=None)
  for metric in (forward, backward):
    out = metric.compute()
    np.testing.assert_allclose(out["ap"], expected, rtol=0, atol=1e-12)
    assert out["map"] == pytest.approx(np.mean(expected), abs=1e-12)
  # A per-entry (B, K) mask, unjitted.
  entry_mask = np.random.default_rng(4).random((n, 26)) < 0.7
  m = multilabel.MultiLabelAP.empty()
  for lo, hi in bounds:
    m = m.merge(multilabel.MultiLabelAP.from_model_output(
        predictions=jnp.asarray(scores[lo:hi]), labels=jnp.asarray(labels[lo:hi]),
        mask=jnp.asarray(entry_mask[lo:hi])))
  np.testing.assert_allclose(m.compute()["ap"], multilabel.average_precision(
      scores.astype(np.float32), labels, entry_mask), atol=1e-12)
