"""`synthetic_expressions`: procedurally rendered FACS-driven facial expressions (no download).

The renderer is `fer_jax.data.synthetic` (see its docstring for the geometry, the AU prototypes
and the valence / arousal table). Example ``i`` of a split is a pure function of
(config.seed, split, i), and records are stored in index order (``disable_shuffling``), so
``data_source[split][i]`` equals ``sample_examples(seed, split, i, 1)`` (``sample_sequences`` for
clip configs).

Configs (``tfds.builder('synthetic_expressions/<name>')``):
  * ``grey48`` (default): 48x48x1 stills, like FER2013; train 16000 / validation 2000 / test 2000.
  * ``rgb64``: 64x64x3 stills; same split sizes.
  * ``sequences``: clips of 16 frames of 48x48x1 going neutral -> apex; 2000 / 300 / 300 clips.
  * ``sequences_tracked``: the same clips (identical frames and labels) with the landmarks a face tracker
    would give: an error of 0.05 inter-ocular distances per point (twice that on the jaw), correlated over
    frames (``synthetic.tracker_noise``). The exact landmarks of ``sequences`` are separable by any model;
    these are not, like real tracked landmarks (CK+'s are AAM fits).
  * ``scenes``: a person (the same faces on a posed body) in a scene, EMOTIC-style records (96x96
    context, 64x64 body crop, 26 categories, valence / arousal / dominance) from
    `fer_jax.data.synthetic_scenes`; 8000 / 1000 / 1000. ``data_source[split][i]`` equals
    ``sample_scenes(seed, split, i, 1, context_size, body_size)``.

Any other size: pass a config object, e.g.
``tfds.builder('synthetic_expressions', config=SyntheticExpressionsConfig(name='tiny',
image_size=32, train_size=64, validation_size=16, test_size=16))``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data import synthetic, synthetic_scenes

_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class SyntheticExpressionsConfig(tfds.core.BuilderConfig):
  """Rendering and split-size options.

  Attributes:
    image_size: output height = width in pixels.
    channels: 1 (grey) or 3 (RGB).
    train_size / validation_size / test_size: number of examples (clips for sequence configs).
    seed: base seed; example i of split s uses ``np.random.default_rng([seed, split_id, i])``.
    num_frames: 0 for still images; T > 0 for clips of T frames.
    hold: clips hold the apex after reaching it (else the apex is the last frame).
    chunk_size: examples rendered per vectorised batch while generating.
    scenes: EMOTIC-style person-in-scene records (`fer_jax.data.synthetic_scenes`) instead of faces;
      ``image_size``, ``channels``, ``num_frames`` and ``hold`` are then unused.
    context_size / body_size: scene side and body-crop side in pixels (``scenes`` only).
    tracking_noise: landmark-tracker error of clips, in inter-ocular distances (0: exact landmarks).
    intensity_scale: apex intensities of clips times this, in (0, 1] (subtler expressions).
  """

  image_size: int = 48
  channels: int = 1
  train_size: int = 16000
  validation_size: int = 2000
  test_size: int = 2000
  seed: int = 0
  num_frames: int = 0
  hold: bool = True
  chunk_size: int = 1000
  scenes: bool = False
  context_size: int = 96
  body_size: int = 64
  tracking_noise: float = 0.0
  intensity_scale: float = 1.0

  def __post_init__(self):
    if self.channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
    for field in ("image_size", "train_size", "validation_size", "test_size", "seed",
                  "num_frames", "chunk_size", "context_size", "body_size"):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{field} must be a non-negative int, got {value!r}")
    if self.image_size < 8:
      raise ValueError(f"image_size must be >= 8, got {self.image_size!r}")
    if self.chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size!r}")
    if not (isinstance(self.tracking_noise, (int, float)) and 0 <= self.tracking_noise < 1):
      raise ValueError(f"tracking_noise must be in [0, 1) inter-ocular distances, got {self.tracking_noise!r}")
    if not (isinstance(self.intensity_scale, (int, float)) and 0 < self.intensity_scale <= 1):
      raise ValueError(f"intensity_scale must be in (0, 1], got {self.intensity_scale!r}")
    if (self.tracking_noise or self.intensity_scale != 1) and not self.num_frames:
      raise ValueError("tracking_noise / intensity_scale apply to clips: set num_frames > 0")
    if self.scenes:
      if self.num_frames:
        raise ValueError(f"scenes configs are stills: num_frames must be 0, got {self.num_frames!r}")
      if self.context_size < synthetic_scenes.MIN_SIZE:
        raise ValueError(f"context_size must be >= {synthetic_scenes.MIN_SIZE}, got {self.context_size!r}")
      if self.body_size < 8:
        raise ValueError(f"body_size must be >= 8, got {self.body_size!r}")

  def split_size(self, split: str) -> int:
    return {"train": self.train_size, "validation": self.validation_size,
            "test": self.test_size}[split]


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic facial expressions (8 classes, AUs, valence / arousal, iBUG-68 landmarks)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticExpressionsConfig(
          name="grey48", description="48x48 grey stills (FER2013-like), 16000/2000/2000."),
      SyntheticExpressionsConfig(
          name="rgb64", description="64x64 RGB stills, 16000/2000/2000.", image_size=64,
          channels=3),
      SyntheticExpressionsConfig(
          name="sequences", description="16-frame 48x48 grey clips neutral -> apex, 2000/300/300.",
          num_frames=16, train_size=2000, validation_size=300, test_size=300, chunk_size=64),
      SyntheticExpressionsConfig(
          name="sequences_tracked", description=("The sequences clips with tracked landmarks: error 0.05 "
                                                 "inter-ocular distances, x2 on the jaw, AR(1) over frames."),
          num_frames=16, train_size=2000, validation_size=300, test_size=300, chunk_size=64,
          tracking_noise=0.05),
      SyntheticExpressionsConfig(
          name="scenes", description=("People in scenes with EMOTIC-style labels: 96x96 context, "
                                      "64x64 body crop, 26 categories, VAD; 8000/1000/1000."),
          scenes=True, train_size=8000, validation_size=1000, test_size=1000, chunk_size=250),
  ]
  DEFAULT_CONFIG_NAME = "grey48"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    s, c, k = cfg.image_size, cfg.channels, synthetic.NUM_AUS
    lm = synthetic.NUM_LANDMARKS
    label = tfds.features.ClassLabel(names=synthetic.CLASS_NAMES)
    if cfg.scenes:
      return self._scenes_info(label)
    if cfg.num_frames:
      t = cfg.num_frames
      features = {
          "frames": tfds.features.Tensor(shape=(t, s, s, c), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES),
          "label": label,
          "frame_labels": tfds.features.Tensor(shape=(t,), dtype=np.int64),
          "intensity": tfds.features.Tensor(shape=(t,), dtype=np.float32),
          "valence": tfds.features.Tensor(shape=(t,), dtype=np.float32),
          "arousal": tfds.features.Tensor(shape=(t,), dtype=np.float32),
          "action_units": tfds.features.Tensor(shape=(t, k), dtype=np.float32),
          "landmarks": tfds.features.Tensor(shape=(t, lm, 2), dtype=np.float32),
          "id": tfds.features.Scalar(dtype=np.int64),
      }
      supervised = ("frames", "label")
    else:
      features = {
          "image": tfds.features.Tensor(shape=(s, s, c), dtype=np.uint8,
                                        encoding=tfds.features.Encoding.BYTES),
          "label": label,
          "intensity": tfds.features.Scalar(dtype=np.float32),
          "valence": tfds.features.Scalar(dtype=np.float32),
          "arousal": tfds.features.Scalar(dtype=np.float32),
          "action_units": tfds.features.Tensor(shape=(k,), dtype=np.float32),
          "landmarks": tfds.features.Tensor(shape=(lm, 2), dtype=np.float32),
          "id": tfds.features.Scalar(dtype=np.int64),
      }
      supervised = ("image", "label")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised,
        disable_shuffling=True,
        description=(__doc__ + "\nAction units (in order): " + ", ".join(synthetic.AU_NAMES)),
    )

  def _scenes_info(self, label) -> tfds.core.DatasetInfo:
    """The EMOTIC builder's features (``tfds_builders/emotic``) plus the scene's ground truth."""
    cfg = self.builder_config
    c, b = cfg.context_size, cfg.body_size
    ss = synthetic_scenes
    features = tfds.features.FeaturesDict({
        "context": tfds.features.Tensor(shape=(c, c, 3), dtype=np.uint8,
                                        encoding=tfds.features.Encoding.BYTES),
        "body": tfds.features.Tensor(shape=(b, b, 3), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.BYTES),
        "categories": tfds.features.Tensor(shape=(ss.NUM_CATEGORIES,), dtype=np.float32),
        "vad": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "gender": np.int32,
        "age": np.int32,
        "image_id": tfds.features.Text(),
        "person": np.int32,
        "id": np.int64,
        "label": label,
        "posture": tfds.features.Tensor(shape=(len(ss.POSTURE_NAMES),), dtype=np.float32),
        "scene_mood": tfds.features.Tensor(shape=(len(ss.SCENE_MOOD_NAMES),), dtype=np.float32),
    })
    return self.dataset_info_from_configs(
        features=features,
        disable_shuffling=True,
        description=(__doc__ + "\nCategories (in order): " + ", ".join(ss.EMOTIC_CATEGORIES)
                     + "\nPosture: " + ", ".join(ss.POSTURE_NAMES) + "\nScene mood: "
                     + ", ".join(ss.SCENE_MOOD_NAMES)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {split: self._generate_examples(split, cfg.split_size(split)) for split in _SPLITS
            if cfg.split_size(split) > 0}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    for start in range(0, num_examples, cfg.chunk_size):
      count = min(cfg.chunk_size, num_examples - start)
      if cfg.scenes:
        batch = synthetic_scenes.sample_scenes(cfg.seed, split, start, count, cfg.context_size,
                                               cfg.body_size, chunk=count)
      elif cfg.num_frames:
        batch = synthetic.sample_sequences(cfg.seed, split, start, count, cfg.num_frames,
                                           cfg.image_size, cfg.channels, hold=cfg.hold,
                                           tracking_noise=cfg.tracking_noise,
                                           intensity_scale=cfg.intensity_scale)
      else:
        batch = synthetic.sample_examples(cfg.seed, split, start, count, cfg.image_size,
                                          cfg.channels)
      for j in range(count):
        yield start + j, {name: value[j] for name, value in batch.items()}
