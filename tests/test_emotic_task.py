"""The ``emotic`` task (fer_jax.train.tasks.emotic): sentiment targets, the image-aesthetics attributes
(fer_jax.data.aesthetics) and the loss terms against NumPy / torch, the ``emotic`` evaluator against
scikit-learn, and a short trainer run of the EMOTIC baseline and of SeLiNet on a tiny generated dataset in the
EMOTIC record layout (``toy_emotic``, defined here)."""

from __future__ import annotations

import json
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy import ndimage
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from fer_jax import config_utils
from fer_jax.data import aesthetics
from fer_jax.data.emotic import EMOTIC_CATEGORIES, scale_vad
from fer_jax.registry import EVALUATORS, LOSSES, TASKS
from fer_jax.train.tasks import emotic

CAT = {c: i for i, c in enumerate(EMOTIC_CATEGORIES)}


def _multi_hot(*names):
  v = np.zeros(26, np.float32)
  for n in names:
    v[CAT[n]] = 1
  return v


# ----------------------------------------------------------------------------------------------- sentiment


def test_category_polarity_table():
  pol = emotic.polarity_vector(EMOTIC_CATEGORIES)
  assert (pol == 1).sum() == 8 and (pol == 0).sum() == 3 and (pol == -1).sum() == 15
  assert {c for c in EMOTIC_CATEGORIES if emotic.CATEGORY_POLARITY[c] == 0} == {"Anticipation", "Engagement",
                                                                                 "Surprise"}
  for c in ("Happiness", "Peace", "Affection", "Sympathy"):
    assert emotic.CATEGORY_POLARITY[c] == 1
  for c in ("Anger", "Suffering", "Yearning", "Doubt/Confusion", "Sensitivity"):
    assert emotic.CATEGORY_POLARITY[c] == -1


@pytest.mark.parametrize("names,want", [
    (("Happiness",), 2), (("Anger",), 0), (("Engagement",), 1), ((), 1),
    (("Anger", "Happiness"), 1),  # tie -> neutral
    (("Anger", "Fear", "Happiness"), 0), (("Peace", "Pleasure", "Fatigue", "Surprise"), 2),
    (("Engagement", "Anticipation", "Surprise"), 1)])
def test_sentiment_from_categories_hand_cases(names, want):
  got = emotic.sentiment_from_categories(_multi_hot(*names)[None], emotic.polarity_vector(EMOTIC_CATEGORIES))
  assert int(got[0]) == want


def test_sentiment_from_categories_matches_a_numpy_majority_vote():
  rng = np.random.default_rng(0)
  y = (rng.random((200, 26)) < 0.12).astype(np.float32)
  got = np.asarray(emotic.sentiment_from_categories(y, emotic.polarity_vector(EMOTIC_CATEGORIES)))
  want = []
  for row in y:
    names = [EMOTIC_CATEGORIES[i] for i in np.flatnonzero(row)]
    pos = sum(emotic.CATEGORY_POLARITY[n] == 1 for n in names)
    neg = sum(emotic.CATEGORY_POLARITY[n] == -1 for n in names)
    want.append(2 if pos > neg else 0 if neg > pos else 1)
  np.testing.assert_array_equal(got, want)
  assert set(want) == {0, 1, 2}


def test_sentiment_from_valence_thresholds_and_emotic_ratings():
  v = np.array([0.0, 0.3999, 0.4, 0.5, 0.6, 0.6001, 1.0], np.float32)
  np.testing.assert_array_equal(emotic.sentiment_from_valence(v), [0, 0, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(emotic.sentiment_from_valence(v, 0.5, 0.5), [0, 0, 0, 1, 2, 2, 2])
  # EMOTIC ratings 1..10 scaled (v - 1) / 9: 1-4 negative, 5-6 neutral, 7-10 positive (the docstring's claim).
  ratings = np.arange(1, 11)
  scaled = np.array([scale_vad([r, 5, 5])[0] for r in ratings])
  np.testing.assert_array_equal(emotic.sentiment_from_valence(scaled), [0] * 4 + [1] * 2 + [2] * 4)
  with pytest.raises(ValueError, match="low=0.7 and high=0.3"):
    emotic.sentiment_from_valence(v, 0.7, 0.3)


def _config(**options):
  c = config_utils.base_config()
  c.task = "emotic"
  c.task_options = emotic.default_options(**{"body_size": 16, "context_size": 24, **options})
  c.input.update(resize=24, crop=24, hflip=False)
  c.loss = dict(emotic_l2=dict(weight=1.0, weights="dynamic", target="categories"),
                sentiment=dict(weight=1.0),
                aesthetics=dict(weight=1.0), smooth_l1=dict(weight=1.0))
  return c


def test_bad_task_options_are_named():
  with pytest.raises(ValueError,
                     match=r"sentiment_from='arousal'; expected one of \('valence', 'categories'\)"):
    TASKS.get("emotic")(_config(sentiment_from="arousal"))
  with pytest.raises(ValueError, match="valence_low=0.7, valence_high=0.2"):
    TASKS.get("emotic")(_config(valence_low=0.7, valence_high=0.2))
  with pytest.raises(ValueError, match=r"\['Joy'\] are not among"):
    TASKS.get("emotic")(_config(sentiment_from="categories",
                                category_names=EMOTIC_CATEGORIES[:-1] + ("Joy",)))
  with pytest.raises(ValueError, match="task_options.body_size=4; expected an int >= 8"):
    TASKS.get("emotic")(_config(body_size=4))
  c = _config()
  del c["task_options"]
  with pytest.raises(ValueError, match="needs a config.task_options section"):
    TASKS.get("emotic")(c)


# ----------------------------------------------------------------------------------------------- aesthetics


def _np_aesthetics(img):
  """Independent NumPy reference of the five attributes of one (H, W, 3) image in [0, 1] (float64)."""
  img = img.astype(np.float64)
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  rg, yb = r - g, (r + g) / 2 - b
  colourful = np.hypot(np.std(rg), np.std(yb)) + 0.3 * np.hypot(np.mean(rg), np.mean(yb))
  y = 0.299 * r + 0.587 * g + 0.114 * b
  lap = ndimage.convolve(y, np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64), mode="constant")
  lap = lap[1:-1, 1:-1]
  blurred = img
  for axis in (0, 1):
    blurred = ndimage.convolve1d(blurred, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
  sal = np.linalg.norm(blurred - img.reshape(-1, 3).mean(0), axis=-1)
  h, w = y.shape
  if sal.sum() > 0:
    cy = sum(sal[i, j] * (i + 0.5) / h for i in range(h) for j in range(w)) / sal.sum()
    cx = sum(sal[i, j] * (j + 0.5) / w for i in range(h) for j in range(w)) / sal.sum()
  else:
    cx = cy = 0.5
  thirds = min(np.hypot(cx - px, cy - py) for px in (1 / 3, 2 / 3) for py in (1 / 3, 2 / 3))
  thirds /= np.sqrt(2) / 3
  return np.array([colourful, y.mean(), 2 * y.std(), np.sqrt(lap.var()) / 4, thirds]), (cx, cy)


def test_aesthetic_features_match_numpy():
  rng = np.random.default_rng(0)
  imgs = rng.random((3, 13, 17, 3)).astype(np.float32)
  # A smooth ramp: low sharpness.
  imgs[1] = np.clip(imgs[1] * 0.2 + np.linspace(0, 0.8, 17)[None, :, None], 0, 1)
  imgs[2, :, :, :] = 0.1
  imgs[2, 2:5, 10:14] = (0.9, 0.2, 0.1)  # a red patch in the top right
  got, centres = (np.asarray(a) for a in jax.jit(
      lambda x: (aesthetics.aesthetic_features(x), aesthetics.saliency_centre(x)))(imgs))
  for i in range(3):
    want, centre = _np_aesthetics(imgs[i])
    np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=2e-6, err_msg=f"image {i}")
    np.testing.assert_allclose(centres[i], centre, rtol=1e-5)
  assert got.shape == (3, aesthetics.NUM_AESTHETICS) and np.all((got >= 0) & (got <= 1))
  assert got[1, 3] < got[0, 3] / 3  # the ramp is much less sharp than noise
  assert centres[2, 0] > 0.55 and centres[2, 1] < 0.45  # saliency centre pulled towards the red patch


def test_aesthetic_features_closed_forms():
  flat = jnp.full((2, 9, 9, 3), jnp.asarray([0.5, 0.2, 0.4]))
  f = np.asarray(jax.jit(aesthetics.aesthetic_features)(flat))
  rg, yb = 0.3, 0.35 - 0.4
  np.testing.assert_allclose(f[:, 0], 0.3 * np.hypot(rg, yb), rtol=1e-5)
  np.testing.assert_allclose(f[:, 1], 0.299 * 0.5 + 0.587 * 0.2 + 0.114 * 0.4, rtol=1e-5)
  np.testing.assert_allclose(f[:, 2:4], 0, atol=1e-6)
  # No saliency (up to float32 rounding of the mean colour): the centre, (1/6) sqrt(2) / (sqrt(2) / 3).
  np.testing.assert_allclose(f[:, 4], 0.5, atol=1e-4)
  checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[..., None].repeat(3, -1)
  # Laplacian of a 0/1 checkerboard: +-4 everywhere inside, so variance 16 -> sharpness 1; contrast 2 * 0.5.
  np.testing.assert_allclose(np.asarray(jax.jit(aesthetics.aesthetic_features)(checker))[2:4], [1.0, 1.0],
                             rtol=1e-6)


def test_aesthetics_bad_input_is_named():
  with pytest.raises(TypeError, match="expects float images in \\[0, 1\\]; got dtype uint8"):
    aesthetics.aesthetic_features(np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"RGB images \(..., H, W, 3\).*got shape \(8, 8, 1\)"):
    aesthetics.aesthetic_features(np.zeros((8, 8, 1), np.float32))


# ----------------------------------------------------------------------------------------------- loss terms


def _torch_smooth_l1(p, y, beta):
  """torch.nn.functional.smooth_l1_loss(reduction='none') as its documentation defines it, elementwise."""
  out = np.empty(p.shape)
  for idx in np.ndindex(p.shape):
    d = abs(float(p[idx]) - float(y[idx]))
    out[idx] = 0.5 * d * d / beta if d < beta else d - 0.5 * beta
  return out


def test_smooth_l1_matches_torch_definition():
  rng = np.random.default_rng(1)
  p, y = rng.random((6, 3)).astype(np.float32), rng.random((6, 3)).astype(np.float32)
  for beta in (0.1, 1.0):
    got = LOSSES.get("smooth_l1")({"vad": p}, {"vad": y}, beta=beta)
    np.testing.assert_allclose(got, _torch_smooth_l1(p, y, beta).sum(1).mean(), rtol=1e-6)
  # margin: errors below it count 0; a mask leaves rows out.
  a = np.abs(p - y)
  per = np.where(a < 0.1, 0.5 * a * a / 0.1, a - 0.05) * (a >= 0.3)
  mask = np.array([1, 1, 0, 1, 0, 1], bool)
  got = LOSSES.get("smooth_l1")({"vad": p}, {"vad": y, "mask": mask}, margin=0.3, mask="mask")
  np.testing.assert_allclose(got, per.sum(1)[mask].mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="beta=0 must be > 0"):
    LOSSES.get("smooth_l1")({"vad": p}, {"vad": y}, beta=0)


def test_aesthetics_term_is_the_mean_squared_error():
  rng = np.random.default_rng(2)
  p, y = rng.random((4, 5)), rng.random((4, 5))
  np.testing.assert_allclose(LOSSES.get("aesthetics")({"aesthetics": p}, {"aesthetics": y}),
                             np.mean((p - y) ** 2), rtol=1e-6)
  with pytest.raises(ValueError, match=r"prediction shape \(4, 4\) differs from target \(4, 5\)"):
    LOSSES.get("aesthetics")({"aesthetics": p[:, :4]}, {"aesthetics": y})
  with pytest.raises(KeyError, match="needs the model output 'aesthetics'"):
    LOSSES.get("aesthetics")({}, {"aesthetics": y})


# ----------------------------------------------------------------------------------------------- task steps


def test_preprocess_and_predict_make_the_targets_on_device():
  task = TASKS.get("emotic")(_config(sentiment_from="categories"))
  assert task.metric_names == ("sentiment_accuracy", "vad_mae", "aesthetics_mae")
  rng = np.random.default_rng(3)
  cats = np.stack([_multi_hot("Happiness"), _multi_hot("Anger", "Fear"), _multi_hot("Surprise")])
  batch = {"body": rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8),
           "context": rng.integers(0, 256, (3, 24, 24, 3)).astype(np.uint8),
           "categories": cats, "vad": rng.random((3, 3)).astype(np.float32),
           "mask": np.array([True, True, False])}
  x = jax.jit(task.preprocess)(batch)
  np.testing.assert_array_equal(x["sentiment"], [2, 0, 1])
  np.testing.assert_allclose(x["aesthetics"], aesthetics.aesthetic_features(batch["context"] / 255.0),
                             rtol=1e-5)
  np.testing.assert_allclose(x["context"], batch["context"] / 255.0, rtol=1e-6)  # no mean / std here

  def apply_fn(inputs):
    assert set(inputs) >= {"body", "context"}
    b = inputs["body"].shape[0]
    return {"multilabel_logits": inputs["body"].mean((1, 2, 3))[:, None] * jnp.arange(26.0),
            "vad": jnp.full((b, 3), 0.5), "sentiment_logits": jnp.eye(3)[jnp.array([2, 1, 1])]}

  out = jax.jit(lambda b: task.predict(apply_fn, b))(batch)
  np.testing.assert_array_equal(out["sentiment_pred"], [2, 1, 1])
  np.testing.assert_array_equal(out["sentiment"], [2, 0, 1])
  np.testing.assert_allclose(out["vad_pred"], 0.5)
  np.testing.assert_allclose(out["scores"][:, 3], 3 * batch["body"].mean((1, 2, 3)) / 255.0, rtol=1e-5)
  with pytest.raises(KeyError, match="needs the model output 'multilabel_logits'"):
    task.predict(lambda inputs: {"logits": inputs["body"]}, {k: jnp.asarray(v) for k, v in batch.items()})


# ----------------------------------------------------------------------------------------------- evaluator


def _eval_data(n=45, seed=0):
  r = np.random.default_rng(seed)
  labels = (r.random((n, 26)) < 0.2).astype(np.float32)
  labels[:, 7] = 0  # a category with no positive: AP 0, as scikit-learn and EMOTIC's evaluation
  scores = (labels + r.normal(scale=0.8, size=(n, 26))).astype(np.float32)
  vad = r.random((n, 3)).astype(np.float32)
  vad_pred = np.clip(vad + r.normal(scale=0.1, size=(n, 3)), 0, 1).astype(np.float32)
  sentiment = r.integers(0, 3, n).astype(np.int32)
  sentiment_pred = np.where(r.random(n) < 0.6, sentiment, r.integers(0, 3, n)).astype(np.int32)
  mask = np.ones(n, bool)
  mask[[3, 20, 44]] = False  # padding rows that would change every number if counted
  labels[~mask], scores[~mask], vad_pred[~mask], sentiment_pred[~mask] = 1, 50, 9, (sentiment[~mask] + 1) % 3
  return dict(scores=scores, labels=labels, mask=mask, vad=vad, vad_pred=vad_pred, sentiment=sentiment,
              sentiment_pred=sentiment_pred)


def test_emotic_evaluator_matches_sklearn_and_numpy(tmp_path):
  data = _eval_data()
  batches = [{"index": np.arange(s, min(s + 16, 45))} for s in range(0, 45, 16)]
  task = types.SimpleNamespace(category_names=EMOTIC_CATEGORIES,
                               sentiment_names=("negative", "neutral", "positive"))
  ev = EVALUATORS.get("emotic")(task, "val")
  result = ev.run(lambda b: {k: v[b["index"]] for k, v in data.items()}, batches)
  keep = data["mask"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ap = np.array([average_precision_score(data["labels"][keep, k], data["scores"][keep, k])
                   for k in range(26)])
  assert ap[7] == 0
  np.testing.assert_allclose(result["ap"], ap, rtol=1e-12)
  np.testing.assert_allclose(result["map"], ap.mean(), rtol=1e-12)
  np.testing.assert_allclose(result["vad_mae"], np.abs(data["vad_pred"] - data["vad"])[keep].mean(0),
                             rtol=1e-6)
  s, sp = data["sentiment"][keep], data["sentiment_pred"][keep]
  js = ev.to_json(result)
  json.dumps(js)
  assert js["num_examples"] == 42
  np.testing.assert_allclose(js["sentiment"]["accuracy"], accuracy_score(s, sp), rtol=1e-12)
  np.testing.assert_allclose(js["sentiment"]["macro_f1"], f1_score(s, sp, average="macro", labels=[0, 1, 2]),
                             rtol=1e-12)
  np.testing.assert_allclose(js["ap"]["Happiness"], ap[CAT["Happiness"]], rtol=1e-12)
  scalars = ev.scalars(result)
  assert {"map", "vad_mae", "mae_dominance", "sentiment_accuracy", "sentiment_macro_f1",
          "ap_Yearning"} <= set(scalars)
  assert js["summary"].startswith(f"mAP {ap.mean():.4f}  VAD MAE ")
  images = ev.plots(result, str(tmp_path), "val", 7)
  assert set(images) == {"emotic_ap"} and images["emotic_ap"].ndim == 3
  png = tmp_path / "emotic_ap_val.png"
  assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Categories only (the baseline without sentiment head): no sentiment entries.
  only = {k: data[k] for k in ("scores", "labels", "mask")}
  r2 = ev.run(lambda b: {k: v[b["index"]] for k, v in only.items()}, batches)
  assert "sentiment" not in ev.to_json(r2) and "vad_mae" not in r2
  with pytest.raises(ValueError, match="evaluator 'val': no evaluation examples"):
    ev.run(lambda b: {k: v[b["index"]] for k, v in only.items()}, [])


# ----------------------------------------------------------------------------------------------- trainer


TOY_BODY, TOY_CONTEXT = 16, 24
# class -> (categories, valence, body colour, context colour)
TOY_CLASSES = ((("Happiness", "Pleasure"), 0.85, (230, 200, 40), (200, 220, 255)),
               (("Anger", "Annoyance"), 0.15, (200, 30, 30), (60, 40, 40)),
               (("Sadness", "Fatigue"), 0.25, (40, 60, 200), (90, 90, 110)),
               (("Engagement",), 0.5, (40, 180, 60), (150, 150, 140)))


class ToyEmotic(tfds.core.GeneratorBasedBuilder):
  """People in the EMOTIC record layout: the body crop's colour and the scene's tint give the categories."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test fixture."}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "context": tfds.features.Tensor(shape=(TOY_CONTEXT, TOY_CONTEXT, 3), dtype=np.uint8),
        "body": tfds.features.Tensor(shape=(TOY_BODY, TOY_BODY, 3), dtype=np.uint8),
        "categories": tfds.features.Tensor(shape=(26,), dtype=np.float32),
        "vad": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "id": tfds.features.Scalar(dtype=np.int64)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 192), "validation": self._generate_examples(1, 48),
            "test": self._generate_examples(2, 48)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      names, valence, body_rgb, ctx_rgb = TOY_CLASSES[i % 4]
      context = np.clip(np.asarray(ctx_rgb) + rng.normal(0, 25, (TOY_CONTEXT, TOY_CONTEXT, 3)), 0, 255)
      body = np.clip(np.asarray(body_rgb) + rng.normal(0, 25, (TOY_BODY, TOY_BODY, 3)), 0, 255)
      x0 = int(rng.integers(0, TOY_CONTEXT - 10))
      context[4:20, x0:x0 + 10] = body[:16, :10]
      extra = ("Anticipation",) if rng.random() < 0.3 else ()
      yield i, {"context": context.astype(np.uint8), "body": body.astype(np.uint8),
                "categories": _multi_hot(*names, *extra),
                "vad": np.clip([valence + rng.normal(0, 0.05), rng.random(), rng.random()], 0,
                               1).astype(np.float32),
                "bbox": np.array([x0, 4, x0 + 10, 20], np.float32) / TOY_CONTEXT, "id": i}


@pytest.fixture(scope="module")
def toy_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("toy_emotic"))


TINY_RESNET = dict(block="basic", depths=(1, 1), widths=(8, 16), stem_width=8)


def toy_config(experiment: str, data_dir: str, steps: int = 40, **options):
  """``experiments/<experiment>`` on ``toy_emotic`` with tiny models (the default run of the test)."""
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1]
  c = config_utils.load_config_file(str(root / "experiments" / experiment) + ":data=synthetic")
  c.dataset.update(name="toy_emotic", data_dir=data_dir, image_size=TOY_CONTEXT)
  c.task_options.update(body_size=TOY_BODY, context_size=TOY_CONTEXT)
  c.input.update(batch_size=32, eval_batch_size=48, resize=TOY_CONTEXT, crop=TOY_CONTEXT, num_threads=1)
  c.num_train_steps, c.num_epochs = steps, 0.0
  c.log_every_steps = 10
  c.schedule.warmup_steps = 5
  c.optimizer.lr = 3e-3
  c.checkpoint.every_steps = steps
  c.evals = config_utils.evals("emotic", test=None)
  if c.model.backbone.name == "emotic_baseline":
    c.model.backbone = dict(name="emotic_baseline", branch=TINY_RESNET)
  else:
    c.model.backbone = dict(name="selinet", body=dict(name="resnext", **TINY_RESNET),
                            aesthetics_widths=(4, 8), fusion_width=16, hidden_width=16)
  c.update(options)
  return c


def _train_and_check(tmp_path, toy_data_dir, experiment):
  from fer_jax.train import trainer
  c = toy_config(experiment, toy_data_dir, steps=80)
  results = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  log = np.array(results["train_loss_log"])
  assert log.shape == (8, 2)
  assert log[-1, 1] < 0.6 * log[0, 1], log  # the weighted loss terms fall
  val = json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]
  assert val["num_examples"] == 48 and set(val["ap"]) == set(EMOTIC_CATEGORIES)
  # The categories follow the body colour: each toy class's first category is ranked perfectly (the 18
  # categories that never occur have AP 0, so mAP is at most 8 / 26).
  assert min(val["ap"][c] for c in ("Happiness", "Anger", "Sadness", "Engagement")) > 0.9, val["ap"]
  assert val["map"] > 0.25
  assert (tmp_path / "run" / "emotic_ap_validation.png").stat().st_size > 1000
  return val


def test_short_selinet_run_learns_the_toy_scenes(tmp_path, toy_data_dir):
  val = _train_and_check(tmp_path, toy_data_dir, "selinet_emotic.py")
  assert val["sentiment"]["accuracy"] > 0.8
  assert set(val["sentiment"]["f1"]) == {"negative", "neutral", "positive"}


@pytest.mark.slow
def test_short_baseline_run_learns_the_toy_scenes(tmp_path, toy_data_dir):
  val = _train_and_check(tmp_path, toy_data_dir, "emotic_baseline.py")
  assert val["vad_mae"]["valence"] < 0.2 and "sentiment" not in val
