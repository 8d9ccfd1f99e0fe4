"""Tests of the procedural expression renderer (fer_jax.data.synthetic)."""

import numpy as np
import pytest

from fer_jax.data import synthetic as syn

# Independent copies of the documented tables (module docstring), so that a change to the code that
# is not reflected in the documentation fails here.
EXPECTED_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
EXPECTED_PROTOTYPES = {
    "angry": {"AU4": 1.0, "AU5": 0.6, "AU7": 0.8, "AU23": 0.9},
    "disgust": {"AU9": 1.0, "AU10": 0.8, "AU15": 0.6, "AU17": 0.5},
    "fear": {"AU1": 0.9, "AU2": 0.6, "AU4": 0.6, "AU5": 1.0, "AU7": 0.4, "AU20": 0.9, "AU25": 1.0,
             "AU26": 0.5},
    "happy": {"AU6": 0.8, "AU12": 1.0},
    "sad": {"AU1": 1.0, "AU4": 0.6, "AU15": 0.9},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 0.8, "AU25": 1.0, "AU26": 1.0},
    "neutral": {},
    "contempt": {"R12": 0.6, "R14": 0.9},
}
EXPECTED_OPTIONAL = {"angry": {"AU17": 0.5}, "disgust": {"AU25": 0.5}, "happy": {"AU25": 1.0},
                     "sad": {"AU17": 0.6}}
EXPECTED_VA = {"angry": (-0.55, 0.65), "disgust": (-0.65, 0.35), "fear": (-0.60, 0.75),
               "happy": (0.80, 0.45), "sad": (-0.70, -0.35), "surprise": (0.25, 0.80),
               "neutral": (0.0, 0.0), "contempt": (-0.45, 0.20)}
AU = {n: i for i, n in enumerate(syn.AU_NAMES)}
MIRROR = {"R12": "L12", "R14": "L14"}


def _faces(b, u=0.5):
  return syn.params_from_uniform(syn.IDENTITY_RANGES, np.full((b, len(syn.IDENTITY_RANGES)), u))


def _pose(b, angle=0.0, scale=1.2, sx=0.0, sy=0.0):
  f = lambda x: np.full(b, x, np.float32)
  return {"angle": f(angle), "scale": f(scale), "shift_x": f(sx), "shift_y": f(sy)}


def _aus(**kw):
  a = np.zeros((1, syn.NUM_AUS), np.float32)
  for n, x in kw.items():
    a[0, AU[n]] = x
  return a


def _bilinear(img, x, y):
  x0, y0 = int(np.floor(x)), int(np.floor(y))
  fx, fy = x - x0, y - y0
  p = img[y0:y0 + 2, x0:x0 + 2].astype(np.float64)
  return (p[0, 0] * (1 - fx) * (1 - fy) + p[0, 1] * fx * (1 - fy) + p[1, 0] * (1 - fx) * fy
          + p[1, 1] * fx * fy)


def test_tables_match_documentation():
  assert syn.CLASS_NAMES == EXPECTED_CLASSES
  assert syn.PROTOTYPES == EXPECTED_PROTOTYPES
  assert syn.OPTIONAL_AUS == EXPECTED_OPTIONAL
  assert {c: tuple(v) for c, v in syn.VALENCE_AROUSAL.items()} == EXPECTED_VA
  for au in ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15",
             "AU17", "AU20", "AU23", "AU25", "AU26"):
    assert au in syn.AU_NAMES
  # The closed form on a hand-computed case: happy at intensity 0.8 -> AU6 0.64, AU12 0.8.
  a = syn.expression_action_units([3], [0.8])
  expected = np.zeros(syn.NUM_AUS, np.float32)
  expected[AU["AU6"]], expected[AU["AU12"]] = 0.64, 0.8
  np.testing.assert_allclose(a[0], expected, atol=1e-7)
  # Mirrored contempt moves the unilateral AUs to the subject's left side.
  a = syn.expression_action_units([7, 7], [1.0, 1.0], mirror=[False, True])
  assert a[0, AU["R12"]] == pytest.approx(0.6) and a[0, AU["L12"]] == 0
  assert a[1, AU["L14"]] == pytest.approx(0.9) and a[1, AU["R14"]] == 0


def test_determinism_and_order_independence():
  a = syn.sample_examples(7, "train", 0, 12)
  b = syn.sample_examples(7, "train", 0, 12, chunk=5)
  for k in a:
    assert a[k].tobytes() == b[k].tobytes(), k
  # Any sub-range, generated alone or one by one, gives the same examples.
  c = syn.sample_examples(7, "train", 5, 4)
  singles = [syn.sample_examples(7, "train", i, 1) for i in (8, 6)]
  for k in a:
    assert c[k].tobytes() == a[k][5:9].tobytes(), k
    assert singles[0][k].tobytes() == a[k][8:9].tobytes(), k
    assert singles[1][k].tobytes() == a[k][6:7].tobytes(), k
  assert np.array_equal(c["id"], [5, 6, 7, 8])
  # Seeds and splits are different streams.
  other_seed = syn.sample_examples(8, "train", 0, 12)
  other_split = syn.sample_examples(7, "validation", 0, 12)
  assert not np.array_equal(other_seed["image"], a["image"])
  assert not np.array_equal(other_split["image"], a["image"])
  assert np.array_equal(syn.sample_examples(7, 1, 0, 3)["image"], other_split["image"][:3])
  s1 = syn.sample_sequences(3, "test", 0, 3, num_frames=4, size=32)
  s2 = syn.sample_sequences(3, "test", 2, 1, num_frames=4, size=32, chunk=3)
  for k in s1:
    assert s1[k][2:3].tobytes() == s2[k].tobytes(), k


def test_prototypes_produce_documented_aus():
  d = syn.sample_examples(1, "train", 0, 400, size=16)
  proto, opt = syn.prototype_matrix(), np.zeros((8, syn.NUM_AUS), np.float32)
  for c, name in enumerate(EXPECTED_CLASSES):
    for au, w in EXPECTED_PROTOTYPES[name].items():
      assert proto[c, AU[au]] == pytest.approx(w)
    for au, w in EXPECTED_OPTIONAL.get(name, {}).items():
      opt[c, AU[au]] = w
  assert set(np.unique(d["label"])) == set(range(8))
  tol = syn.AU_JITTER_MAX + 1e-6
  for lab, inten, a in zip(d["label"], d["intensity"], d["action_units"]):
    name = EXPECTED_CLASSES[lab]
    if name == "neutral":
      assert inten == 0
    else:
      assert 0.5 <= inten <= 1.0
    p = proto[lab].copy()
    if name == "contempt" and a[AU["L12"]] > a[AU["R12"]]:  # mirrored: subject's left side
      for r, l in MIRROR.items():
        p[AU[l]], p[AU[r]] = p[AU[r]], 0.0
      assert a[AU["R12"]] <= tol and a[AU["R14"]] <= tol
    lo = np.clip(p * inten - tol, 0, 1)
    hi = np.clip(p * inten + opt[lab] * inten + tol, 0, 1)
    assert np.all(a >= lo - 1e-6) and np.all(a <= hi + 1e-6), (name, inten, a)
  # The documented AUs are on at the apex: e.g. every happy example has AU6 and AU12 >= 0.3.
  happy = d["action_units"][d["label"] == 3]
  assert happy[:, AU["AU12"]].min() >= 0.4 and happy[:, AU["AU6"]].min() >= 0.3


def test_valence_arousal_are_documented_function_of_class_and_intensity():
  d = syn.sample_examples(2, "validation", 0, 200, size=16)
  va = np.array([EXPECTED_VA[EXPECTED_CLASSES[c]] for c in d["label"]], np.float32)
  np.testing.assert_array_equal(d["valence"], va[:, 0] * d["intensity"])
  np.testing.assert_array_equal(d["arousal"], va[:, 1] * d["intensity"])
  assert d["valence"].dtype == np.float32 and d["arousal"].dtype == np.float32


def test_pose_transform_of_landmarks_matches_numpy_affine():
  rng = np.random.default_rng(0)
  b, size = 6, 40
  au = rng.random((b, syn.NUM_AUS)).astype(np.float32)
  ident = syn.params_from_uniform(syn.IDENTITY_RANGES, rng.random((b, len(syn.IDENTITY_RANGES))))
  pose = {"angle": rng.uniform(-40, 40, b), "scale": rng.uniform(0.8, 1.4, b),
          "shift_x": rng.uniform(-0.2, 0.2, b), "shift_y": rng.uniform(-0.2, 0.2, b)}
  _, lm = syn.render_faces(au, ident, pose, size=size)
  can = syn.canonical_landmarks(au, ident).astype(np.float64)
  for i in range(b):
    th = np.deg2rad(pose["angle"][i])
    k = pose["scale"][i] * size / 2
    m = k * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    t = (size - 1) / 2 + np.array([pose["shift_x"][i], pose["shift_y"][i]]) * size / 2
    np.testing.assert_allclose(lm[i], can[i] @ m.T + t, atol=1e-4)


def test_rotation_by_90_degrees_rotates_image_and_landmarks():
  au = _aus(AU12=1.0, AU26=0.6, AU25=1.0, R14=0.8, AU2=0.7)
  im0, lm0 = syn.render_faces(au, _faces(1, 0.3), _pose(1), size=41)
  im1, lm1 = syn.render_faces(au, _faces(1, 0.3), _pose(1, angle=90.0), size=41)
  # Clockwise quarter turn: (x, y) -> (S - 1 - y, x); the image is np.rot90(., k=-1).
  np.testing.assert_allclose(lm1[0], np.stack([40 - lm0[0, :, 1], lm0[0, :, 0]], -1), atol=1e-4)
  diff = np.abs(im1[0].astype(int) - np.rot90(im0[0], k=-1).astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01


def test_windowed_rendering_equals_full_frame_rendering():
  """Every feature's paint stays inside its window (else results would depend on the batch)."""
  rng = np.random.default_rng(1)
  b = 24
  au = (rng.random((b, syn.NUM_AUS)) ** 0.5).astype(np.float32)
  au[:4] = 1.0
  ident = syn.params_from_uniform(syn.IDENTITY_RANGES, rng.random((b, len(syn.IDENTITY_RANGES))))
  ident["hair_on"][:] = 0.0
  pose = {"angle": rng.uniform(-45, 45, b), "scale": rng.uniform(0.9, 1.4, b),
          "shift_x": rng.uniform(-0.2, 0.2, b), "shift_y": rng.uniform(-0.2, 0.2, b)}
  scene = syn.params_from_uniform(syn.SCENE_RANGES, rng.random((b, len(syn.SCENE_RANGES))))
  for size, ch in ((128, 1), (57, 3)):
    a, la = syn.render_faces(au, ident, pose, size, ch, scene)
    f, lf = syn.render_faces(au, ident, pose, size, ch, scene, windowed=False)
    assert np.array_equal(a, f) and np.array_equal(la, lf)


def test_image_is_dark_at_the_pupils_and_bright_between_the_brows():
  rng = np.random.default_rng(2)
  b, size = 8, 96
  ident = syn.params_from_uniform(syn.IDENTITY_RANGES, rng.random((b, len(syn.IDENTITY_RANGES))))
  pose = {"angle": rng.uniform(-30, 30, b), "scale": rng.uniform(0.9, 1.3, b),
          "shift_x": rng.uniform(-0.1, 0.1, b), "shift_y": rng.uniform(-0.1, 0.1, b)}
  img, lm = syn.render_faces(np.zeros((b, syn.NUM_AUS), np.float32), ident, pose, size=size)
  for i in range(b):
    skin = _bilinear(img[i, ..., 0], *((lm[i, 21] + lm[i, 22]) / 2))
    for eye in (slice(36, 42), slice(42, 48)):
      centre = lm[i, eye].mean(0)  # corners + lids average to (almost) the iris centre
      assert _bilinear(img[i, ..., 0], *centre) < 0.45 * skin


@pytest.mark.parametrize("au26", [0.0, 0.5, 1.0])
def test_mouth_opening_in_pixels_matches_inner_lip_landmarks(au26):
  """Inner-lip landmarks 62 / 66 bound the rendered opening: teeth (top 0.05 units), then dark."""
  size = 97  # odd: the face's midline u = 0 falls on pixel column 48
  img, lm = syn.render_faces(_aus(AU25=1.0, AU26=au26), _faces(1), _pose(1, scale=1.3), size=size)
  col = img[0, :, 48, 0].astype(float)
  x62, y62 = lm[0, 62]
  y66 = lm[0, 66, 1]
  assert x62 == pytest.approx(48.0, abs=1e-4)
  k = 1.3 * size / 2
  gap = y66 - y62
  assert gap == pytest.approx(k * (0.035 + 0.16 * au26), rel=1e-3)  # 0.035 AU25 + 0.16 AU26
  teeth_h = 0.05 * k
  band = col[int(np.floor(y62)):int(np.ceil(y66)) + 1]
  teeth = band.max()
  assert teeth > 190  # (0.875, 0.858, 0.788) * 255 -> 218 grey levels
  mouth = 0.1089 * 255  # luma of the inside colour (0.2, 0.07, 0.07)
  dark = np.flatnonzero(col < mouth + 5)
  dark = dark[(dark > y62 - 2) & (dark < y66 + 2)]
  if gap <= teeth_h:
    assert dark.size == 0
    return
  # Sub-pixel edges from the partial coverage of the pixels next to the fully dark run.
  first, last = dark.min(), dark.max()
  assert np.array_equal(dark, np.arange(first, last + 1))
  lip = col[int(np.ceil(y66)) + 2]
  bottom = last + 0.5 + (lip - col[last + 1]) / (lip - mouth)
  top = first - 0.5 - (teeth - col[first - 1]) / (teeth - mouth)
  assert bottom == pytest.approx(y66, abs=0.25)
  assert top == pytest.approx(y62 + teeth_h, abs=0.25)


def test_each_action_unit_moves_landmarks_as_documented():
  base = _aus()
  ident = _faces(1)
  lm0 = syn.canonical_landmarks(base, ident)[0]
  y = lambda lm, i: lm[i, 1]
  moved = lambda **kw: syn.canonical_landmarks(_aus(**kw), ident)[0]
  up, down = lambda a, b: a < b - 0.02, lambda a, b: a > b + 0.02  # canonical units (v points down)
  m = moved(AU1=1)
  assert up(y(m, 21), y(lm0, 21)) and up(y(m, 22), y(lm0, 22))  # inner brows up
  assert abs(y(m, 17) - y(lm0, 17)) < 0.01                       # outer brows stay
  m = moved(AU2=1)
  assert up(y(m, 17), y(lm0, 17)) and up(y(m, 26), y(lm0, 26)) and abs(y(m, 21) - y(lm0, 21)) < 0.01
  m = moved(AU4=1)
  assert down(y(m, 21), y(lm0, 21)) and m[22, 0] - m[21, 0] < lm0[22, 0] - lm0[21, 0] - 0.05
  m = moved(AU5=1)
  assert m[38, 1] < lm0[38, 1] - 0.03  # upper lid up
  for au in ("AU6", "AU7"):
    m = moved(**{au: 1})
    assert m[41, 1] < lm0[41, 1] - 0.01 and m[47, 1] < lm0[47, 1] - 0.01  # lower lid up
  m = moved(AU9=1)
  assert up(y(m, 31), y(lm0, 31)) and up(y(m, 35), y(lm0, 35))  # nose wings up
  m = moved(AU10=1)
  assert up(y(m, 51), y(lm0, 51)) and up(y(m, 62), y(lm0, 62))  # upper lip up
  m = moved(AU12=1)
  assert up(y(m, 48), y(lm0, 48)) and up(y(m, 54), y(lm0, 54)) and m[54, 0] > lm0[54, 0] + 0.03
  m = moved(R12=1)  # subject's right = image left corner only
  assert up(y(m, 48), y(lm0, 48)) and abs(y(m, 54) - y(lm0, 54)) < 1e-6
  m = moved(AU14=1)
  assert m[54, 0] < lm0[54, 0] - 0.01 and up(y(m, 54), y(lm0, 54))
  m = moved(AU15=1)
  assert down(y(m, 48), y(lm0, 48)) and down(y(m, 54), y(lm0, 54))
  m = moved(AU17=1)
  assert m[57, 1] - m[51, 1] > lm0[57, 1] - lm0[51, 1] - 0.01 and up(y(m, 66), y(lm0, 66) + 0.0)
  m = moved(AU20=1)
  assert m[54, 0] > lm0[54, 0] + 0.05 and m[48, 0] < lm0[48, 0] - 0.05
  m = moved(AU23=1)
  assert (m[57, 1] - m[51, 1]) < 0.6 * (lm0[57, 1] - lm0[51, 1]) and m[54, 0] < lm0[54, 0]
  m = moved(AU25=1)
  assert m[66, 1] - m[62, 1] > 0.02 and abs(lm0[66, 1] - lm0[62, 1]) < 1e-6
  m = moved(AU26=1)
  assert m[66, 1] - m[62, 1] > 0.12 and down(y(m, 8), y(lm0, 8) + 0.08)


@pytest.mark.parametrize("au", ["AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12",
                                "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "R12",
                                "L14"])
def test_each_action_unit_visibly_changes_the_image(au):
  ident = _faces(1, 0.4)
  im0, _ = syn.render_faces(_aus(), ident, _pose(1), size=48)
  im1, _ = syn.render_faces(_aus(**{au: 1.0}), ident, _pose(1), size=48)
  changed = np.abs(im1.astype(int) - im0.astype(int)) > 25
  assert changed.sum() >= 6, changed.sum()


def test_sequences_ramp_from_neutral_to_apex():
  d = syn.sample_sequences(0, "train", 0, 16, num_frames=8, size=32)
  inten, lab = d["intensity"], d["label"]
  assert d["frames"].shape == (16, 8, 32, 32, 1) and d["landmarks"].shape == (16, 8, 68, 2)
  assert np.all(np.diff(inten, axis=1) >= 0)
  assert np.all(inten[:, 0] < 0.1)
  apex = inten[:, -1]
  assert np.all((apex == 0) == (lab == 6))
  assert np.all(apex[lab != 6] >= 0.5)
  va = np.array([EXPECTED_VA[EXPECTED_CLASSES[c]] for c in lab], np.float32)
  np.testing.assert_array_equal(d["valence"], va[:, :1] * inten)
  np.testing.assert_array_equal(d["arousal"], va[:, 1:] * inten)
  np.testing.assert_array_equal(d["frame_labels"], np.where(inten >= 0.5 - 1e-6, lab[:, None], 6))
  # Same AU jitter within a clip: frames of equal intensity have equal AUs, and the AUs follow the
  # prototype times the frame intensity.
  proto = syn.prototype_matrix()
  for i in np.flatnonzero(lab == 3):  # happy: AU12 = clip(I + jitter)
    au12 = d["action_units"][i, :, AU["AU12"]]
    free = (au12 > 0) & (au12 < 1)  # not clipped
    jit = au12[free] - inten[i][free]
    assert free.sum() >= 3 and np.ptp(jit) < 1e-6 and np.abs(jit).max() <= syn.AU_JITTER_MAX
    assert proto[3, AU["AU12"]] == 1.0
  # Pose drifts slowly: landmarks move by less than 1.5 px per frame.
  step = np.abs(np.diff(d["landmarks"], axis=1)).max()
  assert 0 < step < 1.5


def test_bad_input_raises_clear_errors():
  ident, pose = _faces(1), _pose(1)
  with pytest.raises(ValueError, match=r"action_units must have shape \(B, 20\)"):
    syn.render_faces(np.zeros((1, 5)), ident, pose)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    syn.render_faces(np.full((1, syn.NUM_AUS), 2.0), ident, pose)
  with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
    syn.render_faces(_aus(), ident, pose, channels=2)
  with pytest.raises(ValueError, match="missing keys"):
    syn.render_faces(_aus(), {"face_w": np.ones(1)}, pose)
  with pytest.raises(ValueError, match="split must be one of"):
    syn.sample_examples(0, "dev", 0, 1)
  with pytest.raises(ValueError, match="labels must be in"):
    syn.expression_action_units([8], [1.0])
  with pytest.raises(ValueError, match="count must be an integer >= 0"):
    syn.sample_examples(0, "train", 0, -1)


def test_tracked_sequences_add_only_a_tracker_error_with_the_documented_statistics():
  kw = dict(num_frames=12, size=24)
  exact = syn.sample_sequences(5, "validation", 3, 6, **kw)
  tracked = syn.sample_sequences(5, "validation", 3, 6, tracking_noise=0.05, **kw)
  for k in exact:  # frames, labels, AUs ... unchanged: the error has a random stream of its own
    if k != "landmarks":
      np.testing.assert_array_equal(tracked[k], exact[k], err_msg=k)
  # Independent re-draw of clip 4's error from its documented stream, AR(1) written out by hand.
  lm = exact["landmarks"][1].astype(np.float64)
  eps = np.random.default_rng([5, 1, 4, 2]).standard_normal((12, 68, 2))
  z = [eps[0]]
  for t in range(1, 12):
    z.append(0.6 * z[-1] + 0.8 * eps[t])
  iod = np.hypot(*(lm[:, 45] - lm[:, 36]).T)
  sd = np.where(np.arange(68) < 17, 0.1, 0.05)
  want = lm + np.array(z) * sd[None, :, None] * iod[:, None, None]
  np.testing.assert_allclose(tracked["landmarks"][1], want, rtol=0, atol=2e-4)
  # Statistics over many clips: per-point sd / IOD = 0.05 (0.1 on the jaw), lag-1 correlation 0.6.
  rng = np.random.default_rng(0)
  base = np.tile(lm[:1], (16, 1, 1))
  err = np.stack([syn.tracker_noise(rng, base, 0.05) for _ in range(400)]) / iod[0]
  np.testing.assert_allclose(err[:, :, 17:].std(), 0.05, rtol=0.03)
  np.testing.assert_allclose(err[:, :, :17].std(), 0.10, rtol=0.03)
  lag1 = np.mean(err[:, 1:] * err[:, :-1]) / np.mean(err[:, :-1] ** 2)
  assert abs(lag1 - 0.6) < 0.02, lag1


def test_intensity_scale_makes_subtler_clips_and_bad_options_are_named():
  full = syn.sample_sequences(0, "train", 0, 8, num_frames=6, size=16)
  half = syn.sample_sequences(0, "train", 0, 8, num_frames=6, size=16, intensity_scale=0.5)
  np.testing.assert_allclose(half["intensity"], 0.5 * full["intensity"], rtol=1e-6)
  np.testing.assert_array_equal(half["frame_labels"],
                                np.where(half["intensity"] >= 0.25 - 1e-6, full["label"][:, None], 6))
  with pytest.raises(ValueError, match="tracking_noise.*-0.1"):
    syn.sample_sequences(0, "train", 0, 1, num_frames=2, size=16, tracking_noise=-0.1)
  with pytest.raises(ValueError, match="intensity_scale.*1.5"):
    syn.sample_sequences(0, "train", 0, 1, num_frames=2, size=16, intensity_scale=1.5)
