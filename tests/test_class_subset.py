"""``config.dataset.classes``: train and evaluate on a subset of the classes, relabelled ``classes[i] -> i``
(the pairwise tasks of paper 2), on the toy_blobs dataset (class = bright quadrant)."""

import collections
import pathlib
import sys

import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.data import samplers
from fer_jax.train import trainer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _config(data_dir, classes, sampler="uniform"):
  c = config_utils.base_config()
  c.dataset.update(name="toy_blobs", import_module="toy_blobs", data_dir=str(data_dir),
                   num_classes=len(classes), image_size=16, classes=tuple(classes))
  c.evals = config_utils.evals("classification", test=None)
  c.input.update(batch_size=32, eval_batch_size=32, resize=16, crop=16, num_threads=1, hflip=False,
                 sampler=dict(name=sampler))
  c.model.backbone = dict(name="convnext", depths=(1, 1), dims=(8, 16), stem_patch_size=2)
  c.model.head = dict(name="linear", num_outputs=len(classes))
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("toy_data")


def _quadrant(images):
  """The toy_blobs class of each image: its brightest 8x8 quadrant (0 tl, 1 tr, 2 bl, 3 br)."""
  q = images.reshape(len(images), 2, 8, 2, 8).mean((2, 4)).reshape(len(images), 4)
  return q.argmax(-1)


@pytest.mark.parametrize("sampler", ["uniform", "class_balanced", "undersample"])
def test_training_stream_is_the_relabelled_subset(data_dir, tmp_path, sampler):
  exp = trainer.Experiment(_config(data_dir, (3, 0), sampler), str(tmp_path))
  assert exp.task.class_names == ["br", "tl"]  # the ClassLabel names of classes 3 and 0
  it = iter(exp.train_dataset(exp.source("train")))
  batches = [next(it) for _ in range(8)]  # 256 draws; 64 examples per class in toy_blobs' train
  labels = np.concatenate([b["label"] for b in batches])
  original = np.concatenate([_quadrant(np.asarray(b["image"], np.float32)) for b in batches])
  np.testing.assert_array_equal(np.array([3, 0])[labels], original)  # classes[i] -> i, right images
  counts = collections.Counter(labels.tolist())
  if sampler == "undersample":  # two epochs of 64 + 64, each exactly balanced
    assert counts == {0: 128, 1: 128}
  else:
    assert abs(counts[0] - 128) < 4 * np.sqrt(64), counts


def test_undersample_order_epochs_are_balanced_without_repeats():
  labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
  s = samplers.ClassSubset(classes=(2, 1), order="undersample")
  ds = s.dataset(list(range(18)), seed=0, labels=labels)
  first, second = [ds[k] for k in range(6)], [ds[k] for k in range(6, 12)]
  for epoch in (first, second):
    assert len(set(epoch)) == 6
    assert collections.Counter(labels[epoch].tolist()) == {1: 3, 2: 3}
  assert first != second


def test_eval_split_is_filtered_and_relabelled(data_dir, tmp_path):
  exp = trainer.Experiment(_config(data_dir, (1, 2)), str(tmp_path))
  batches = list(exp.eval_dataset("validation"))
  mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
  labels = np.concatenate([b["label"] for b in batches])[mask]
  images = np.concatenate([b["image"] for b in batches])[mask]
  # toy_blobs validation: 64 images, label i % 4 -> 16 each of classes 1 and 2, each counted once
  assert mask.sum() == 32 and len(batches) == 1
  source = exp.source("validation")
  expected = [r for r in (source[i] for i in range(len(source))) if int(r["label"]) in (1, 2)]
  np.testing.assert_array_equal(labels, [0 if int(r["label"]) == 1 else 1 for r in expected])
  np.testing.assert_array_equal(images[..., 0], np.stack([r["image"][..., 0] for r in expected]))


def test_bad_subsets_are_named(data_dir, tmp_path):
  c = _config(data_dir, (0, 1))
  c.dataset.num_classes = 4
  with pytest.raises(ValueError, match=r"num_classes=4 but config.dataset.classes=\[0, 1\] has 2"):
    trainer.Experiment(c, str(tmp_path))
  c = _config(data_dir, (0, 7))
  with pytest.raises(ValueError, match=r"classes=\[0, 7\]: the dataset has 4 classes"):
    trainer.Experiment(c, str(tmp_path))
  c = _config(data_dir, (0, 1), sampler="class_subset")
  with pytest.raises(ValueError, match="expected one of"):
    trainer.Experiment(c, str(tmp_path))
