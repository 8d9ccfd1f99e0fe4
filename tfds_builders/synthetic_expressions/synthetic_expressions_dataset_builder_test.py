"""Builds small `synthetic_expressions` configs to array_record and reads them back."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from fer_jax.data import synthetic, synthetic_scenes  # noqa: E402
from tfds_builders.synthetic_expressions import Builder, SyntheticExpressionsConfig  # noqa: E402


def _build_and_read(tmp_path, cfg):
  builder = tfds.builder("synthetic_expressions", config=cfg, data_dir=tmp_path)
  builder.download_and_prepare(file_format="array_record")
  sources = tfds.data_source("synthetic_expressions", data_dir=tmp_path, download=False,
                             builder_kwargs={"config": cfg})
  return builder, sources


def _assert_record_equals(record, expected, index):
  assert set(record) == set(expected), (set(record), set(expected))
  for name, want in expected.items():
    got = np.asarray(record[name])
    want = np.asarray(want[index])
    assert got.shape == want.shape, name
    if name in ("image", "frames", "context", "body"):
      assert got.dtype == np.uint8
    if name == "image_id":  # Text reads back as bytes
      got = np.asarray(got.item().decode() if isinstance(got.item(), bytes) else got.item())
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_small_still_config_builds_and_reads_back_renderer_output(tmp_path):
  cfg = SyntheticExpressionsConfig(name="tiny_grey", image_size=32, channels=1, train_size=40,
                                   validation_size=12, test_size=8, seed=5, chunk_size=16)
  builder, sources = _build_and_read(tmp_path, cfg)
  assert {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 40, "validation": 12, "test": 8}
  assert builder.info.features["label"].names == list(synthetic.CLASS_NAMES)
  for split, n in (("train", 40), ("validation", 12), ("test", 8)):
    source = sources[split]
    assert len(source) == n
    expected = synthetic.sample_examples(5, split, 0, n, size=32, channels=1)
    for i in range(n):  # records are stored in index order
      record = source[i]
      assert record["id"] == i
      _assert_record_equals(record, expected, i)


def test_small_sequence_config_builds_and_reads_back_renderer_output(tmp_path):
  cfg = SyntheticExpressionsConfig(name="tiny_clips", image_size=16, channels=3, num_frames=3,
                                   train_size=5, validation_size=2, test_size=0, seed=1,
                                   chunk_size=2)
  builder, sources = _build_and_read(tmp_path, cfg)
  assert set(builder.info.splits.keys()) == {"train", "validation"}  # empty test split not made
  assert builder.info.splits["train"].num_examples == 5
  assert builder.info.splits["validation"].num_examples == 2
  expected = synthetic.sample_sequences(1, "train", 0, 5, num_frames=3, size=16, channels=3)
  assert sources["train"][4]["frames"].shape == (3, 16, 16, 3)
  for i in range(5):
    _assert_record_equals(sources["train"][i], expected, i)


def test_tracked_sequence_config_stores_the_tracker_landmarks(tmp_path):
  cfg = SyntheticExpressionsConfig(name="tiny_tracked", image_size=16, num_frames=4, train_size=3,
                                   validation_size=0, test_size=0, seed=2, chunk_size=2, tracking_noise=0.05,
                                   intensity_scale=0.8)
  _, sources = _build_and_read(tmp_path, cfg)
  expected = synthetic.sample_sequences(2, "train", 0, 3, num_frames=4, size=16, tracking_noise=0.05,
                                        intensity_scale=0.8)
  exact = synthetic.sample_sequences(2, "train", 0, 3, num_frames=4, size=16, intensity_scale=0.8)
  assert np.abs(expected["landmarks"] - exact["landmarks"]).max() > 0.1
  for i in range(3):
    _assert_record_equals(sources["train"][i], expected, i)


def test_small_scenes_config_builds_and_reads_back_renderer_output(tmp_path):
  cfg = SyntheticExpressionsConfig(name="tiny_scenes", scenes=True, context_size=32, body_size=16,
                                   train_size=6, validation_size=3, test_size=0, seed=2, chunk_size=4)
  builder, sources = _build_and_read(tmp_path, cfg)
  assert set(builder.info.splits.keys()) == {"train", "validation"}
  assert builder.info.splits["train"].num_examples == 6
  assert builder.info.features["categories"].shape == (26,)
  assert builder.info.features["label"].names == list(synthetic.CLASS_NAMES)
  for split, n in (("train", 6), ("validation", 3)):
    expected = synthetic_scenes.sample_scenes(2, split, 0, n, context_size=32, body_size=16)
    for i in range(n):
      record = sources[split][i]
      assert record["context"].shape == (32, 32, 3) and record["body"].shape == (16, 16, 3)
      _assert_record_equals(record, expected, i)


def test_scenes_features_match_the_emotic_builder():
  """The EMOTIC schema (tfds_builders/emotic) is a subset of the scenes config's features."""
  emotic_builder = pytest.importorskip("tfds_builders.emotic")
  real = emotic_builder.Builder(config="c112_b64", data_dir="/nonexistent-not-created").info.features
  cfg = SyntheticExpressionsConfig(name="scenes_112", scenes=True, context_size=112, body_size=64)
  ours = tfds.builder("synthetic_expressions", config=cfg, data_dir="/nonexistent-not-created").info.features
  for key in real.keys():
    assert key in ours, key
    assert (ours[key].shape, ours[key].np_dtype) == (real[key].shape, real[key].np_dtype), key  # no TF import
  assert set(ours.keys()) - set(real.keys()) == {"label", "posture", "scene_mood"}


def test_registered_configs():
  configs = {c.name: c for c in Builder.BUILDER_CONFIGS}
  assert Builder.DEFAULT_CONFIG_NAME == "grey48"
  g = configs["grey48"]
  assert (g.image_size, g.channels, g.num_frames) == (48, 1, 0)
  assert (g.train_size, g.validation_size, g.test_size) == (16000, 2000, 2000)
  r = configs["rgb64"]
  assert (r.image_size, r.channels, r.num_frames) == (64, 3, 0)
  s = configs["sequences"]
  assert (s.image_size, s.channels, s.num_frames) == (48, 1, 16)
  assert (s.train_size, s.validation_size, s.test_size) == (2000, 300, 300)
  t = configs["sequences_tracked"]
  assert (t.num_frames, t.train_size, t.test_size, t.tracking_noise, t.intensity_scale) == (16, 2000, 300, 0.05, 1)
  sc = configs["scenes"]
  assert (sc.scenes, sc.context_size, sc.body_size, sc.num_frames) == (True, 96, 64, 0)
  assert (sc.train_size, sc.validation_size, sc.test_size) == (8000, 1000, 1000)
  info = tfds.builder("synthetic_expressions/scenes", data_dir="/nonexistent-not-created").info
  assert info.features["context"].shape == (96, 96, 3) and info.features["body"].shape == (64, 64, 3)
  assert info.features["posture"].shape == (7,) and info.features["scene_mood"].shape == (4,)
  assert "synthetic_expressions" in tfds.list_builders()
  builder = tfds.builder("synthetic_expressions", data_dir="/nonexistent-not-created")
  assert builder.builder_config.name == "grey48"
  assert builder.info.features["image"].shape == (48, 48, 1)


def test_bad_config_raises():
  with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
    SyntheticExpressionsConfig(name="bad", channels=2)
  with pytest.raises(ValueError, match="train_size must be a non-negative int, got -1"):
    SyntheticExpressionsConfig(name="bad", train_size=-1)
  with pytest.raises(ValueError, match="scenes configs are stills: num_frames must be 0, got 4"):
    SyntheticExpressionsConfig(name="bad", scenes=True, num_frames=4)
  with pytest.raises(ValueError, match="context_size must be >= 20, got 8"):
    SyntheticExpressionsConfig(name="bad", scenes=True, context_size=8)
  with pytest.raises(ValueError, match="body_size must be a non-negative int, got -2"):
    SyntheticExpressionsConfig(name="bad", scenes=True, body_size=-2)
  with pytest.raises(ValueError, match="tracking_noise must be in .0, 1. inter-ocular distances, got 1.5"):
    SyntheticExpressionsConfig(name="bad", num_frames=4, tracking_noise=1.5)
  with pytest.raises(ValueError, match="tracking_noise / intensity_scale apply to clips"):
    SyntheticExpressionsConfig(name="bad", tracking_noise=0.05)
