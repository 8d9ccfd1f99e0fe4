"""Affect losses against NumPy / scikit-learn references; ccc_loss gradients against the analytic gradient
and float64 central finite differences; EMOTIC's weighted L2 against a loop over the reference semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import mean_squared_error

from fer_jax import losses
import affect_reference as affect_metrics


def _va(n, seed=0):
  rng = np.random.default_rng(seed)
  y = np.clip(rng.normal([0.1, 0.3], [0.35, 0.25], (n, 2)), -1, 1)
  p = 0.6 * y + rng.normal(0.05, 0.2, (n, 2))
  return p, y


def _np_ccc(p, y):
  # Independent of fer_jax: population moments via np.var / np.cov(bias=True).
  return 2 * np.cov(p, y, bias=True)[0, 1] / (np.var(p) + np.var(y) + (p.mean() - y.mean()) ** 2)


def test_mse_loss_matches_sklearn_with_dim_weights_and_mask():
  p, y = _va(257)
  per_dim = mean_squared_error(y, p, multioutput="raw_values")
  np.testing.assert_allclose(losses.mse_loss(p, y), per_dim.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.mse_loss(p, y, dim_weights=[3.0, 1.0]),
                             (3 * per_dim[0] + per_dim[1]) / 4, rtol=1e-6)
  mask = np.random.default_rng(0).random(257) < 0.5
  np.testing.assert_allclose(losses.mse_loss(p, y, mask=mask),
                             mean_squared_error(y[mask], p[mask]), rtol=1e-6)
  assert losses.affect_regression_loss(p, y) == losses.mse_loss(p, y)  # kind='l2' default


def test_ccc_loss_matches_numpy():
  p, y = _va(300, seed=1)
  ref = np.array([1 - _np_ccc(p[:, d], y[:, d]) for d in range(2)])
  np.testing.assert_allclose(losses.ccc_loss(p, y, eps=0.0), ref.mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.ccc_loss(p, y), ref.mean(), rtol=1e-5)  # eps=1e-8 is negligible
  np.testing.assert_allclose(losses.ccc_loss(p, y, dim_weights=jnp.array([1.0, 3.0])),
                             (ref[0] + 3 * ref[1]) / 4, rtol=1e-5)
  # Equals 1 - the metric on the same batch; a frame mask equals subsetting; (N,) is one dimension.
  mask = np.arange(300) % 3 != 0
  np.testing.assert_allclose(losses.ccc_loss(p, y, mask=mask, eps=0.0),
                             1 - affect_metrics.ccc(p[mask], y[mask]).mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.ccc_loss(p[:, 0], y[:, 0], eps=0.0), ref[0], rtol=1e-5)
  np.testing.assert_allclose(losses.batch_ccc(p, y, eps=0.0), 1 - ref, rtol=1e-5)
  # (B, T, D) with a (B, T) mask: pooled over all kept frames; [..., d:d+1] keeps one dimension.
  seq_mask = mask.reshape(30, 10)
  np.testing.assert_allclose(losses.batch_ccc(p.reshape(30, 10, 2), y.reshape(30, 10, 2), seq_mask, eps=0.0),
                             affect_metrics.ccc(p[mask], y[mask]), rtol=1e-5)
  np.testing.assert_allclose(
      losses.batch_ccc(p.reshape(30, 10, 2)[..., 1:2], y.reshape(30, 10, 2)[..., 1:2], seq_mask, eps=0.0),
      affect_metrics.ccc(p[mask, 1:2], y[mask, 1:2]), rtol=1e-5)
  # Perfect predictions: loss 0; anti-correlated mirror: loss 2.
  assert float(losses.ccc_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.ccc_loss(-y + 2 * y.mean(0), y)) == pytest.approx(2.0, abs=1e-5)


def _ccc_grad_analytic(p, y):
  """d(1 - CCC)/dp_i for one dimension: -[2 (y_i - m_y) S - 4 s_xy (p_i - m_y)] / (n S^2)."""
  n = p.size
  s_xy = np.mean((p - p.mean()) * (y - y.mean()))
  s = p.var() + y.var() + (p.mean() - y.mean()) ** 2
  return -(2 * (y - y.mean()) * s - 4 * s_xy * (p - y.mean())) / (n * s ** 2)


def test_ccc_loss_gradient_float64():
  p, y = _va(40, seed=2)
  with jax.enable_x64(True):
    grad = np.asarray(jax.jit(jax.grad(lambda q, t: losses.ccc_loss(q, t, eps=0.0)))(p, y))
    assert grad.dtype == np.float64
  # Mean over the 2 dimensions -> each column's gradient is half that of its own 1 - CCC.
  analytic = np.stack([_ccc_grad_analytic(p[:, d], y[:, d]) for d in range(2)], 1) / 2
  np.testing.assert_allclose(grad, analytic, rtol=1e-9, atol=1e-12)
  h, fd = 1e-6, np.zeros_like(p)
  for i in range(p.shape[0]):
    for d in range(2):
      up, down = p.copy(), p.copy()
      up[i, d] += h
      down[i, d] -= h
      fd[i, d] = ((1 - _np_ccc(up[:, d], y[:, d])) - (1 - _np_ccc(down[:, d], y[:, d]))) / (2 * h) / 2
  np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


def test_masked_samples_get_no_gradient_and_empty_batches_are_zero():
  p, y = _va(16, seed=3)
  mask = np.arange(16) < 10
  for kind in ("l2", "ccc", "mix"):
    f = jax.jit(jax.value_and_grad(lambda q, m, kind=kind: losses.affect_regression_loss(q, y, kind, mask=m)))
    _, g = f(p, mask)
    assert np.all(np.asarray(g)[~mask] == 0) and np.any(np.asarray(g)[mask] != 0)
    value, g = f(p, np.zeros(16, bool))
    assert float(value) == 0.0 and np.all(np.asarray(g) == 0)


def test_mix_and_unknown_kind():
  p, y = _va(64, seed=4)
  mix = losses.affect_regression_loss(p, y, "mix", mix_alpha=0.25, dim_weights=[1.0, 2.0])
  expected = (0.25 * losses.mse_loss(p, y, dim_weights=[1.0, 2.0])
              + 0.75 * losses.ccc_loss(p, y, dim_weights=[1.0, 2.0]))
  np.testing.assert_allclose(mix, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown affect loss kind 'huber'.*'ccc'"):
    losses.affect_regression_loss(p, y, "huber")
  with pytest.raises(ValueError, match="mix_alpha=1.5"):
    losses.affect_regression_loss(p, y, "mix", mix_alpha=1.5)
  with pytest.raises(ValueError, match=r"predictions shape \(64, 2\) != labels shape \(64,\)"):
    losses.ccc_loss(p, y[:, 0])
  with pytest.raises(ValueError, match="dim_weights has 3 entries for 2 dimensions"):
    losses.mse_loss(p, y, dim_weights=[1.0, 1.0, 1.0])


def _emotic_reference(pred, target, c=1.2, stat="count", absent=1e-4, reduction="mean", mask=None):
  """Loop over the definition: w_i = 1 / ln(c + s_i) from the kept examples' positives."""
  keep = np.ones(len(pred), bool) if mask is None else mask
  pred, target = pred[keep], target[keep]
  b, k = pred.shape
  total = 0.0
  for i in range(k):
    n_i = target[:, i].sum()
    s_i = n_i if stat == "count" else n_i / b
    w_i = absent if (n_i == 0 and absent is not None) else 1.0 / np.log(c + s_i)
    for j in range(b):
      total += w_i * (pred[j, i] - target[j, i]) ** 2
  return total if reduction == "sum" else total / b


def test_emotic_weighted_l2_against_reference_loop():
  rng = np.random.default_rng(5)
  target = (rng.random((24, 26)) < rng.uniform(0.02, 0.3, 26)).astype(np.float32)
  target[:, 7] = 0  # a category absent from the batch
  pred = rng.random((24, 26)).astype(np.float32)
  loss = losses.emotic_weighted_l2_loss
  np.testing.assert_allclose(loss(pred, target, "dynamic"), _emotic_reference(pred, target), rtol=1e-5)
  np.testing.assert_allclose(loss(pred, target, "dynamic", reduction="sum"),
                             _emotic_reference(pred, target, reduction="sum"), rtol=1e-5)
  np.testing.assert_allclose(loss(pred, target, "dynamic", dynamic_stat="frequency", absent_weight=None),
                             _emotic_reference(pred, target, stat="frequency", absent=None), rtol=1e-5)
  np.testing.assert_allclose(loss(pred, target, "dynamic", c=2.0),
                             _emotic_reference(pred, target, c=2.0), rtol=1e-5)
  mask = rng.random(24) < 0.6
  np.testing.assert_allclose(loss(pred, target, "dynamic", mask=mask),
                             _emotic_reference(pred, target, mask=mask), rtol=1e-5)
  # None: unweighted sum over categories, mean over examples; a static (K,) weight vector.
  np.testing.assert_allclose(loss(pred, target), np.mean(np.sum((pred - target) ** 2, 1)), rtol=1e-5)
  static = rng.uniform(0.1, 0.2, 26)
  np.testing.assert_allclose(loss(pred, target, static), np.mean(((pred - target) ** 2 * static).sum(1)),
                             rtol=1e-5)
  w = losses.emotic_dynamic_weights(target)
  assert float(w[7]) == pytest.approx(1e-4)
  np.testing.assert_allclose(w[0], 1 / np.log(1.2 + target[:, 0].sum()), rtol=1e-6)


def test_emotic_gradient_and_errors():
  rng = np.random.default_rng(6)
  target = (rng.random((8, 26)) < 0.2).astype(np.float32)
  pred = rng.random((8, 26)).astype(np.float32)
  g = jax.grad(lambda q: losses.emotic_weighted_l2_loss(q, jnp.asarray(target), "dynamic"))(jnp.asarray(pred))
  w = np.asarray(losses.emotic_dynamic_weights(target))
  np.testing.assert_allclose(g, 2 * w * (pred - target) / 8, rtol=1e-5)
  with pytest.raises(ValueError, match=r"pred shape \(8, 26\) and target shape \(8, 3\)"):
    losses.emotic_weighted_l2_loss(pred, target[:, :3])
  with pytest.raises(ValueError, match=r"weights shape \(3,\); expected \(26,\)"):
    losses.emotic_weighted_l2_loss(pred, target, np.ones(3))
  with pytest.raises(ValueError, match="weights='static'"):
    losses.emotic_weighted_l2_loss(pred, target, "static")
  with pytest.raises(ValueError, match="c=1.0 must be > 1"):
    losses.emotic_weighted_l2_loss(pred, target, "dynamic", c=1.0)
  with pytest.raises(ValueError, match=r"mask shape \(7,\) must be \(8,\)"):
    losses.emotic_weighted_l2_loss(pred, target, mask=np.ones(7))
