"""Tests of fer_jax.data.align against NumPy / SciPy references and synthetic faces."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from fer_jax.data import align
from fer_jax.data import synthetic
from fer_jax.testing import umeyama_reference

# iBUG-68 left-right mirror pairs (image-left index -> image-right index).
_MIRROR = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30]
                   + [35, 34, 33, 32, 31] + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                   + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
                   + [64, 63, 62, 61, 60, 67, 66, 65])


def _lstsq_similarity(src, dst, w=None):
  """Weighted linear least squares over (a, b, tx, ty) with M = [[a, -b, tx], [b, a, ty]]."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  n = len(src)
  w = np.ones(n) if w is None else np.asarray(w, np.float64)
  rows = np.zeros((2 * n, 4))
  rows[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], 1)
  rows[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], 1)
  sw = np.sqrt(np.repeat(w, 2))
  (a, b, tx, ty), *_ = np.linalg.lstsq(rows * sw[:, None], dst.reshape(-1) * sw, rcond=None)
  return np.array([[a, -b, tx], [b, a, ty]])


def _similarity(angle_deg, scale, tx, ty):
  th = np.deg2rad(angle_deg)
  return np.array([[scale * np.cos(th), -scale * np.sin(th), tx],
                   [scale * np.sin(th), scale * np.cos(th), ty]])


def _apply(m, p):
  return np.asarray(p, np.float64) @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m)[:, 2]


def _numpy_bilinear(image, x, y, fill):
  """Hand-written bilinear sampler (loops), zero-order fill outside the pixel grid."""
  h, w = image.shape[:2]
  out = np.zeros(np.shape(x) + image.shape[2:])
  for idx in np.ndindex(np.shape(x)):
    xf, yf = x[idx], y[idx]
    x0, y0 = int(np.floor(xf)), int(np.floor(yf))
    acc = 0.0
    for dy in (0, 1):
      for dx in (0, 1):
        wgt = (xf - x0 if dx else 1 - (xf - x0)) * (yf - y0 if dy else 1 - (yf - y0))
        xi, yi = x0 + dx, y0 + dy
        acc = acc + wgt * (image[yi, xi] if (0 <= xi < w and 0 <= yi < h) else fill)
    out[idx] = acc
  return out


# ------------------------------------------------------------------ templates ----


def test_arcface_template_values():
  np.testing.assert_array_equal(align.ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])
  np.testing.assert_array_equal(align.ARCFACE_TEMPLATE_112[4], [70.7299, 92.2041])
  assert align.TEMPLATES["5"] is align.ARCFACE_TEMPLATE_112


def test_mean_shape_68_derivation_symmetry_and_fit():
  tpl = align.MEAN_SHAPE_68
  assert tpl.shape == (68, 2)
  # Recompute from the documented source: neutral average synthetic face, least-squares
  # scale + translation of its 5-point subset onto the ArcFace template (np.linalg.lstsq).
  n_id = len(synthetic.IDENTITY_RANGES)
  ident = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES, np.full((1, n_id), 0.5))
  shape = synthetic.canonical_landmarks(np.zeros((1, synthetic.NUM_AUS), np.float32),
                                        ident)[0].astype(np.float64)
  five = np.asarray(align.landmarks_68_to_5(shape), np.float64)
  a = np.zeros((10, 3))
  a[0::2, 0], a[1::2, 0] = five[:, 0], five[:, 1]
  a[0::2, 1], a[1::2, 2] = 1, 1
  (k, tx, ty), *_ = np.linalg.lstsq(a, align.ARCFACE_TEMPLATE_112.reshape(-1), rcond=None)
  np.testing.assert_allclose(tpl, k * shape + [tx, ty], atol=1e-4)
  # Upright and left-right symmetric about a vertical axis.
  axis = tpl[[27, 28, 29, 30, 33, 51, 57, 8], 0]
  np.testing.assert_allclose(axis, axis.mean(), atol=1e-4)
  np.testing.assert_allclose(tpl[_MIRROR, 0], 2 * axis.mean() - tpl[:, 0], atol=1e-4)
  np.testing.assert_allclose(tpl[_MIRROR, 1], tpl[:, 1], atol=1e-4)
  # Its 5-point subset frames the face like ArcFace (within 2 px of 112).
  five = np.asarray(align.landmarks_68_to_5(tpl))
  err = np.linalg.norm(five - align.ARCFACE_TEMPLATE_112, axis=1)
  assert err.max() < 2.0
  # The chin is below the 112 frame at scale 1 and inside it at scale 1.25.
  assert tpl[8, 1] > 112 and align.template_points("68", 112, 1.25)[:, 1].max() < 111.5


def test_template_points_formula():
  for name in ("5", "68"):
    np.testing.assert_allclose(align.template_points(name, 112), align.TEMPLATES[name])
    got = align.template_points(name, (96, 128), scale=2.0)
    want = (align.TEMPLATES[name] - 55.5) * np.array([128, 96]) / 112 / 2 + [63.5, 47.5]
    np.testing.assert_allclose(got, want)
  with pytest.raises(ValueError, match=r"template must be one of \['5', '68', 'fer2013'\], got '7'"):
    align.template_points("7")
  with pytest.raises(ValueError, match=r"scale must be > 0, got 0"):
    align.template_points("5", 112, 0)
  with pytest.raises(ValueError, match=r"out_size must be a positive int .* got \(1, 2, 3\)"):
    align.template_points("5", (1, 2, 3))


def test_landmarks_68_to_5():
  lm = np.random.default_rng(0).normal(size=(3, 68, 2)).astype(np.float32)
  out = np.asarray(align.landmarks_68_to_5(lm))
  assert out.shape == (3, 5, 2)
  want = np.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1), lm[:, 30], lm[:, 48], lm[:, 54]], 1)
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"shape \(\.\.\., 68, 2\).*got \(3, 67, 2\)"):
    align.landmarks_68_to_5(lm[:, :67])


# ---------------------------------------------------------------- similarity ----


def test_estimate_similarity_recovers_a_known_transform_exactly():
  rng = np.random.default_rng(1)
  src = rng.uniform(0, 200, (5, 68, 2))
  mats = [_similarity(rng.uniform(-180, 180), rng.uniform(0.2, 3), *rng.uniform(-50, 50, 2))
          for _ in range(5)]
  dst = np.stack([_apply(m, s) for m, s in zip(mats, src)])
  got = np.asarray(align.estimate_similarity(src, dst))  # leading batch dim, no vmap
  assert got.shape == (5, 2, 3) and got.dtype == np.float32
  for g, m in zip(got, mats):
    np.testing.assert_allclose(g[:, :2], m[:, :2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g[:, 2], m[:, 2], atol=2e-2)
  vm = np.asarray(jax.vmap(align.estimate_similarity)(src, dst))
  np.testing.assert_allclose(vm, got, rtol=1e-5, atol=1e-4)
  jitted = np.asarray(jax.jit(align.estimate_similarity)(src, dst))
  np.testing.assert_allclose(jitted, got, rtol=1e-5, atol=1e-4)
  # Mapped points land on the targets.
  np.testing.assert_allclose(np.asarray(align.apply_affine(got, src)), dst, atol=2e-2)


@pytest.mark.parametrize("n", [2, 5, 68])
def test_estimate_similarity_matches_umeyama_svd_and_lstsq(n):
  rng = np.random.default_rng(n)
  for _ in range(5):
    src = rng.normal(50, 20, (n, 2))
    dst = _apply(_similarity(rng.uniform(-90, 90), rng.uniform(0.5, 2), 3, -7), src)
    dst = dst + rng.normal(0, 4, dst.shape)  # Not an exact similarity any more.
    got = np.asarray(align.estimate_similarity(src, dst), np.float64)
    ref = umeyama_reference(src, dst)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(got, _lstsq_similarity(src, dst), rtol=1e-4, atol=2e-3)


def test_estimate_similarity_never_reflects():
  rng = np.random.default_rng(2)
  src = rng.normal(0, 10, (68, 2))
  dst = src * [-1.0, 1.0] + [5.0, 2.0]  # A mirror image: best similarity is not a reflection.
  got = np.asarray(align.estimate_similarity(src, dst), np.float64)
  assert np.linalg.det(got[:, :2]) > 0
  np.testing.assert_allclose(got, umeyama_reference(src, dst), atol=1e-3)
  np.testing.assert_allclose(got, _lstsq_similarity(src, dst), atol=1e-3)


def test_estimate_similarity_weights():
  rng = np.random.default_rng(3)
  src = rng.normal(0, 10, (10, 2))
  dst = rng.normal(0, 10, (10, 2))
  w = np.array([1, 0, 2, 0, 1, 1, 3, 0, 1, 1], np.float64)
  got = np.asarray(align.estimate_similarity(src, dst, w), np.float64)
  np.testing.assert_allclose(got, _lstsq_similarity(src, dst, w), rtol=1e-4, atol=1e-4)
  keep = w > 0
  sub = np.asarray(align.estimate_similarity(src[keep], dst[keep], w[keep] * 7.0))
  np.testing.assert_allclose(got, sub, rtol=1e-4, atol=1e-4)


def test_estimate_similarity_shape_errors():
  with pytest.raises(ValueError, match=r"same number of points, got \(5, 2\) and \(4, 2\)"):
    align.estimate_similarity(np.zeros((5, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"shape \(\.\.\., N, 2\), got \(5, 3\)"):
    align.estimate_similarity(np.zeros((5, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"weights must have shape \(\.\.\., 5\), got \(4,\)"):
    align.estimate_similarity(np.zeros((5, 2)), np.zeros((5, 2)), np.ones(4))


def test_invert_and_apply_affine():
  rng = np.random.default_rng(4)
  m = rng.normal(size=(3, 2, 3))
  inv = np.asarray(align.invert_affine(m), np.float64)
  for a, b in zip(m, inv):
    full = np.vstack([a, [0, 0, 1]])
    np.testing.assert_allclose(np.vstack([b, [0, 0, 1]]), np.linalg.inv(full), rtol=1e-4,
                               atol=1e-4)
  p = rng.normal(size=(3, 7, 2))
  np.testing.assert_allclose(np.asarray(align.apply_affine(m, p)),
                             np.stack([_apply(a, q) for a, q in zip(m, p)]), rtol=1e-5,
                             atol=1e-5)


# --------------------------------------------------------------------- warping ----


def test_warp_matches_scipy_map_coordinates():
  rng = np.random.default_rng(5)
  image = rng.uniform(0, 255, (23, 31, 3)).astype(np.float32)
  # Rotation + scale with the crop partly outside the image.
  m = _similarity(25, 1.4, -6.0, 4.0)
  got = np.asarray(align.warp_affine(image, m, (20, 26), fill=0.0))
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
  gy, gx = np.mgrid[0:20, 0:26].astype(np.float64)
  sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
  sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
  want = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float64), [sy, sx], order=1,
                                           mode="grid-constant", cval=0.0, prefilter=False)
                   for c in range(3)], -1)
  assert ((sx < 0) | (sx > 30) | (sy < 0) | (sy > 22)).any()  # Some samples fall outside.
  np.testing.assert_allclose(got, want, atol=2e-2)


def test_warp_supersample_and_fill_match_numpy_sampler():
  rng = np.random.default_rng(6)
  image = rng.uniform(0, 1, (9, 11)).astype(np.float32)  # 2-D (grey) input
  m = _similarity(-40, 0.6, 3.0, 5.0)
  n = 3
  got = np.asarray(align.warp_affine(image, m, (7, 8), supersample=n, fill=0.5))
  assert got.shape == (7, 8)
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
  off = (np.arange(n) + 0.5) / n - 0.5
  want = np.zeros((7, 8))
  for r in range(7):
    for c in range(8):
      xs, ys = np.meshgrid(c + off, r + off)
      sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
      sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
      want[r, c] = _numpy_bilinear(image, sx, sy, 0.5).mean()
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_warp_pixel_centre_conventions():
  rng = np.random.default_rng(7)
  image = rng.integers(0, 256, (8, 10, 3)).astype(np.float32)
  ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
  np.testing.assert_array_equal(np.asarray(align.warp_affine(image, ident, (8, 10))), image)
  # Integer shift right by 2, down by 1: zeros (fill) enter at the top-left.
  shifted = np.asarray(align.warp_affine(image, [[1.0, 0, 2], [0, 1.0, 1]], (8, 10), fill=-1.0))
  np.testing.assert_array_equal(shifted[1:, 2:], image[:-1, :-2])
  assert (shifted[0] == -1).all() and (shifted[:, :2] == -1).all()
  # Halving with pixel centres at integers: output (0, 0) samples input (0.5, 0.5), so it is
  # the mean of the 2 x 2 block, for every block.
  half = np.asarray(align.warp_affine(image, [[0.5, 0, -0.25], [0, 0.5, -0.25]], (4, 5)))
  blocks = image.reshape(4, 2, 5, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(half, blocks, atol=1e-4)
  # supersample=2 on a 2x downscale (output pixel = 2 x 2 input pixels) is the same block mean.
  half2 = np.asarray(align.warp_affine(image, [[0.5, 0, -0.25], [0, 0.5, -0.25]], (4, 5),
                                       supersample=2))
  np.testing.assert_allclose(half2, blocks, atol=1e-4)


def test_warp_vmap_jit_and_errors():
  rng = np.random.default_rng(8)
  images = rng.uniform(0, 1, (3, 12, 12, 1)).astype(np.float32)
  mats = np.stack([_similarity(a, 1.2, 1.0, -2.0) for a in (0, 30, -60)]).astype(np.float32)
  batched = jax.jit(jax.vmap(lambda im, m: align.warp_affine(im, m, 10, supersample=2)))(images,
                                                                                         mats)
  for i in range(3):
    np.testing.assert_allclose(np.asarray(batched[i]),
                               np.asarray(align.warp_affine(images[i], mats[i], 10,
                                                            supersample=2)), atol=1e-6)
  with pytest.raises(ValueError, match=r"supersample must be an integer >= 1, got 0"):
    align.warp_affine(images[0], mats[0], 10, supersample=0)
  with pytest.raises(ValueError, match=r"matrix must have shape \(2, 3\), got \(3, 3\)"):
    align.warp_affine(images[0], np.eye(3), 10)
  with pytest.raises(ValueError, match=r"image must have shape .* got \(3, 12, 12, 1\)"):
    align.warp_affine(images, mats[0], 10)


# ---------------------------------------------------------------------- align ----


@pytest.mark.parametrize("template,n_points", [("68", 68), ("5", 68), ("5", 5)])
def test_align_face_maps_a_transformed_template_onto_the_template(template, n_points):
  size, scale = 80, 1.25
  base = align.template_points("68" if n_points == 68 else "5", 112)
  m = _similarity(33.0, 1.7, 40.0, -10.0)
  landmarks = _apply(m, base)  # A template, rotated, scaled and moved in a 300 x 300 frame.
  image = np.random.default_rng(9).uniform(0, 255, (300, 300, 3)).astype(np.float32)
  out = align.align_face(image, landmarks, template=template, out_size=size, scale=scale)
  # Reference: NumPy Umeyama from the points the template uses to the template in crop pixels.
  src = np.asarray(align.landmarks_68_to_5(landmarks)) if template == "5" and n_points == 68 \
      else landmarks
  ref = umeyama_reference(src, align.template_points(template, size, scale))
  np.testing.assert_allclose(np.asarray(out.matrix), ref, rtol=1e-4, atol=2e-3)
  np.testing.assert_allclose(np.asarray(out.landmarks), _apply(ref, landmarks), atol=2e-3)
  if template == "68" or n_points == 5:
    # Exact case: the matrix undoes m, then maps the 112 frame to the crop (M = T o m^-1), and
    # the landmarks land on the template.
    k = size / 112 / scale
    to_crop = np.array([[k, 0, (size - 1) / 2 - 55.5 * k], [0, k, (size - 1) / 2 - 55.5 * k]])
    want = (np.vstack([to_crop, [0, 0, 1]]) @ np.linalg.inv(np.vstack([m, [0, 0, 1]])))[:2]
    np.testing.assert_allclose(np.asarray(out.matrix), want, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(np.asarray(out.landmarks), align.template_points(
        template, size, scale), atol=2e-3)
  else:
    # 68 landmarks, 5-point template: their 5-point subset lands near ArcFace (the mean shape's
    # subset is within 2 px of it in the 112 frame).
    five = np.asarray(align.landmarks_68_to_5(out.landmarks))
    assert np.abs(five - align.template_points("5", size, scale)).max() < 2.0
  np.testing.assert_array_equal(np.asarray(out.image),
                                np.asarray(align.warp_affine(image, out.matrix, size)))


def test_align_face_bad_landmarks():
  image = np.zeros((50, 50, 3), np.uint8)
  with pytest.raises(ValueError, match=r"landmarks must have shape \(68, 2\) or \(5, 2\) .*"
                     r"got \(67, 2\)"):
    align.align_face(image, np.zeros((67, 2)), template="5")
  with pytest.raises(ValueError, match=r"shape \(68, 2\) \(\(x, y\) points\), got \(5, 2\)"):
    align.align_face(image, np.zeros((5, 2)), template="68")
  with pytest.raises(ValueError, match=r"got \(68, 3\)"):
    align.align_face(image, np.zeros((68, 3)))
  with pytest.raises(ValueError, match=r"got \(2, 68, 2\)"):
    align.align_face(image, np.zeros((2, 68, 2)))
  with pytest.raises(ValueError, match=r"template must be one of \['5', '68', 'fer2013'\], got 'x'"):
    align.align_face(image, np.zeros((68, 2)), template="x")
  with pytest.raises(ValueError, match=r"landmarks must have shape \(N, 2\) with N >= 1, got "
                     r"\(0, 2\)"):
    align.crop_face(image, np.zeros((0, 2)), 32)


def test_crop_face_square_box():
  # Landmarks spanning x 10..50, y 20..40: box centred (30, 30), side 1.5 * 40 = 60.
  lm = np.array([[10.0, 20.0], [50.0, 40.0], [30.0, 25.0]])
  image = np.random.default_rng(10).uniform(0, 255, (64, 64, 3)).astype(np.float32)
  out = align.crop_face(image, lm, 30, scale=1.5, supersample=2)
  k = 30 / 60
  want = np.array([[k, 0, 14.5 - k * 30], [0, k, 14.5 - k * 30]])
  np.testing.assert_allclose(np.asarray(out.matrix), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.landmarks), _apply(want, lm), atol=1e-4)
  # Box edges land on the crop's outer pixel edges: x = 0 -> -0.5, x = 60 -> 29.5.
  np.testing.assert_allclose(_apply(np.asarray(out.matrix), [[0.0, 0.0], [60.0, 60.0]]),
                             [[-0.5, -0.5], [29.5, 29.5]], atol=1e-4)
  np.testing.assert_allclose(
      np.asarray(out.image),
      np.asarray(align.warp_affine(image, want, 30, supersample=2)), atol=1e-3)


# --------------------------------------------------- whole-pixel box crops (NumPy + PIL) ----


def _loop_square(frame, left, top, side):
  """The side x side pixels from (top, left), pixel by pixel; zeros outside the frame."""
  h, w = frame.shape[:2]
  out = np.zeros((side, side, 3), np.uint8)
  for r in range(side):
    for c in range(side):
      if 0 <= top + r < h and 0 <= left + c < w:
        out[r, c] = frame[top + r, left + c]
  return out


def test_square_crop_box_hand_cases():
  # 3x3 box centred at (3.5, 3.5): the pixels 2..4.
  assert align.square_crop_box((2, 2, 5, 5), 0.0) == (2, 2, 3)
  # w=10, h=4, margin 0.5 -> side 15, centre (5, 2): left = round(-2.5) = -2,
  # top = round(-5.5) = -5 (halves round up).
  assert align.square_crop_box((0, 0, 10, 4), 0.5) == (-2, -5, 15)
  # Rounding halves up: side 2.5 -> 3.
  assert align.square_crop_box((0, 0, 2.5, 1), 0.0) == (0, -1, 3)
  assert align.square_crop_box((1, 1, 1.2, 1.2), 0.0)[2] == 1  # At least 1.


def test_crop_face_box_matches_a_pixel_loop():
  rng = np.random.default_rng(11)
  frame = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  for _ in range(25):
    x0, y0 = rng.uniform(-8, 28), rng.uniform(-8, 18)
    box = (x0, y0, x0 + rng.uniform(0.5, 12), y0 + rng.uniform(0.5, 12))
    margin = float(rng.choice([0.0, 0.2, 0.5]))
    left, top, side = align.square_crop_box(box, margin)
    want = _loop_square(frame, left, top, side)
    if not (-side < left < 30 and -side < top < 20):  # no overlap with the frame
      with pytest.raises(align.FaceOutsideFrameError, match="lies outside the 30x20 frame"):
        align.crop_face_box(frame, box, side, margin)
      continue
    # At the square's own size the crop is exact; otherwise it is PIL's bilinear resize of it.
    got = align.crop_face_box(frame, box, side, margin)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    from PIL import Image  # pylint: disable=import-outside-toplevel
    np.testing.assert_array_equal(
        align.crop_face_box(frame, box, 7, margin),
        np.asarray(Image.fromarray(want).resize((7, 7), Image.Resampling.BILINEAR)))
  # A constant frame gives a constant crop at any size (inside the frame).
  grey = np.full((40, 40, 3), 77, np.uint8)
  assert (align.crop_face_box(grey, (10, 10, 30, 30), 9) == 77).all()
  assert (align.crop_face_box(grey, (10, 10, 14, 14), 13) == 77).all()
  with pytest.raises(ValueError, match=r"face box \(50.0, 50.0, 60.0, 60.0\) lies outside"):
    align.crop_face_box(grey, (50, 50, 60, 60), 8)


# --------------------------------------------------- end to end on synthetic faces ----


def test_aligned_synthetic_landmarks_land_on_the_template():
  ex = synthetic.sample_examples(0, "train", 0, 12, size=96, channels=3)
  size, scale = 64, 1.25
  out = jax.vmap(lambda im, lm: align.align_face(im, lm, "68", size, scale))(ex["image"],
                                                                             ex["landmarks"])
  tpl = align.template_points("68", size, scale)
  rms = np.sqrt(((np.asarray(out.landmarks) - tpl) ** 2).sum(-1).mean(-1))
  raw = np.sqrt(((ex["landmarks"] * size / 96 - tpl) ** 2).sum(-1).mean(-1))
  # Identity and expression still move landmarks (about 1 px of 64); the poses do not.
  assert rms.max() < 2.0, rms
  assert raw.min() > 3.0, raw
  # The transformed landmarks are the input landmarks mapped by the returned matrices.
  np.testing.assert_allclose(np.asarray(out.landmarks),
                             np.asarray(align.apply_affine(out.matrix, ex["landmarks"])),
                             atol=1e-4)


def test_same_face_at_two_poses_gives_the_same_aligned_crop():
  rng = np.random.default_rng(3)
  n_id, n_scene = len(synthetic.IDENTITY_RANGES), len(synthetic.SCENE_RANGES)
  ident = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES,
                                        np.repeat(rng.random((1, n_id)), 2, 0))
  scene = synthetic.params_from_uniform(synthetic.SCENE_RANGES,
                                        np.repeat(rng.random((1, n_scene)), 2, 0))
  au = np.repeat(synthetic.expression_action_units([3], [0.8]), 2, 0)
  pose = {"angle": np.float32([-12, 10]), "scale": np.float32([0.6, 0.85]),
          "shift_x": np.float32([-0.1, 0.08]), "shift_y": np.float32([0.05, -0.05])}
  images, landmarks = synthetic.render_faces(au, ident, pose, 128, 3, scene)
  aligned = [np.asarray(align.align_face(images[i], landmarks[i], "68", 64, 1.25, 4).image)
             for i in range(2)]
  boxed = [np.asarray(align.crop_face(images[i], landmarks[i], 64, 1.25, 4).image)
           for i in range(2)]
  # Compare on the face: between the brows and the chin, the jaw's left and right ends.
  tpl = align.template_points("68", 64, 1.25)
  face = np.zeros((64, 64), bool)
  face[int(tpl[19, 1]):int(tpl[8, 1]), int(tpl[0, 0]):int(tpl[16, 0]) + 1] = True
  d_aligned = np.abs(aligned[0] - aligned[1])[face].mean()
  d_boxed = np.abs(boxed[0] - boxed[1])[face].mean()
  assert d_aligned < 10.0 and d_aligned < 0.4 * d_boxed, (d_aligned, d_boxed)


# ------------------------------------------------------------------ FER2013 template ----


def test_fer2013_template_conversion_closed_form():
  """TEMPLATES['fer2013'] is FER2013_TEMPLATE_48 in the 112 frame (p112 = (p48 + 0.5) 112 / 48 - 0.5),
  so template_points('fer2013', 48) gives back the 48-px numbers; hand-checked for one point."""
  np.testing.assert_allclose(align.template_points("fer2013", 48), align.FER2013_TEMPLATE_48, atol=1e-12)
  np.testing.assert_allclose(align.TEMPLATES["fer2013"][0], [(14.944 + 0.5) * 112 / 48 - 0.5,
                                                            (18.497 + 0.5) * 112 / 48 - 0.5])
  # 144 px (3x) crop: pixel centres map as p144 = 3 (p48 + 0.5) - 0.5.
  np.testing.assert_allclose(align.template_points("fer2013", 144), 3 * (align.FER2013_TEMPLATE_48 + 0.5) - 0.5)
  # Roughly a face: eyes level and above the nose, above the mouth, symmetric about the centre within 1 px.
  t = align.FER2013_TEMPLATE_48
  assert t[0, 0] < t[2, 0] < t[1, 0] and t[0, 1] < t[2, 1] < t[3, 1]
  assert abs((t[0, 0] + t[1, 0]) / 2 - 23.5) < 1 and abs((t[3, 0] + t[4, 0]) / 2 - 23.5) < 1


def _warp_reference(image, m):
  """scipy.ndimage (bilinear, zeros outside) warp of a 2-D image by the forward (x, y) map ``m`` (2, 3)."""
  inv = np.linalg.inv(m[:, :2])
  swap = np.array([[0, 1], [1, 0]])  # (x, y) <-> (row, col)
  return ndimage.affine_transform(np.asarray(image, np.float64), swap @ inv @ swap,
                                  offset=-(swap @ inv @ m[:, 2]), order=1, mode="constant", cval=0.0)


def test_fer2013_face_aligned_by_its_own_landmarks_matches_a_48px_reference():
  """Real FER2013 faces, upscaled 3x (bicubic) and padded 36 px as in benchmarks/fer2013_template.py,
  detected by our MTCNN and aligned with template='fer2013' to 48 px, against a reference made without
  the 112-px frame: the original 48-px face warped (SciPy) by the Umeyama similarity taking the
  landmarks, mapped back to 48 px by p48 = (p144 - 36 + 0.5) / 3 - 0.5, onto FER2013_TEMPLATE_48.
  The two differ only by resampling (~1 grey level); a template off by 0.5 px differs by ~7-11."""
  import gzip
  import pathlib
  from PIL import Image
  path = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
  if not path.exists():
    pytest.skip(f"FER2013 not found at {path}")
  from fer_jax.detect import MTCNN
  faces = []
  with gzip.open(path, "rt") as f:
    next(f)
    for line in f:
      _, pixels, usage = line.strip().split(",")
      if usage.strip() == "Training":
        faces.append(np.array(pixels.split(), np.uint8).reshape(48, 48))
      if len(faces) == 16:
        break
  faces = np.stack(faces)
  big = np.stack([np.pad(np.asarray(Image.fromarray(f).resize((144, 144), Image.Resampling.BICUBIC)), 36,
                         constant_values=128) for f in faces])
  dets = MTCNN().detect_batch(np.repeat(big[..., None], 3, -1))
  errs, errs_shifted = [], []
  for face, img, d in zip(faces, big, dets):
    if len(d.scores) != 1 or d.scores[0] < 0.95:
      continue
    crop = np.asarray(align.align_face(img.astype(np.float32), d.landmarks[0], "fer2013", 48, supersample=3).image)
    lm48 = (d.landmarks[0].astype(np.float64) - 36 + 0.5) / 3 - 0.5
    ref = _warp_reference(face, umeyama_reference(lm48, align.FER2013_TEMPLATE_48))
    shifted = _warp_reference(face, umeyama_reference(lm48, align.FER2013_TEMPLATE_48 + 0.5))
    errs.append(np.abs(crop - ref)[6:42, 6:42].mean())  # inner part: no border fill in either
    errs_shifted.append(np.abs(crop - shifted)[6:42, 6:42].mean())
  assert len(errs) >= 12, len(errs)
  assert np.median(errs) < 2.5 and np.median(errs_shifted) > 5, (np.median(errs), np.median(errs_shifted))
