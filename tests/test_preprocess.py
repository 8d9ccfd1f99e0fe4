"""fer_jax.train.preprocess against NumPy / PIL: colour -> grey for grey models, grey -> RGB, standardisation;
and the trainer's clamping of evaluation-split slices longer than their split."""

import numpy as np
import pytest
from PIL import Image

from fer_jax import config_utils
from fer_jax.train import preprocess, trainer


def _config(channels, standardize=False):
  c = config_utils.base_config()
  c.input.update(channels=channels, per_image_standardization=standardize)
  return c


def test_rgb_to_grey_is_pils_luma_then_standardised():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
  got = np.asarray(preprocess.preprocess_images(rgb, _config(1)))
  assert got.shape == (3, 9, 7, 1)
  pil = np.stack([np.asarray(Image.fromarray(im).convert("L"), np.float64) for im in rgb])[..., None] / 255.0
  np.testing.assert_allclose(got, pil, atol=0.5 / 255 + 1e-6)  # PIL rounds to uint8
  grey = (rgb.astype(np.float64) / 255.0) @ np.array([0.299, 0.587, 0.114])
  got = np.asarray(preprocess.preprocess_images(rgb, _config(1, standardize=True)))[..., 0]
  mean, std = grey.mean(axis=(1, 2), keepdims=True), grey.std(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(got, (grey - mean) / std, rtol=1e-4, atol=1e-4)


def test_grey_to_rgb_and_channel_mismatch():
  grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
  got = np.asarray(preprocess.preprocess_images(grey, _config(3)))
  np.testing.assert_allclose(got, np.repeat(grey / 255.0, 3, axis=-1), rtol=1e-6)
  with pytest.raises(ValueError, match=r"Images have 2 channels; config.input.channels=3"):
    preprocess.preprocess_images(np.zeros((1, 4, 4, 2), np.uint8), _config(3))


@pytest.mark.parametrize("split,n,want", [("test[:32]", 16, "test"), ("test[:32]", 32, "test[:32]"),
                                          ("validation[:8]", 100, "validation[:8]"), ("train", 5, "train"),
                                          ("test[10:]", 4, "test[10:]")])
def test_eval_slices_longer_than_the_split_read_it_whole(split, n, want):
  assert trainer._clamp_split(split, n) == want  # noqa: SLF001
