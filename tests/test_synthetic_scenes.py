"""Tests of the person-in-scene renderer with EMOTIC-style labels (fer_jax.data.synthetic_scenes)."""

import copy

import numpy as np
import pytest

from fer_jax.data import synthetic
from fer_jax.data import synthetic_scenes as ss

# Kosti et al.'s category order (independent copy of PAPERS.md / the paper's tables).
PAPER_CATEGORIES = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval",
    "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem",
    "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace", "Pleasure", "Sadness", "Sensitivity",
    "Suffering", "Surprise", "Sympathy", "Yearning")
FACE = {n: i for i, n in enumerate(synthetic.CLASS_NAMES)}
ARMS = {"down": 0, "open": 1, "up": 2, "crossed": 3}


def _case(face, arms, slump, tilt, warmth, brightness, clutter, companion, intensity=0.8, lean=0.0):
  posture = np.zeros((1, 7), np.float32)
  posture[0, ARMS[arms]] = 1
  posture[0, 4:] = slump, tilt, lean
  mood = np.array([[warmth, brightness, clutter, companion]], np.float32)
  return np.array([FACE[face]]), np.array([intensity], np.float32), posture, mood


# Hand-evaluated from the rule table of the module docstring (each rule checked by hand).
RULE_CASES = [
    # happy, open arms, upright, with a companion, warm, bright, medium clutter.
    (("happy", "open", 0.1, 0.0, 0.8, 0.9, 0.5, 1),
     {"Affection", "Confidence", "Engagement", "Esteem", "Excitement", "Happiness", "Pleasure"}),
    # sad, arms down, slumped, alone, cold, dark, calm: no Yearning (slumped), no Engagement.
    (("sad", "down", 0.9, 0.1, -0.8, 0.1, 0.1, 0), {"Fatigue", "Sadness", "Suffering"}),
    # fear, arms up, tilted, with a companion, busy, medium light.
    (("fear", "up", 0.1, 0.8, 0.0, 0.5, 0.9, 1),
     {"Disquietment", "Engagement", "Fear", "Sensitivity", "Surprise"}),
    # neutral, middle slump (neither upright nor slumped), alone, nothing else.
    (("neutral", "down", 0.45, 0.0, 0.0, 0.5, 0.5, 0), {"Anticipation"}),
    # neutral, slumped, no other rule: the fallback.
    (("neutral", "down", 0.9, 0.0, 0.0, 0.5, 0.5, 0), {"Disconnection"}),
    # contempt, arms crossed, tilted, busy, bright, alone.
    (("contempt", "crossed", 0.1, -0.7, -0.8, 0.9, 0.8, 0), {"Annoyance", "Disapproval", "Doubt/Confusion"}),
    # neutral, tilted, slumped, alone: Fatigue (tilted) and Disconnection (tilted, alone), no Anticipation.
    (("neutral", "down", 0.8, 0.9, 0.0, 0.5, 0.5, 0), {"Disconnection", "Doubt/Confusion", "Fatigue"}),
    # happy, arms crossed, tilted, companion: Embarrassment; happy + companion + crossed: no Affection.
    (("happy", "crossed", 0.45, 0.7, 0.0, 0.5, 0.5, 1), {"Embarrassment", "Engagement", "Happiness"}),
    # sad, arms crossed, slumped, with a companion, medium light: Pain, no Suffering (not dark / cold).
    (("sad", "crossed", 0.8, 0.0, 0.0, 0.5, 0.5, 1), {"Pain", "Sadness"}),
    # neutral, arms down, upright, calm, bright, alone, cold: Peace, Yearning, Confidence, Anticipation.
    (("neutral", "down", 0.1, 0.0, -0.8, 0.9, 0.1, 0), {"Anticipation", "Confidence", "Peace", "Yearning"}),
    # sad, arms open, companion, upright: Sympathy and Engagement.
    (("sad", "open", 0.1, 0.0, 0.0, 0.5, 0.5, 1), {"Engagement", "Sadness", "Sympathy"}),
    # angry slumped: Annoyance not Anger; disgust busy: Annoyance + Aversion; angry crossed: Disapproval.
    (("angry", "down", 0.8, 0.0, 0.0, 0.5, 0.5, 0), {"Annoyance"}),
    (("disgust", "down", 0.1, 0.0, 0.0, 0.5, 0.9, 0), {"Annoyance", "Aversion"}),
    (("angry", "crossed", 0.1, 0.0, 0.0, 0.5, 0.5, 0), {"Anger", "Disapproval", "Engagement"}),
]


def test_category_order_is_the_papers():
  assert ss.EMOTIC_CATEGORIES == PAPER_CATEGORIES
  assert ss.NUM_CATEGORIES == 26


@pytest.mark.parametrize("args,expected", RULE_CASES)
def test_rules_hand_computed(args, expected):
  label, _, posture, mood = _case(*args)
  cats = ss.scene_categories(label, posture, mood)
  assert cats.dtype == np.float32 and cats.shape == (1, 26)
  got = {PAPER_CATEGORIES[k] for k in np.nonzero(cats[0])[0]}
  assert got == expected
  # lean is a nuisance: no rule reads it.
  posture[0, 6] = 0.9
  np.testing.assert_array_equal(ss.scene_categories(label, posture, mood), cats)


def test_vad_hand_computed():
  # happy, I = 0.8, open arms, slump 0.1, tilt 0, warmth 0.8, brightness 0.9, clutter 0.5, companion:
  #   valence   = 0.8*0.8 + 0.2 - 0.02 + 0.08 + 0.08 + 0.1 = 1.08 -> clipped to 1
  #   arousal   = 0.45*0.8 + 0.1 - 0.03 + 0 + 0.04 = 0.47 -> 0.735
  #   dominance = 0.15*0.8 + 0.4*0.4 + 0.15 = 0.43 -> 0.715
  label, inten, posture, mood = _case("happy", "open", 0.1, 0.0, 0.8, 0.9, 0.5, 1, intensity=0.8)
  np.testing.assert_allclose(ss.scene_vad(label, inten, posture, mood)[0], [1.0, 0.735, 0.715], atol=1e-6)
  # sad, I = 0.6, arms down, slump 0.9, tilt 0.1, warmth -0.8, brightness 0.1, clutter 0.1, alone:
  #   valence   = -0.42 - 0.18 - 0.08 - 0.08 = -0.76 -> 0.12
  #   arousal   = -0.21 - 0.1 - 0.27 - 0.12 - 0.04 = -0.74 -> 0.13
  #   dominance = -0.21 - 0.16 - 0.01 = -0.38 -> 0.31
  label, inten, posture, mood = _case("sad", "down", 0.9, 0.1, -0.8, 0.1, 0.1, 0, intensity=0.6)
  np.testing.assert_allclose(ss.scene_vad(label, inten, posture, mood)[0], [0.12, 0.13, 0.31], atol=1e-6)
  # neutral (intensity 0), arms crossed, slump 0.5, tilt -1, all scene terms 0 (b = c = 0.5, w = 0):
  #   valence = -0.1 - 0.1 = -0.2 -> 0.4; arousal = -0.15 -> 0.425; dominance = 0.1 - 0.1 = 0 -> 0.5
  label, inten, posture, mood = _case("neutral", "crossed", 0.5, -1.0, 0.0, 0.5, 0.5, 0, intensity=0.0)
  np.testing.assert_allclose(ss.scene_vad(label, inten, posture, mood)[0], [0.4, 0.425, 0.5], atol=1e-6)


def test_bad_rule_inputs_raise():
  label, inten, posture, mood = _case("happy", "open", 0.1, 0.0, 0.8, 0.9, 0.5, 1)
  bad = np.concatenate([posture, posture])
  bad[1, :4] = [1, 1, 0, 0]
  with pytest.raises(ValueError, match=r"posture\[1, :4\] must be one-hot over \('down', 'open', 'up', "
                     r"'crossed'\), got \[1.0, 1.0, 0.0, 0.0\]"):
    ss.scene_categories(np.array([3, 3]), bad, np.concatenate([mood, mood]))
  with pytest.raises(ValueError, match=r"posture must have shape \(1, 7\)"):
    ss.scene_categories(label, posture[:, :6], mood)
  with pytest.raises(ValueError, match=r"scene_mood must have shape \(1, 4\)"):
    ss.scene_vad(label, inten, posture, mood[:, :3])
  with pytest.raises(ValueError, match=r"label must be .* in \[0, 8\), got shape \(1,\), values 9..9"):
    ss.scene_categories(np.array([9]), posture, mood)
  with pytest.raises(ValueError, match=r"intensity must have shape \(1,\), got \(2,\)"):
    ss.scene_vad(label, np.zeros(2), posture, mood)
  with pytest.raises(ValueError, match="count must be an integer >= 0, got -1"):
    ss.draw_scenes(0, "train", 0, -1)
  with pytest.raises(ValueError, match="split must be one of"):
    ss.sample_scenes(0, "dev", 0, 1)
  with pytest.raises(ValueError, match=r"size must be an integer >= 20 \(heads of at least 8 px\), got 19"):
    ss.sample_scenes(0, "train", 0, 1, context_size=19)
  p = ss.draw_scenes(0, "train", 0, 1, size=32)
  with pytest.raises(ValueError, match=r"noise must have shape \(1, 48, 48, 3\) \(draw_scenes with size=48\)"):
    ss.render_scenes(p, 48)


def test_records_follow_the_rules_and_schema():
  r = ss.sample_scenes(4, "train", 0, 24, context_size=48, body_size=24)
  assert r["context"].shape == (24, 48, 48, 3) and r["context"].dtype == np.uint8
  assert r["body"].shape == (24, 24, 24, 3) and r["body"].dtype == np.uint8
  np.testing.assert_array_equal(r["categories"], ss.scene_categories(r["label"], r["posture"], r["scene_mood"]))
  assert np.all(r["categories"].sum(1) >= 1)
  assert np.all((r["vad"] >= 0) & (r["vad"] <= 1))
  np.testing.assert_array_equal(r["gender"], -1)
  np.testing.assert_array_equal(r["age"], -1)
  np.testing.assert_array_equal(r["person"], 0)
  np.testing.assert_array_equal(r["id"], np.arange(24))
  assert r["image_id"][7] == "synthetic_scenes/train/000007"
  # Boxes: whole pixels inside the image, non-empty.
  px = r["bbox"] * 48
  np.testing.assert_allclose(px, np.rint(px), atol=1e-4)
  assert np.all((px >= 0) & (px <= 48)) and np.all(px[:, 2:] > px[:, :2])
  # Posture / mood values lie in the documented bands.
  arms = r["posture"][:, :4]
  assert np.all(arms.sum(1) == 1)
  assert np.all(np.abs(r["posture"][:, 4:]) <= 1) and np.all(r["posture"][:, 4] >= 0)
  assert set(np.unique(r["scene_mood"][:, 3])) <= {0.0, 1.0}


def test_draw_bands_and_priors():
  p = ss.draw_scenes(1, "train", 0, 2000, size=16)
  slump, tilt = p["posture"][:, 4], np.abs(p["posture"][:, 5])
  in_bands = lambda x, bands: np.any([(x >= lo) & (x <= hi) for lo, hi, _ in bands], 0)
  assert np.all(in_bands(slump, ss.LEVELS["slump"])) and np.all(in_bands(tilt, ss.LEVELS["head_tilt"]))
  for j, name in enumerate(("warmth", "brightness", "clutter")):
    assert np.all(in_bands(p["scene_mood"][:, j], ss.LEVELS[name])), name
  # Frequencies near the priors (2000 draws: binomial std <= 0.011).
  freq = np.bincount(p["label"], minlength=8) / 2000
  np.testing.assert_allclose(freq, [ss.EXPRESSION_PRIOR[c] for c in synthetic.CLASS_NAMES], atol=0.035)
  np.testing.assert_allclose(p["posture"][:, :4].mean(0), ss.ARMS_PRIOR, atol=0.035)
  assert abs(p["scene_mood"][:, 3].mean() - ss.COMPANION_PROB) < 0.035
  assert abs((slump > 0.6).mean() - 0.30) < 0.035
  # Neutral faces have intensity 0 (as in synthetic.sample_examples).
  assert np.all(p["intensity"][p["label"] == FACE["neutral"]] == 0)


def test_deterministic_and_independent_of_chunking():
  a = ss.sample_scenes(3, "validation", 5, 6, context_size=32, body_size=16)
  b = ss.sample_scenes(3, "validation", 0, 12, context_size=32, body_size=16, chunk=5)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k][5:11], err_msg=k)
  c = ss.sample_scenes(4, "validation", 5, 6, context_size=32, body_size=16)
  assert not np.array_equal(a["context"], c["context"])
  d = ss.sample_scenes(3, "test", 5, 6, context_size=32, body_size=16)
  assert not np.array_equal(a["context"], d["context"])


def _pil_bilinear_axis(n_in, n_out):
  """(n_out, n_in) weights of PIL's BILINEAR resampling along one axis (Resample.c precompute_coeffs:
  triangle filter, support scaled by max(1, n_in / n_out), pixel centres at (i + 0.5) * scale)."""
  scale = n_in / n_out
  fs = max(scale, 1.0)
  w = np.zeros((n_out, n_in))
  for i in range(n_out):
    centre = (i + 0.5) * scale
    lo, hi = max(int(centre - fs + 0.5), 0), min(int(centre + fs + 0.5), n_in)
    for j in range(lo, hi):
      w[i, j] = max(0.0, 1 - abs((j - centre + 0.5) / fs))
    w[i] /= w[i].sum()
  return w


def test_body_is_the_context_cut_at_bbox_and_resized():
  size, out = 64, 40
  r = ss.sample_scenes(2, "train", 0, 8, context_size=size, body_size=out)
  for i in range(8):
    x1, y1, x2, y2 = np.rint(r["bbox"][i] * size).astype(int)
    crop = r["context"][i, y1:y2, x1:x2].astype(np.float64)
    h_in, w_in = y2 - y1, x2 - x1
    wy, wx = _pil_bilinear_axis(h_in, out), _pil_bilinear_axis(w_in, out)
    # PIL: two passes, each rounded to uint8; the one giving the smaller intermediate image first.
    horizontal = lambda x: np.floor(np.einsum("oj,ijc->ioc", wx, x) + 0.5) if w_in != out else x
    vertical = lambda x: np.floor(np.einsum("oi,ijc->ojc", wy, x) + 0.5) if h_in != out else x
    ref = vertical(horizontal(crop)) if out * h_in <= w_in * out else horizontal(vertical(crop))
    diff = np.abs(r["body"][i].astype(np.float64) - ref)
    assert diff.max() <= 1, (i, diff.max())  # PIL's 22-bit fixed-point weights
    assert (diff == 0).mean() > 0.95, (i, (diff == 0).mean())


def _region(g, keys, size, margin):
  """Pixels within `margin` of the capsules (joint pairs) of person geometry g (one person)."""
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
  mask = np.zeros((size, size), bool)
  for a, b, r in keys:
    for side in (0, 1):
      p, q = g[a][0, side], g[b][0, side]
      d = q - p
      t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
      dist = np.hypot(xs - p[0] - t * d[0], ys - p[1] - t * d[1])
      mask |= dist < r * g["unit"][0] + margin
  return mask


def _one_scene(size=96):
  p = ss.draw_scenes(0, "train", 3, 1, size=size)
  p["scene_mood"][0] = [0.0, 0.9, 0.0, 0.0]  # no companion, bright, no clutter
  p["posture"][0] = [1, 0, 0, 0, 0.1, 0.0, 0.0]
  return p


def test_arms_change_the_image_only_where_the_arms_are():
  size = 96
  p = _one_scene(size)
  q = copy.deepcopy(p)
  q["posture"][0, :4] = [0, 0, 1, 0]  # arms up
  a, box_a = ss.render_scenes(p, size)
  b, box_b = ss.render_scenes(q, size)
  changed = np.any(a[0] != b[0], -1)
  arm_parts = [("shoulder", "elbow", 0.26), ("elbow", "hand", 0.26)]
  ga = ss.person_geometry(p["posture"], p["person_u"], size)
  gb = ss.person_geometry(q["posture"], q["person_u"], size)
  allowed = _region(ga, arm_parts, size, 1.5) | _region(gb, arm_parts, size, 1.5)
  assert changed.sum() > 100
  assert not np.any(changed & ~allowed)
  # Raised hands are above the shoulders (and the head top's row), and drawn there in the hand's colour.
  hand = gb["hand"][0]
  assert np.all(hand[:, 1] < gb["shoulder"][0, :, 1] - 2 * gb["unit"][0])
  skin = synthetic._colours(p["identity"], 3)["skin"][0] * (0.3 + 0.8 * 0.9)  # noqa: SLF001  (gain)
  for x, y in hand:
    assert 0 <= y < size and 0 <= x < size
    got = b[0, int(round(y)), int(round(x))] / 255
    np.testing.assert_allclose(got, skin, atol=0.03)  # pixel noise: std 0.012, at most 0.021
  # The person box widens to the raised hands and does not shrink upwards.
  assert box_b[0, 0] < box_a[0, 0] and box_b[0, 2] > box_a[0, 2] and box_b[0, 1] <= box_a[0, 1]
  for x, y in hand:
    assert box_b[0, 0] < x < box_b[0, 2] and box_b[0, 1] < y < box_b[0, 3]


def test_tilt_changes_only_the_head_and_slump_moves_the_shoulders():
  size = 96
  p = _one_scene(size)
  q = copy.deepcopy(p)
  q["posture"][0, 5] = 1.0  # head roll 18 degrees
  a, _ = ss.render_scenes(p, size)
  b, _ = ss.render_scenes(q, size)
  changed = np.any(a[0] != b[0], -1)
  g = ss.person_geometry(p["posture"], p["person_u"], size)
  f = ss.head_patch_size(size)
  r0, c0 = g["patch"][0]
  inside = np.zeros_like(changed)
  inside[max(r0, 0):r0 + f, max(c0, 0):c0 + f] = True
  assert changed.sum() > 50 and not np.any(changed & ~inside)
  # Slump: the collar rises and the hips rise by 0.9 U; the shoulders narrow.
  q = copy.deepcopy(p)
  q["posture"][0, 4] = 1.0
  gs = ss.person_geometry(q["posture"], q["person_u"], size)
  u = g["unit"][0]
  np.testing.assert_allclose(g["torso"][0, 0, 1] - gs["torso"][0, 0, 1], 0.4 * 0.9 * u, rtol=1e-6)
  np.testing.assert_allclose(g["torso"][0, 2, 1] - gs["torso"][0, 2, 1], 0.9 * 0.9 * u, rtol=1e-6)
  assert gs["torso"][0, 4, 0] - gs["torso"][0, 1, 0] < g["torso"][0, 4, 0] - g["torso"][0, 1, 0]
  c, _ = ss.render_scenes(q, size)
  # Below the slumped hips the legs show where the upright torso was.
  hip_y = int(np.ceil(gs["torso"][0, 2, 1])) + 2
  assert np.any(c[0, hip_y:int(g["torso"][0, 2, 1]) - 1] != a[0, hip_y:int(g["torso"][0, 2, 1]) - 1])


def test_scene_mood_changes_the_light_and_colour():
  size = 64
  p = _one_scene(size)
  lum = []
  for b in (0.1, 0.5, 0.9):
    q = copy.deepcopy(p)
    q["scene_mood"][0, 1] = b
    lum.append(ss.render_scenes(q, size)[0][0].astype(np.float64).mean())
  assert lum[0] < lum[1] < lum[2]
  red_minus_blue = []
  for w in (-0.9, 0.0, 0.9):
    q = copy.deepcopy(p)
    q["scene_mood"][0, 0] = w
    img, box = ss.render_scenes(q, size)
    outside = np.ones((size, size), bool)
    x1, y1, x2, y2 = box[0].astype(int)
    outside[y1:y2, x1:x2] = False
    img = img[0].astype(np.float64)
    red_minus_blue.append((img[..., 0] - img[..., 2])[outside].mean())  # wall and floor
  # Cold (0.30, 0.50, 0.80), neutral (0.62, 0.62, 0.60) +- 0.04 jitter, warm (0.92, 0.58, 0.30).
  assert red_minus_blue[0] < -40 < red_minus_blue[1] < 40 < red_minus_blue[2]
  # Clutter: more distinct colours on the wall.
  q = copy.deepcopy(p)
  q["scene_mood"][0, 2] = 1.0
  busy = ss.render_scenes(q, size)[0][0]
  calm = ss.render_scenes(p, size)[0][0]
  assert busy.astype(np.float64).std() > calm.astype(np.float64).std()
  # A companion adds a second person: pixels change only inside its box.
  q = copy.deepcopy(p)
  q["scene_mood"][0, 3] = 1.0
  changed = np.any(ss.render_scenes(q, size)[0][0] != ss.render_scenes(p, size)[0][0], -1)
  g = ss.person_geometry(p["posture"], p["person_u"], size)
  cg = ss.person_geometry(p["companion_posture"], p["companion_u"], size, companion_of=g)
  x1, y1, x2, y2 = cg["box"][0].astype(int)
  inside = np.zeros_like(changed)
  inside[y1:y2, x1:x2] = True
  assert changed.sum() > 100 and not np.any(changed & ~inside)


def test_head_compositing_matches_rendering_on_that_background():
  """K + (W - K) * bg equals render_faces on a plain background bg (up to uint8 rounding)."""
  n, f = 4, 40
  rng = np.random.default_rng(0)
  ident = synthetic.params_from_uniform(synthetic.IDENTITY_RANGES, rng.random((n, len(synthetic.IDENTITY_RANGES))))
  au = synthetic.expression_action_units(np.array([3, 4, 5, 6]), np.array([1.0, 0.8, 0.7, 0.0]))
  pose = {"angle": np.array([0, 10, -15, 5], np.float32), "scale": np.full(n, 0.7, np.float32),
          "shift_x": np.zeros(n, np.float32), "shift_y": np.full(n, 0.1, np.float32)}
  premult, transmit = ss._render_heads(au, ident, pose, f)  # noqa: SLF001
  bg = np.array([0.2, 0.6, 0.9], np.float32)
  scene = {k: np.zeros(n, np.float32) for k in synthetic.SCENE_RANGES}
  scene["bg_r"][:], scene["bg_g"][:], scene["bg_b"][:] = bg
  scene["contrast"][:] = 1
  direct, _ = synthetic.render_faces(au, ident, pose, f, 3, scene)
  composite = (premult + transmit * bg) * 255
  assert np.abs(composite - direct).max() <= 2.0
  assert transmit.min() == 0 and transmit.max() == 1  # opaque face and clear background both occur


def test_person_box_holds_every_pixel_of_the_person():
  """Other clothes and another face (same posture) change pixels only inside the person box."""
  size = 64
  p = ss.draw_scenes(5, "train", 0, 6, size=size)
  p["scene_mood"][:, 3] = 0  # no companion
  p["posture"][:, 5] = np.linspace(-1, 1, 6)  # all head tilts
  q = copy.deepcopy(p)
  q["person_u"][:, 7:13] = 1 - q["person_u"][:, 7:13]  # shirt and trousers colours
  for k in q["identity"]:
    q["identity"][k] = q["identity"][k][::-1].copy()
  q["action_units"] = q["action_units"][::-1].copy()
  # The largest heads of IDENTITY_RANGES (tall face, high eyes, wide, with hair) against bald ones.
  for k, value in (("face_top", 0.95), ("eye_v", -0.24), ("face_w", 0.74), ("hair_on", 0.0)):
    q["identity"][k][:] = value
  p["identity"]["hair_on"][:] = 1.0
  a, box = ss.render_scenes(p, size)
  b, box_b = ss.render_scenes(q, size)
  np.testing.assert_array_equal(box, box_b)
  for i in range(6):
    changed = np.any(a[i] != b[i], -1)
    x1, y1, x2, y2 = box[i].astype(int)
    inside = np.zeros_like(changed)
    inside[y1:y2, x1:x2] = True
    assert changed.sum() > 50 and not np.any(changed & ~inside), i


def test_windowed_painting_equals_whole_image():
  rng = np.random.default_rng(1)
  n, size = 5, 40
  canvas = rng.random((n, size, size, 3)).astype(np.float32)
  a = rng.uniform(-10, 50, (n, 2))
  b = rng.uniform(-10, 50, (n, 2))
  r = rng.uniform(1, 8, n)
  colour, outline = rng.random((n, 3)).astype(np.float32), rng.random((n, 3)).astype(np.float32)
  windowed = canvas.copy()
  ss._paint_capsule(windowed, a, b, r, colour, outline)  # noqa: SLF001
  # Reference on the whole image, written out in float64.
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
  ref = canvas.astype(np.float64)
  for i in range(n):
    d = b[i] - a[i]
    t = np.clip(((xs - a[i, 0]) * d[0] + (ys - a[i, 1]) * d[1]) / (d @ d + 1e-6), 0, 1)
    dist = np.hypot(xs - a[i, 0] - t * d[0], ys - a[i, 1] - t * d[1]) - r[i]
    for alpha, col in ((np.clip(0.5 - dist, 0, 1), outline[i]), (np.clip(0.5 - dist - 0.9, 0, 1), colour[i])):
      ref[i] += alpha[..., None] * (col - ref[i])
  np.testing.assert_allclose(windowed, ref, atol=2e-5)
