"""grain input pipeline: transforms against NumPy, determinism, sharding, exact resume."""

import numpy as np
import pytest

from fer_jax.data import pipeline


def _source(n=37, size=48, channels=1):
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (size, size, channels), dtype=np.uint8), "label": i % 7}
          for i in range(n)]


def test_ten_crop_matches_numpy_slices():
  img = np.arange(10 * 12 * 1, dtype=np.uint8).reshape(10, 12, 1)
  crops = pipeline.ten_crop(img, 6)
  f = img[:, ::-1]
  want = [img[:6, :6], img[:6, 6:], img[4:, :6], img[4:, 6:], img[2:8, 3:9],
          f[:6, :6], f[:6, 6:], f[4:, :6], f[4:, 6:], f[2:8, 3:9]]
  np.testing.assert_array_equal(crops, np.stack(want))


def test_resize_identity_and_constant():
  img = np.full((48, 48, 3), 77, np.uint8)
  assert pipeline.resize(img, 48) is img
  np.testing.assert_array_equal(pipeline.resize(img, 52), np.full((52, 52, 3), 77, np.uint8))


def test_rotate_180_is_flip():
  img = np.random.default_rng(1).integers(0, 256, (9, 9, 1), dtype=np.uint8)
  np.testing.assert_array_equal(pipeline.rotate(img, 180.0), img[::-1, ::-1])


def test_train_batches_deterministic_and_resume_exact():
  aug = pipeline.AugmentConfig(resize=52, crop=48, rotation=15.0, hflip=True, vflip=True)
  ds = pipeline.train_dataset(_source(), aug, batch_size=8, seed=3)
  it = iter(ds)
  first = [next(it) for _ in range(6)]  # crosses an epoch boundary (37 examples)
  state = it.get_state()
  upcoming = [next(it) for _ in range(3)]
  again = iter(pipeline.train_dataset(_source(), aug, batch_size=8, seed=3))
  for b in first:
    np.testing.assert_array_equal(b["image"], next(again)["image"])
  resumed = iter(pipeline.train_dataset(_source(), aug, batch_size=8, seed=3))
  resumed.set_state(state)
  for b in upcoming:
    r = next(resumed)
    np.testing.assert_array_equal(b["image"], r["image"])
    np.testing.assert_array_equal(b["label"], r["label"])
  other_seed = next(iter(pipeline.train_dataset(_source(), aug, batch_size=8, seed=4)))
  assert not np.array_equal(other_seed["image"], first[0]["image"])


def test_each_epoch_visits_every_example_once():
  src = [{"image": np.full((4, 4, 1), i, np.uint8), "label": i} for i in range(40)]
  ds = pipeline.train_dataset(src, pipeline.AugmentConfig(), batch_size=10, seed=0)
  it = iter(ds)
  epoch1 = np.concatenate([next(it)["label"] for _ in range(4)])
  epoch2 = np.concatenate([next(it)["label"] for _ in range(4)])
  assert sorted(epoch1) == list(range(40)) and sorted(epoch2) == list(range(40))
  assert not np.array_equal(epoch1, epoch2)  # reshuffled


def test_process_shards_partition_eval_set_with_padding():
  src = [{"image": np.full((4, 4, 1), i, np.uint8), "label": i % 7} for i in range(23)]
  seen = []
  counts = []
  for p in range(3):
    batches = list(pipeline.eval_dataset(src, pipeline.AugmentConfig(), batch_size=4,
                                         process_index=p, process_count=3))
    counts.append(len(batches))
    for b in batches:
      seen.extend(b["image"][b["mask"], 0, 0, 0].tolist())
  assert len(set(counts)) == 1  # every process runs the same number of steps
  assert sorted(seen) == list(range(23))


def test_wrong_image_is_reported():
  src = [{"image": np.zeros((48, 48, 2), np.uint8), "label": 0}]
  ds = pipeline.eval_dataset(src, pipeline.AugmentConfig(), batch_size=1)
  with pytest.raises(ValueError, match=r"shape \(48, 48, 2\).*expected a uint8 image"):
    list(ds)


def test_bad_aug_config():
  with pytest.raises(ValueError, match="eval_crops='five'"):
    pipeline.AugmentConfig(eval_crops="five")
  with pytest.raises(ValueError, match="crop=56 is larger than input.resize=48"):
    pipeline.AugmentConfig(resize=48, crop=56)


def test_records_with_any_fields_two_images_of_different_sizes():
  """A SeLiNet-like record: body crop and whole image at their own sizes, multi-hot and float targets,
  landmarks passed through."""
  rng = np.random.default_rng(5)
  src = [{"body": rng.integers(0, 256, (40, 30, 3), dtype=np.uint8),
          "context": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
          "cats": (rng.random(26) < 0.2).astype(np.int64), "vad": rng.random(3),
          "landmarks": rng.random((68, 2)).astype(np.float32), "label": i % 3} for i in range(12)]
  fields = {
      "body": pipeline.Field("body", "image", aug=pipeline.AugmentConfig(resize=32, crop=28, hflip=True)),
      "context": pipeline.Field("context", "image", aug=pipeline.AugmentConfig(resize=48, crop=40)),
      "multi_hot": pipeline.Field("cats", "float", shape=(26,)),
      "vad": pipeline.Field("vad", "float"),
      "landmarks": pipeline.Field("landmarks", "array"),
  }
  ds = pipeline.train_dataset(src, pipeline.AugmentConfig(), batch_size=4, seed=0,
                              transform=pipeline.RecordTrainTransform(fields, pipeline.AugmentConfig()))
  b = next(iter(ds))
  assert b["body"].shape == (4, 28, 28, 3) and b["context"].shape == (4, 40, 40, 3)
  assert b["multi_hot"].dtype == np.float32 and b["multi_hot"].shape == (4, 26)
  assert b["vad"].dtype == np.float32 and b["landmarks"].shape == (4, 68, 2)
  ev = pipeline.RecordEvalTransform(fields, pipeline.AugmentConfig()).map(src[3])
  np.testing.assert_array_equal(ev["multi_hot"], src[3]["cats"].astype(np.float32))
  np.testing.assert_array_equal(ev["landmarks"], src[3]["landmarks"])
  np.testing.assert_array_equal(ev["context"], pipeline.center_crop(pipeline.resize(src[3]["context"], 48), 40))
  assert ev["mask"]
  with pytest.raises(ValueError, match=r"Record field 'cats' has shape \(26,\); expected \(25,\)"):
    pipeline.Field("cats", "float", shape=(25,)).read(src[0], pipeline.AugmentConfig(), None)
  with pytest.raises(KeyError, match=r"Record has no field 'face'; it has \['body'"):
    pipeline.Field("face", "image").read(src[0], pipeline.AugmentConfig(), None)
  with pytest.raises(ValueError, match=r"kind='picture'; expected one of"):
    pipeline.Field("x", "picture")


def test_one_augmentation_for_images_and_clips():
  """A clip is augmented exactly as each of its frames would be with the same random draws."""
  aug = pipeline.AugmentConfig(resize=20, crop=16, rotation=12.0, hflip=True, vflip=True)
  frames = np.random.default_rng(7).integers(0, 256, (3, 18, 18, 1), dtype=np.uint8)
  for seed in range(6):
    clip = pipeline.augment(frames, aug, np.random.default_rng(seed))
    for t in range(3):
      np.testing.assert_array_equal(clip[t], pipeline.augment(frames[t], aug, np.random.default_rng(seed)))
  # Reference for one draw: resize -> rotate -> crop -> flips, by hand.
  rng = np.random.default_rng(0)
  angle = rng.uniform(-12.0, 12.0)
  top, left = rng.integers(0, 5), rng.integers(0, 5)
  h, v = rng.random() < 0.5, rng.random() < 0.5
  want = pipeline.rotate(pipeline.resize(frames[0], 20), angle)[top:top + 16, left:left + 16]
  want = want[:, ::-1] if h else want
  want = want[::-1] if v else want
  np.testing.assert_array_equal(pipeline.augment(frames[0], aug, np.random.default_rng(0)), want)
