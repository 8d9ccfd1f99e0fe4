"""The landmark_sequence task (fer_jax.train.tasks.landmark_sequence): landmark normalisation, jitter,
pruning and displacement against NumPy, the ``bce`` term against its closed form, the ``binary``
evaluator against scikit-learn, option errors, the emotion-bank configs' option parsing, and a short
run of the whole trainer (grain pipeline, sampler, evaluator, files) on a tiny synthetic-clip dataset."""

import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.evaluators import binary as binary_eval
from fer_jax.train.tasks import landmark_sequence as ls
from tfds_builders.synthetic_expressions import Builder as SyntheticBuilder
from tfds_builders.synthetic_expressions import SyntheticExpressionsConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = str(ROOT / "experiments" / "emotion_bank_synthetic.py")
CKPLUS = str(ROOT / "experiments" / "emotion_bank_ckplus.py")


# ------------------------------------------------------------------------------------ NumPy reference


def np_normalize(x, center="frame", rotate=True, scale="iod"):
  """Clip by clip, in float64: centre, rotate by minus the first frame's eye-line angle, scale."""
  out = np.empty(x.shape)
  for b, clip in enumerate(np.asarray(x, np.float64)):
    if center == "frame":
      clip = clip - clip.mean(axis=1, keepdims=True)
    elif center == "first":
      clip = clip - clip[0].mean(axis=0)
    right, left = clip[0, 36:42].mean(0), clip[0, 42:48].mean(0)
    if rotate:
      a = -math.atan2(left[1] - right[1], left[0] - right[0])
      clip = clip @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]).T
    if scale == "iod":
      clip = clip / np.linalg.norm(left - right)
    elif scale == "rms":
      c0 = clip[0] - clip[0].mean(0)
      clip = clip / math.sqrt((c0 ** 2).sum(1).mean())
    out[b] = clip
  return out


def _similarity(x, s, a, t):
  r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  return s * np.asarray(x, np.float64) @ r.T + np.asarray(t)


def _clips(seed=0, b=3, t=5):
  """Face-like clips: iBUG-68 landmarks of synthetic faces (pixels) plus per-frame noise."""
  from fer_jax.data import synthetic
  d = synthetic.sample_sequences(seed, "train", 0, b, num_frames=t, size=48)
  return d["landmarks"] + np.random.default_rng(seed).normal(0, 0.3, d["landmarks"].shape).astype(np.float32)


@pytest.mark.parametrize("center,rotate,scale", [("frame", True, "iod"), ("first", True, "rms"),
                                                 ("frame", False, "none"), ("none", True, "iod")])
def test_normalize_matches_numpy(center, rotate, scale):
  x = _clips()
  got = np.asarray(ls.normalize_landmarks(jnp.asarray(x), center=center, rotate=rotate, scale=scale))
  np.testing.assert_allclose(got, np_normalize(x, center, rotate, scale), rtol=1e-4, atol=1e-4)


def test_normalized_clip_is_invariant_to_a_similarity_and_has_a_level_unit_eye_line():
  x = _clips(1)
  y = np.stack([_similarity(c, s, a, t) for c, s, a, t in
                zip(x, (0.5, 1.7, 3.0), (0.3, -1.2, 2.5), ((10, -4), (0, 0), (-50, 7)))]).astype(np.float32)
  nx = np.asarray(ls.normalize_landmarks(jnp.asarray(x)))
  np.testing.assert_allclose(np.asarray(ls.normalize_landmarks(jnp.asarray(y))), nx, atol=2e-4)
  right, left = nx[:, 0, 36:42].mean(1), nx[:, 0, 42:48].mean(1)
  np.testing.assert_allclose(left[:, 1] - right[:, 1], 0, atol=1e-5)  # level
  np.testing.assert_allclose(left[:, 0] - right[:, 0], 1, atol=1e-5)  # unit inter-ocular distance


def test_degenerate_padding_clip_gives_zeros_not_nan():
  x = np.zeros((2, 4, 68, 2), np.float32)
  x[1] = _clips(2, b=1, t=4)[0]
  out = np.asarray(ls.landmark_features(jnp.asarray(x)))
  assert np.all(np.isfinite(out)) and np.all(out[0] == 0)


def test_features_with_jitter_kept_landmarks_and_displacement_match_numpy():
  x = _clips(3)
  jitter = np.array([[1.04, 0.05, 0.02, -0.01], [0.97, -0.08, 0.0, 0.03], [1.0, 0.0, 0.0, 0.0]], np.float32)
  kept = (48, 54, 36, 45, 8, 30)
  got = np.asarray(ls.landmark_features(jnp.asarray(x), kept=kept, jitter=jnp.asarray(jitter)))
  ref = np_normalize(x)
  ref = np.stack([_similarity(c, s, a, (tx, ty)) for c, (s, a, tx, ty) in zip(ref, jitter)])[:, :, list(kept)]
  ref = np.concatenate([ref, ref - ref[:, :1]], axis=-1)
  assert got.shape == (3, 5, 6, 4)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(got[:, 0, :, 2:], 0)  # no displacement in the first frame


def test_train_transform_draws_one_similarity_per_clip_within_the_ranges():
  c = _synthetic_config("emotion=surprise")
  task = ls.LandmarkSequenceTask(c)
  record = {"landmarks": _clips(4, b=1, t=16)[0], "label": 5, "frames": None}
  tf = task.train_transform(None)
  draws = np.stack([tf.random_map(record, np.random.default_rng(i))["jitter"] for i in range(200)])
  again = tf.random_map(record, np.random.default_rng(7))
  np.testing.assert_array_equal(again["jitter"], draws[7])  # deterministic per example rng
  assert np.abs(draws[:, 0] - 1).max() <= 0.05 and np.abs(draws[:, 0] - 1).max() > 0.04
  assert np.abs(draws[:, 1]).max() <= np.deg2rad(5.0) and np.abs(draws[:, 2:]).max() <= 0.05
  assert again["landmarks"].dtype == np.float32 and again["label"] == 5
  ev = task.eval_transform(None).map(record)
  assert set(ev) == {"landmarks", "label", "mask"}
  with pytest.raises(ValueError, match=r"Record field 'landmarks' has shape \(16, 67, 2\); expected \(16, 68, 2\)"):
    tf.random_map({"landmarks": record["landmarks"][:, :67], "label": 1}, np.random.default_rng(0))


# ------------------------------------------------------------------------------------ loss and metrics


def test_bce_term_equals_the_closed_form():
  z = np.array([[2.0], [-1.0], [0.5], [-3.0]], np.float32)
  y = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
  softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731  -log sigmoid(z) = softplus(-z)
  per = [softplus(-2.0), softplus(-1.0), softplus(-0.5), softplus(3.0)]  # y=0: -log(1 - s(z)) = softplus(z)
  out = {"logits": jnp.asarray(z)}
  batch = {"target": jnp.asarray(y), "mask": jnp.asarray([True, True, False, True])}
  assert float(ls.bce_term(out, batch)) == pytest.approx(np.mean(per), rel=1e-6)
  w = [3.0 * per[0], per[1], 3.0 * per[2], 3.0 * per[3]]
  assert float(ls.bce_term(out, batch, pos_weight=3.0)) == pytest.approx(np.mean(w), rel=1e-6)
  assert float(ls.bce_term(out, batch, pos_weight=3.0, mask="mask")) == pytest.approx(
      (w[0] + w[1] + w[3]) / 3, rel=1e-6)
  assert float(ls.bce_term({"logits": jnp.asarray(z[:, 0])}, batch)) == pytest.approx(np.mean(per), rel=1e-6)
  with pytest.raises(ValueError, match=r"has shape \(4, 2\); expected \(4,\) or \(4, 1\)"):
    ls.bce_term({"logits": jnp.zeros((4, 2))}, batch)
  with pytest.raises(KeyError, match="needs the batch field 'target'"):
    ls.bce_term(out, {"label": jnp.zeros(4)})


def test_binary_scores_match_scikit_learn():
  from sklearn import metrics
  rng = np.random.default_rng(0)
  y = (rng.random(300) < 0.25).astype(int)
  s = np.round(rng.normal(size=300) + 1.2 * y, 1)  # rounded: many ties
  mask = rng.random(300) < 0.9
  got = binary_eval.binary_scores(s, y, mask, threshold=0.3)
  ys, ss = y[mask], s[mask]
  pred = (ss >= 0.3).astype(int)
  assert got["accuracy"] == pytest.approx(metrics.accuracy_score(ys, pred))
  assert got["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(ys, pred))
  assert got["precision"] == pytest.approx(metrics.precision_score(ys, pred))
  assert got["recall"] == pytest.approx(metrics.recall_score(ys, pred))
  assert got["f1"] == pytest.approx(metrics.f1_score(ys, pred))
  assert got["auc"] == pytest.approx(metrics.roc_auc_score(ys, ss))
  assert got["ap"] == pytest.approx(metrics.average_precision_score(ys, ss))
  np.testing.assert_array_equal(got["confusion_matrix"], metrics.confusion_matrix(ys, pred))
  # AUC from all (positive, negative) pairs, ties counting one half.
  diff = ss[ys == 1][:, None] - ss[ys == 0][None, :]
  assert got["auc"] == pytest.approx(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_binary_scores_edge_cases():
  one_class = binary_eval.binary_scores([0.5, -1.0], [0, 0])
  assert math.isnan(one_class["auc"]) and one_class["balanced_accuracy"] == 0.5 and one_class["f1"] == 0.0
  with pytest.raises(ValueError, match="labels must be 0 or 1, got 2 at kept example 1"):
    binary_eval.binary_scores([0.1, 0.2], [1, 2])
  with pytest.raises(ValueError, match="non-finite score at kept example 0"):
    binary_eval.binary_scores([np.nan, 0.2], [1, 0])


# ------------------------------------------------------------------------------------ task and configs


def _synthetic_config(arg):
  return config_utils.load_config_file(f"{SYNTHETIC}:{arg}")


def test_task_targets_and_model_inputs():
  c = _synthetic_config("emotion=fear,landmarks=17-26,48-67")
  task = ls.LandmarkSequenceTask(c)
  assert task.positive_class == 2 and task.class_names == ["rest", "2"] and task.kept == tuple(range(17, 27)) + \
      tuple(range(48, 68))
  x = _clips(5, b=4, t=16)
  out = task.preprocess({"landmarks": jnp.asarray(x), "label": jnp.asarray([2, 0, 2, 7])})
  np.testing.assert_array_equal(out["target"], [1, 0, 1, 0])
  assert out["landmarks"].shape == (4, 16, 30, 4)
  np.testing.assert_allclose(np.asarray(out["landmarks"])[..., :2], np_normalize(x)[:, :, task.kept],
                             rtol=1e-4, atol=1e-4)
  multi = _synthetic_config("emotion=fear")
  multi.task_options.positive_class = None
  multi.loss = {}
  t2 = ls.LandmarkSequenceTask(multi)
  assert t2.default_evaluator == "classification" and t2.loss_terms == ("ce",)
  assert t2.class_names == [str(i) for i in range(8)]
  assert "target" not in t2.preprocess({"landmarks": jnp.asarray(x), "label": jnp.zeros(4, jnp.int32)})


class _Info:
  def __init__(self, features):
    self.features, self.full_name = features, "fake/1.0.0"


class _Builder:
  def __init__(self, landmarks_shape, names):
    import tensorflow_datasets as tfds
    self.info = _Info({"landmarks": tfds.features.Tensor(shape=landmarks_shape, dtype=np.float32),
                       "label": tfds.features.ClassLabel(names=names)})


def test_bad_options_and_datasets_are_named():
  c = _synthetic_config("emotion=happy")
  c.task_options.positive_class = 9
  with pytest.raises(ValueError, match=r"positive_class=9; expected a class id in 0..7"):
    ls.LandmarkSequenceTask(c)
  c = _synthetic_config("emotion=happy")
  c.task_options.landmarks = (3, 70)
  with pytest.raises(ValueError, match=r"task_options.landmarks holds indices \[70\] >= num_landmarks=68"):
    ls.LandmarkSequenceTask(c)
  c = _synthetic_config("emotion=happy")
  c.task_options.augment.scale = 1.5
  with pytest.raises(ValueError, match="expected 0 <= scale < 1"):
    ls.LandmarkSequenceTask(c)
  task = ls.LandmarkSequenceTask(_synthetic_config("emotion=happy"))
  names = ["a", "b", "c", "d", "e", "f", "g", "h"]
  task.bind(_Builder((16, 68, 2), names))
  assert task.class_names == ["rest", "d"]
  with pytest.raises(ValueError, match=r"stores 'landmarks' of shape \(10, 68, 2\); task_options.num_frames=16"):
    task.bind(_Builder((10, 68, 2), names))
  with pytest.raises(ValueError, match=r"has 3 classes .*num_classes=8"):
    task.bind(_Builder((16, 68, 2), names[:3]))


def test_config_options(tmp_path):
  from fer_jax.data import synthetic
  merge = config_utils.load_module(SYNTHETIC)
  assert merge.merge_landmark_lists("landmarks=1,2,5-9,steps=3") == "landmarks=1+2+5-9,steps=3"
  c = _synthetic_config("arch=remo,emotion=7,landmarks=36,39,42-44,steps=10,batch=16")
  assert c.task_options.landmarks == (36, 39, 42, 43, 44) and c.task_options.positive_class == 7
  assert c.model.backbone.random_front_end and c.optimizer.frozen == r"^backbone/conv\d+/"
  assert c.input.sampler.class_weights == (1.0,) * 7 + (7.0,)
  assert c.num_train_steps == 10 and c.input.batch_size == 16 and c.model.head.num_outputs == 1
  b = _synthetic_config("arch=binary,size=base")
  assert b.model.backbone.binary and b.model.backbone.size == "base" and b.optimizer.no_decay_regex == "latent_kernel"
  ranking = tmp_path / "rank.json"
  ranking.write_text(json.dumps({"ranking": [48, 54, 30, 8, 19]}))
  assert _synthetic_config(f"landmarks=3,ranking={ranking}").task_options.landmarks == (48, 54, 30)
  for arg, message in (("landmarks=3", "a single number is a count"),
                       (f"landmarks=9,ranking={ranking}", "expected a count in 1..5"),
                       ("landmarks=5-3", "'5-3' is not an index or an increasing range"),
                       ("landmarks=4,4-6", r"lists landmarks \[4\] twice"),
                       ("landmarks=60-70", r"indices \[68, 69, 70\] are not landmarks"),
                       ("emotion=joy", r"emotion='joy'; expected one of \['angry'"),
                       ("arch=xnor", r"arch='xnor'; expected one of")):
    with pytest.raises(ValueError, match=message):
      _synthetic_config(arg)
  assert synthetic.CLASS_NAMES[_synthetic_config("emotion=contempt").task_options.positive_class] == "contempt"


def test_ckplus_config():
  c = config_utils.load_config_file(f"{CKPLUS}:emotion=sadness,fold=3,arch=binary")
  assert c.dataset.name == "ckplus/crop_48_fold3" and c.dataset.num_classes == 8
  assert c.task_options.landmarks_key == "landmarks_image" and c.task_options.positive_class == 6
  # CK+ has no neutral sequence: neutral is never drawn; half the draws are sadness.
  assert c.input.sampler.class_weights == (0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 6.0, 1.0)
  assert set(c.evals) == {"test"} and c.evals.test.split == "test"
  assert config_utils.load_config_file(f"{CKPLUS}:emotion=anger").dataset.name == "ckplus/crop_48"
  with pytest.raises(ValueError, match=r"fold=10; expected 0..9"):
    config_utils.load_config_file(f"{CKPLUS}:fold=10")
  with pytest.raises(ValueError, match="class 'neutral' has no training examples"):
    config_utils.load_config_file(f"{CKPLUS}:emotion=neutral")
  ckplus = pytest.importorskip("tfds_builders.ckplus.ckplus_dataset_builder")
  assert config_utils.load_module(CKPLUS).EMOTION_NAMES == tuple(ckplus.EMOTION_NAMES)


# ------------------------------------------------------------------------------------ the trainer


class LandmarkClipsToy(SyntheticBuilder):
  """A tiny synthetic-clip dataset (8-px frames: only the landmarks are used) for the trainer test."""

  BUILDER_CONFIGS = [SyntheticExpressionsConfig(name="tiny", image_size=8, train_size=256, validation_size=72,
                                                test_size=0, num_frames=8, chunk_size=128)]
  DEFAULT_CONFIG_NAME = "tiny"

  def dataset_info_from_configs(self, **kwargs):  # no README / CITATIONS beside a test module
    import tensorflow_datasets as tfds
    return tfds.core.DatasetInfo(builder=self, **kwargs)


def test_trainer_learns_one_emotion_vs_rest_end_to_end(tmp_path):
  """The whole trainer on a tiny synthetic-clip dataset: grain pipeline with jitter, class-balanced
  sampler, T-EMO tiny, surprise vs rest; the evaluator scores every validation clip once and learns."""
  from fer_jax.data import synthetic
  from fer_jax.train import trainer
  c = _synthetic_config("emotion=surprise,size=tiny,steps=40,batch=32")
  c.dataset.update(name="landmark_clips_toy", data_dir=str(tmp_path / "data"))
  c.task_options.num_frames = 8
  c.input.update(num_threads=1, eval_batch_size=32)
  c.schedule.warmup_steps = 10
  c.evals.validation.every_steps = 0
  c.log_every_steps = 20
  results = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  val = results["validation"]
  assert results["step"] == 40 and results["task"] == "landmark_sequence" and "test" not in results
  scores = np.load(tmp_path / "run" / "scores_validation.npz")
  labels = synthetic.sample_sequences(0, "validation", 0, 72, num_frames=8, size=8)["label"]
  # Every validation clip once (the padded last batch masked), in order, with its target.
  np.testing.assert_array_equal(scores["labels"], (labels == 5).astype(int))
  again = binary_eval.binary_scores(scores["scores"], scores["labels"])
  for k in binary_eval.METRICS:
    assert val[k] == pytest.approx(again[k])
  assert val["n"] == 72 and val["positives"] == int(np.sum(labels == 5)) >= 5
  assert val["positive_class"] == "surprise"
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]["n"] == 72
  assert val["balanced_accuracy"] > 0.85 and val["auc"] > 0.9, val
