"""fer_jax.explain.faces / .cli: Integrated Gradients of the shipped model on real FER2013 faces
(completeness, parity with integrated_gradients called by hand, targets), facial-region masks against
NumPy / SciPy references on hand-made maps, the pictures, and ``fer-jax explain`` on FER2013 faces
written as PNGs."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from fer_jax.explain import faces as ef
from fer_jax.explain import integrated_gradients, overlay_heatmap, attribution_heatmap

ROOT = pathlib.Path(__file__).resolve().parents[1]
FER_CSV = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
needs_fer = pytest.mark.skipif(not FER_CSV.exists(), reason=f"real FER2013 data not found at {FER_CSV}")
N_FACES, STEPS = 4, 64  # the default tests share one compiled IG: (4, 48, 48, 1) crops, 64 steps


def _fer_faces(n):
  """The first ``n`` faces of fer2013.csv.gz: uint8 (n, 48, 48, 1), and their labels."""
  faces, labels = [], []
  with gzip.open(FER_CSV, "rt", newline="") as f:
    for row in csv.DictReader(f):
      faces.append(np.array(row["pixels"].split(), np.uint8).reshape(48, 48, 1))
      labels.append(int(row["emotion"]))
      if len(faces) == n:
        break
  return np.stack(faces), np.array(labels)


@pytest.fixture(scope="module")
def predictor():
  from fer_jax import pretrained
  return pretrained.resolve()


@pytest.fixture(scope="module")
def faces():
  if not FER_CSV.exists():
    pytest.skip(f"real FER2013 data not found at {FER_CSV}")
  return _fer_faces(N_FACES)[0]


@pytest.fixture(scope="module")
def explained(predictor, faces):
  return ef.explain_faces(predictor, faces, n_steps=STEPS, batch_size=N_FACES)


def _reference_ig(predictor, faces, target, sigma=4.0):
  """integrated_gradients called by hand: the model's centre-crop logits, a SciPy Gaussian blur baseline."""
  x = faces.astype(np.float32)
  base = ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="reflect")
  fn = lambda z: predictor.forward(predictor.variables, z, "center", "logits")  # noqa: E731
  run = jax.jit(lambda x, b, t: integrated_gradients(fn, x, target=t, baselines=b, n_steps=STEPS,
                                                     return_convergence_delta=True))
  attr, delta = run(x, base, np.asarray(target, np.int32))
  return np.asarray(attr)[..., 0], np.asarray(delta), base


# ------------------------------------------------------------------------------------------------
# IG of the shipped model on real faces.
# ------------------------------------------------------------------------------------------------

@needs_fer
def test_completeness_on_real_faces(predictor, faces, explained):
  """sum IG = F(x) - F(x') up to the quadrature error, with F(x), F(x') the model's logits by hand."""
  t = explained.targets
  logits_x = np.asarray(predictor.forward(predictor.variables, faces.astype(np.float32), "center", "logits"))
  blurred = ndimage.gaussian_filter(faces.astype(np.float32), (0, 4, 4, 0), mode="reflect")
  logits_b = np.asarray(predictor.forward(predictor.variables, blurred, "center", "logits"))
  fx, fb = logits_x[np.arange(N_FACES), t], logits_b[np.arange(N_FACES), t]
  np.testing.assert_allclose(explained.values, fx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(explained.baseline_values, fb, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(explained.baselines, blurred, atol=1e-3)
  diff = fx - fb
  assert (np.abs(diff) > 0.5).all(), diff  # something to attribute: the check below is not vacuous
  ig_sum = explained.attributions.reshape(N_FACES, -1).sum(1)
  np.testing.assert_allclose(explained.delta, ig_sum - diff, atol=2e-3 * np.abs(diff).max())
  assert (np.abs(ig_sum - diff) < 0.05 * np.abs(diff)).all(), (ig_sum, diff)
  np.testing.assert_allclose(explained.relative_delta, np.abs(ig_sum - diff) / np.abs(diff), rtol=1e-2,
                             atol=1e-4)


@needs_fer
def test_probabilities_and_predicted_target(predictor, faces, explained):
  probs = predictor.predict_proba(faces, test_crops="center")
  np.testing.assert_allclose(explained.probs, probs, atol=1e-5)
  np.testing.assert_array_equal(explained.targets, probs.argmax(1))
  assert explained.target_names == tuple(CLASSES[i] for i in probs.argmax(1))
  np.testing.assert_allclose(explained.target_probs, probs.max(1), atol=1e-5)


@needs_fer
def test_parity_with_integrated_gradients_by_hand_target_by_name(predictor, faces):
  """target='happy' == integrated_gradients(target=3) on the same path; per-face mixed targets agree."""
  got = ef.explain_faces(predictor, faces, target="happy", n_steps=STEPS, batch_size=N_FACES)
  want, delta, _ = _reference_ig(predictor, faces, np.full(N_FACES, 3))
  np.testing.assert_array_equal(got.targets, [3] * N_FACES)
  scale = np.abs(want).max()
  np.testing.assert_allclose(got.attributions, want, atol=1e-4 * scale)
  np.testing.assert_allclose(got.delta, delta, atol=1e-3 * np.abs(got.values - got.baseline_values).max())
  mixed = ef.explain_faces(predictor, faces, target=[3, "happy", np.int64(3), "3"], n_steps=STEPS,
                           batch_size=N_FACES)
  np.testing.assert_allclose(mixed.attributions, got.attributions, atol=1e-6 * scale)


def test_resolve_targets():
  pred = np.array([0, 3, 6])
  np.testing.assert_array_equal(ef.resolve_targets("predicted", pred, CLASSES), [0, 3, 6])
  np.testing.assert_array_equal(ef.resolve_targets("sad", pred, CLASSES), [4, 4, 4])
  np.testing.assert_array_equal(ef.resolve_targets(5, pred, CLASSES), [5, 5, 5])
  np.testing.assert_array_equal(ef.resolve_targets("2", pred, CLASSES), [2, 2, 2])
  np.testing.assert_array_equal(ef.resolve_targets(["happy", "predicted", 1], pred, CLASSES), [3, 3, 1])
  with pytest.raises(ValueError, match=r"unknown target class 'joy'.*'angry', 'disgust'.*'neutral'"):
    ef.resolve_targets("joy", pred, CLASSES)
  with pytest.raises(ValueError, match="outside 0..6"):
    ef.resolve_targets(7, pred, CLASSES)
  with pytest.raises(ValueError, match="2 entries for 3 faces"):
    ef.resolve_targets([1, 2], pred, CLASSES)
  with pytest.raises(ValueError, match="got True"):
    ef.resolve_targets(True, pred, CLASSES)


def test_bad_input_errors(predictor):
  with pytest.raises(TypeError,
                     match=r"explain_faces got dtype float32 with shape \(1, 48, 48\); expected a uint8"):
    ef.explain_faces(predictor, np.zeros((1, 48, 48), np.float32))
  with pytest.raises(ValueError, match=r"shape \(1, 48, 48, 2\)"):
    ef.explain_faces(predictor, np.zeros((1, 48, 48, 2), np.uint8))
  with pytest.raises(ValueError, match="baseline must be one of"):
    ef.explain_faces(predictor, np.zeros((1, 48, 48), np.uint8), baseline="white")
  with pytest.raises(ValueError, match="output must be one of"):
    ef.explain_faces(predictor, np.zeros((1, 48, 48), np.uint8), output="softmax")


def test_make_baselines_against_closed_forms():
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
  np.testing.assert_array_equal(ef.make_baselines(crops, "black"), np.zeros((2, 9, 11, 3)))
  mean = ef.make_baselines(crops, "mean")
  for n in range(2):
    for c in range(3):
      np.testing.assert_allclose(mean[n, :, :, c], crops[n, :, :, c].astype(np.float64).mean(), rtol=1e-6)
  np.testing.assert_allclose(ef.make_baselines(np.full((1, 8, 8, 1), 77, np.uint8), "blur"), 77, rtol=1e-6)
  # Blur: a 2-D Gaussian kernel truncated at 4 sigma, normalised per axis, mirrored borders
  # (d c b a | a b c d).
  sigma = 1.3
  r = int(4 * sigma + 0.5)
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  img = crops[0, :, :, 1].astype(np.float64)
  pad = np.pad(img, r, mode="symmetric")
  want = np.zeros_like(img)
  for i in range(img.shape[0]):
    for j in range(img.shape[1]):
      want[i, j] = (np.outer(k, k) * pad[i:i + 2 * r + 1, j:j + 2 * r + 1]).sum()
  np.testing.assert_allclose(ef.make_baselines(crops, "blur", blur_sigma=sigma)[0, :, :, 1], want, atol=1e-3)
  np.testing.assert_allclose(ef.make_baselines(crops[:, :, :9], "blur")[0, :, :, 1],
                             ef.make_baselines(crops[:, :, :9], "blur", blur_sigma=9 / 12)[0, :, :, 1])


# ------------------------------------------------------------------------------------------------
# Regions against independent NumPy / SciPy masks.
# ------------------------------------------------------------------------------------------------

FIVE = np.array([[14.3, 19.2], [32.8, 16.9], [24.1, 27.5], [17.2, 36.4], [31.5, 34.6]])  # a rolled face


def _seg_dist(z, a, b):
  """|z - closest point of segment a-b|, complex numbers."""
  if a == b:
    return abs(z - a)
  t = min(1.0, max(0.0, ((z - a) * np.conj(b - a)).real / abs(b - a) ** 2))
  return abs(z - (a + t * (b - a)))


def _reference_five_point_masks(lm, h, w):
  """Per-pixel loop over the documented shapes: eyes 0.3 d, brows 0.15 d round a 0.4 d segment 0.45 d
  above the eye, nose 0.25 d, mouth 0.25 d round the corners' segment; nearest by distance / radius."""
  p = [complex(x, y) for x, y in lm]
  d = abs(p[1] - p[0])
  e = (p[1] - p[0]) / d
  up = e * -1j  # (ex, ey) -> (ey, -ex): towards smaller y for a level face
  brow = lambda eye: (eye + 0.45 * d * up - 0.2 * d * e, eye + 0.45 * d * up + 0.2 * d * e)  # noqa: E731
  shapes = {"right_eye": (p[0], p[0], 0.3), "left_eye": (p[1], p[1], 0.3),
            "right_brow": brow(p[0]) + (0.15,), "left_brow": brow(p[1]) + (0.15,),
            "nose": (p[2], p[2], 0.25), "mouth": (p[3], p[4], 0.25)}
  out = {k: np.zeros((h, w), bool) for k in list(shapes) + ["rest"]}
  for r in range(h):
    for c in range(w):
      u = {k: _seg_dist(complex(c, r), a, b) / (rad * d) for k, (a, b, rad) in shapes.items()}
      best = min(u, key=u.get)
      out[best if u[best] <= 1 else "rest"][r, c] = True
  return out


def test_five_point_masks_against_reference():
  got = ef.five_point_region_masks(FIVE, (48, 50))
  want = _reference_five_point_masks(FIVE, 48, 50)
  assert list(got) == list(ef.REGIONS_5)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert want[name].any(), name
  # Batched landmarks give the same masks per face.
  both = ef.five_point_region_masks(np.stack([FIVE, FIVE + [3.0, -2.0]]), (48, 50))
  shifted = _reference_five_point_masks(FIVE + [3.0, -2.0], 48, 50)
  for name in want:
    np.testing.assert_array_equal(both[name][0], want[name])
    np.testing.assert_array_equal(both[name][1], shifted[name])


def test_region_stats_on_hand_made_maps():
  masks = ef.face_region_masks(FIVE, (48, 48))
  # Hand-computed: +2 at the right eye's centre pixel, -1 on the mouth segment's midpoint pixel.
  a = np.zeros((48, 48))
  a[19, 14] = 2.0
  a[35, 24] = -1.0
  s = ef.region_stats(a, masks)
  assert s["right_eye"]["abs_sum"] == pytest.approx(2.0) and s["right_eye"]["share"] == pytest.approx(2 / 3)
  assert s["mouth"]["signed_sum"] == pytest.approx(-1.0) and s["mouth"]["share"] == pytest.approx(1 / 3)
  assert all(s[k]["abs_sum"] == 0 for k in ("left_eye", "right_brow", "left_brow", "nose", "rest"))
  # Random signed maps (batched) against sums over the reference masks.
  ref = _reference_five_point_masks(FIVE, 48, 48)
  maps = np.random.default_rng(1).normal(size=(3, 48, 48))
  s = ef.region_stats(maps, masks)
  total = np.abs(maps).sum((1, 2))
  for name, m in ref.items():
    np.testing.assert_allclose(s[name]["abs_sum"], np.abs(maps)[:, m].sum(1), rtol=1e-12)
    np.testing.assert_allclose(s[name]["signed_sum"], maps[:, m].sum(1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s[name]["share"], np.abs(maps)[:, m].sum(1) / total, rtol=1e-12)
    np.testing.assert_allclose(s[name]["area"], m.sum() / m.size, rtol=1e-12)
  np.testing.assert_allclose(sum(v["share"] for v in s.values()), 1.0, rtol=1e-12)
  assert ef.region_stats(np.zeros((48, 48)), masks)["rest"]["share"] == 0.0


def test_68_point_masks_against_scipy_hulls():
  from fer_jax.data import align
  lm = align.template_points("68", 48, scale=1.25) + [0.3, -0.2]
  got = ef.landmark68_region_masks(lm, (48, 48))
  d = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
  rows, cols = np.mgrid[0:48, 0:48]
  q = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float64)
  groups = [("right_eye", range(36, 42), 0.12, True), ("left_eye", range(42, 48), 0.12, True),
            ("right_brow", range(17, 22), 0.12, True), ("left_brow", range(22, 27), 0.12, True),
            ("mouth", range(48, 68), 0.1, True), ("nose", range(27, 36), 0.08, True),
            ("jaw", range(0, 17), 0.15, False)]
  taken = np.zeros(48 * 48, bool)
  assert list(got) == list(ef.REGIONS_68)
  for name, idx, margin, hull in groups:
    pts = lm[list(idx)]
    m = (((q[:, None] - pts[None]) ** 2).sum(-1) <= (margin * d) ** 2 + 1e-9).any(1)
    if hull:
      eq = ConvexHull(pts).equations  # inside: normal . q + offset <= 0
      m |= (q @ eq[:, :2].T + eq[:, 2] <= 1e-9).all(1)
    want = (m & ~taken).reshape(48, 48)
    taken |= m
    np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert want.any(), name
  np.testing.assert_array_equal(got["rest"], ~taken.reshape(48, 48))


def test_landmarks_to_crop_recovers_a_similarity():
  rng = np.random.default_rng(2)
  ang, k, t = 0.3, 0.17, np.array([-20.0, 7.5])
  m = k * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
  pts = rng.uniform(100, 400, (68, 2))
  five = rng.uniform(100, 400, (5, 2))
  got = ef.landmarks_to_crop(pts, five, five @ m.T + t)
  np.testing.assert_allclose(got, pts @ m.T + t, atol=2e-3)
  with pytest.raises(ValueError, match="NaN"):
    ef.landmarks_to_crop(pts, np.full((5, 2), np.nan), five)


# ------------------------------------------------------------------------------------------------
# Pictures.
# ------------------------------------------------------------------------------------------------

def test_picture_written_and_decodable(tmp_path):
  rng = np.random.default_rng(3)
  crop = rng.integers(0, 256, (48, 48, 1), dtype=np.uint8)
  attr = rng.normal(size=(48, 48))
  img = ef.explanation_image(crop, attr, landmarks=FIVE, title=["happy p=0.91", "line two"])
  path = ef.write_explanation_png(tmp_path / "sub" / "face.png", img)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode == "RGB"
    got = np.asarray(im)
  np.testing.assert_array_equal(got, img)
  top = got.shape[0] - 192
  assert got.shape[1] == 3 * 192 and top > 20  # two title lines above the panels
  face = np.repeat(np.repeat(np.repeat(crop, 3, -1), 4, 0), 4, 1)
  np.testing.assert_array_equal(got[top:, :192], face)
  heat = overlay_heatmap(crop, attribution_heatmap(attr, channel_axis=None), alpha=0.55)
  up = np.repeat(np.repeat(heat, 4, 0), 4, 1)
  x, y = (FIVE[0] + 0.5) * 4 - 0.5  # landmark 0, drawn white in the heat panel
  np.testing.assert_array_equal(got[top + int(round(y)), 192 + int(round(x))], [255, 255, 255])
  np.testing.assert_array_equal(got[top + 2, 192 + 2], up[2, 2])  # far from every landmark
  assert (got[:top] < 128).any()  # the title is drawn
  with pytest.raises(ValueError, match="expected the crop's"):
    ef.explanation_image(crop, attr[:40], landmarks=FIVE)


# ------------------------------------------------------------------------------------------------
# CLI.
# ------------------------------------------------------------------------------------------------

def _has_predict():
  if importlib.util.find_spec("fer_jax.predict") is None:
    return False
  try:
    from fer_jax.predict import faces as faces_lib, sources  # noqa: F401
  except ImportError:
    return False
  return True


needs_predict = pytest.mark.skipif(not _has_predict(),
                                   reason="fer_jax.predict (faces from images) is not there")


def _align_for_fer():
  from fer_jax.predict import faces as faces_lib
  try:
    faces_lib.check_align("fer2013")
    return "fer2013"
  except ValueError:
    return "arcface"


@needs_fer
@needs_predict
def test_cli_on_fer_pngs_no_detect(tmp_path, predictor, faces, explained, capsys):
  from fer_jax.explain import cli
  src = tmp_path / "faces"
  src.mkdir()
  for i, f in enumerate(faces):
    Image.fromarray(f[..., 0]).save(src / f"fer{i}.png")
  (src / "broken.png").write_bytes(b"not a png at all")
  out = tmp_path / "out"
  rc = cli.main([str(src), "--no-detect", "--align", _align_for_fer(), "--batch_size", str(N_FACES),
                 "--out_dir", str(out)])
  printed = capsys.readouterr().out
  assert rc == 0, printed
  assert "broken.png" in printed and "5 file(s), 4 read, 4 face(s), 1 error(s)" in printed
  with open(out / "regions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[:9] == ["source", "frame", "face", "target", "probability", "region", "abs_sum",
                               "share", "signed_sum"]
  assert len(rows) == N_FACES * len(ef.REGIONS_5)
  probs = predictor.predict_proba(faces, test_crops="center")
  for i in range(N_FACES):
    png = out / f"fer{i}_face0.png"
    with Image.open(png) as im:
      assert im.format == "PNG" and im.size[0] == 3 * 192 and im.size[1] > 192
    mine = [r for r in rows if r["source"].endswith(f"fer{i}.png")]
    assert [r["region"] for r in mine] == list(ef.REGIONS_5)
    assert {r["png"] for r in mine} == {str(png)} and {r["frame"] for r in mine} == {""}
    t = CLASSES.index(mine[0]["target"])
    assert t == probs[i].argmax() and float(mine[0]["probability"]) == pytest.approx(probs[i, t], abs=1e-5)
    # The CLI's regions partition the crop: their sums are the whole IG map of explain_faces.
    a = explained.attributions[i]
    assert sum(float(r["abs_sum"]) for r in mine) == pytest.approx(np.abs(a).sum(), rel=1e-4)
    assert sum(float(r["signed_sum"]) for r in mine) == pytest.approx(a.sum(), rel=1e-3, abs=1e-3)
    assert sum(float(r["share"]) for r in mine) == pytest.approx(1.0, abs=1e-4)
    assert sum(float(r["area"]) for r in mine) == pytest.approx(1.0, abs=1e-4)
    assert float(mine[0]["delta"]) == pytest.approx(explained.delta[i], abs=1e-3)


@needs_predict
def test_cli_keeps_an_earlier_run_unless_overwrite(tmp_path, capsys):
  from fer_jax.explain import cli
  out = tmp_path / "o"
  out.mkdir()
  (out / "regions.csv").write_text("earlier run")
  rc = cli.main([str(tmp_path), "--out_dir", str(out)])
  assert rc == 2 and f"{out / 'regions.csv'} exists" in capsys.readouterr().err and "--overwrite" in \
      cli.build_parser().format_help()
  assert (out / "regions.csv").read_text() == "earlier run"


def test_cli_unknown_class_lists_classes(tmp_path, capsys):
  from fer_jax.explain import cli
  rc = cli.main([str(tmp_path), "--target", "joy", "--align", _align_for_fer(),
                 "--out_dir", str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert rc == 2 and "'joy'" in err and "'happy'" in err and "'neutral'" in err
  parser = cli.build_parser()
  assert parser.prog == "fer-jax explain" and "fer-jax explain" in parser.epilog


# ------------------------------------------------------------------------------------------------
# Slow: the documented failure of constant baselines, probabilities, crops of another size.
# ------------------------------------------------------------------------------------------------

@needs_fer
@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_constant_baselines_break_completeness(predictor, faces, baseline):
  """The module docstring's claim: with per-image standardisation the whole F(x) - F(x') happens in a
  sliver at the path's start, so IG sums to ~0 and the delta is ~ -(F(x) - F(x'))."""
  got = ef.explain_faces(predictor, faces, baseline=baseline, n_steps=16, batch_size=N_FACES)
  diff = got.values - got.baseline_values
  ig = got.attributions.reshape(N_FACES, -1).sum(1)
  assert (np.abs(ig) < 0.05 * np.abs(diff)).all() and (got.relative_delta > 0.9).all()


@needs_fer
@pytest.mark.slow
def test_probs_output_and_rgb_crops_of_another_size(predictor, faces):
  got = ef.explain_faces(predictor, faces, output="probs", n_steps=STEPS, batch_size=N_FACES)
  diff = got.values - got.baseline_values
  np.testing.assert_allclose(got.values, got.target_probs, atol=1e-5)
  assert (np.abs(got.delta) < 0.1 * np.abs(diff) + 0.01).all(), (got.delta, diff)
  rgb = np.stack([np.asarray(Image.fromarray(f[..., 0]).resize((64, 64), Image.Resampling.BILINEAR))
                  for f in faces])
  rgb = np.repeat(rgb[..., None], 3, -1)
  res = ef.explain_faces(predictor, rgb, n_steps=STEPS, batch_size=N_FACES)
  assert res.attributions.shape == (N_FACES, 64, 64)
  d2 = res.values - res.baseline_values
  assert (np.abs(res.delta) < 0.05 * np.abs(d2)).all(), (res.delta, d2)
  # predict_proba rounds the resized pixels, the IG path does not: half a grey level apart at most.
  np.testing.assert_allclose(res.probs, predictor.predict_proba(rgb, test_crops="center"), atol=2e-2)
