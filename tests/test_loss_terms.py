"""Named loss terms (``fer_jax.losses.terms``, ``LOSSES``) and ``build_loss``, against NumPy references.

References are written here from the formulas (softmax cross-entropy with smoothed one-hot targets, the
ArcFace target logit s cos(theta_y + m), population-moment CCC, sigmoid BCE, EMOTIC's 1 / ln(1.2 + n_i)
weights) and, for the weighted BCE, PyTorch's ``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax.losses.terms import build_loss
from fer_jax.registry import LOSSES

B, K = 6, 4


def _rng(seed):
  return np.random.default_rng(seed)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _np_ce(logits, labels, smoothing=0.0, mask=None):
  k = logits.shape[-1]
  targets = (1 - smoothing) * np.eye(k)[labels] + smoothing / k
  per = -(targets * _np_log_softmax(logits)).sum(-1)
  w = np.ones(len(labels)) if mask is None else np.asarray(mask, np.float64)
  return (per * w).sum() / max(w.sum(), 1.0)


def _term(name, outputs, batch, **options):
  return float(LOSSES.get(name)(outputs, batch, **options))


def _one(name, outputs, batch, **options):
  """The value of a single term through ``build_loss`` (checks that total == value for weight 1)."""
  total, values = build_loss({name: {"weight": 1.0, **options}})(outputs, batch)
  assert set(values) == {name}
  np.testing.assert_allclose(float(total), float(values[name]), rtol=1e-7)
  return float(total)


def test_registered_terms():
  assert {"ce", "sentiment", "arcface", "sa", "mse", "ccc", "multilabel", "emotic_l2",
          "au_mse"} <= set(LOSSES.names())


# ----------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_ce_matches_numpy(smoothing):
  logits = _rng(0).normal(size=(B, K)).astype(np.float32) * 3
  labels = np.array([0, 3, 1, 2, 2, 0])
  got = _one("ce", {"logits": jnp.asarray(logits)}, {"label": jnp.asarray(labels)}, label_smoothing=smoothing)
  np.testing.assert_allclose(got, _np_ce(logits, labels, smoothing), rtol=1e-5)


def test_ce_mask_keeps_only_marked_rows():
  logits = _rng(1).normal(size=(B, K)).astype(np.float32) * 3
  labels = np.array([0, 3, 1, 2, 2, 0])
  mask = np.array([1, 0, 1, 1, 0, 1], bool)
  batch = {"label": jnp.asarray(labels), "valid": jnp.asarray(mask)}
  got = _one("ce", {"logits": jnp.asarray(logits)}, batch, label_smoothing=0.1, mask="valid")
  np.testing.assert_allclose(got, _np_ce(logits[mask], labels[mask], 0.1), rtol=1e-5)
  # All rows masked: 0 (not NaN).
  batch["valid"] = jnp.zeros(B, bool)
  assert _one("ce", {"logits": jnp.asarray(logits)}, batch, mask="valid") == 0.0


def test_ce_gradient_is_softmax_minus_targets():
  logits = _rng(2).normal(size=(B, K)).astype(np.float32)
  labels = np.array([1, 1, 0, 3, 2, 0])
  loss_fn = build_loss({"ce": {"label_smoothing": 0.2}})
  grad = jax.grad(lambda z: loss_fn({"logits": z}, {"label": jnp.asarray(labels)})[0])(jnp.asarray(logits))
  p = np.exp(_np_log_softmax(logits))
  targets = 0.8 * np.eye(K)[labels] + 0.2 / K
  np.testing.assert_allclose(np.asarray(grad), (p - targets) / B, atol=1e-6)


def test_ce_prediction_and_target_overrides():
  logits = _rng(3).normal(size=(B, K)).astype(np.float32)
  labels = np.array([3, 2, 1, 0, 0, 1])
  got = _one("ce", {"crop_logits": jnp.asarray(logits)}, {"y": jnp.asarray(labels)},
             prediction="crop_logits", target="y")
  np.testing.assert_allclose(got, _np_ce(logits, labels), rtol=1e-5)


def test_ce_bad_label_smoothing():
  with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1\.0"):
    _term("ce", {"logits": jnp.zeros((B, K))}, {"label": jnp.zeros(B, jnp.int32)}, label_smoothing=1.0)


def test_sentiment_term_reads_its_own_fields():
  logits = _rng(4).normal(size=(B, 3)).astype(np.float32)
  sentiment = np.array([0, 2, 1, 1, 0, 2])
  outputs = {"sentiment_logits": jnp.asarray(logits), "logits": jnp.zeros((B, K))}
  got = _one("sentiment", outputs, {"sentiment": jnp.asarray(sentiment), "label": jnp.zeros(B, jnp.int32)},
             label_smoothing=0.05)
  np.testing.assert_allclose(got, _np_ce(logits, sentiment, 0.05), rtol=1e-5)


# ----------------------------------------------------------------------------- arcface


def _np_arcface(cos, labels, s=64.0, m=0.5, m3=0.0, easy_margin=False, smoothing=0.0):
  """ArcFace (Deng et al. eq. 4, insightface's fallback): target logit s (cos(theta_y + m) - m3)."""
  cos = np.asarray(cos, np.float64)
  logits = s * cos.copy()
  losses = []
  for i, y in enumerate(labels):
    if y < 0:
      continue
    c = cos[i, y]
    theta = np.arccos(c)
    if easy_margin:
      psi = np.cos(theta + m) - m3 if c > 0 else c
    elif theta + m <= np.pi:
      psi = np.cos(theta + m) - m3
    else:  # past pi cos(theta + m) is not monotonic: insightface uses cos(theta) - m sin(m)
      psi = c - m * np.sin(m) - m3
    logits[i, y] = s * psi
    losses.append(_np_ce(logits[i:i + 1], np.array([y]), smoothing))
  return float(np.mean(losses)) if losses else 0.0


def _cosines(seed=5):
  c = _rng(seed).uniform(-0.9, 0.9, size=(B, K))
  c[2, 1] = -0.95  # theta + 0.5 > pi: the fallback branch
  c[4, 3] = 0.999  # near theta = 0
  return c.astype(np.float32)


@pytest.mark.parametrize("options", [
    {},  # s = 64, m = 0.5
    {"scale": 30.0, "m2": 0.3},
    {"scale": 16.0, "m2": 0.5, "label_smoothing": 0.1},
    {"scale": 10.0, "m2": 0.4, "easy_margin": True},
    {"scale": 20.0, "m2": 0.0, "m3": 0.35},  # CosFace
])
def test_arcface_matches_numpy(options):
  cos = _cosines()
  labels = np.array([0, 2, 1, 3, 3, 1])
  got = _one("arcface", {"cosine": jnp.asarray(cos)}, {"label": jnp.asarray(labels, jnp.int32)}, **options)
  expected = _np_arcface(cos, labels, s=options.get("scale", 64.0), m=options.get("m2", 0.5),
                         m3=options.get("m3", 0.0), easy_margin=options.get("easy_margin", False),
                         smoothing=options.get("label_smoothing", 0.0))
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_arcface_ignores_rows_labelled_minus_one():
  cos = _cosines(6)
  labels = np.array([0, -1, 1, -1, 3, 1])
  got = _one("arcface", {"cosine": jnp.asarray(cos)}, {"label": jnp.asarray(labels, jnp.int32)}, scale=8.0)
  np.testing.assert_allclose(got, _np_arcface(cos, labels, s=8.0), rtol=1e-5)


def test_arcface_errors():
  with pytest.raises(ValueError, match=r"m2 must be in \[0, pi\)"):
    _term("arcface", {"cosine": jnp.zeros((B, K))}, {"label": jnp.zeros(B, jnp.int32)}, m2=4.0)
  with pytest.raises(ValueError, match=r"label 7 out of range: expected 0\.\.3 for 4 classes"):
    _term("arcface", {"cosine": jnp.zeros((B, K))}, {"label": jnp.full((B,), 7, jnp.int32)})
  with pytest.raises(KeyError, match=r"loss term 'arcface' needs the model output 'cosine'; the model outputs "
                                     r"are \['logits'\]"):
    _term("arcface", {"logits": jnp.zeros((B, K))}, {"label": jnp.zeros(B, jnp.int32)})


# ----------------------------------------------------------------------------- sa


def test_sa_term_is_the_model_output():
  assert _one("sa", {"sa_loss": jnp.asarray(0.375, jnp.bfloat16), "logits": jnp.zeros((B, K))}, {}) == 0.375
  with pytest.raises(KeyError, match=r"loss term 'sa' needs the model output 'sa_loss' \(EmoNeXt backbones "
                                     r"with sa_mode set return it\); the model outputs are \['features', 'logits'\]"):
    _term("sa", {"logits": jnp.zeros((B, K)), "features": jnp.zeros((B, 2))}, {})


# ----------------------------------------------------------------------------- mse / ccc


def _np_mse(p, y, mask=None, dim_weights=None):
  keep = np.ones(len(p), bool) if mask is None else np.asarray(mask, bool)
  per_dim = ((p[keep] - y[keep]) ** 2).mean(0)
  w = np.ones(p.shape[1]) if dim_weights is None else np.asarray(dim_weights, np.float64)
  return (w * per_dim).sum() / w.sum()


def _np_ccc_loss(p, y, mask=None, dim_weights=None):
  keep = np.ones(len(p), bool) if mask is None else np.asarray(mask, bool)
  p, y = p[keep].astype(np.float64), y[keep].astype(np.float64)
  mp, my = p.mean(0), y.mean(0)
  cov = ((p - mp) * (y - my)).mean(0)  # population moments
  ccc = 2 * cov / (p.var(0) + y.var(0) + (mp - my) ** 2)
  w = np.ones(p.shape[1]) if dim_weights is None else np.asarray(dim_weights, np.float64)
  return (w * (1 - ccc)).sum() / w.sum()


def _va(seed, n=8):
  r = _rng(seed)
  y = r.uniform(-1, 1, size=(n, 2)).astype(np.float32)
  p = (0.6 * y + 0.3 * r.normal(size=(n, 2)) + np.array([0.1, -0.2])).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)[:n]
  return p, y, mask


@pytest.mark.parametrize("name,reference", [("mse", _np_mse), ("ccc", _np_ccc_loss)])
@pytest.mark.parametrize("dim_weights", [None, (0.25, 0.75)])
def test_affect_terms_match_numpy(name, reference, dim_weights):
  p, y, mask = _va(7)
  outputs = {"valence_arousal": jnp.asarray(p)}
  batch = {"targets": jnp.asarray(y), "mask": jnp.asarray(mask)}
  # The batch's 'mask' is used by default.
  got = _one(name, outputs, batch, dim_weights=dim_weights)
  np.testing.assert_allclose(got, reference(p, y, mask, dim_weights), rtol=1e-5)
  # mask=None uses every row; a batch without 'mask' too.
  np.testing.assert_allclose(_one(name, outputs, batch, mask=None, dim_weights=dim_weights),
                             reference(p, y, None, dim_weights), rtol=1e-5)
  np.testing.assert_allclose(_one(name, outputs, {"targets": jnp.asarray(y)}, dim_weights=dim_weights),
                             reference(p, y, None, dim_weights), rtol=1e-5)


def test_ccc_of_a_perfect_prediction_is_zero_and_bias_is_penalised():
  y = _va(8)[1]
  batch = {"targets": jnp.asarray(y)}
  assert abs(_one("ccc", {"valence_arousal": jnp.asarray(y)}, batch)) < 1e-6
  # A constant offset c: CCC = 2 var / (2 var + c^2) per dimension.
  c = 0.5
  got = _one("ccc", {"valence_arousal": jnp.asarray(y + c)}, batch)
  var = y.astype(np.float64).var(0)
  np.testing.assert_allclose(got, np.mean(1 - 2 * var / (2 * var + c * c)), rtol=1e-5)


def test_mse_reshapes_prediction_to_target_and_rejects_bad_dim_weights():
  p, y, _ = _va(9)
  got = _one("mse", {"va": jnp.asarray(p.reshape(-1))}, {"va_target": jnp.asarray(y)},
             prediction="va", target="va_target")
  np.testing.assert_allclose(got, _np_mse(p, y), rtol=1e-5)
  with pytest.raises(ValueError, match=r"dim_weights has 3 entries for 2 dimensions"):
    _term("mse", {"valence_arousal": jnp.asarray(p)}, {"targets": jnp.asarray(y)}, dim_weights=(1, 1, 1))
  with pytest.raises(KeyError, match=r"loss term 'ccc' needs the batch field 'targets'; the batch fields are "
                                     r"\['label', 'mask'\]"):
    _term("ccc", {"valence_arousal": jnp.asarray(p)}, {"label": jnp.zeros(8), "mask": jnp.ones(8)})


# ----------------------------------------------------------------------------- multilabel / emotic


def _multilabel_data(seed=10):
  r = _rng(seed)
  logits = (2 * r.normal(size=(B, K))).astype(np.float32)
  y = (r.uniform(size=(B, K)) < 0.4).astype(np.float32)
  return logits, y


@pytest.mark.parametrize("pos_weight", [None, 1.0, 3.5])
def test_multilabel_bce_matches_numpy_and_torch(pos_weight):
  import torch
  logits, y = _multilabel_data()
  got = _one("multilabel", {"multilabel_logits": jnp.asarray(logits)}, {"multi_hot": jnp.asarray(y)},
             **({} if pos_weight is None else {"pos_weight": pos_weight}))
  z, yd = logits.astype(np.float64), y.astype(np.float64)
  log_p, log_not_p = -np.logaddexp(0, -z), -np.logaddexp(0, z)
  pw = 1.0 if pos_weight is None else pos_weight
  np.testing.assert_allclose(got, -(pw * yd * log_p + (1 - yd) * log_not_p).mean(), rtol=1e-5)
  reference = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(z), torch.tensor(yd), pos_weight=torch.full((K,), float(pw), dtype=torch.float64))
  np.testing.assert_allclose(got, reference.item(), rtol=1e-5)


def test_emotic_l2_matches_numpy():
  logits, y = _multilabel_data(11)
  y[:, 2] = 0.0  # a category with no positive in the batch
  outputs, batch = {"multilabel_logits": jnp.asarray(logits)}, {"multi_hot": jnp.asarray(y)}
  sq = (logits.astype(np.float64) - y) ** 2
  np.testing.assert_allclose(_one("emotic_l2", outputs, batch), sq.sum(1).mean(), rtol=1e-5)
  # Dynamic weights: 1 / ln(1.2 + n_i) with n_i the positives of category i, 1e-4 where n_i = 0.
  counts = y.sum(0)
  w = np.where(counts > 0, 1 / np.log(1.2 + counts), 1e-4)
  np.testing.assert_allclose(_one("emotic_l2", outputs, batch, weights="dynamic"), (sq * w).sum(1).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(_one("emotic_l2", outputs, batch, weights="dynamic", reduction="sum"),
                             (sq * w).sum(), rtol=1e-5)


def test_emotic_l2_unknown_option_fails_in_build_loss():
  with pytest.raises(ValueError, match=r"config.loss.emotic_l2 has unknown option\(s\) \['wieghts'\]"):
    build_loss({"emotic_l2": {"weight": 1.0, "wieghts": "dynamic"}})


# ----------------------------------------------------------------------------- au_mse


@pytest.mark.parametrize("present_weight,threshold", [(1.0, 0.0), (4.0, 0.0), (2.5, 0.3)])
def test_au_mse_matches_numpy(present_weight, threshold):
  r = _rng(12)
  y = np.where(r.uniform(size=(B, K)) < 0.5, 0.0, r.uniform(size=(B, K))).astype(np.float32)
  p = np.clip(y + 0.2 * r.normal(size=(B, K)), 0, 1).astype(np.float32)
  got = _one("au_mse", {"au_intensity": jnp.asarray(p)}, {"au_intensity": jnp.asarray(y)},
             present_weight=present_weight, threshold=threshold)
  w = np.where(y > threshold, present_weight, 1.0)
  np.testing.assert_allclose(got, (w * (p.astype(np.float64) - y) ** 2).sum() / w.sum(), rtol=1e-5)
  if present_weight == 1.0:
    np.testing.assert_allclose(got, ((p.astype(np.float64) - y) ** 2).mean(), rtol=1e-5)


def test_au_mse_missing_output():
  with pytest.raises(KeyError, match=r"loss term 'au_mse' needs the model output 'au_intensity'; got \['logits'\]"):
    _term("au_mse", {"logits": jnp.zeros((B, K))}, {"au_intensity": jnp.zeros((B, K))})


# ----------------------------------------------------------------------------- build_loss


def _mixed_inputs():
  logits = _rng(13).normal(size=(B, K)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 0, 1])
  p, y, mask = _va(14, n=B)
  outputs = {"logits": jnp.asarray(logits), "valence_arousal": jnp.asarray(p), "sa_loss": jnp.asarray(0.8)}
  batch = {"label": jnp.asarray(labels), "targets": jnp.asarray(y), "mask": jnp.asarray(mask)}
  return outputs, batch, (logits, labels, p, y, mask)


def test_build_loss_weighted_sum():
  outputs, batch, (logits, labels, p, y, mask) = _mixed_inputs()
  config = {"ce": {"weight": 0.7, "label_smoothing": 0.1}, "mse": {"weight": 2.0},
            "ccc": {"weight": 0.5, "dim_weights": (1.0, 3.0)}, "sa": {}}  # no weight: 1.0
  total, values = build_loss(config)(outputs, batch)
  expected = {"ce": _np_ce(logits, labels, 0.1), "mse": _np_mse(p, y, mask),
              "ccc": _np_ccc_loss(p, y, mask, (1.0, 3.0)), "sa": 0.8}
  assert set(values) == set(expected)
  for k, v in expected.items():
    np.testing.assert_allclose(float(values[k]), v, rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(float(total), 0.7 * expected["ce"] + 2.0 * expected["mse"] +
                             0.5 * expected["ccc"] + expected["sa"], rtol=1e-5)
  # Same under jit.
  jit_total, jit_values = jax.jit(build_loss(config))(outputs, batch)
  np.testing.assert_allclose(float(jit_total), float(total), rtol=1e-5)
  assert set(jit_values) == set(values)


def test_build_loss_accepts_config_dicts():
  outputs, batch, (logits, labels, *_) = _mixed_inputs()
  config = ml_collections.ConfigDict({"ce": {"weight": 2.0, "label_smoothing": 0.2}})
  total, values = build_loss(config)(outputs, batch)
  np.testing.assert_allclose(float(total), 2 * _np_ce(logits, labels, 0.2), rtol=1e-5)


def test_zero_weight_terms_are_not_computed():
  outputs, batch, (logits, labels, *_) = _mixed_inputs()
  del outputs["sa_loss"]
  # 'sa' and 'arcface' would raise (no 'sa_loss', no 'cosine'), but with weight 0 they are never called.
  loss_fn = build_loss({"ce": {"weight": 1.0}, "sa": {"weight": 0.0}, "arcface": {"weight": 0, "scale": 8.0}})
  total, values = loss_fn(outputs, batch)
  assert set(values) == {"ce"}
  np.testing.assert_allclose(float(total), _np_ce(logits, labels), rtol=1e-5)
  with pytest.raises(KeyError, match="sa_loss"):  # the same term with a weight is computed
    build_loss({"ce": {"weight": 1.0}, "sa": {"weight": 0.1}})(outputs, batch)


def test_build_loss_unknown_term_lists_known_ones():
  with pytest.raises(KeyError, match=r"Unknown loss term 'cee'\. Did you mean \[.*'ce'.*\]\? Known loss terms: "
                                     r"\[.*'arcface'.*'au_mse'.*'ccc'.*'mse'.*'sa'.*\]"):
    build_loss({"cee": {"weight": 1.0}})


def test_build_loss_unknown_option_names_it_and_the_accepted_ones():
  with pytest.raises(ValueError, match=r"config.loss.ce has unknown option\(s\) \['smoothing'\]; the 'ce' term "
                                       r"takes 'weight' and \['prediction', 'target', 'label_smoothing', 'mask'\]"):
    build_loss({"ce": {"weight": 1.0, "smoothing": 0.1}})
  # Checked even for a term with weight 0.
  with pytest.raises(ValueError, match=r"config.loss.mse has unknown option\(s\) \['dim_weight'\]; the 'mse' "
                                       r"term takes 'weight' and \[.*'dim_weights'\]"):
    build_loss({"ce": {"weight": 1.0}, "mse": {"weight": 0.0, "dim_weight": (1, 2)}})


def test_build_loss_all_zero_weights():
  with pytest.raises(ValueError, match=r"config.loss has no term with a non-zero weight"):
    build_loss({"ce": {"weight": 0.0}, "sa": {"weight": 0}})
  with pytest.raises(ValueError, match=r"config.loss has no term with a non-zero weight"):
    build_loss({})


def test_build_loss_spec_must_be_a_dict():
  with pytest.raises(ValueError, match=r"config.loss.ce = 1\.0; expected a dict with 'weight' and the term's "
                                       r"options \(known terms: \[.*'ce'"):
    build_loss({"ce": 1.0})


def test_missing_model_output_names_the_key_and_lists_outputs():
  loss_fn = build_loss({"ce": {"weight": 1.0}, "multilabel": {"weight": 1.0}})
  outputs = {"logits": jnp.zeros((B, K)), "features": jnp.zeros((B, 3))}
  batch = {"label": jnp.zeros(B, jnp.int32), "multi_hot": jnp.zeros((B, K))}
  with pytest.raises(KeyError, match=r"loss term 'multilabel' needs the model output 'multilabel_logits'; the "
                                     r"model outputs are \['features', 'logits'\]"):
    loss_fn(outputs, batch)
  with pytest.raises(KeyError, match=r"loss term 'ce' needs the batch field 'label'; the batch fields are "
                                     r"\['multi_hot'\]"):
    loss_fn(outputs, {"multi_hot": jnp.zeros((B, K))})
