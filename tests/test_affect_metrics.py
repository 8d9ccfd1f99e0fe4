"""Affect metrics (RMSE, Pearson CC, CCC, SAGR): the float64 NumPy reference (tests/affect_reference.py)
against scikit-learn / SciPy / hand-computed values, and the library's one implementation, the streaming
clu metric (and its one-shot form ``affect_metrics``), against that reference on ~10^5 frames in uneven,
masked batches and on constant / empty inputs."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from clu import metrics as clu_metrics
from sklearn.metrics import mean_squared_error

import affect_reference as affect_np
from fer_jax.metrics import affect


def _va_data(n, seed=0, offset=(0.1, 0.3)):
  """Valence / arousal-like labels in [-1, 1] and correlated, biased predictions."""
  rng = np.random.default_rng(seed)
  y = np.clip(rng.normal(offset, [0.35, 0.25], (n, 2)), -1, 1)
  p = 0.6 * y + rng.normal(0.05, 0.2, (n, 2))
  return p, y


def _ccc_reference(p, y):
  # Lin (1989) in the rho * s_x * s_y form (as in emonet's metrics.py), population moments.
  rho = np.corrcoef(p, y)[0, 1]
  return 2 * rho * p.std() * y.std() / (p.var() + y.var() + (p.mean() - y.mean()) ** 2)


def test_one_shot_against_sklearn_scipy_and_lin_formula():
  p, y = _va_data(2000)
  out = affect_np.affect_metrics(p, y)
  np.testing.assert_allclose(out["rmse"], np.sqrt(mean_squared_error(y, p, multioutput="raw_values")),
                             rtol=1e-12)
  np.testing.assert_allclose(out["pcc"], [scipy.stats.pearsonr(p[:, d], y[:, d])[0] for d in range(2)],
                             rtol=1e-12)
  np.testing.assert_allclose(out["ccc"], [_ccc_reference(p[:, d], y[:, d]) for d in range(2)], rtol=1e-12)
  np.testing.assert_allclose(out["sagr"], [np.mean(np.sign(p[:, d]) == np.sign(y[:, d])) for d in range(2)])
  assert out["ccc"].shape == (2,) and 0 < out["ccc"][0] < out["pcc"][0]  # CCC <= |CC|, biased predictions


def test_hand_computed_case():
  y = np.array([-1.0, 0.0, 1.0, 0.5])
  p = np.array([-0.5, 0.0, 0.5, -0.5])
  # Means: my = 0.125, mp = -0.125; population var_y = 0.546875, var_p = 0.171875; cov = 0.203125.
  assert affect_np.rmse(p, y) == pytest.approx(np.sqrt((0.25 + 0 + 0.25 + 1.0) / 4))
  assert affect_np.pearson_cc(p, y) == pytest.approx(0.203125 / np.sqrt(0.546875 * 0.171875))
  assert affect_np.ccc(p, y) == pytest.approx(2 * 0.203125 / (0.546875 + 0.171875 + 0.25 ** 2))
  # sign(0) = 0: the exact-zero pair agrees; the last pair disagrees -> 3 / 4.
  assert affect_np.sagr(p, y) == pytest.approx(0.75)


def test_sagr_zero_convention():
  y = np.array([0.0, 0.0, 0.3, -0.2])
  p = np.array([0.1, 0.0, 0.0, -0.1])
  # label 0 vs +0.1: disagree; 0 vs 0: agree; +0.3 vs 0: disagree; - vs -: agree.
  assert affect_np.sagr(p, y) == pytest.approx(0.5)


def test_masks_and_sequence_inputs_equal_subsetting():
  p, y = _va_data(600, seed=1)
  rng = np.random.default_rng(1)
  frame_mask = rng.random(600) < 0.7
  dim_mask = rng.random((600, 2)) < 0.7
  for name in ("rmse", "pearson_cc", "ccc", "sagr"):
    fn = getattr(affect_np, name)
    np.testing.assert_allclose(fn(p, y, frame_mask), fn(p[frame_mask], y[frame_mask]), rtol=1e-12)
    per_dim = [fn(p[dim_mask[:, d], d], y[dim_mask[:, d], d]) for d in range(2)]
    np.testing.assert_allclose(fn(p, y, dim_mask), per_dim, rtol=1e-12)
    # (B, T, D) per-frame outputs with a (B, T) mask score every kept frame.
    np.testing.assert_allclose(fn(p.reshape(20, 30, 2), y.reshape(20, 30, 2), frame_mask.reshape(20, 30)),
                               fn(p, y, frame_mask), rtol=1e-12)
    # A single dimension as (N,) gives a scalar equal to that column.
    single = fn(p[:, 1], y[:, 1])
    assert np.shape(single) == ()
    np.testing.assert_allclose(single, fn(p, y)[1], rtol=1e-12)


def test_constant_and_empty_inputs():
  y = np.random.default_rng(7).uniform(-1, 1, 101)
  p = np.full(101, 0.7)  # np.mean(p) != 0.7 in float64: CC must still be NaN, not rounding noise
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert np.isnan(scipy.stats.pearsonr(p, y)[0])
  assert np.isnan(affect_np.pearson_cc(p, y))  # like SciPy
  assert affect_np.ccc(p, y) == 0.0  # covariance form: 0 / (var_y + bias^2)
  assert np.isnan(affect_np.ccc(p, p))  # both constant and equal: 0 / 0
  assert affect_np.rmse(p, p) == 0.0
  p_masked = np.where(np.arange(101) < 90, 0.7, 5.0)  # constant among the kept frames only
  keep = np.arange(101) < 90
  assert np.isnan(affect_np.pearson_cc(p_masked, y, keep)) and affect_np.ccc(p_masked, y, keep) == 0.0
  empty = np.zeros(101, bool)
  for fn in (affect_np.rmse, affect_np.pearson_cc, affect_np.ccc, affect_np.sagr):
    assert np.isnan(fn(p, y, empty))


@pytest.mark.parametrize("fn", [affect_np.rmse, affect_np.ccc])
def test_shape_errors_name_the_shapes(fn):
  with pytest.raises(ValueError, match=r"predictions shape \(5, 2\) != labels shape \(5, 3\)"):
    fn(np.zeros((5, 2)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"mask shape \(4,\) does not fit predictions shape \(5, 2\)"):
    fn(np.zeros((5, 2)), np.zeros((5, 2)), np.ones(4))
  with pytest.raises(ValueError, match=r"labels shape"):
    affect.AffectMoments.from_model_output(predictions=jnp.zeros((5, 2)), labels=jnp.zeros((4, 2)))


_from_output = jax.jit(
    lambda p, y, m: affect.AffectMoments.from_model_output(predictions=p, labels=y, mask=m))
_merge = jax.jit(lambda a, b: a.merge(b))


def _batches(n, sizes=(1, 37, 1000, 4096)):
  lo, i = 0, 0
  while lo < n:
    hi = min(n, lo + sizes[i % len(sizes)])
    yield lo, hi
    lo, i = hi, i + 1


def _updates(p, y, mask):
  p32, y32 = p.astype(np.float32), y.astype(np.float32)
  return [_from_output(p32[lo:hi], y32[lo:hi], mask[lo:hi]) for lo, hi in _batches(len(p))]


def _assert_matches_one_shot(metric_out, p, y, mask, atol):
  ref = affect_np.affect_metrics(p, y, mask)
  for key, value in ref.items():
    np.testing.assert_allclose(np.asarray(metric_out[key]), value, rtol=0, atol=atol, err_msg=key)


def test_streaming_float32_equals_float64_one_shot_on_1e5_frames():
  n = 100_003
  p, y = _va_data(n, seed=2)
  mask = np.random.default_rng(2).random(n) < 0.93
  updates = _updates(p, y, mask)
  assert len(updates) > 60
  seq = affect.AffectMoments.empty(2)
  for u in updates:
    seq = _merge(seq, u)
  _assert_matches_one_shot(seq.compute(), p, y, mask, atol=2e-6)
  assert seq.compute()["count"].tolist() == [int(mask.sum())] * 2
  # Merge order: reversed sequence and a pairwise tree give the same values.
  rev = updates[-1]
  for u in updates[-2::-1]:
    rev = _merge(rev, u)
  tree = list(updates)
  while len(tree) > 1:
    tree = [_merge(tree[i], tree[i + 1]) if i + 1 < len(tree) else tree[i] for i in range(0, len(tree), 2)]
  for other in (rev, tree[0]):
    for key in ("rmse", "pcc", "ccc", "sagr"):
      np.testing.assert_allclose(other.compute()[key], seq.compute()[key], rtol=0, atol=1e-6)


def test_streaming_is_stable_with_a_large_mean_offset():
  # Chan's update keeps the centred moments accurate where sum-of-squares accumulators lose them.
  n = 50_000
  rng = np.random.default_rng(3)
  y = 5.0 + rng.normal(0, 0.05, (n, 2))
  p = y + rng.normal(0.01, 0.03, (n, 2))
  mask = np.ones(n, bool)
  metric = affect.AffectMoments.empty(2)
  for u in _updates(p, y, mask):
    metric = _merge(metric, u)
  out = metric.compute()
  ref = affect_np.affect_metrics(p, y)
  np.testing.assert_allclose(out["pcc"], ref["pcc"], atol=1e-4)
  np.testing.assert_allclose(out["ccc"], ref["ccc"], atol=1e-4)


def test_device_reduce_per_dim_mask_and_empty_merge():
  p, y = _va_data(3000, seed=4)
  dim_mask = np.random.default_rng(4).random((3000, 2)) < 0.8
  dim_mask[:1000, 1] = False  # one "device" holds no arousal labels at all
  shards = [_from_output(p[i:i + 1000].astype(np.float32), y[i:i + 1000].astype(np.float32),
                         dim_mask[i:i + 1000]) for i in range(0, 3000, 1000)]
  gathered = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *shards)  # what all_gather produces
  reduced = jax.jit(lambda g: g.reduce())(gathered)
  _assert_matches_one_shot(reduced.compute(), p, y, dim_mask, atol=2e-6)
  # empty() (scalar statistics) merges as a no-op from either side.
  for m in (_merge(affect.AffectMoments.empty(), reduced), _merge(reduced, affect.AffectMoments.empty())):
    _assert_matches_one_shot(m.compute(), p, y, dim_mask, atol=2e-6)
  out = affect.AffectMoments.empty(2).compute()
  assert all(np.isnan(out[k]).all() for k in ("rmse", "pcc", "ccc", "sagr"))


def test_wrappers_named_and_clu_collection():
  p, y = _va_data(500, seed=5)
  ref = affect_np.affect_metrics(p, y)
  collection = clu_metrics.Collection.create(
      rmse=affect.RMSE, pcc=affect.PearsonCC, ccc=affect.CCC, sagr=affect.SAGR,
      va=affect.AffectMoments.named("valence", "arousal"))
  update = jax.jit(lambda p, y: collection.single_from_model_output(predictions=p, labels=y))
  m = jax.jit(collection.merge)(update(p[:250], y[:250]), update(p[250:], y[250:]))
  out = m.compute()
  for key in ("rmse", "pcc", "ccc", "sagr"):
    np.testing.assert_allclose(out[key], ref[key], atol=2e-6)
    np.testing.assert_allclose(out["va"][f"valence/{key}"], ref[key][0], atol=2e-6)
    np.testing.assert_allclose(out["va"][f"arousal/{key}"], ref[key][1], atol=2e-6)
    np.testing.assert_allclose(out["va"][f"mean/{key}"], ref[key].mean(), atol=2e-6)
  three = affect.AffectMoments.named("v", "a", "d").from_model_output(
      predictions=jnp.asarray(p), labels=jnp.asarray(y))
  with pytest.raises(ValueError, match="3 names"):
    three.compute()


def test_single_dimension_streaming_constant_predictions():
  y = np.linspace(-1, 1, 101)
  p = np.full(101, 0.7)  # the float32 batch means differ from 0.7 by rounding
  one_dim = jax.jit(lambda p, y: affect.AffectMoments.from_model_output(predictions=p, labels=y))
  out = jax.jit(lambda a, b: a.merge(b))(one_dim(p[:50], y[:50]), one_dim(p[50:], y[50:])).compute()
  assert out["ccc"].shape == () and float(out["ccc"]) == 0.0
  assert np.isnan(out["pcc"])
  np.testing.assert_allclose(out["rmse"], affect_np.rmse(p, y), rtol=1e-6)


def test_library_one_shot_is_the_clu_metric_and_matches_the_reference():
  """``fer_jax.metrics.affect.affect_metrics`` (float32 moments) against the float64 reference, including
  masks, a constant prediction (CC NaN, CCC 0) and an empty mask (all NaN)."""
  p, y = _va_data(3000, seed=4)
  keep = np.random.default_rng(4).random(3000) < 0.8
  for mask in (None, keep):
    got, want = affect.affect_metrics(p, y, mask), affect_np.affect_metrics(p, y, mask)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)
  const = np.full_like(y, 0.3)
  got = affect.affect_metrics(const, y)
  assert np.isnan(got["pcc"]).all() and np.all(got["ccc"] == 0.0)
  got = affect.affect_metrics(p, y, np.zeros(3000, bool))
  assert all(np.isnan(v).all() for v in got.values())
