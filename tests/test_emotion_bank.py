"""The emotion bank (fer_jax.emotion_bank): Platt scaling against closed forms and scikit-learn, the argmax
combination and the report against hand-computed cases, the resumable bank and the pruning schedule with
instant fakes, Integrated-Gradients completeness on the real landmark model, the landmark aggregation
against NumPy, the compute counts against XLA, the landmark front end on the genuine AFEW-VA clip, and
(slow) a whole bank through the trainer on a tiny generated dataset."""

import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.data import synthetic
from fer_jax.testing import random_variables
from fer_jax.emotion_bank import bank, calibration, compute, explain, members, pruning, report, robustness

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTH = str(ROOT / "experiments" / "emotion_bank_synthetic.py")
AFEW_VA = ROOT.parent / "shared" / "data" / "afew_va" / "001"


def _logit(p):
  return np.log(p / (1 - p))


# ------------------------------------------------------------------------------------ Platt scaling


@pytest.mark.parametrize("prior_correction", [False, True])
def test_platt_closed_form_two_level_scores(prior_correction):
  """Scores in {0, 1}: the optimum gives each group its mean target, so sigmoid(b) = mean t (s = 0) and
  sigmoid(a + b) = mean t (s = 1)."""
  s = np.array([0] * 10 + [1] * 10, np.float64)
  y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0] + [1] * 7 + [0] * 3)
  t = np.where(y == 1, (10 + 1) / (10 + 2), 1 / (10 + 2)) if prior_correction else y.astype(float)
  p0, p1 = t[:10].mean(), t[10:].mean()
  fit = calibration.fit_platt(s, y, prior_correction=prior_correction)
  assert fit["b"] == pytest.approx(_logit(p0), abs=1e-9)
  assert fit["a"] == pytest.approx(_logit(p1) - _logit(p0), abs=1e-9)
  np.testing.assert_allclose(calibration.apply_platt([0.0, 1.0], fit["a"], fit["b"]), [p0, p1], atol=1e-12)
  assert fit["n"] == 20 and fit["positives"] == 10


def test_platt_matches_scikit_learn():
  sk_cal = pytest.importorskip("sklearn.calibration")
  sk_lin = pytest.importorskip("sklearn.linear_model")
  rng = np.random.default_rng(0)
  s = rng.normal(0, 2.0, 400)
  y = (rng.random(400) < 1 / (1 + np.exp(-(1.5 * s - 0.5)))).astype(np.int64)
  # Platt's targets: scikit-learn's CalibratedClassifierCV(method='sigmoid') fit, p = 1 / (1 + exp(A s + B)).
  big_a, big_b = sk_cal._sigmoid_calibration(s, y)
  fit = calibration.fit_platt(s, y)
  assert fit["a"] == pytest.approx(-big_a, abs=2e-4) and fit["b"] == pytest.approx(-big_b, abs=2e-4)
  t = calibration.platt_targets(y)
  assert calibration.platt_loss(fit["a"], fit["b"], s, t) <= calibration.platt_loss(-big_a, -big_b, s, t) + 1e-9
  # Hard targets: unpenalised logistic regression.
  lr = sk_lin.LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(s[:, None], y)
  hard = calibration.fit_platt(s, y, prior_correction=False)
  assert hard["a"] == pytest.approx(lr.coef_[0, 0], abs=1e-5)
  assert hard["b"] == pytest.approx(lr.intercept_[0], abs=1e-5)


def test_platt_separable_split_gets_a_finite_optimum():
  """Perfectly separated scores (common for these models): Platt's targets keep the slope finite and the
  optimum satisfies the first-order conditions sum (p - t) s = sum (p - t) = 0."""
  s = np.r_[np.linspace(-9, -2, 40), np.linspace(3, 12, 10)]
  y = np.r_[np.zeros(40), np.ones(10)]
  fit = calibration.fit_platt(s, y)
  p = calibration.apply_platt(s, fit["a"], fit["b"])
  r = p - calibration.platt_targets(y)
  assert abs(np.dot(r, s)) < 1e-8 and abs(r.sum()) < 1e-8
  assert 0 < fit["a"] < 10 and np.all(p[y == 1] > 0.5) and np.all(p[y == 0] < 0.5)


@pytest.mark.parametrize("scores, labels, match", [
    ([0.1, 0.2], [0, 2], r"labels must be 0 or 1, got 2 at example 1"),
    ([0.1, 0.2, 0.3], [1, 1, 1], "needs positives and negatives; the 3 labels are all 1"),
    ([0.1, np.nan], [0, 1], "non-finite score nan at example 1"),
    ([0.1, 0.2], [0, 1, 1], "2 scores but 3 labels"),
])
def test_platt_bad_input_is_named(scores, labels, match):
  with pytest.raises(ValueError, match=match):
    calibration.fit_platt(scores, labels)


def test_combine_hand_computed():
  p = np.array([[0.2, 0.7, 0.1],
                [0.5, 0.5, 0.4],    # tie between models 0 and 1: the first
                [0.01, 0.02, 0.03]])
  np.testing.assert_array_equal(calibration.combine(p), [1, 0, 2])
  np.testing.assert_array_equal(calibration.combine(p, class_ids=[4, 2, 7]), [2, 4, 7])
  with pytest.raises(ValueError, match=r"probability of model 1 for example 0 is nan"):
    calibration.combine([[0.1, np.nan]])
  with pytest.raises(ValueError, match=r"\(N, K\) with K >= 2 models, got shape \(3,\)"):
    calibration.combine([0.1, 0.2, 0.3])


def test_multiclass_metrics_hand_computed():
  labels = [0, 0, 1, 1, 2, 2]
  pred = [0, 1, 1, 1, 2, 0]
  m = calibration.multiclass_metrics(labels, pred, 3)
  assert m["accuracy"] == pytest.approx(4 / 6)
  # F1: class 0 P 1/2 R 1/2 -> 1/2; class 1 P 2/3 R 1 -> 4/5; class 2 P 1 R 1/2 -> 2/3.
  assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
  assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


# ------------------------------------------------------------------------------------ the bank, with fakes


class FakeBank:
  """train_fn / score_fn / classes_fn of run_bank: records the configs; model k scores clips of class k
  high, on a scale of its own (so raw logits and calibrated probabilities can disagree)."""

  def __init__(self, names=synthetic.CLASS_NAMES, fail_at=None, n_val=120, n_test=90):
    self.names, self.fail_at, self.trained, self.configs, self.by_dir = list(names), fail_at, [], {}, {}
    rng = np.random.default_rng(1)
    self.labels = {"validation": rng.integers(0, len(names), n_val), "test": rng.integers(0, len(names), n_test)}

  def classes(self, config):
    return self.names, [50] * len(self.names)

  def train(self, config, workdir):
    k = int(config.task_options.positive_class)
    if k == self.fail_at:
      raise RuntimeError("killed")
    self.trained.append(os.path.basename(workdir))
    self.configs[k] = config
    self.by_dir[(os.path.basename(os.path.dirname(workdir)), os.path.basename(workdir))] = config
    return {"train_seconds": 10.0 + k, "step": 30, "param_count": 99}

  def logits(self, k, labels, split):
    rng = np.random.default_rng([k, len(split)])
    scale = 1.0 + k  # each model its own scale and offset
    return scale * (2.0 * (labels == k) - 1.0 + rng.normal(0, 0.7, labels.shape)) + 0.3 * k

  def score(self, config, workdir):
    k = int(config.task_options.positive_class)
    return {s: (self.labels[s], self.logits(k, self.labels[s], s)) for s in bank.SPLITS}


def _run(fake, spec, workdir, plot=False, **kw):
  return bank.run_bank(spec, str(workdir), train_fn=fake.train, score_fn=fake.score, classes_fn=fake.classes,
                       log=lambda s: None, plot=plot, **kw)


def test_bank_resumes_skips_finished_models_and_reports(tmp_path):
  spec = SYNTH + ":arch=remo,size=tiny,steps=30"
  dying = FakeBank(fail_at=3)
  with pytest.raises(RuntimeError, match="killed"):
    _run(dying, spec, tmp_path)
  assert dying.trained == ["angry", "disgust", "fear"]
  for k, c in dying.configs.items():  # one model per emotion, the R-EMO recipe
    assert c.task_options.positive_class == k and c.model.backbone.random_front_end
  fake = FakeBank()
  out = _run(fake, spec, tmp_path)
  assert out["bank_dir"] == str(tmp_path / "remo")
  assert out["skipped"] == ["angry", "disgust", "fear"] and fake.trained == list(synthetic.CLASS_NAMES[3:])
  again = FakeBank()
  out2 = _run(again, spec, tmp_path, plot=True)
  assert again.trained == [] and len(out2["skipped"]) == 8
  d = bank.load_scores(str(tmp_path / "remo" / "sad" / bank.SCORES_FILE))
  assert int(d["positive_class"]) == 4 and float(d["train_seconds"]) == 14.0 and int(d["steps"]) == 30
  np.testing.assert_array_equal(d["test_labels"], fake.labels["test"])

  # The report: per-emotion scores at logit 0 and the calibrated argmax, against independent computations.
  rep = out2["report"]
  assert rep["complete"] and rep["finished"] == 8
  y, s_val = fake.labels["test"], fake.labels["validation"]
  sk_cal = pytest.importorskip("sklearn.calibration")
  probs = []
  for k in range(8):
    row = rep["emotions"][k]
    pred = fake.logits(k, y, "test") >= 0
    assert row["accuracy"] == pytest.approx(np.mean(pred == (y == k)))
    big_a, big_b = sk_cal._sigmoid_calibration(fake.logits(k, s_val, "validation"), (s_val == k).astype(int))
    assert row["platt_a"] == pytest.approx(-big_a, abs=1e-3) and row["platt_b"] == pytest.approx(-big_b, abs=1e-3)
    probs.append(1 / (1 + np.exp(big_a * fake.logits(k, y, "test") + big_b)))
  pred = np.argmax(np.stack(probs, 1), 1)
  assert rep["multiclass"]["accuracy"] == pytest.approx(np.mean(pred == y))
  raw = np.argmax(np.stack([fake.logits(k, y, "test") for k in range(8)], 1), 1)
  assert rep["multiclass_raw_logits"]["accuracy"] == pytest.approx(np.mean(raw == y))
  assert np.mean(pred != raw) > 0.05  # calibration changes decisions here: the models' scales differ
  assert rep["train_seconds_total"] == pytest.approx(sum(10.0 + k for k in range(8)))
  assert (tmp_path / "remo" / report.CONFUSION_PNG).exists()
  md = (tmp_path / "remo" / report.REPORT_MD).read_text()
  assert "| contempt |" in md and f"**{100 * np.mean(pred == y):.1f}%**" in md
  table = report.compare_variants(str(tmp_path))
  assert "`remo`" in table and f"**{100 * np.mean(pred == y):.1f}**" in table


def test_bank_subsets_variants_and_errors(tmp_path):
  fake = FakeBank()
  out = _run(fake, SYNTH + ":arch=binary,size=tiny,steps=30,landmarks=0-16+36-47", tmp_path, emotions="happy,1")
  assert fake.trained == ["happy", "disgust"] and out["bank_dir"] == str(tmp_path / "binary_keep29")
  assert not out["report"]["complete"] and "multiclass" not in out["report"]
  c = fake.configs[3]
  assert c.model.backbone.binary and tuple(c.task_options.landmarks) == tuple(range(17)) + tuple(range(36, 48))
  meta = json.loads((tmp_path / "binary_keep29" / bank.BANK_FILE).read_text())
  assert meta["emotions"] == ["disgust", "happy"] and meta["landmarks"][:3] == [0, 1, 2]
  # The config file resolving differently under the same options: a warning naming the field.
  meta["recipe"]["optimizer"]["lr"] = 0.5
  (tmp_path / "binary_keep29" / bank.BANK_FILE).write_text(json.dumps(meta))
  said = []
  bank.run_bank(SYNTH + ":arch=binary,size=tiny,steps=30,landmarks=0-16+36-47", str(tmp_path), emotions="happy",
                train_fn=fake.train, score_fn=fake.score, classes_fn=fake.classes, log=said.append, plot=False)
  assert any("optimizer.lr: 0.5 -> 0.002" in s for s in said), said
  with pytest.raises(ValueError, match="holds a bank of config"):
    _run(FakeBank(), SYNTH + ":arch=binary,size=tiny,steps=31,landmarks=0-16+36-47", tmp_path)
  with pytest.raises(ValueError, match="sets emotion; the bank sets emotion"):
    _run(FakeBank(), SYNTH + ":emotion=happy", tmp_path)
  with pytest.raises(ValueError, match=r"--emotions: 'joy' is not one of"):
    _run(FakeBank(), SYNTH + ":arch=temo", tmp_path, emotions="joy")
  with pytest.raises(ValueError, match="lists 'sad' twice"):
    _run(FakeBank(), SYNTH + ":arch=temo", tmp_path, emotions="sad,4")
  with pytest.raises(ValueError, match="does not make a one-vs-rest landmark model"):
    _run(FakeBank(), str(ROOT / "experiments" / "convnext_synthetic.py"), tmp_path)


def test_cli_errors_exit_2(capsys):
  assert bank.main(["--config=" + SYNTH + ":emotion=sad", "--workdir=/tmp/x"]) == 2
  assert "sets emotion" in capsys.readouterr().err
  assert bank.main(["--config=" + SYNTH, "--workdir=/tmp/x", "--prune=68,34,51"]) == 2
  assert "must decrease strictly" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ pruning, with fakes


def test_next_kept_and_parse_keeps():
  r = np.zeros(68)
  r[[5, 9, 30, 31, 60]] = [3.0, 1.0, 2.0, 2.0, 0.5]
  assert pruning.next_kept(range(68), r, 3) == [5, 30, 31]
  assert pruning.next_kept([9, 31, 60], r, 2) == [9, 31]
  assert pruning.next_kept([0, 1, 2, 3], r, 2) == [0, 1]  # all tied: the lower indices
  assert pruning.parse_keeps("51,34,17,8", 68) == [68, 51, 34, 17, 8]
  assert pruning.parse_keeps("68,8", 68) == [68, 8]
  for text, match in (("68,34,51", "decrease strictly"), ("68,0", r"in 1\.\.68"), ("a,b", "comma-separated")):
    with pytest.raises(ValueError, match=match):
      pruning.parse_keeps(text, 68)


@pytest.mark.parametrize("schedule", ["progressive", "fixed"])
def test_pruning_levels_rank_by_the_right_bank(tmp_path, schedule):
  """Each level keeps the top landmarks of the previous set by the global relevance of the previous bank
  (progressive) or of the full bank (fixed); its models are trained with exactly those landmarks; a rerun
  reuses the stored sets and trains nothing."""
  rng = np.random.default_rng(0)
  relevance = {"temo": rng.random(68), "temo_keep34": rng.random(68)}
  explained = []

  def explain_fn(bank_dir, **kw):
    explained.append(os.path.basename(bank_dir))
    assert kw["split"] == "validation"
    return {"global_relevance": relevance[os.path.basename(bank_dir)]}

  fake = FakeBank()
  spec = SYNTH + ":arch=temo,size=tiny,steps=30"
  out = pruning.run_pruning(spec, str(tmp_path), [68, 34, 17], schedule=schedule, measure=False, log=lambda s: None,
                            plot=False, train_fn=fake.train, score_fn=fake.score, classes_fn=fake.classes, explain_fn=explain_fn)
  k34 = sorted(np.argsort(-relevance["temo"], kind="stable")[:34].tolist())
  ranked = relevance["temo_keep34"] if schedule == "progressive" else relevance["temo"]
  k17 = sorted(sorted(k34, key=lambda i: -ranked[i])[:17])
  assert [lv["kept"] for lv in out["levels"][1:]] == [k34, k17]
  assert explained == (["temo", "temo_keep34"] if schedule == "progressive" else ["temo"])
  assert len(fake.trained) == 3 * 8
  assert fake.by_dir[("temo", "fear")].task_options.landmarks is None
  for name, kept in (("temo_keep34", k34), ("temo_keep17", k17)):
    assert json.loads((tmp_path / name / bank.BANK_FILE).read_text())["landmarks"] == kept
    assert list(fake.by_dir[(name, "contempt")].task_options.landmarks) == kept
  assert "| 17 |" in out["markdown"] and "kept 17: " + ", ".join(map(str, k17)) in out["markdown"]
  again = FakeBank()
  pruning.run_pruning(spec, str(tmp_path), [68, 34, 17], schedule=schedule, measure=False, log=lambda s: None,
                      plot=False, train_fn=again.train, score_fn=again.score, classes_fn=again.classes,
                      explain_fn=lambda *a, **k: pytest.fail("a stored level was ranked again"))
  assert again.trained == []
  with pytest.raises(ValueError, match="was made with schedule"):
    pruning.run_pruning(spec, str(tmp_path), [68, 34], schedule="fixed" if schedule == "progressive" else "progressive",
                        measure=False, plot=False, train_fn=again.train, score_fn=again.score,
                        classes_fn=again.classes)
  with pytest.raises(ValueError, match="pruning chooses the landmarks itself"):
    pruning.run_pruning(spec + ",landmarks=0-9", str(tmp_path), [68, 34])


# ------------------------------------------------------------------------------------ IG on the real model


def _member(arch="temo", frames=8, seed=0):
  """A tiny landmark model of the bank's recipe with random weights and BatchNorm statistics (shapes from
  jax.eval_shape: no init to compile)."""
  c = config_utils.load_config_file(f"{SYNTH}:emotion=surprise,arch={arch},size=tiny")
  c.task_options.num_frames = frames
  m = members.Member.from_config(c, None)
  x = jnp.zeros((1, frames, 68, 4))
  shapes = jax.eval_shape(lambda: m.model.init(jax.random.key(seed), train=False, landmarks=x))
  return members.Member.from_config(c, random_variables(shapes, seed))


@pytest.fixture(scope="module")
def clips():
  d = synthetic.sample_sequences(0, "test", 0, 6, num_frames=8, size=8)
  return d["landmarks"], d["label"]


def test_ig_completeness_on_the_landmark_model(clips):
  raw, _ = clips
  m = _member()
  z = m.normalize(raw)
  for kind in ("first", "mean"):
    base = explain.make_baseline(z, kind, mean_face=np.asarray(z[:, 0]).mean(0))
    r = explain.ig_clips(m, z, base, n_steps=64)
    diff = r["logit"] - r["baseline_logit"]
    # F(z) of the split function (normalise, then keep + displacement + model) = the task's own path.
    np.testing.assert_allclose(r["logit"], m.logits(raw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["attributions"].reshape(6, -1).sum(1), diff, atol=0.02 * np.abs(diff).max())
    assert np.median(explain.completeness_error(r["delta"], r["logit"], r["baseline_logit"])) < 0.01
    if kind == "first":  # the first frame is the baseline itself: no attribution
      assert np.all(r["attributions"][:, 0] == 0) and np.abs(r["attributions"][:, 1:]).sum() > 0


def test_relevance_aggregation_matches_numpy():
  rng = np.random.default_rng(3)
  attr = rng.normal(size=(5, 4, 68, 2))
  want = np.zeros((5, 68))
  for b in range(5):
    for t in range(4):
      for i in range(68):
        want[b, i] += abs(attr[b, t, i, 0]) + abs(attr[b, t, i, 1])
  np.testing.assert_allclose(explain.clip_relevance(attr), want, rtol=1e-12)
  np.testing.assert_allclose(explain.emotion_relevance(attr), want.mean(0), rtol=1e-12)
  per = rng.random((3, 68))
  np.testing.assert_allclose(explain.global_relevance(per), sum(per[k] / per[k].sum() for k in range(3)))
  with pytest.raises(ValueError, match=r"emotion rows \[1\] have no relevance"):
    explain.global_relevance(np.stack([per[0], np.zeros(68)]))
  np.testing.assert_allclose(explain.completeness_error([0.1, 0.0, 0.2], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
                             [0.1, 0.0, np.inf])


# ------------------------------------------------------------------------------------ landmark noise


class _FakeMember:
  """Scores how close a clip's mean x of landmark 0 is to its class id."""

  def __init__(self, k):
    self.positive_class = k

  def logits(self, clips):
    return (1.0 - 4.0 * (np.asarray(clips)[:, :, 0, 0].mean(1) - self.positive_class) ** 2).astype(np.float32)


def test_landmark_noise_scale_and_curve():
  rng = np.random.default_rng(0)
  clips = rng.normal(0, 1, (300, 4, 68, 2)).astype(np.float32)
  clips[:, 0, 36:42] += [-20.0, 0.0]
  clips[:, 0, 42:48] += [25.0, 5.0]
  iod = np.array([np.hypot(*(c[0, 42:48].mean(0) - c[0, 36:42].mean(0))) for c in clips.astype(np.float64)])
  np.testing.assert_allclose(robustness.inter_ocular(clips), iod, rtol=1e-6)
  noisy = robustness.add_noise(clips, 0.05, seed=3)
  z = (noisy - clips) / iod[:, None, None, None]
  assert abs(z.std() - 0.05) < 0.0015 and abs(z.mean()) < 0.001
  np.testing.assert_array_equal(robustness.add_noise(clips, 0.05, seed=3), noisy)  # fixed seed
  np.testing.assert_array_equal(robustness.add_noise(clips, 0.0, seed=3), clips)
  with pytest.raises(ValueError, match="noise sigma=-0.1"):
    robustness.add_noise(clips, -0.1, seed=0)
  # The curve at sigma 0: Platt on the validation clips, argmax on the test clips, against the pieces.
  yv, yt = rng.integers(0, 3, 90), rng.integers(0, 3, 60)
  xv, xt = (np.zeros((len(y), 2, 68, 2), np.float32) for y in (yv, yt))
  xv[:, :, 0, 0] = (yv + rng.normal(0, 0.3, len(yv)))[:, None]
  xt[:, :, 0, 0] = (yt + rng.normal(0, 0.3, len(yt)))[:, None]
  xv[:, 0, 42:48, 0] = xt[:, 0, 42:48, 0] = 1.0  # IOD 1
  fakes = [_FakeMember(k) for k in range(3)]
  rows = robustness.noise_curve(fakes, (xv, yv), (xt, yt), sigmas=(0.0, 0.5), num_classes=3)
  probs = []
  for m in fakes:
    fit = calibration.fit_platt(m.logits(xv), yv == m.positive_class)
    probs.append(calibration.apply_platt(m.logits(xt), fit["a"], fit["b"]))
  assert rows[0]["accuracy"] == pytest.approx(np.mean(np.argmax(np.stack(probs, 1), 1) == yt))
  assert rows[0]["accuracy"] > 0.8 and rows[1]["accuracy"] < rows[0]["accuracy"]
  assert robustness.parse_sigmas("0, 0.02,0.1") == [0.0, 0.02, 0.1]
  with pytest.raises(ValueError, match="fractions >= 0"):
    robustness.parse_sigmas("0.1,-1")


# ------------------------------------------------------------------------------------ compute


def test_macs_hand_count_and_xla():
  import flax.linen as nn
  assert compute.conv_taps(68, 5, 2) == (34, 4 + 32 * 5 + 3)  # one tap on padding at the start, two at the end
  assert compute.conv_taps(68, 5, 1) == (68, 68 * 5 - 2 * (2 + 1))
  counts = compute.macs({"size": "tiny"}, 16, 68, 4)  # conv 16, 32 (1 x 5, strides 1, 2); dense 64; LSTM 32
  assert counts["conv0"] == 16 * 334 * 4 * 16
  assert counts["conv1"] == 16 * 167 * 16 * 32
  assert counts["frame_dense"] == 16 * 34 * 32 * 64 and counts["lstm"] == 16 * 4 * 32 * (64 + 32)
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
  # XLA counts 2 flops per multiply-accumulate of a convolution / dense layer, padding taps left out.
  for layer, shape, key in ((nn.Conv(16, (1, 5), (1, 1), padding="SAME", use_bias=False), (1, 16, 68, 4), "conv0"),
                            (nn.Conv(32, (1, 5), (1, 2), padding="SAME", use_bias=False), (1, 16, 68, 16), "conv1"),
                            (nn.Dense(64, use_bias=False), (1, 16, 34 * 32), "frame_dense")):
    x = jnp.zeros(shape)
    v = layer.init(jax.random.key(0), x)
    assert compute.xla_flops(lambda v, x, layer=layer: layer.apply(v, x), v, x) == 2 * counts[key]
  pruned = compute.macs({"size": "tiny"}, 16, 17, 4)
  assert pruned["lstm"] == counts["lstm"] and pruned["frame_dense"] == 16 * 9 * 32 * 64


# ------------------------------------------------------------------------------------ AFEW-VA (genuine)


@pytest.mark.skipif(not AFEW_VA.is_dir(), reason="../shared/data/afew_va/001 (genuine AFEW-VA clip) absent")
def test_landmark_front_end_on_the_genuine_afew_va_clip():
  clip = explain.load_afew_va(str(AFEW_VA))
  with open(AFEW_VA / "001.json") as f:
    raw = json.load(f)
  assert clip["landmarks"].shape == (42, 68, 2) and clip["image_path"].endswith("00000.png")
  np.testing.assert_allclose(clip["landmarks"][7], raw["frames"]["00007"]["landmarks"], rtol=1e-6)
  windows, starts = explain.clip_windows(clip["landmarks"], 16)
  assert starts == [0, 13, 26] and windows.shape == (3, 16, 68, 2)
  m = members.Member.from_config(config_utils.load_config_file(f"{SYNTH}:emotion=sad,size=tiny"), None)
  z = np.asarray(m.normalize(windows))
  # Independent NumPy normalisation: centre each frame, turn by the first frame's eye line, divide by its IOD.
  for w in range(3):
    x = windows[w].astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    d = x[0, 42:48].mean(0) - x[0, 36:42].mean(0)
    ang = np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])
    want = x @ rot.T / np.hypot(*d)
    np.testing.assert_allclose(z[w], want, atol=2e-5)
  check = explain._front_end_check(m, windows)  # noqa: SLF001
  assert check["max_abs_eye_angle_deg"] < 1e-3 and abs(check["iod_min"] - 1) < 1e-5 and abs(check["iod_max"] - 1) < 1e-5
  with pytest.raises(ValueError, match="the clip has 42 frames; the models need windows of 50"):
    explain.clip_windows(clip["landmarks"], 50)


def test_afew_va_layout_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected one <clip>.json"):
    explain.load_afew_va(str(tmp_path))
  (tmp_path / "x.json").write_text(json.dumps({"frames": {"00000": {"landmarks": [[1, 2]] * 67}}}))
  with pytest.raises(ValueError, match=r"frame '00000' has landmarks of shape \(67, 2\); expected \(68, 2\)"):
    explain.load_afew_va(str(tmp_path))


# ------------------------------------------------------------------------------------ a real bank (slow)


TOY_CONFIG = '''
from fer_jax import config_utils
BASE = config_utils.load_module({synth!r})

def get_config(arg=None):
  a = config_utils.parse_arg(BASE.merge_landmark_lists(arg), **BASE.DEFAULTS)
  c = BASE.bank_config(a, class_names=("happy", "surprise", "neutral"))
  c.dataset.update(name="toy_landmark_clips", import_module="toy_landmark_clips", data_dir={data!r})
  c.task_options.num_frames = 8
  c.input.eval_batch_size = 32
  c.schedule.warmup_steps = 5
  c.checkpoint.every_steps = a.steps
  c.log_every_steps = a.steps
  c.evals.validation.every_steps = 0
  return c
'''


@pytest.mark.slow
def test_tiny_bank_end_to_end(tmp_path):
  """Three one-vs-rest models through the trainer on a generated 3-class landmark dataset: scores, report,
  IG explanation with heat maps, a rerun that trains nothing, and one pruning level."""
  sys.path.insert(0, str(ROOT / "tests"))
  path = tmp_path / "toy_bank.py"
  path.write_text(TOY_CONFIG.format(synth=SYNTH, data=str(tmp_path / "data")))
  spec = f"{path}:arch=temo,size=tiny,steps=60,batch=16"
  out = bank.run_bank(spec, str(tmp_path / "bank"))
  assert sorted(out["trained"]) == ["happy", "neutral", "surprise"]
  rep = out["report"]
  assert rep["complete"] and rep["multiclass"]["accuracy"] > 0.8, rep["markdown"]
  # The scores the evaluators saved equal a second pass of the restored model.
  c = bank.emotion_config(spec, "surprise")
  fast, slow = bank.score_run(c, str(tmp_path / "bank" / "temo" / "surprise")), bank.score_member(
      c, str(tmp_path / "bank" / "temo" / "surprise"))
  for split in bank.SPLITS:
    np.testing.assert_array_equal(fast[split][0], slow[split][0])
    np.testing.assert_allclose(fast[split][1], slow[split][1], atol=1e-5)
  ex = explain.explain_bank(out["bank_dir"], split="test", n_steps=32)
  assert ex["relevance"].shape == (3, 68) and (tmp_path / "bank" / "temo" / "heatmap_mean_face.png").exists()
  assert max(r["completeness_error_median"] for r in ex["emotions"]) < 0.05
  again = bank.run_bank(spec, str(tmp_path / "bank"))
  assert again["trained"] == [] and len(again["skipped"]) == 3
  pr = pruning.run_pruning(spec, str(tmp_path / "bank"), [68, 20])
  assert len(pr["levels"][1]["kept"]) == 20 and pr["levels"][1]["compute"]["macs"]["total"] < pr["levels"][0][
      "compute"]["macs"]["total"]
  assert (tmp_path / "bank" / "temo" / "pruning.png").exists()


@pytest.mark.slow  # ~30 s: four jit compiles and packing (the packed layers' equality is tested by default in
# tests/test_landmark_lstm.py)
def test_latency_functions_packed_bank_equals_each_float_member(clips):
  """The functions timed per pruning level: the vmapped bank gives each member's own logits, and a binary
  bank's packed XNOR-popcount twin gives the same numbers."""
  ms = [_member("binary", seed=s) for s in range(2)]
  raw = jnp.asarray(clips[0][:2])
  fns = pruning.latency_functions(ms, raw)
  assert sorted(fns) == ["bank", "bank_packed", "model", "model_packed"]
  want = np.stack([np.asarray(jax.jit(m.model.apply, static_argnames="train")(
      m.variables, train=False, landmarks=m.task.preprocess({"landmarks": raw})["landmarks"])["logits"][:, 0])
      for m in ms])
  assert np.ptp(want, axis=0).min() > 1e-3  # the members differ
  np.testing.assert_allclose(np.asarray(fns["bank"]()), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(fns["bank_packed"]()), want, rtol=1e-5, atol=1e-5)
  assert sorted(pruning.latency_functions([_member("temo")], raw)) == ["bank", "model"]


def test_cli_prune_with_explain_does_both(monkeypatch, capsys):
  """--prune with --explain: the pruning levels, then the full bank's IG heat maps (nothing retrained)."""
  calls = []
  monkeypatch.setattr(pruning, "run_pruning", lambda *a, **k: calls.append("prune") or {"markdown": "PRUNED"})
  monkeypatch.setattr(bank, "run_bank", lambda *a, **k: calls.append("bank") or {
      "report": {"complete": True, "markdown": "BANK", "variant": "temo"}, "bank_dir": "/nowhere"})
  monkeypatch.setattr(explain, "load_bank", lambda d: None)
  monkeypatch.setattr(explain, "explain_bank", lambda d, **k: calls.append(("explain", k["split"])) or {
      "markdown": "EXPLAINED"})
  argv = ["--config", SYNTH + ":arch=temo,size=tiny", "--workdir", "/nowhere", "--prune=68,34"]
  assert bank.main(argv + ["--explain"]) == 0
  assert calls == ["prune", "bank", ("explain", "test")]
  assert "PRUNED" in capsys.readouterr().out
  calls.clear()
  assert bank.main(argv) == 0 and calls == ["prune"]
