"""Hand-crafted image-aesthetics attributes, as pure JAX functions of RGB images in [0, 1].

SeLiNet (Khargonkar et al., ISCAS 2023) feeds the whole image to an "image aesthetics feature extractor".
Paper says: aesthetics responses depend on composition, colourfulness, emphasis, depth, ...; it uses a
trained aesthetics network. We chose: no aesthetics dataset (AVA, AADB) is available here, so SeLiNet's
aesthetics branch learns to predict these five classical attributes of the whole image as an auxiliary
regression (``fer_jax.train.tasks.emotic``, loss term ``aesthetics``), computed on the accelerator from
the context image the network sees:

=================  ==================================================================================
``colourfulness``  Hasler & Suesstrunk (2003), eq. M3: sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2),
                   rg = R - G, yb = (R + G) / 2 - B, population means / standard deviations over the
                   image (on [0, 1] pixels: their 0..255 value / 255)
``brightness``     mean luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R 601, PIL's ``convert('L')``)
``contrast``       RMS contrast = population standard deviation of Y (Peli 1990), times 2 (so in [0, 1])
``sharpness``      sqrt(variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of Y over the valid
                   interior) / 4 (Pech-Pacheco et al. 2000's variance of the Laplacian; |L| <= 4, so the
                   standard deviation / 4 lies in [0, 1])
``thirds``         rule-of-thirds distance: the centre of mass of a frequency-tuned saliency map
                   (Achanta et al. 2009: ||mean colour - blurred pixel||, here in RGB with a [1,2,1]/4
                   binomial blur, edge-replicated) and its distance to the nearest of the four
                   third-line intersections, over the largest such distance in the unit square
                   (sqrt(2) / 3, at a corner), so 0 = on an intersection, 1 = in a corner. An image with
                   no saliency (flat) has its centre of mass at the centre.
=================  ==================================================================================

Every attribute lies in [0, 1] (colourfulness in [0, 1.84], in practice below 0.5), so one unweighted
regression loss treats them alike. Coordinates are pixel centres ((j + 0.5) / W, (i + 0.5) / H).
``aesthetic_features(images)`` stacks them in ``AESTHETIC_NAMES`` order: (..., H, W, 3) -> (..., 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

AESTHETIC_NAMES = ("colourfulness", "brightness", "contrast", "sharpness", "thirds")
NUM_AESTHETICS = len(AESTHETIC_NAMES)
LUMA = (0.299, 0.587, 0.114)
THIRDS = ((1 / 3, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1 / 3), (2 / 3, 2 / 3))
MAX_THIRDS_DISTANCE = float(np.sqrt(2.0) / 3.0)


def _check(images: jax.Array, what: str) -> jax.Array:
  x = jnp.asarray(images)
  if x.ndim < 3 or x.shape[-1] != 3 or min(x.shape[-3:-1]) < 3:
    raise ValueError(f"{what} expects RGB images (..., H, W, 3) with H, W >= 3 in [0, 1]; got shape "
                     f"{x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{what} expects float images in [0, 1]; got dtype {x.dtype} (divide uint8 by 255)")
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def luma(images: jax.Array) -> jax.Array:
  """(..., H, W, 3) -> (..., H, W) ITU-R 601 luma."""
  x = _check(images, "luma")
  return x @ jnp.asarray(LUMA, x.dtype)


def colourfulness(images: jax.Array) -> jax.Array:
  """Hasler & Suesstrunk's M3 colourfulness per image (..., H, W, 3) -> (...)."""
  x = _check(images, "colourfulness")
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  rg, yb = r - g, 0.5 * (r + g) - b
  axes = (-2, -1)
  std = jnp.sqrt(rg.var(axes) + yb.var(axes))
  mean = jnp.sqrt(rg.mean(axes) ** 2 + yb.mean(axes) ** 2)
  return std + 0.3 * mean


def brightness(images: jax.Array) -> jax.Array:
  """Mean luma per image, in [0, 1]."""
  return luma(images).mean((-2, -1))


def rms_contrast(images: jax.Array) -> jax.Array:
  """Population standard deviation of the luma per image (in [0, 0.5])."""
  return luma(images).std((-2, -1))


def laplacian_variance(images: jax.Array) -> jax.Array:
  """Variance of the 4-neighbour Laplacian of the luma over the valid (H-2) x (W-2) interior."""
  y = luma(images)
  lap = (y[..., :-2, 1:-1] + y[..., 2:, 1:-1] + y[..., 1:-1, :-2] + y[..., 1:-1, 2:]
         - 4.0 * y[..., 1:-1, 1:-1])
  return lap.var((-2, -1))


def _blur(x: jax.Array) -> jax.Array:
  """[1, 2, 1] / 4 binomial blur along H and W of (..., H, W, C), edge-replicated."""
  def along(v, axis):
    n = v.shape[axis]
    idx = jnp.arange(n)
    prev = jnp.take(v, jnp.maximum(idx - 1, 0), axis=axis)
    nxt = jnp.take(v, jnp.minimum(idx + 1, n - 1), axis=axis)
    return 0.25 * prev + 0.5 * v + 0.25 * nxt
  return along(along(x, -3), -2)


def saliency(images: jax.Array) -> jax.Array:
  """Frequency-tuned saliency (Achanta et al. 2009) in RGB: ||mean colour - blurred pixel||_2, (..., H, W)."""
  x = _check(images, "saliency")
  mean = x.mean((-3, -2), keepdims=True)
  return jnp.sqrt(jnp.sum((_blur(x) - mean) ** 2, -1))


def saliency_centre(images: jax.Array) -> jax.Array:
  """(..., 2) centre of mass (x, y) of the saliency map in [0, 1] pixel-centre coordinates; (0.5, 0.5)
  where the saliency is 0 everywhere."""
  s = saliency(images)
  h, w = s.shape[-2:]
  ys = (jnp.arange(h, dtype=s.dtype) + 0.5) / h
  xs = (jnp.arange(w, dtype=s.dtype) + 0.5) / w
  total = s.sum((-2, -1))
  ok = total > 0
  safe = jnp.where(ok, total, 1.0)
  cx = jnp.where(ok, (s * xs).sum((-2, -1)) / safe, 0.5)
  cy = jnp.where(ok, (s * ys[:, None]).sum((-2, -1)) / safe, 0.5)
  return jnp.stack([cx, cy], -1)


def thirds_distance(images: jax.Array) -> jax.Array:
  """Distance of the saliency centre to the nearest rule-of-thirds intersection / (sqrt(2) / 3), in [0, 1]."""
  c = saliency_centre(images)
  points = jnp.asarray(THIRDS, c.dtype)
  d = jnp.sqrt(((c[..., None, :] - points) ** 2).sum(-1)).min(-1)
  return d / MAX_THIRDS_DISTANCE


@jax.jit
def aesthetic_features(images: jax.Array) -> jax.Array:
  """(..., H, W, 3) RGB in [0, 1] -> (..., 5) attributes in ``AESTHETIC_NAMES`` order (module docstring).
  Jitted (one compilation per shape when called eagerly; inlined inside a jitted step)."""
  x = _check(images, "aesthetic_features")
  return jnp.stack([colourfulness(x), brightness(x), 2.0 * rms_contrast(x),
                    jnp.sqrt(laplacian_variance(x)) / 4.0, thirds_distance(x)], -1)
