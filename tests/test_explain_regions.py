"""Landmark / AU-region aggregation, pruning, heat-map normalisation, overlay and PNG writing."""

import numpy as np
import pytest
from PIL import Image

from fer_jax.data import synthetic
from fer_jax.explain.heatmap import (attribution_heatmap, draw_landmarks, overlay_heatmap,
                                     write_heatmap_png)
from fer_jax.explain.regions import (AU_REGIONS, COARSE_GROUPS, LANDMARK_GROUPS,
                                     aggregate_by_groups, aggregate_by_masks,
                                     aggregate_landmark_attributions, landmark_region_masks,
                                     prune_landmarks, pruning_schedule, rank_landmarks,
                                     resolve_groups, select_landmarks)

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------
# Groups.
# ------------------------------------------------------------------------------------------------


def test_landmark_groups_partition_ibug68():
  idx = sorted(i for g in LANDMARK_GROUPS.values() for i in g)
  assert idx == list(range(68))
  assert {k: (v[0], v[-1]) for k, v in LANDMARK_GROUPS.items()} == {
      "jaw": (0, 16), "right_brow": (17, 21), "left_brow": (22, 26), "nose_bridge": (27, 30),
      "nostrils": (31, 35), "right_eye": (36, 41), "left_eye": (42, 47), "outer_lips": (48, 59),
      "inner_lips": (60, 67)}
  fine = LANDMARK_GROUPS
  assert set(COARSE_GROUPS["brows"]) == set(fine["right_brow"] + fine["left_brow"])
  assert set(COARSE_GROUPS["mouth"]) == set(fine["outer_lips"] + fine["inner_lips"])
  assert sorted(i for g in COARSE_GROUPS.values() for i in g) == list(range(68))


def test_synthetic_right_side_is_image_left():
  """The 'right_*' groups lie on the image left in the generator (subject's right)."""
  idn = {k: np.full(2, (lo + hi) / 2, np.float32)
         for k, (lo, hi) in synthetic.IDENTITY_RANGES.items()}
  lm = synthetic.canonical_landmarks(np.zeros((2, synthetic.NUM_AUS), np.float32), idn)[0]
  for side in ("brow", "eye"):
    assert lm[list(LANDMARK_GROUPS[f"right_{side}"]), 0].max() < 0
    assert lm[list(LANDMARK_GROUPS[f"left_{side}"]), 0].min() > 0
  assert lm[36, 0] < lm[39, 0] < 0 < lm[42, 0] < lm[45, 0]  # outer, inner, inner, outer corners
  assert lm[48, 0] < lm[51, 0] < lm[54, 0]


def test_au_regions_hold_the_landmarks_each_au_moves_most():
  """Independent check with the FACS-driven generator: switching one AU on (0 -> 1) moves its
  region's landmarks most, for 16 random identities."""
  assert tuple(AU_REGIONS) == synthetic.AU_NAMES
  n = 16
  rng = np.random.default_rng(1)
  idn = {k: rng.uniform(lo, hi, n).astype(np.float32)
         for k, (lo, hi) in synthetic.IDENTITY_RANGES.items()}
  zero = np.zeros((n, synthetic.NUM_AUS), np.float32)
  base = synthetic.canonical_landmarks(zero, idn)
  for i, name in enumerate(synthetic.AU_NAMES):
    au = zero.copy()
    au[:, i] = 1.0
    move = np.linalg.norm(synthetic.canonical_landmarks(au, idn) - base, axis=-1)  # (n, 68)
    top = move.argmax(axis=1)
    assert set(top.tolist()) <= set(AU_REGIONS[name]), (name, top)


def test_resolve_groups_and_unknown_names():
  assert resolve_groups(None) == LANDMARK_GROUPS
  assert resolve_groups("au") == AU_REGIONS
  assert resolve_groups(["jaw", "AU12", "mouth"]) == {
      "jaw": tuple(range(17)), "AU12": (48, 54, 60, 64), "mouth": tuple(range(48, 68))}
  assert resolve_groups({"a": [3, 1]}) == {"a": (3, 1)}
  with pytest.raises(ValueError, match=r"unknown group names \['forehead'\].*right_brow"):
    resolve_groups(["jaw", "forehead"])
  with pytest.raises(ValueError, match="unknown group set 'faces'"):
    resolve_groups("faces")
  with pytest.raises(ValueError, match=r"indices in \[0, 68\)"):
    resolve_groups({"a": [70]})


# ------------------------------------------------------------------------------------------------
# Landmark-coordinate attributions.
# ------------------------------------------------------------------------------------------------


def test_aggregate_landmark_attributions_hand_values():
  # (T=2, L=3, 2) attributions of one sequence.
  a = np.array([[[1, -2], [0, 3], [-1, -1]],
                [[2, 0], [-4, 1], [0, 0.5]]], np.float64)
  np.testing.assert_allclose(
      aggregate_landmark_attributions(a, over_axes=0, num_landmarks=3), [5, 8, 2.5])
  np.testing.assert_allclose(
      aggregate_landmark_attributions(a, reduce="sum", over_axes=0, num_landmarks=3),
      [1, 0, -1.5])
  np.testing.assert_allclose(
      aggregate_landmark_attributions(a, reduce="l2", over_axes=0, num_landmarks=3),
      [3, np.sqrt(26), 1.5])
  np.testing.assert_allclose(
      aggregate_landmark_attributions(a, reduce="max_abs", over_axes=-4 + 1, num_landmarks=3),
      [2, 4, 1])
  np.testing.assert_allclose(
      aggregate_landmark_attributions(a, reduce="mean_abs", over_axes=0, num_landmarks=3),
      [1.25, 2, 0.625])
  # Per frame: no over_axes.
  np.testing.assert_allclose(aggregate_landmark_attributions(a, num_landmarks=3),
                             [[3, 3, 2], [2, 5, 0.5]])


def test_aggregate_landmark_layouts_agree():
  a = RNG.normal(size=(4, 5, 68, 2))  # (B, T, L, 2)
  ref = np.abs(a).sum(axis=(1, 3))
  np.testing.assert_allclose(aggregate_landmark_attributions(a, over_axes=1), ref)
  inter = a.reshape(4, 5, 136)  # x0, y0, x1, y1, ...
  np.testing.assert_allclose(
      aggregate_landmark_attributions(inter, over_axes=1, layout="interleaved"), ref)
  planar = np.concatenate([a[..., 0], a[..., 1]], axis=-1)  # x0..x67, y0..y67
  np.testing.assert_allclose(
      aggregate_landmark_attributions(planar, over_axes=-2, layout="planar"), ref)
  np.testing.assert_allclose(aggregate_landmark_attributions(a, over_axes=(0, 1)), ref.sum(0))
  with pytest.raises(ValueError, match="over_axes"):
    aggregate_landmark_attributions(a, over_axes=2)
  with pytest.raises(ValueError, match="expected 68 landmarks, got 5"):
    aggregate_landmark_attributions(a[:, :, :5])
  with pytest.raises(ValueError, match="reduce must be one of"):
    aggregate_landmark_attributions(a, reduce="median")


def test_aggregate_by_groups_values():
  s = np.arange(68, dtype=np.float64)
  out = aggregate_by_groups(s)
  assert list(out) == list(LANDMARK_GROUPS)
  assert out["jaw"] == sum(range(17)) and out["inner_lips"] == sum(range(60, 68))
  assert sum(out.values()) == s.sum()
  mean = aggregate_by_groups(np.stack([s, -s]), ["AU12", "nose_bridge"], reduce="mean")
  np.testing.assert_allclose(mean["AU12"], [56.5, -56.5])
  np.testing.assert_allclose(mean["nose_bridge"], [28.5, -28.5])
  assert aggregate_by_groups(s, "coarse", reduce="max")["eyes"] == 47
  with pytest.raises(ValueError, match="valid names"):
    aggregate_by_groups(s, ["cheeks"])


# ------------------------------------------------------------------------------------------------
# Image masks.
# ------------------------------------------------------------------------------------------------


def test_disk_and_hull_masks_hand_values():
  lm = np.zeros((68, 2))
  lm[:] = [-10, -10]  # off image
  lm[17] = [2, 3]  # right brow: one point at column 2, row 3
  lm[36:42] = [[1, 1], [4, 1], [4, 3], [1, 3], [2, 2], [3, 2]]  # right eye: 4 x 3 pixel box
  masks = landmark_region_masks(lm, (6, 7), radius=1.0, groups=["right_brow", "right_eye"])
  expected = np.zeros((6, 7), bool)
  expected[3, 1:4] = True
  expected[2:5, 2] = True
  np.testing.assert_array_equal(masks["right_brow"], expected)
  hull = landmark_region_masks(lm, (6, 7), radius=0.0, groups=["right_eye"], mode="hull")
  expected = np.zeros((6, 7), bool)
  expected[1:4, 1:5] = True
  np.testing.assert_array_equal(hull["right_eye"], expected)
  # Batched landmarks give batched masks; every group of the default set is present.
  batch = landmark_region_masks(np.stack([lm, lm + [1, 0]]), (6, 7), radius=1.0)
  assert list(batch) == list(LANDMARK_GROUPS)
  np.testing.assert_array_equal(batch["right_brow"][1], np.roll(masks["right_brow"], 1, axis=1))
  assert not batch["jaw"].any()


def test_aggregate_by_masks_values():
  attr = RNG.normal(size=(2, 5, 6, 3))
  m1 = np.zeros((5, 6), bool)
  m1[1:3, 2:5] = True
  empty = np.zeros((5, 6), bool)
  out = aggregate_by_masks(attr, {"m1": m1, "empty": empty})
  np.testing.assert_allclose(out["m1"], np.abs(attr[:, 1:3, 2:5]).sum(axis=(1, 2, 3)))
  np.testing.assert_allclose(out["empty"], [0, 0])
  mean = aggregate_by_masks(attr, {"m1": m1, "empty": empty}, reduce="mean")
  np.testing.assert_allclose(mean["m1"], attr[:, 1:3, 2:5].sum(axis=(1, 2, 3)) / 6)
  np.testing.assert_allclose(mean["empty"], [0, 0])
  grey = aggregate_by_masks(attr[..., 0], np.stack([m1, ~m1]), reduce="sum", channel_axis=None)
  np.testing.assert_allclose(grey["0"] + grey["1"], attr[..., 0].sum(axis=(1, 2)))
  with pytest.raises(ValueError, match=r"\(H, W\) = \(5, 6\)"):
    aggregate_by_masks(attr, {"bad": np.ones((4, 6), bool)})


def test_landmark_masks_on_synthetic_faces_and_image_attribution():
  """Attributions placed on the mouth of a rendered synthetic face land in the mouth masks."""
  data = synthetic.sample_examples(0, "train", 0, 2, size=48, channels=1)
  lm = data["landmarks"]
  masks = landmark_region_masks(lm, (48, 48), radius=2.0, groups="coarse")
  attr = np.zeros((2, 48, 48, 1))
  r, c = np.round(lm[:, 51, 1]).astype(int), np.round(lm[:, 51, 0]).astype(int)
  attr[np.arange(2), r, c, 0] = 1.0
  scores = aggregate_by_masks(attr, masks)
  np.testing.assert_allclose(scores["mouth"], [1, 1])
  np.testing.assert_allclose(scores["eyes"], [0, 0])


# ------------------------------------------------------------------------------------------------
# Ranking and pruning.
# ------------------------------------------------------------------------------------------------


def test_rank_and_prune():
  s = np.array([0.1, 0.5, 0.5, 0.0, 0.9])
  np.testing.assert_array_equal(rank_landmarks(s), [4, 1, 2, 0, 3])  # ties keep index order
  np.testing.assert_array_equal(prune_landmarks(s, 2), [1, 4])
  np.testing.assert_array_equal(prune_landmarks(s, 0.5), [1, 2, 4])  # ceil(2.5) = 3
  np.testing.assert_array_equal(prune_landmarks(s, 1.0), [0, 1, 2, 3, 4])
  sched = pruning_schedule(s, [4, 3, 1])
  assert [k.tolist() for k in sched] == [[0, 1, 2, 4], [1, 2, 4], [4]]
  x = np.arange(2 * 5 * 2).reshape(2, 5, 2)
  np.testing.assert_array_equal(select_landmarks(x, np.array([1, 4])), x[:, [1, 4]])
  for bad in (0, 6, 0.0, 1.5, True):
    with pytest.raises(ValueError, match="keep"):
      prune_landmarks(s, bad)
  with pytest.raises(ValueError, match="1-D"):
    rank_landmarks(np.ones((2, 5)))
  with pytest.raises(ValueError, match=r"\[0, 5\)"):
    select_landmarks(x, np.array([5]))


# ------------------------------------------------------------------------------------------------
# Heat maps.
# ------------------------------------------------------------------------------------------------


def test_attribution_heatmap_hand_values():
  a = np.array([[1.0, -2.0], [3.0, 4.0]])
  # |a| sorted 1, 2, 3, 4; cumsum 1, 3, 6, 10: 98% of 10 is first reached at 4, 50% at 3.
  np.testing.assert_allclose(attribution_heatmap(a, channel_axis=None), [[.25, .5], [.75, 1]])
  np.testing.assert_allclose(attribution_heatmap(a, outlier_perc=50, channel_axis=None),
                             [[1 / 3, 2 / 3], [1, 1]])
  np.testing.assert_allclose(attribution_heatmap(a, sign="all", channel_axis=None),
                             [[.25, -.5], [.75, 1]])
  np.testing.assert_allclose(attribution_heatmap(a, sign="positive", channel_axis=None),
                             [[.25, 0], [.75, 1]])
  # 'negative' shows the magnitude of the negative part (captum divides by -threshold).
  np.testing.assert_allclose(attribution_heatmap(a, sign="negative", channel_axis=None),
                             [[0, 1], [0, 0]])
  # Channels are summed (signed) before the sign transform, as captum does.
  rgb = np.stack([a, -2 * a, np.zeros_like(a)], axis=-1)  # sum = -a
  np.testing.assert_allclose(attribution_heatmap(rgb), [[.25, .5], [.75, 1]])
  np.testing.assert_array_equal(attribution_heatmap(np.zeros((3, 3, 1))), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="sign must be one of"):
    attribution_heatmap(a, sign="abs", channel_axis=None)


@pytest.mark.parametrize("sign", ["absolute_value", "positive", "negative", "all"])
def test_attribution_heatmap_matches_captum(sign):
  vis = pytest.importorskip("captum.attr._utils.visualization")
  a = RNG.normal(size=(9, 7, 3))
  ref = vis._normalize_attr(a.sum(axis=2), sign, 2)  # pylint: disable=protected-access
  np.testing.assert_allclose(attribution_heatmap(a, sign=sign), ref, rtol=1e-12)


def test_overlay_is_the_alpha_blend():
  image = np.full((2, 3), 100, np.uint8)
  heat = np.array([[0.0, 0.25, 1.0], [0.5, 2.0, -1.0]])
  out = overlay_heatmap(image, heat, alpha=0.4, cmap="gray")
  # 'gray' has 256 entries lut[i] = i / 255 picked at floor(256 v) (255 at v = 1); so the blend is
  # round(0.6 * 100 + 0.4 * i) with i = 0, 64, 255, 128, 255 (clipped), 0 (clipped).
  expected = np.round(0.6 * 100 + 0.4 * np.array([[0, 64, 255], [128, 255, 0]]))
  assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
  np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, -1).astype(np.uint8))
  # Colour image, 'jet', signed range: one pixel against matplotlib's colour directly.
  import matplotlib  # pylint: disable=import-outside-toplevel
  img = RNG.uniform(size=(2, 3, 3))
  out = overlay_heatmap(img, heat, alpha=0.7, cmap="jet", vmin=-1.0, vmax=1.0)
  colour = np.array(matplotlib.colormaps["jet"](0.625)[:3])  # heat 0.25 in [-1, 1]
  np.testing.assert_array_equal(out[0, 1], np.round(255 * (0.3 * img[0, 1] + 0.7 * colour)))
  with pytest.raises(ValueError, match=r"\(H, W\) = \(2, 3\)"):
    overlay_heatmap(image, heat.T)


def test_draw_landmarks_pixels():
  rgb = np.zeros((5, 6, 3), np.uint8)
  out = draw_landmarks(rgb, [[2, 3], [5, 0]], color=[[255, 0, 0], [0, 0, 9]], radius=1.0)
  red = np.zeros((5, 6), bool)
  red[3, 1:4] = True
  red[2:5, 2] = True
  blue = np.zeros((5, 6), bool)
  blue[0, 4:6] = True
  blue[1, 5] = True
  np.testing.assert_array_equal(out[..., 0] == 255, red)
  np.testing.assert_array_equal(out[..., 2] == 9, blue)
  assert not rgb.any()  # input untouched


def test_write_heatmap_png_round_trip(tmp_path):
  image = RNG.integers(0, 256, size=(6, 5), dtype=np.uint8)
  attr = RNG.normal(size=(6, 5, 1))
  path = tmp_path / "sub" / "dir" / "heat.png"
  rgb = write_heatmap_png(path, image, attr, alpha=0.5, scale=3, landmarks=[[1, 2]],
                          landmark_color=(1, 2, 3), landmark_radius=0.0)
  assert rgb.shape == (18, 15, 3)
  back = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(back, rgb)
  base = overlay_heatmap(image, attribution_heatmap(attr), alpha=0.5)
  big = np.repeat(np.repeat(base, 3, 0), 3, 1)
  # The landmark (x=1, y=2) maps to pixel centre (4, 7) of the 3x image; radius 0 paints it only.
  np.testing.assert_array_equal(rgb[7, 4], [1, 2, 3])
  changed = np.argwhere((rgb != big).any(-1))
  assert changed.tolist() in ([[7, 4]], [])
  # Overwriting the same path is allowed.
  write_heatmap_png(path, image, np.zeros_like(attr))
  assert np.asarray(Image.open(path)).shape == (6, 5, 3)


def test_end_to_end_landmark_ig_with_neutral_baseline():
  """IG of a linear sequence model over (B, T, 68, 2) landmarks against a neutral face: closed form
  (x - neutral) * w, so per-landmark |IG| over x, y and frames ranks the weighted mouth first."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from fer_jax.explain import integrated_gradients  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  w = np.zeros((68, 2), np.float32)
  w[48:68] = rng.uniform(0.5, 1.0, size=(20, 2)) * rng.choice([-1, 1], size=(20, 2))
  w[:48] = 0.01
  seqs = rng.normal(size=(3, 4, 68, 2)).astype(np.float32)
  neutral = rng.normal(size=(68, 2)).astype(np.float32)  # one neutral face for all frames
  fn = lambda x: jnp.einsum("btld,ld->b", x, w)[:, None] * jnp.array([1.0, -1.0])
  attr = integrated_gradients(fn, seqs, target=np.array([0, 1, 0]), baselines=neutral, n_steps=4)
  sign = np.array([1.0, -1.0, 1.0])[:, None, None, None]
  np.testing.assert_allclose(attr, sign * (seqs - neutral) * w, rtol=1e-5, atol=1e-6)
  scores = aggregate_landmark_attributions(attr, over_axes=(0, 1))
  np.testing.assert_allclose(scores, np.abs((seqs - neutral) * w).sum(axis=(0, 1, 3)), rtol=1e-5)
  np.testing.assert_array_equal(prune_landmarks(scores, 20), np.arange(48, 68))
  groups = aggregate_by_groups(scores, "coarse")
  assert max(groups, key=groups.get) == "mouth"
