"""The trainer takes its sampler from ``config.input.sampler`` (no trainer code per sampler): a pairwise
class subset with relabelling and class-balanced draws, on the toy_blobs dataset."""

import collections
import pathlib
import sys
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.train import trainer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _config(data_dir, sampler):
  c = config_utils.base_config()
  c.dataset.update(name="toy_blobs", import_module="toy_blobs", data_dir=str(data_dir), num_classes=4,
                   image_size=16)
  c.evals = config_utils.evals("classification", test=None)
  c.input.update(batch_size=32, eval_batch_size=32, resize=16, crop=16, num_threads=1, sampler=sampler)
  c.model.backbone = dict(name="convnext", depths=(1, 1), dims=(8, 16), stem_patch_size=2)
  c.model.head = dict(name="linear", num_outputs=4)
  return c


def _labels(exp, n_batches):
  it = iter(exp.train_dataset(exp.source("train")))
  return np.concatenate([next(it)["label"] for _ in range(n_batches)])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("toy_data")


def test_class_subset_relabels_the_two_classes_of_a_pair(data_dir, tmp_path):
  c = _config(data_dir, dict(name="class_subset", classes=[3, 1], relabel=True))
  c.dataset.num_classes = 2
  c.model.head.num_outputs = 2
  exp = trainer.Experiment(c, str(tmp_path))
  labels = _labels(exp, 8)
  assert set(labels.tolist()) == {0, 1}  # class 3 -> 0, class 1 -> 1
  # The images really are of those classes: class 3 (bottom right) is bright in the bottom half,
  # class 1 (top right) in the top half (horizontal flips keep the halves).
  b = next(iter(exp.train_dataset(exp.source("train"))))
  bottom = b["image"][:, 8:].mean((1, 2, 3))
  top = b["image"][:, :8].mean((1, 2, 3))
  np.testing.assert_array_equal(bottom > top, b["label"] == 0)


def test_class_balanced_sampler_through_the_trainer(data_dir, tmp_path):
  c = _config(data_dir, dict(name="class_balanced", class_weights=[1.0, 1.0, 2.0, 0.0]))
  exp = trainer.Experiment(c, str(tmp_path))
  counts = collections.Counter(_labels(exp, 40).tolist())  # 1280 draws
  n = sum(counts.values())
  assert counts[3] == 0
  for k, p in ((0, 0.25), (1, 0.25), (2, 0.5)):
    assert abs(counts[k] / n - p) < 4 * np.sqrt(p * (1 - p) / n), counts


def test_unknown_sampler_is_named(data_dir, tmp_path):
  c = _config(data_dir, dict(name="balanced"))
  with pytest.raises(KeyError, match=r"Unknown sampler 'balanced'.*class_balanced"):
    trainer.Experiment(c, str(tmp_path))

