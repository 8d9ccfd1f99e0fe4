"""A tiny TFDS dataset for trainer tests: 4 classes = which quadrant of a 16x16 image is bright.

Registered as ``toy_blobs`` on import (trainer configs set ``dataset.import_module='toy_blobs'``).
"""

import numpy as np
import tensorflow_datasets as tfds


class ToyBlobs(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test fixture."}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(16, 16, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=["tl", "tr", "bl", "br"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 256), "validation": self._generate_examples(1, 64)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      y = i % 4
      img = rng.integers(0, 90, (16, 16, 1)).astype(np.uint8)
      r, c = divmod(y, 2)
      img[r * 8:r * 8 + 8, c * 8:c * 8 + 8] += 100
      yield i, {"image": img, "label": y}
