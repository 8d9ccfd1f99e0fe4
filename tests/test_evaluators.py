"""Evaluators (``fer_jax.evaluators``, ``EVALUATORS``) on precomputed predictions, against scikit-learn / NumPy.

Each evaluator is built as ``Cls(task, name, **options)`` with a fake task and run on a list of host
batches through a ``predict_fn`` that returns precomputed arrays; padded rows (mask False) carry values
that would change every metric if they were counted.
"""

from __future__ import annotations

import json
import os
import types
import warnings

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, precision_recall_fscore_support)

from fer_jax.evaluators.base import EvalSpec, build_evaluators, parse_evals
from fer_jax.registry import EVALUATORS


def _batches(arrays, sizes):
  """Splits {name: (N, ...)} into host batches of the given sizes, each tagged with its row indices."""
  out, start = [], 0
  for n in sizes:
    out.append({"index": np.arange(start, start + n), **{k: v[start:start + n] for k, v in arrays.items()}})
    start += n
  assert start == len(next(iter(arrays.values())))
  return out


def _predict_from(outputs):
  """predict_fn returning the precomputed outputs of the batch's rows (and counting its calls)."""
  calls = []

  def predict_fn(batch):
    calls.append(len(batch["index"]))
    return {k: v[batch["index"]] for k, v in outputs.items()}

  predict_fn.calls = calls
  return predict_fn


def _png_ok(path):
  assert os.path.isfile(path), path
  assert os.path.getsize(path) > 1000, os.path.getsize(path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_registered_evaluators():
  assert {"classification", "affect", "multilabel", "action_units"} <= set(EVALUATORS.names())


# ----------------------------------------------------------------------------- classification

CLASS_NAMES = ["anger", "happy", "sad", "neutral"]


def _classification_data(seed=0, n=41):
  r = np.random.default_rng(seed)
  labels = r.integers(0, 3, n)  # 'neutral' (3) never a label
  predictions = np.where(r.uniform(size=n) < 0.6, labels, r.integers(0, 4, n))
  mask = np.ones(n, bool)
  mask[[i for i in (3, 17, 40) if i < n]] = False  # padding: wrong predictions that would count if kept
  predictions[~mask] = (labels[~mask] + 1) % 4
  return {"predictions": predictions, "labels": labels, "mask": mask}


def test_classification_matches_sklearn(tmp_path):
  data = _classification_data()
  task = types.SimpleNamespace(num_classes=4, class_names=CLASS_NAMES)
  ev = EVALUATORS.get("classification")(task, "val")
  predict_fn = _predict_from(data)
  result = ev.run(predict_fn, _batches(data, [16, 16, 9]))
  assert predict_fn.calls == [16, 16, 9]
  keep = data["mask"]
  y, p = data["labels"][keep], data["predictions"][keep]
  labels = list(range(4))
  precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
  macro = f1_score(y, p, labels=labels, average="macro", zero_division=0)
  cm = confusion_matrix(y, p, labels=labels)
  np.testing.assert_array_equal(result["confusion_matrix"], cm)
  s = result["scores"]
  np.testing.assert_allclose(s["accuracy"], accuracy_score(y, p), rtol=1e-12)
  np.testing.assert_allclose(s["precision"], precision, rtol=1e-12)
  np.testing.assert_allclose(s["recall"], recall, rtol=1e-12)
  np.testing.assert_allclose(s["f1"], f1, rtol=1e-12)
  np.testing.assert_array_equal(s["support"], support)
  np.testing.assert_allclose(s["macro_f1"], macro, rtol=1e-12)
  np.testing.assert_allclose(s["balanced_accuracy"], balanced_accuracy_score(y, p), rtol=1e-12)

  scalars = ev.scalars(result)
  assert set(scalars) == {"accuracy", "macro_f1", "balanced_accuracy"} | {f"f1_{n}" for n in CLASS_NAMES}
  np.testing.assert_allclose(scalars["balanced_accuracy"], balanced_accuracy_score(y, p), rtol=1e-12)
  np.testing.assert_allclose(scalars["f1_sad"], f1[2], rtol=1e-12)

  js = ev.to_json(result)
  json.dumps(js)  # plain JSON types only
  assert js["class_names"] == CLASS_NAMES and js["confusion_matrix"] == cm.tolist()
  np.testing.assert_allclose(js["accuracy"], accuracy_score(y, p), rtol=1e-12)
  np.testing.assert_allclose(js["macro_f1"], macro, rtol=1e-12)
  np.testing.assert_allclose(js["balanced_accuracy"], balanced_accuracy_score(y, p), rtol=1e-12)
  for i, n in enumerate(CLASS_NAMES):
    row = js["per_class"][n]
    np.testing.assert_allclose([row["precision"], row["recall"], row["f1"]], [precision[i], recall[i], f1[i]],
                               rtol=1e-12)
    assert row["support"] == support[i] and isinstance(row["support"], int)
  assert js["per_class"]["neutral"]["support"] == 0
  assert js["summary"] == ev.summary(result) == f"accuracy {accuracy_score(y, p):.4f}  macro-F1 {macro:.4f}"
  report = ev.report(result)
  assert all(n in report for n in CLASS_NAMES) and f"{macro:.4f}" in report

  images = ev.plots(result, str(tmp_path), "val", 100)
  assert set(images) == {"confusion_matrix"}
  assert images["confusion_matrix"].dtype == np.uint8 and images["confusion_matrix"].shape[-1] == 3
  _png_ok(tmp_path / "confusion_matrix_val.png")


def test_classification_batches_may_be_fully_padded():
  data = _classification_data(1, n=20)
  data["mask"][8:12] = False
  task = types.SimpleNamespace(num_classes=4, class_names=CLASS_NAMES)
  result = EVALUATORS.get("classification")(task, "val").run(_predict_from(data), _batches(data, [8, 4, 8]))
  keep = data["mask"]
  np.testing.assert_array_equal(result["confusion_matrix"],
                                confusion_matrix(data["labels"][keep], data["predictions"][keep],
                                                 labels=range(4)))


def test_classification_rejects_out_of_range_labels():
  data = {"predictions": np.array([0, 1, 2]), "labels": np.array([0, -1, 2]), "mask": np.ones(3, bool)}
  task = types.SimpleNamespace(num_classes=4, class_names=CLASS_NAMES)
  with pytest.raises(ValueError, match=r"[Ll]abel -1"):
    EVALUATORS.get("classification")(task, "val").run(_predict_from(data), _batches(data, [3]))


# ----------------------------------------------------------------------------- affect


def _np_affect(p, y):
  """Population-moment RMSE / Pearson CC / CCC / SAGR per dimension (columns)."""
  p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
  rmse = np.sqrt(((p - y) ** 2).mean(0))
  pcc = np.array([np.corrcoef(p[:, d], y[:, d])[0, 1] for d in range(p.shape[1])])
  mp, my = p.mean(0), y.mean(0)
  cov = ((p - mp) * (y - my)).mean(0)
  ccc = 2 * cov / (p.var(0) + y.var(0) + (mp - my) ** 2)
  sagr = (np.sign(p) == np.sign(y)).mean(0)
  return {"rmse": rmse, "pcc": pcc, "ccc": ccc, "sagr": sagr}


def _affect_data(seed=0):
  """Three videos cut into overlapping clips of T = 4 frames, plus one fully padded clip.

  Returns the clip outputs (B, T) and the per-(video, frame) truth: label, and the mean of the
  predictions of the frame's occurrences.
  """
  r = np.random.default_rng(seed)
  lengths = {7: 10, 2: 7, 11: 6}  # video id -> frames
  t = 4
  truth = {}
  clips = {"video": [], "frame_index": [], "predictions": [], "targets": [], "mask": []}
  for v, n in lengths.items():
    labels = r.uniform(-1, 1, size=(n, 2))
    occurrences = {f: [] for f in range(n)}
    for start in range(0, n, 3):  # stride 3 < T: overlapping clips; the last one is padded
      idx = np.arange(start, start + t)
      valid = idx < n
      fi = np.where(valid, idx, 0)
      pred = 0.7 * labels[fi] + 0.3 * r.normal(size=(t, 2))
      pred[~valid] = 9.0  # padding that would wreck every metric
      for f, pr, ok in zip(fi, pred, valid):
        if ok:
          occurrences[f].append(pr)
      clips["video"].append(v)
      clips["frame_index"].append(fi)
      clips["predictions"].append(pred)
      clips["targets"].append(np.where(valid[:, None], labels[fi], -5.0))
      clips["mask"].append(valid)
    for f in range(n):
      truth[(v, f)] = (labels[f], np.mean(occurrences[f], 0))
  # A whole padded clip (e.g. the end of the last global batch): 4 + 3 + 2 + 1 = 10 clips.
  clips["video"].append(0)
  clips["frame_index"].append(np.zeros(t, int))
  clips["predictions"].append(np.full((t, 2), 9.0))
  clips["targets"].append(np.full((t, 2), 3.0))
  clips["mask"].append(np.zeros(t, bool))
  arrays = {k: np.asarray(v) for k, v in clips.items()}
  arrays["predictions"] = arrays["predictions"].astype(np.float32)
  arrays["targets"] = arrays["targets"].astype(np.float32)
  return arrays, truth


def test_affect_matches_numpy(tmp_path):
  arrays, truth = _affect_data()
  names = ("valence", "arousal")
  ev = EVALUATORS.get("affect")(types.SimpleNamespace(names=names), "test")
  batches = _batches(arrays, [3, 3, 3, 1])
  video_names = {7: "clip_seven", 2: "clip_two", 11: "clip_eleven", 0: "pad"}
  for b in batches:  # host-local names, as bytes (tf.data strings)
    b["video_name"] = np.array([video_names[int(v)].encode() for v in b["video"]], object)
  result = ev.run(_predict_from(arrays), batches)

  keys = sorted(truth)
  np.testing.assert_array_equal(np.stack([result["video"], result["frame_index"]], 1), np.array(keys))
  y = np.stack([truth[k][0] for k in keys])
  p = np.stack([truth[k][1] for k in keys])
  np.testing.assert_allclose(result["labels"], y, atol=1e-6)
  np.testing.assert_allclose(result["predictions"], p, atol=1e-6)  # repeated frames averaged

  s = result["scores"]
  assert s["num_frames"] == len(keys) == 23 and s["num_videos"] == 3
  pooled = _np_affect(p, y)
  per_video = {v: _np_affect(p[result["video"] == v], y[result["video"] == v]) for v in (2, 7, 11)}
  for d, n in enumerate(names):
    for m in ("rmse", "pcc", "ccc", "sagr"):
      np.testing.assert_allclose(s["pooled"][n][m], pooled[m][d], rtol=1e-5, err_msg=f"pooled {n} {m}")
      np.testing.assert_allclose(s["video_mean"][n][m], np.mean([per_video[v][m][d] for v in per_video]),
                                 rtol=1e-5, err_msg=f"video mean {n} {m}")
      for v in per_video:
        np.testing.assert_allclose(s["per_video"][v][n][m], per_video[v][m][d], rtol=1e-5)
  assert {v: s["per_video"][v]["num_frames"] for v in (2, 7, 11)} == {2: 7, 7: 10, 11: 6}

  scalars = ev.scalars(result)
  assert len(scalars) == 2 * 4 * 2
  np.testing.assert_allclose(scalars["ccc_arousal"], pooled["ccc"][1], rtol=1e-5)
  np.testing.assert_allclose(scalars["video_mean_rmse_valence"],
                             np.mean([per_video[v]["rmse"][0] for v in per_video]), rtol=1e-5)

  js = ev.to_json(result)
  json.dumps(js)
  assert js["num_frames"] == 23 and js["num_videos"] == 3
  assert set(js["per_video"]) == {"clip_seven", "clip_two", "clip_eleven"}
  np.testing.assert_allclose(js["per_video"]["clip_two"]["valence"]["pcc"], per_video[2]["pcc"][0], rtol=1e-5)
  assert js["summary"] == ev.summary(result)
  assert f"CCC {pooled['ccc'][0]:.4f}" in js["summary"] and f"SAGR {pooled['sagr'][1]:.4f}" in js["summary"]
  assert "23 frames in 3 videos" in ev.report(result)

  images = ev.plots(result, str(tmp_path), "test", 5)
  assert set(images) == {"va_scatter", "va_timeseries"}
  _png_ok(tmp_path / "va_scatter_test.png")
  _png_ok(tmp_path / "va_timeseries_test.png")
  with np.load(tmp_path / "predictions_test.npz") as npz:
    np.testing.assert_allclose(npz["predictions"], p, atol=1e-6)
    np.testing.assert_allclose(npz["labels"], y, atol=1e-6)
    np.testing.assert_array_equal(npz["frame_index"], result["frame_index"])
    assert list(npz["names"]) == list(names)
    assert set(npz["video"]) == {"clip_seven", "clip_two", "clip_eleven"}


def test_affect_without_video_names_uses_ids():
  arrays, _ = _affect_data(1)
  ev = EVALUATORS.get("affect")(types.SimpleNamespace(names=("valence", "arousal")), "test")
  result = ev.run(_predict_from(arrays), _batches(arrays, [10]))
  assert set(ev.to_json(result)["per_video"]) == {"2", "7", "11"}


def test_affect_conflicting_labels_raise():
  arrays, _ = _affect_data(2)
  arrays["targets"][1, 0] += 0.5  # clip 1 re-labels frame 3 of video 7, also in clip 0
  ev = EVALUATORS.get("affect")(types.SimpleNamespace(names=("valence", "arousal")), "test")
  with pytest.raises(ValueError, match=r"The same \(video, frame\) has different labels in different clips"):
    ev.run(_predict_from(arrays), _batches(arrays, [10]))


# ----------------------------------------------------------------------------- multilabel

LABEL_NAMES = ["joy", "fear", "pain", "peace", "surprise"]


def _multilabel_data(seed=0, n=30):
  r = np.random.default_rng(seed)
  labels = (r.uniform(size=(n, 5)) < 0.35).astype(np.float32)
  labels[:, 3] = 0.0  # no positive among the kept rows
  scores = (labels + r.normal(size=(n, 5))).astype(np.float32)
  scores[:, 4] = np.round(scores[:, 4])  # ties
  mask = np.ones(n, bool)
  mask[[i for i in (0, 9, 29) if i < n]] = False
  labels[~mask] = 1.0  # padding with perfect positives that would change every AP
  scores[~mask] = 50.0
  return {"scores": scores, "labels": labels, "mask": mask}


def test_multilabel_matches_sklearn():
  data = _multilabel_data()
  ev = EVALUATORS.get("multilabel")(types.SimpleNamespace(label_names=LABEL_NAMES), "val")
  result = ev.run(_predict_from(data), _batches(data, [12, 12, 6]))
  keep = data["mask"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sklearn warns about the label without positives (AP 0)
    ap = np.array([average_precision_score(data["labels"][keep, k], data["scores"][keep, k]) for k in range(5)])
  assert ap[3] == 0.0
  np.testing.assert_allclose(result["ap"], ap, rtol=1e-12)
  np.testing.assert_allclose(result["map"], ap.mean(), rtol=1e-12)
  scalars = ev.scalars(result)
  assert set(scalars) == {"map"} | {f"ap_{n}" for n in LABEL_NAMES}
  np.testing.assert_allclose(scalars["ap_surprise"], ap[4], rtol=1e-12)
  js = ev.to_json(result)
  json.dumps(js)
  assert list(js["ap"]) == LABEL_NAMES
  np.testing.assert_allclose([js["ap"][n] for n in LABEL_NAMES], ap, rtol=1e-12)
  assert js["summary"] == ev.summary(result) == f"mAP {ap.mean():.4f}"


def test_multilabel_falls_back_to_class_names_and_needs_batches():
  data = _multilabel_data(1, n=8)
  ev = EVALUATORS.get("multilabel")(types.SimpleNamespace(label_names=None, class_names=LABEL_NAMES), "val")
  assert ev.label_names == LABEL_NAMES
  assert set(ev.to_json(ev.run(_predict_from(data), _batches(data, [8])))["ap"]) == set(LABEL_NAMES)
  with pytest.raises(ValueError, match="no evaluation batches"):
    ev.run(_predict_from(data), [])


# ----------------------------------------------------------------------------- action units

AU_NAMES = ("AU1", "AU4", "AU6", "AU12")


def _au_data(seed=0, n=40):
  r = np.random.default_rng(seed)
  targets = np.where(r.uniform(size=(n, 4)) < 0.5, 0.0, r.uniform(0, 1, size=(n, 4))).astype(np.float32)
  predictions = np.clip(targets + 0.25 * r.normal(size=(n, 4)), 0, 1).astype(np.float32)
  mask = np.ones(n, bool)
  mask[[i for i in (5, 6, 38, 39) if i < n]] = False
  predictions[~mask] = 1.0  # padding far from its targets
  targets[~mask] = 0.0
  return {"predictions": predictions, "targets": targets, "mask": mask}


@pytest.mark.parametrize("threshold_option", [None, 0.5])
def test_action_units_match_numpy_and_sklearn(tmp_path, threshold_option):
  data = _au_data()
  task = types.SimpleNamespace(au_names=AU_NAMES, threshold=0.1)
  options = {} if threshold_option is None else {"threshold": threshold_option}
  ev = EVALUATORS.get("action_units")(task, "val", **options)
  threshold = 0.1 if threshold_option is None else threshold_option
  assert ev.threshold == threshold
  result = ev.run(_predict_from(data), _batches(data, [16, 16, 8]))
  keep = data["mask"]
  p, y = data["predictions"][keep].astype(np.float64), data["targets"][keep].astype(np.float64)
  pcc = np.array([np.corrcoef(p[:, k], y[:, k])[0, 1] for k in range(4)])
  mae = np.abs(p - y).mean(0)
  ap = np.array([average_precision_score(y[:, k] > threshold, p[:, k]) for k in range(4)])
  np.testing.assert_allclose(result["pcc"], pcc, rtol=1e-5)
  np.testing.assert_allclose(result["mae"], mae, rtol=1e-5)
  np.testing.assert_allclose(result["ap"], ap, rtol=1e-12)
  np.testing.assert_allclose(result["map"], ap.mean(), rtol=1e-12)
  assert result["count"] == keep.sum() == 36

  scalars = ev.scalars(result)
  assert set(scalars) == {"mean_pcc", "mean_mae", "map"} | {f"{m}_{n}" for m in ("pcc", "mae", "ap")
                                                            for n in AU_NAMES}
  np.testing.assert_allclose(scalars["mean_pcc"], pcc.mean(), rtol=1e-5)
  np.testing.assert_allclose(scalars["mae_AU6"], mae[2], rtol=1e-5)
  js = ev.to_json(result)
  json.dumps(js)
  assert js["presence_threshold"] == threshold and js["num_examples"] == 36
  np.testing.assert_allclose(js["mean_mae"], mae.mean(), rtol=1e-5)
  np.testing.assert_allclose(js["map"], ap.mean(), rtol=1e-12)
  np.testing.assert_allclose([js["per_au"][n]["pcc"] for n in AU_NAMES], pcc, rtol=1e-5)
  np.testing.assert_allclose([js["per_au"][n]["ap"] for n in AU_NAMES], ap, rtol=1e-12)
  assert js["summary"] == ev.summary(result) == (
      f"AU mean CC {pcc.mean():.4f}  mean MAE {mae.mean():.4f}  presence mAP {ap.mean():.4f}")
  assert all(n in ev.report(result) for n in AU_NAMES)
  if threshold_option is None:
    images = ev.plots(result, str(tmp_path), "val", 7)
    assert set(images) == {"action_units"}
    _png_ok(tmp_path / "action_units_val.png")


def test_action_units_no_examples():
  data = _au_data(1, n=8)
  data["mask"][:] = False
  ev = EVALUATORS.get("action_units")(types.SimpleNamespace(au_names=AU_NAMES, threshold=0.0), "au_val")
  with pytest.raises(ValueError, match=r"evaluator 'au_val': no evaluation examples"):
    ev.run(_predict_from(data), _batches(data, [8]))


# ----------------------------------------------------------------------------- config.evals


def test_parse_evals_fields():
  specs = parse_evals({"val": {"type": "classification", "split": "validation", "every_steps": 500},
                       "test": {"type": "action_units", "split": "test", "final": False, "optional": True,
                                "every_steps": None, "threshold": 0.3}})
  assert specs == [
      EvalSpec(name="val", type="classification", split="validation", every_steps=500, final=True,
               optional=False, options={}),
      EvalSpec(name="test", type="action_units", split="test", every_steps=0, final=False, optional=True,
               options={"threshold": 0.3})]
  assert parse_evals(None) == [] and parse_evals({}) == []


@pytest.mark.parametrize("spec,missing", [
    ({"split": "validation"}, "type"),
    ({"type": "classification"}, "split"),
    ({"type": "classification", "split": ""}, "split"),
])
def test_parse_evals_missing_fields(spec, missing):
  with pytest.raises(ValueError, match=rf"config.evals.val has no '{missing}'; e.g. evals.val = "
                                       r"dict\(type='classification', split='validation'\)"):
    parse_evals({"val": spec})


def test_parse_evals_unknown_type_lists_known_ones():
  with pytest.raises(KeyError, match=r"Unknown evaluator 'clasification'\. Did you mean \['classification'\]\? "
                                     r"Known evaluators: \['action_units', 'affect', 'binary', 'classification', "
                                     r"'emotic', 'multilabel'"):
    parse_evals({"val": {"type": "clasification", "split": "validation"}})


def test_build_evaluators_options():
  task = types.SimpleNamespace(num_classes=4, class_names=CLASS_NAMES, au_names=AU_NAMES, threshold=0.0)
  built = build_evaluators(task, {"au": {"type": "action_units", "split": "test", "threshold": 0.4}})
  (spec, ev), = built
  assert spec.name == "au" and type(ev) is EVALUATORS.get("action_units") and ev.threshold == 0.4
  with pytest.raises(ValueError, match=r"config.evals.val: unknown option\(s\) \['bins', 'top_k'\] for "
                                       r"evaluator ClassificationEvaluator"):
    build_evaluators(task, {"val": {"type": "classification", "split": "validation", "top_k": 2, "bins": 3}})
  with pytest.raises(ValueError, match=r"config.evals.v: unknown option\(s\) \['threshold'\] for evaluator "
                                       r"MultiLabelEvaluator"):
    EVALUATORS.get("multilabel")(task, "v", threshold=0.5)
