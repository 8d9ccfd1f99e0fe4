"""On-device input preprocessing shared by the tasks: uint8 images -> normalised float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

RGB_TO_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's Image.convert('L')


def preprocess_images(images: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 (..., H, W, c) -> float32 in [0, 1], grey <-> RGB to ``input.channels`` (RGB -> grey with the
  ITU-R 601 luma weights of PIL's ``convert('L')``, so a grey model such as ``fer2013_resnet_s`` reads colour
  datasets), optional per-image standardisation or mean/std."""
  x = images.astype(jnp.float32) / 255.0
  channels = config.input.get("channels", 3)
  if x.shape[-1] == 3 and channels == 1:
    x = x @ jnp.asarray(RGB_TO_GREY)[:, None]
  if config.input.get("per_image_standardization"):
    # tf.image.per_image_standardization of the uint8 image: zero mean, unit variance per image
    # (lighting invariance); the std floor 1/sqrt(N) grey levels only guards blank images.
    n = x.shape[-3] * x.shape[-2] * x.shape[-1]
    mean = x.mean(axis=(-3, -2, -1), keepdims=True)
    std = jnp.maximum(x.std(axis=(-3, -2, -1), keepdims=True), 1.0 / (255.0 * np.sqrt(n)))
    x = (x - mean) / std
  if x.shape[-1] == 1 and channels == 3:
    x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
  elif x.shape[-1] != channels:
    raise ValueError(f"Images have {x.shape[-1]} channels; config.input.channels={channels}")
  if config.input.get("mean") is not None:
    x = (x - jnp.asarray(config.input.mean)) / jnp.asarray(config.input.std)
  return x
