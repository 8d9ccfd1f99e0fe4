"""A tiny landmark-clip dataset for emotion-bank tests (registered as ``toy_landmark_clips`` on import).

Three classes (happy, surprise, neutral) of the synthetic renderer's clips (``synthetic.sample_sequences``,
8 frames, 8-px renders: only the landmarks are stored, and they do not depend on the image size after
normalisation), relabelled 0..2; train / validation / test from the renderer's splits.
"""

import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data import synthetic

CLASSES = ("happy", "surprise", "neutral")
FRAMES = 8
DRAWN = {"train": 240, "validation": 96, "test": 96}  # clips drawn per split (3 of 8 classes kept)


def clips(split: str):
  d = synthetic.sample_sequences(0, split, 0, DRAWN[split], num_frames=FRAMES, size=8)
  ids = [synthetic.CLASS_NAMES.index(c) for c in CLASSES]
  keep = np.isin(d["label"], ids)
  labels = np.array([ids.index(int(y)) for y in d["label"][keep]])
  return d["landmarks"][keep].astype(np.float32), labels.astype(np.int64)


class ToyLandmarkClips(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test fixture."}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "landmarks": tfds.features.Tensor(shape=(FRAMES, 68, 2), dtype=np.float32),
        "label": tfds.features.ClassLabel(names=list(CLASSES))}))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in DRAWN}

  def _generate_examples(self, split):
    lms, labels = clips(split)
    for i, (lm, y) in enumerate(zip(lms, labels)):
      yield i, {"landmarks": lm, "label": int(y)}
