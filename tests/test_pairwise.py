"""Pairwise learning (fer_jax.pairwise, experiments/pairwise_*.py): the pairs, one-vs-one voting against
hand-computed cases and a loop reference, the pair metrics and heat-map matrix, the configs' options and
errors, and the sweep's resumability with an instant fake trainer."""

import json
import os
import pathlib

import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.pairwise import pairs as pairs_lib
from fer_jax.pairwise import report, sweep, voting

ROOT = pathlib.Path(__file__).resolve().parents[1]
FERPLUS = str(ROOT / "experiments" / "pairwise_ferplus.py")
AFFECTNET = str(ROOT / "experiments" / "pairwise_affectnet.py")


def _load(path, arg=""):
  return config_utils.load_config_file(path + (f":{arg}" if arg else ""))


# ----------------------------------------------------------------------------------------------------
# Pairs.
# ----------------------------------------------------------------------------------------------------

def test_pairs_and_names():
  p = pairs_lib.all_pairs(8)
  assert len(p) == 28 == len(set(p))
  assert p[0] == (0, 1) and p[6] == (0, 7) and p[7] == (1, 2) and p[-1] == (6, 7)
  assert all(i < j for i, j in p)
  assert len(pairs_lib.all_pairs(7)) == 21
  assert pairs_lib.pair_name((3, 5)) == "3-5" and pairs_lib.pair_dirname((3, 5)) == "pair_3-5"
  assert pairs_lib.parse_pair("3-5") == (3, 5) == pairs_lib.parse_pair(" 5 - 3 ")
  assert pairs_lib.parse_pairs("0-1,3-5,5-3") == [(0, 1), (3, 5)]
  assert pairs_lib.parse_pairs("all", 4) == pairs_lib.all_pairs(4)
  assert pairs_lib.pair_label((4, 5), ["a", "b", "c", "d", "fear", "disgust"]) == "fear vs disgust"


@pytest.mark.parametrize("text,match", [("3-3", r"pair='3-3' names class 3 twice"),
                                        ("0-9", r"pair='0-9': class 9 is out of range; expected ids in 0..7"),
                                        ("3,5", r"pair='3,5'; expected 'i-j'"), ("a-b", "expected 'i-j'")])
def test_bad_pairs_are_named(text, match):
  with pytest.raises(ValueError, match=match):
    pairs_lib.parse_pair(text, 8)


# ----------------------------------------------------------------------------------------------------
# One-vs-one voting.
# ----------------------------------------------------------------------------------------------------

PAIRS3 = [(0, 1), (0, 2), (1, 2)]


def test_ovo_hand_computed_cases():
  margins = np.array([
      [1.0, 1.0, -1.0],    # 0-1 -> 1, 0-2 -> 2, 1-2 -> 1: votes (0, 2, 1) -> class 1
      [0.5, -2.0, 0.2],    # 1, 0, 2: a 3-way tie; sums c0 = -0.5 + 2.0, c1 = 0.5 - 0.2, c2 = 0.2 - 2.0 -> 0
      [0.0, 0.0, 0.0],     # exact zeros vote for i: 0, 0, 1 -> votes (2, 1, 0) -> class 0
      [1.0, -1.0, 1.0],    # a tie with equal sums (0, 0, 0): the lower id -> 0
      [-0.1, 3.0, 0.3],    # 0, 2, 2: votes (1, 0, 2) -> 2
      [0.4, -0.1, -0.3],   # 1, 0, 1: votes (1, 2, 0) -> 1
      [0.2, -0.9, 0.1],    # 1, 0, 2: tie; sums c0 = -0.2 + 0.9 = 0.7, c1 = 0.2 - 0.1, c2 = 0.1 - 0.9 -> 0
      [0.9, -0.2, 0.1],    # 1, 0, 2: tie; sums c0 = -0.9 + 0.2, c1 = 0.9 - 0.1 = 0.8, c2 = -0.1 -> 1
  ])
  counts = voting.vote_counts(margins, PAIRS3, 3)
  np.testing.assert_array_equal(counts["votes"][:3], [[0, 2, 1], [1, 1, 1], [2, 1, 0]])
  np.testing.assert_allclose(counts["margin_sums"][1], [1.5, 0.3, -1.8])
  np.testing.assert_array_equal(voting.ovo_predict(margins, PAIRS3, 3), [1, 0, 0, 0, 2, 1, 0, 1])


def _loop_reference(margins, pairs, k):
  """Row by row in plain Python: votes, then (votes, summed margin, -id) maximal."""
  out = []
  for row in margins:
    votes, sums = [0] * k, [0.0] * k
    for (i, j), m in zip(pairs, row):
      winner = j if m > 0 else i
      votes[winner] += 1
      sums[j] += m
      sums[i] -= m
    out.append(max(range(k), key=lambda c: (votes[c], sums[c], -c)))
  return np.array(out)


def test_ovo_matches_loop_reference_with_ties():
  rng = np.random.default_rng(0)
  p = pairs_lib.all_pairs(8)
  # Rounded margins make vote ties (and some equal sums) common.
  margins = np.round(rng.normal(size=(400, 28)), 1)
  pred = voting.ovo_predict(margins, p, 8)
  np.testing.assert_array_equal(pred, _loop_reference(margins, p, 8))
  votes = voting.vote_counts(margins, p, 8)["votes"]
  assert (votes.sum(1) == 28).all()
  n_tied = ((votes == votes.max(1, keepdims=True)).sum(1) > 1).sum()
  assert n_tied > 20  # the tie-break was exercised


def test_ovo_of_perfect_pair_models_is_perfect():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 8, 300)
  p = pairs_lib.all_pairs(8)
  margins = rng.normal(size=(300, 28))  # pairs not holding the true class: anything
  for col, (i, j) in enumerate(p):
    margins[labels == i, col] = -rng.uniform(0.1, 1, (labels == i).sum())
    margins[labels == j, col] = rng.uniform(0.1, 1, (labels == j).sum())
  np.testing.assert_array_equal(voting.ovo_predict(margins, p, 8), labels)


def test_ovo_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"margins has shape \(2, 2\); expected \(num_images, 3\)"):
    voting.ovo_predict(np.zeros((2, 2)), PAIRS3, 3)
  m = np.zeros((2, 3))
  m[1, 2] = np.nan
  with pytest.raises(ValueError, match="margin of pair 1-2 for image 1 is nan"):
    voting.ovo_predict(m, PAIRS3, 3)
  with pytest.raises(ValueError, match=r"pair \(1, 3\) is not 0 <= i < j < 3"):
    voting.ovo_predict(np.zeros((1, 3)), [(0, 1), (0, 2), (1, 3)], 3)


# ----------------------------------------------------------------------------------------------------
# Pair metrics, heat map, tables.
# ----------------------------------------------------------------------------------------------------

def test_pair_metrics_hand_computed():
  labels = np.array([3, 3, 3, 5, 5, 0, 7, 3])
  margins = np.array([-1, -2, 0.5, 1, -1, 9, 9, 0.0])  # pair (3, 5): label 5 is predicted when > 0
  r = report.pair_metrics(labels, margins, (3, 5))
  # class 3: 5 images... rows 0, 1, 2, 7 -> correct, correct, wrong, correct (0 -> class 3): recall 3/4
  # class 5: rows 3, 4 -> correct, wrong: recall 1/2. Rows of classes 0 and 7 are ignored.
  assert r["n_test"] == [4, 2]
  assert r["accuracy"] == pytest.approx(4 / 6)
  assert r["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_pair_summary_means_and_weakest_pairs():
  results = [{"pair": "0-1", "accuracy": 0.9, "balanced_accuracy": 0.7},
             {"pair": "2-3", "accuracy": 0.6, "balanced_accuracy": 0.8},
             {"pair": "4-5", "accuracy": 0.75, "balanced_accuracy": 0.9}]
  s = report.pair_summary(results)
  assert s["mean_accuracy"] == pytest.approx(0.75) and s["mean_balanced_accuracy"] == pytest.approx(0.8)
  assert s["min_accuracy"] == {"pair": "2-3", "value": 0.6}
  assert s["min_balanced_accuracy"] == {"pair": "0-1", "value": 0.7}
  assert "mean pair accuracy 0.7500 (lowest 0.6000, pair 2-3)" in report.summary_line(s)
  assert report.pair_summary([]) == {} and report.summary_line({}) == "no pair finished"


def test_pair_matrix_cells_and_heatmap(tmp_path):
  values = {(0, 1): 0.9, (2, 7): 0.6, (3, 5): 0.75}
  m = report.pair_matrix(values, 8)
  assert m[0, 1] == m[1, 0] == 0.9 and m[2, 7] == m[7, 2] == 0.6 and m[3, 5] == m[5, 3] == 0.75
  assert np.isnan(np.diag(m)).all() and np.isfinite(m).sum() == 6
  path = str(tmp_path / "h.png")
  report.write_heatmap(m, [f"c{i}" for i in range(8)], path, "t")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match=r"pair \(5, 3\) is not"):
    report.pair_matrix({(5, 3): 1.0}, 8)


def test_comparison_table():
  names = ["a", "b"]
  s = report.classification_summary(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), names)
  assert s["accuracy"] == 0.75 and s["recall"] == {"a": 0.5, "b": 1.0}
  f1_a, f1_b = 2 * 1 * 0.5 / 1.5, 2 * (2 / 3) * 1 / (5 / 3)
  assert s["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
  text = report.comparison_markdown({"ovo": s, "single": s}, names)
  assert "| recall a | 0.5000 | 0.5000 |" in text and text.startswith("| metric | ovo | single |")


# ----------------------------------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------------------------------

def test_config_pair_heads_and_options():
  c = _load(FERPLUS, "pair=5-6")
  assert c.dataset.name == "fer2013/ferplus" and tuple(c.dataset.classes) == (5, 6)
  assert c.dataset.num_classes == 2
  assert c.model.head.name == "cosine" and c.model.head.num_outputs == 2
  assert dict(c.loss.arcface) == dict(weight=1.0, scale=64.0, m2=0.5, easy_margin=False)
  assert c.init_weights == "pretrained:fer2013_resnet_s" and c.model.backbone.size == "fer_s"
  assert c.input.channels == 1 and c.input.crop == 44 and c.pairwise.test_split == "validation"
  assert c.pairwise.class_names[5:7] == ("disgust", "fear") and c.input.sampler.name == "class_balanced"
  assert c.optimizer.get("frozen") is None and not c.model.get("backbone_frozen", False)
  c = _load(FERPLUS, "pair=0-7,head=softmax,probe,sampler=undersample,steps=10")
  assert c.model.head.name == "linear" and list(c.loss) == ["ce"] and c.optimizer.frozen == "^backbone/"
  assert c.model.backbone_frozen is True
  assert c.input.sampler.name == "undersample" and c.num_train_steps == 10
  c = _load(FERPLUS, "s=30,m=0.3,easy_margin")
  assert tuple(c.dataset.classes) == tuple(range(8)) and c.model.head.num_outputs == 8
  assert dict(c.loss.arcface) == dict(weight=1.0, scale=30.0, m2=0.3, easy_margin=True)
  c = _load(AFFECTNET, "backbone=iresnet100,pair=4-5,classes=7")
  assert c.dataset.name == "affectnet/expr7_112" and c.model.backbone.name == "iresnet"
  assert c.input.mean == (0.5, 0.5, 0.5) and c.optimizer.lr == 1e-4 and c.optimizer.weight_decay == 5e-4
  assert c.optimizer.name == "adam" and _load(AFFECTNET, "backbone=resnext50").input.mean == (0.485, 0.456, 0.406)
  assert c.input.batch_size == 256 and c.num_epochs == 40 and c.optimizer.grad_clip_norm == 1.0
  assert _load(AFFECTNET, "res=224,backbone=efficientnet_b2").dataset.name == "affectnet/expr8_224"
  assert _load(AFFECTNET, "aligned").dataset.name == "affectnet/expr8_112_aligned"


@pytest.mark.parametrize("path,arg,match", [
    (FERPLUS, "pair=3-3", "pair='3-3' names class 3 twice"),
    (FERPLUS, "pair=0-9", "pair='0-9': class 9 is out of range"),
    (FERPLUS, "classes=7,pair=0-7", "class 7 is out of range; expected ids in 0..6"),
    (AFFECTNET, "backbone=resnet50", "backbone='resnet50'; expected one of"),
    (AFFECTNET, "backbone=iresnet50,res=224", "iResNet takes 112-px faces"),
    (AFFECTNET, "head=cosface", "head='cosface'; expected one of"),
    (AFFECTNET, "sampler=balanced", "sampler='balanced'; expected one of"),
    (AFFECTNET, "classes=6", "classes=6; expected one of"),
    (FERPLUS, "steps=0", "steps=0; expected a positive"),
])
def test_config_errors_name_the_value(path, arg, match):
  with pytest.raises(ValueError, match=match):
    _load(path, arg)


# ----------------------------------------------------------------------------------------------------
# The sweep, with an instant fake trainer.
# ----------------------------------------------------------------------------------------------------

class _Fake:
  """train_fn / score_fn / count_fn of run_sweep: records the work dirs trained, gives good margins."""

  def __init__(self, stop_at=None):
    self.trained, self.stop_at = [], stop_at
    rng = np.random.default_rng(0)
    self.labels = rng.integers(0, 8, 200)

  def train(self, config, workdir):
    if self.stop_at is not None and len(self.trained) == self.stop_at:
      raise KeyboardInterrupt("killed")
    os.makedirs(workdir, exist_ok=True)
    self.trained.append((os.path.basename(workdir), int(config.num_train_steps)))
    return {"step": int(config.num_train_steps)}

  def score(self, config, workdir):
    ids = tuple(config.dataset.classes)
    if len(ids) == 2:  # the pair model: right on its own classes, except a few class-5 images
      i, j = ids
      s = np.where(self.labels == j, 1.0, np.where(self.labels == i, -1.0, 0.3))
      s[(self.labels == j) & (np.arange(200) % 7 == 0) & (j == 5)] = -1.0
      return self.labels, np.stack([np.zeros(200), s], 1)
    return self.labels, np.eye(8)[self.labels]

  def count(self, config):
    return list(range(100, 108))


def test_sweep_resumes_and_reports(tmp_path, capsys):
  workdir = str(tmp_path / "sweep")
  fake = _Fake(stop_at=1)
  kw = dict(single=True, log=print)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(FERPLUS, workdir, train_fn=fake.train, score_fn=fake.score, count_fn=fake.count, **kw)
  assert [n for n, _ in fake.trained] == ["pair_0-1"]
  assert os.path.exists(os.path.join(workdir, "pair_0-1", "margins.npz"))
  fake.stop_at = None
  out = sweep.run_sweep(FERPLUS, workdir, train_fn=fake.train, score_fn=fake.score, count_fn=fake.count, **kw)
  names = [n for n, _ in fake.trained]
  assert names[0] == "pair_0-1" and names.count("pair_0-1") == 1  # not redone
  assert out["skipped"] == ["pair_0-1"] and len(out["trained"]) == 28 and names[-1] == "single"
  assert all(steps == 150 for _, steps in fake.trained)  # per_model budget
  logs = capsys.readouterr().out
  assert "[1/29] pair 0-1 (neutral vs happiness): finished earlier, skipped" in logs and "ETA" in logs
  rep = out["report"]
  assert rep["finished"] == 28
  by_pair = {r["pair"]: r for r in rep["pair_results"]}
  assert by_pair["0-1"]["accuracy"] == 1.0
  n5 = (fake.labels == 5).sum()
  wrong5 = ((fake.labels == 5) & (np.arange(200) % 7 == 0)).sum()
  n3 = (fake.labels == 3).sum()
  assert by_pair["3-5"]["balanced_accuracy"] == pytest.approx((1 + 1 - wrong5 / n5) / 2)
  assert by_pair["3-5"]["accuracy"] == pytest.approx(1 - wrong5 / (n3 + n5))
  for f in ("pairs.csv", "pairs.md", "pair_accuracy.png", "ovo.json", "ovo_confusion.png", "comparison.md",
            "single_confusion.png"):
    assert os.path.exists(os.path.join(workdir, f)), f
  with open(os.path.join(workdir, "pairs.csv")) as f:
    rows = f.read().splitlines()
  assert rows[0].startswith("pair,class_i,class_j,n_train_i")
  assert rows[1].startswith("0-1,neutral,happiness,100,101")
  models = json.load(open(os.path.join(workdir, "ovo.json")))["models"]
  single = models["single 8-class model (steps of one pair model)"]
  assert single["accuracy"] == 1.0
  ovo = models["one-vs-one (28 pair models)"]
  # Class-5 images that 4-5 / 3-5 / ... models get wrong lose votes; the voting reference decides.
  all_pairs = pairs_lib.all_pairs(8)
  margins = np.stack([fake.score(sweep.config_for(FERPLUS, p), "")[1][:, 1] for p in all_pairs], 1)
  expected = report.classification_summary(fake.labels, _loop_reference(margins, all_pairs, 8),
                                           list(_load(FERPLUS).pairwise.class_names))
  assert ovo["accuracy"] == pytest.approx(expected["accuracy"])
  assert ovo["recall"] == pytest.approx(expected["recall"])
  # A third run trains nothing.
  before = len(fake.trained)
  out = sweep.run_sweep(FERPLUS, workdir, train_fn=fake.train, score_fn=fake.score, count_fn=fake.count, **kw)
  assert len(fake.trained) == before and len(out["skipped"]) == 29


def test_sweep_subset_total_budget_and_errors(tmp_path):
  fake = _Fake()
  workdir = str(tmp_path / "s")
  out = sweep.run_sweep(FERPLUS + ":steps=7", workdir, pairs=[(3, 5), (0, 1)], single=True,
                        single_budget="total", train_fn=fake.train, score_fn=fake.score, count_fn=fake.count,
                        log=lambda s: None)
  assert fake.trained == [("pair_3-5", 7), ("pair_0-1", 7), ("single_total", 28 * 7)]
  assert out["report"]["finished"] == 2 and "one-vs-one (28 pair models)" not in out["report"]["models"]
  both = _Fake()
  rep = sweep.run_sweep(FERPLUS + ":steps=3", str(tmp_path / "both"), pairs=[(0, 1)], single=True,
                        single_budget="both", train_fn=both.train, score_fn=both.score, count_fn=both.count,
                        log=lambda s: None)["report"]
  assert both.trained == [("pair_0-1", 3), ("single", 3), ("single_total", 28 * 3)]
  assert sorted(rep["models"]) == ["single 8-class model (steps of all pair models)",
                                   "single 8-class model (steps of one pair model)"]
  seen = []
  over = _Fake()
  over_train = over.train
  over.train = lambda config, wd: (seen.append((config.optimizer.lr, config.dataset.manual_dir)),
                                   over_train(config, wd))[1]
  sweep.run_sweep(FERPLUS, str(tmp_path / "over"), pairs=[(2, 3)], single=True, train_fn=over.train,
                  score_fn=over.score, count_fn=over.count, log=lambda s: None,
                  overrides=["--config.optimizer.lr=0.25", "--config.dataset.manual_dir=/elsewhere"])
  assert seen == [(0.25, "/elsewhere")] * 2  # the pair model and the single model
  assert sweep.main(["--config=" + FERPLUS, "--workdir=" + str(tmp_path / "o2"), "--config.optimizer.lrr=1"]) == 2
  follower = _Fake()  # a process other than 0 of a multi-host sweep: trains and scores, writes nothing
  out = sweep.run_sweep(FERPLUS, str(tmp_path / "follower"), pairs=[(0, 1)], single=True, train_fn=follower.train,
                        score_fn=follower.score, count_fn=follower.count, log=lambda s: None, is_writer=False)
  assert [n for n, _ in follower.trained] == ["pair_0-1", "single"] and "report" not in out
  written = [f for f in os.listdir(tmp_path / "follower")]
  assert sorted(written) == ["pair_0-1", "single"]  # the fake trainer's dirs only
  assert not os.listdir(tmp_path / "follower" / "pair_0-1")
  with pytest.raises(ValueError, match="sets pair; the sweep sets pair=i-j itself"):
    sweep.config_for(FERPLUS + ":pair=0-1", None)
  with pytest.raises(ValueError, match="holds a sweep of --config="):
    sweep.run_sweep(FERPLUS + ":steps=8", workdir, pairs=[(0, 1)], train_fn=fake.train, score_fn=fake.score,
                    count_fn=fake.count, log=lambda s: None)
  with pytest.raises(ValueError, match="single_budget='all'"):
    sweep.run_sweep(FERPLUS, workdir, single_budget="all")
  assert sweep.main(["--config=" + FERPLUS, "--workdir=" + workdir, "--pairs=2-2"]) == 2


# ----------------------------------------------------------------------------------------------------
# A real sweep through the trainer: 3 toy classes = 3 pairs + the single model (needs dataset.classes).
# ----------------------------------------------------------------------------------------------------

TOY_CONFIG = '''
from fer_jax import config_utils
BASE = config_utils.load_module({affectnet!r})

def get_config(arg=None):
  a = config_utils.parse_arg(arg, pair="", head="softmax", steps=30)
  c = config_utils.base_config()
  c.dataset.update(name="toy_blobs", import_module="toy_blobs", data_dir={data!r}, num_classes=4, image_size=16)
  c.input.update(batch_size=16, eval_batch_size=32, resize=16, crop=16, num_threads=1, hflip=False)
  c.model.backbone = dict(name="resnet", size="fer_xs")
  BASE.apply_model_options(c, BASE.options(dict(pair=a.pair, head=a.head, classes=3, sampler="uniform")),
                           ("tl", "tr", "bl"), "validation")
  c.optimizer.update(lr=1e-2, weight_decay=0.0)
  c.schedule.update(name="warmup_cosine", warmup_steps=5)
  c.num_train_steps = a.steps
  c.checkpoint.every_steps = a.steps
  c.log_every_steps = a.steps
  c.evals = config_utils.evals("classification", test=None)
  return c
'''


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "arcface"])
def test_real_sweep_on_toy_classes(tmp_path, head):
  import sys
  sys.path.insert(0, str(ROOT / "tests"))
  path = tmp_path / "toy_pairs.py"
  path.write_text(TOY_CONFIG.format(affectnet=AFFECTNET, data=str(tmp_path / "data")))
  workdir = str(tmp_path / "sweep")
  out = sweep.run_sweep(f"{path}:head={head}", workdir, single=True, log=print)
  rep = out["report"]
  assert rep["finished"] == 3 and sorted(out["trained"]) == ["pair_0-1", "pair_0-2", "pair_1-2", "single"]
  for r in rep["pair_results"]:
    assert r["n_test"] == [16, 16] and r["accuracy"] > 0.8, r  # 64 validation images, 16 per class
  d = report.load_npz(os.path.join(workdir, "pair_0-2", "margins.npz"))
  assert d["labels"].shape == (48,) and set(d["labels"].tolist()) == {0, 1, 2}  # class 3 dropped
  ovo = rep["models"]["one-vs-one (3 pair models)"]
  assert ovo["accuracy"] > 0.8 and "single 3-class model (steps of one pair model)" in rep["models"]
  again = sweep.run_sweep(f"{path}:head={head}", workdir, single=True, log=print)
  assert again["trained"] == [] and len(again["skipped"]) == 4


def test_sweep_of_one_affectnet_pair_through_the_trainer(tmp_path):
  """One real pair model of experiments/pairwise_affectnet.py (the shipped grey ResNet on the generated
  AffectNet files, 4 steps) through the sweep: it scores every test image of all 8 classes, in the builder's
  order; a rerun trains nothing."""
  manual = ROOT / "tfds_builders" / "affectnet" / "dummy_data" / "official"
  overrides = [f"--config.dataset.manual_dir={manual}", f"--config.dataset.data_dir={tmp_path / 'tfds'}"]
  spec = AFFECTNET + ":runlocal,backbone=resnet_fer_s"
  workdir = str(tmp_path / "sweep")
  out = sweep.run_sweep(spec, workdir, pairs=[(4, 5)], log=print, overrides=overrides)
  assert out["trained"] == ["pair_4-5"]
  d = report.load_npz(os.path.join(workdir, "pair_4-5", "margins.npz"))
  from fer_jax.data import samplers, sources
  builder = sources.get_builder("affectnet/expr8_112", data_dir=str(tmp_path / "tfds"))
  labels = samplers.read_labels(builder.as_data_source(split="test"), "label")
  np.testing.assert_array_equal(d["labels"], labels)
  assert set(labels.tolist()) == set(range(8)) and d["scores"].shape == (len(labels), 2)
  np.testing.assert_allclose(d["margins"], d["scores"][:, 1] - d["scores"][:, 0])
  assert np.all(np.abs(d["scores"]) <= 1.0 + 1e-5)  # an ArcFace head scores cosines
  with open(os.path.join(workdir, "train_counts.json")) as f:
    counts = json.load(f)
  train = samplers.read_labels(builder.as_data_source(split="train"), "label")
  assert counts == np.bincount(train, minlength=8).tolist()
  again = sweep.run_sweep(spec, workdir, pairs=[(4, 5)], log=print, overrides=overrides)
  assert again["trained"] == [] and again["skipped"] == ["pair_4-5"]
