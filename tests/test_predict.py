"""fer_jax.predict end to end with the shipped model and a fake detector (exact, fast): the table's
probabilities against predict_proba, the aligned crops against a NumPy / SciPy reference, --no-detect on
real FER2013 faces, a mixed folder of good and bad inputs with a video, rows kept after a failure, the CLI,
annotation, and valence / arousal of an affect model."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_jax import pretrained
from fer_jax.data import align as align_lib
from fer_jax.predict import cli, faces, predict, sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AFEW = DATA / "afew_va" / "001"
FER_CSV = DATA / "fer2013" / "fer2013.csv.gz"
ALIGN = "fer2013" if "fer2013" in align_lib.TEMPLATES else "arcface"
TEMPLATE = {"fer2013": "fer2013", "arcface": "5"}[ALIGN]
PROB_COLUMNS = ["p_angry", "p_disgust", "p_fear", "p_happy", "p_sad", "p_surprise", "p_neutral"]


def _need(path):
  if not path.exists():
    pytest.skip(f"real data not found at {path} (see the project README for where it goes)")


@pytest.fixture(scope="module")
def predictor():
  return pretrained.load("fer2013_resnet_s")


@pytest.fixture(scope="module")
def fer_faces():
  _need(FER_CSV)
  with gzip.open(FER_CSV, "rt") as f:
    df = pd.read_csv(f, nrows=8)
  return np.stack([np.array(p.split(), np.uint8).reshape(48, 48) for p in df["pixels"]])


def _afew(indices):
  """Real frames (some consecutive ones are duplicates in this film: pick distinct ones) and landmarks."""
  _need(AFEW)
  with open(AFEW / "001.json") as f:
    ann = json.load(f)
  frames = [np.asarray(Image.open(AFEW / f"{i:05d}.png").convert("RGB")) for i in indices]
  lms = [np.asarray(ann["frames"][f"{i:05d}"]["landmarks"], np.float32) for i in indices]
  return frames, lms


def _five(lm68):
  return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]]).astype(np.float32)


class FakeDetector:
  """Returns preset detections for images equal to given ones (none for others); counts calls; raises on
  call number ``fail_on`` (1-based) when set."""

  def __init__(self, table, fail_on=None):
    self.table, self.fail_on, self.calls = table, fail_on, 0

  def detect_batch(self, images):
    self.calls += 1
    if self.fail_on is not None and self.calls >= self.fail_on:
      raise RuntimeError("fake detector failure")
    out = []
    for im in images:
      hit = [d for key, d in self.table if key.shape == im.shape and np.array_equal(key, im)]
      out.append(hit[0] if hit else SimpleNamespace(boxes=np.zeros((0, 4), np.float32),
                                                    scores=np.zeros((0,), np.float32),
                                                    landmarks=np.zeros((0, 5, 2), np.float32)))
    return out


def _dets(boxes, landmarks, scores=None):
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scores = np.linspace(0.99, 0.9, len(boxes)).astype(np.float32) if scores is None else scores
  return SimpleNamespace(boxes=boxes, scores=scores, landmarks=np.asarray(landmarks, np.float32).reshape(-1, 5, 2))


def _afew_detector(frames, lms):
  return FakeDetector([(f, _dets([[*lm.min(0), *lm.max(0)]], _five(lm)[None])) for f, lm in zip(frames, lms)])


def _reference_crop(image, five, template, size):
  """NumPy / SciPy: least-squares similarity as a complex ratio (dst ~ a src + t), then the inverse map of
  n x n subpixel samples per crop pixel, bilinear with zeros outside (map_coordinates), averaged."""
  from scipy import ndimage
  dst = align_lib.template_points(template, size)
  s, d = five[:, 0] + 1j * five[:, 1], dst[:, 0] + 1j * dst[:, 1]
  sc, dc = s - s.mean(), d - d.mean()
  a = (np.conj(sc) * dc).sum() / (np.abs(sc) ** 2).sum()
  t = d.mean() - a * s.mean()
  ratio = abs(((s[3] + s[4]) - (s[0] + s[1])) / ((d[3] + d[4]) - (d[0] + d[1])))
  n = int(min(8, 2 ** np.ceil(np.log2(ratio)))) if ratio > 1 else 1  # the documented supersampling
  off = (np.arange(n) + 0.5) / n - 0.5
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  acc = np.zeros((size, size, 3))
  for oy in off:
    for ox in off:
      q = ((xx + ox) + 1j * (yy + oy) - t) / a  # crop point -> frame point
      for c in range(3):
        acc[..., c] += ndimage.map_coordinates(image[..., c].astype(np.float64), [q.imag, q.real], order=1,
                                               mode="grid-constant", cval=0.0)
  crop = np.clip(np.round(acc / n ** 2), 0, 255).astype(np.uint8)
  lm = a * s + t
  return crop, np.stack([lm.real, lm.imag], -1)


def test_table_equals_predict_proba_of_the_aligned_crops(predictor, tmp_path):
  frames, lms = _afew([0, 10, 20])
  det = _afew_detector(frames, lms)
  for i, f in enumerate(frames):
    Image.fromarray(f).save(tmp_path / f"{i}.png")
  df = predict([str(tmp_path)], predictor=predictor, detector=det, align=ALIGN, test_crops="center",
               batch_size=2, progress=False)
  assert list(df["status"]) == ["ok"] * 3 and list(df["face"]) == [0, 0, 0]
  assert len(set(df["track"])) == 3  # images: their own ids
  crops = []
  for i, (f, lm) in enumerate(zip(frames, lms)):
    row = df.iloc[i]
    assert row["source"] == str(tmp_path / f"{i}.png") and pd.isna(row["frame"]) and np.isnan(row["time_s"])
    np.testing.assert_array_equal(row[["x0", "y0", "x1", "y1"]].to_numpy(float), [*lm.min(0), *lm.max(0)])
    np.testing.assert_array_equal(row[["le_x", "le_y", "re_x", "re_y", "nose_x", "nose_y", "lm_x", "lm_y",
                                       "rm_x", "rm_y"]].to_numpy(float), _five(lm).reshape(-1))
    ref_crop, ref_lm = _reference_crop(f, _five(lm).astype(np.float64), TEMPLATE, 48)
    (_, [crop]), = faces.faces_in_frames([sources.Frame("x", None, None, f)], detector=det, align=ALIGN)
    diff = np.abs(crop.crop.astype(int) - ref_crop.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.02  # float32 vs float64 rounding only
    np.testing.assert_allclose(crop.crop_landmarks, ref_lm, atol=1e-3)
    crops.append(crop.crop)
  expected = predictor.predict_proba(np.stack(crops), test_crops="center")
  np.testing.assert_allclose(df[PROB_COLUMNS].to_numpy(), expected, atol=1e-6)
  assert list(df["label"]) == [predictor.class_names[k] for k in expected.argmax(1)]


def test_arcface_alignment_crop():
  frames, lms = _afew([30])
  det = _afew_detector(frames, lms)
  (_, [crop]), = faces.faces_in_frames([sources.Frame("x", None, None, frames[0])], detector=det, align="arcface")
  ref_crop, ref_lm = _reference_crop(frames[0], _five(lms[0]).astype(np.float64), "5", 48)
  assert np.abs(crop.crop.astype(int) - ref_crop.astype(int)).max() <= 1
  np.testing.assert_allclose(crop.crop_landmarks, ref_lm, atol=1e-3)


def test_box_alignment_crop_and_landmarks():
  frames, lms = _afew([0])
  box = np.array([250.5, 200.0, 450.0, 420.0], np.float32)
  lm5 = _five(lms[0])
  det = FakeDetector([(frames[0], _dets([box], lm5[None]))])
  (_, [crop]), = faces.faces_in_frames([sources.Frame("x", None, None, frames[0])], detector=det, align="box")
  # Square of side round(219.5) = 220 centred on (350.25, 310): left = round(240.25) = 240, top = 200.
  square = frames[0][200:420, 240:460]
  ref = np.asarray(Image.fromarray(square).resize((48, 48), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(crop.crop, ref)
  np.testing.assert_allclose(crop.crop_landmarks, (lm5 - [240, 200] + 0.5) * 48 / 220 - 0.5, atol=1e-4)


def test_no_detect_on_fer2013_pngs_reproduces_predict_proba(predictor, fer_faces, tmp_path):
  for i, f in enumerate(fer_faces):
    Image.fromarray(f).save(tmp_path / f"face{i}.png")
  df = predict([str(tmp_path)], predictor=predictor, detect=False, align=ALIGN, progress=False)
  expected = predictor.predict_proba(fer_faces)  # the model's own test crops ('ten')
  np.testing.assert_array_equal(df[PROB_COLUMNS].to_numpy(np.float32), expected)
  assert list(df["source"]) == [str(tmp_path / f"face{i}.png") for i in range(8)]
  assert np.isnan(df["det_score"]).all() and (df[["x0", "y0", "x1", "y1"]].to_numpy() == [0, 0, 48, 48]).all()
  np.testing.assert_allclose(df[["le_x", "le_y"]].to_numpy()[0], align_lib.template_points(
      "5" if ALIGN == "arcface" else ALIGN, 48)[0], atol=1e-4)  # the template's points: crop = frame


def _write_video(path, frames, rate=25):
  import av
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=rate)
    stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
    stream.pix_fmt = "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


class ShapeDetector(FakeDetector):
  """One face, box = the central half of the frame, for frames of the listed shapes; none for others."""

  def __init__(self, shapes, fail_on=None):
    super().__init__([], fail_on)
    self.shapes = shapes

  def detect_batch(self, images):
    super().detect_batch(images[:0])
    h, w = images.shape[1:3]
    if (h, w) not in self.shapes:
      return [_dets(np.zeros((0, 4)), np.zeros((0, 5, 2)))] * len(images)
    pts = align_lib.template_points("5", (h, w)) * 0.5 + [w / 4, h / 4]
    return [_dets([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], pts[None])] * len(images)


def _mixed_folder(tmp_path, fer_faces):
  d = tmp_path / "in"
  (d / "sub").mkdir(parents=True)
  Image.fromarray(fer_faces[0]).save(d / "a_good.png")
  Image.fromarray(fer_faces[1]).save(d / "full.png")
  data = (d / "full.png").read_bytes()
  (d / "full.png").unlink()
  (d / "b_truncated.png").write_bytes(data[:len(data) // 2])
  (d / "c_text.jpg").write_text("not an image")
  (d / "notes.txt").write_text("skipped: not an image extension")
  Image.fromarray((fer_faces[2].astype(np.uint16) * 257)).save(d / "d_16bit.png")
  rgba = np.dstack([np.repeat(fer_faces[3][..., None], 3, -1), np.full((48, 48), 255, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(d / "e_rgba.png")
  Image.fromarray(fer_faces[4]).convert("CMYK").save(d / "f_cmyk.jpg", quality=100)
  Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(d / "g_noface.png")
  video = [np.repeat(np.repeat(f, 2, 0), 2, 1)[..., None].repeat(3, -1) for f in fer_faces[:5]]  # 96 x 96
  _write_video(d / "sub" / "h_video.mp4", video)
  (d / "sub" / "i_corrupt.mp4").write_bytes((d / "sub" / "h_video.mp4").read_bytes()[:300])
  return d


def test_mixed_folder_video_and_bad_files(predictor, fer_faces, tmp_path):
  d = _mixed_folder(tmp_path, fer_faces)
  out = tmp_path / "t.csv"
  det = ShapeDetector({(48, 48), (96, 96)})
  df = predict([str(d)], predictor=predictor, detector=det, align=ALIGN, every=2, test_crops="center",
               output=str(out), progress=False)
  name = [pathlib.Path(s).name for s in df["source"]]
  assert name == ["a_good.png", "b_truncated.png", "c_text.jpg", "d_16bit.png", "e_rgba.png", "f_cmyk.jpg",
                  "g_noface.png", "h_video.mp4", "h_video.mp4", "h_video.mp4", "i_corrupt.mp4"]
  assert list(df["status"]) == ["ok", "error", "error", "ok", "ok", "ok", "no_face", "ok", "ok", "ok", "error"]
  assert "b_truncated.png: unreadable or truncated" in df["error"][1]
  assert "c_text.jpg: not an image" in df["error"][2]
  assert "i_corrupt.mp4" in df["error"][10]
  assert (df["error"][df["status"] != "error"] == "").all()
  assert (df.loc[df["status"] != "ok", PROB_COLUMNS].isna().all().all()
          and (df["label"][df["status"] != "ok"] == "").all())
  assert list(df["face"]) == [0, -1, -1, 0, 0, 0, -1, 0, 0, 0, -1]
  video = df[df["source"].str.endswith("h_video.mp4")]
  assert list(video["frame"]) == [0, 2, 4]
  np.testing.assert_allclose(video["time_s"], [0.0, 0.08, 0.16], atol=1e-9)
  assert video["track"].nunique() == 1 and video["track"].iloc[0] not in set(df["track"][:7])
  assert df.attrs["summary"]["files"] == 9 and df.attrs["summary"]["files_ok"] == 6
  assert df.attrs["summary"]["frames"] == 8 and df.attrs["summary"]["faces"] == 7
  assert len(df.attrs["summary"]["errors"]) == 3
  # The 16-bit, RGBA (opaque) and CMYK copies of FER faces are classified like the faces themselves: the
  # fake box is the central half, so compare with predict_proba of the same aligned crop of each face.
  for row_i, face_i in ((0, 0), (3, 2), (4, 3)):
    frame = np.repeat(fer_faces[face_i][..., None], 3, -1)
    (_, [c]), = faces.faces_in_frames([sources.Frame("x", None, None, frame)], detector=det, align=ALIGN)
    np.testing.assert_allclose(df.loc[row_i, PROB_COLUMNS].to_numpy(float),
                               predictor.predict_proba(c.crop[None], test_crops="center")[0],
                               atol=1e-5)  # batch of 1 vs 4: other XLA programs
  back = pd.read_csv(out, keep_default_na=False, na_values=[""])
  pd.testing.assert_frame_equal(back[PROB_COLUMNS], df[PROB_COLUMNS], check_exact=True)
  assert list(back["status"]) == list(df["status"])


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_rows_written_before_a_failure_survive(predictor, fer_faces, tmp_path, monkeypatch, ext):
  monkeypatch.setattr(faces, "DETECT_BATCH", 1)
  for i in range(5):
    Image.fromarray(fer_faces[i]).save(tmp_path / f"{i}.png")
  out = tmp_path / f"t{ext}"
  det = ShapeDetector({(48, 48)}, fail_on=4)
  with pytest.raises(RuntimeError, match="fake detector failure"):
    predict([str(tmp_path)], predictor=predictor, detector=det, align=ALIGN, test_crops="center",
            batch_size=2, output=str(out), progress=False)
  back = pd.read_csv(out) if ext == ".csv" else pd.read_parquet(out)
  assert [pathlib.Path(s).name for s in back["source"]] == ["0.png", "1.png", "2.png"]
  assert (back["status"] == "ok").all() and back[PROB_COLUMNS].notna().all().all()


def test_cli(predictor, fer_faces, tmp_path, capsys):
  parser = cli.build_parser()
  assert parser.prog == "fer-jax predict" and "example:" in parser.epilog
  d = tmp_path / "in"
  d.mkdir()
  for i in range(3):
    Image.fromarray(fer_faces[i]).save(d / f"{i}.png")
  out = tmp_path / "t.jsonl"
  args = [str(d), "--no-detect", "--align", ALIGN, "--output", str(out), "--test_crops", "center", "-q"]
  assert cli.main(args) == 0
  text = capsys.readouterr().out
  assert "3 file(s), 3 read, 3 frame(s), 3 face(s), 0 error(s)" in text
  back = pd.read_json(out, lines=True, precise_float=True)
  np.testing.assert_allclose(back[PROB_COLUMNS].to_numpy(), predictor.predict_proba(fer_faces[:3], test_crops="center"),
                             atol=1e-6)
  before = out.read_bytes()
  assert cli.main(args) == 2  # exists, no --overwrite
  assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
  (tmp_path / "bad.png").write_text("x")
  assert cli.main([str(tmp_path / "bad.png"), "--no-detect", "--align", ALIGN, "-q", "-o", str(tmp_path / "b.csv")]) == 1
  captured = capsys.readouterr()
  assert "bad.png: not an image" in captured.out + captured.err
  assert cli.main([str(d), "--model", "no_such_model", "-o", str(tmp_path / "c.csv")]) == 2
  assert "fer2013_resnet_s" in capsys.readouterr().err  # the shipped models are listed
  with pytest.raises(SystemExit):
    cli.main([str(d), "-o", str(tmp_path / "d.csv"), "--align", "sideways"])


def test_annotate_image_and_video(predictor, fer_faces, tmp_path):
  import av
  d = tmp_path / "in"
  d.mkdir()
  Image.fromarray(fer_faces[0]).resize((96, 96)).save(d / "face.png")
  video = [np.repeat(np.repeat(f, 2, 0), 2, 1)[..., None].repeat(3, -1) for f in fer_faces[:5]]
  _write_video(d / "clip.avi", video)
  ann = tmp_path / "ann"
  df = predict([str(d)], predictor=predictor, detector=ShapeDetector({(96, 96)}), align=ALIGN, every=2,
               test_crops="center", annotate=str(ann), progress=False)
  drawn = np.asarray(Image.open(ann / "in" / "face.png"))
  original = np.asarray(Image.open(d / "face.png").convert("RGB"))
  from fer_jax.predict.annotate import COLOURS
  track = int(df["track"][df["source"].str.endswith("face.png")].iloc[0])
  np.testing.assert_array_equal(drawn[60, 24], COLOURS[track % len(COLOURS)])  # the box's left edge, x = 24
  np.testing.assert_array_equal(drawn[90:, :], original[90:, :])  # below the box and its label: untouched
  with av.open(str(ann / "in" / "clip.mp4")) as c:
    decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  assert len(decoded) == 3 and decoded[0].shape == (96, 96, 3)  # frames 0, 2, 4


def test_affect_model_adds_valence_arousal(tmp_path):
  from fer_jax.models import composite
  import jax
  meta = {"name": "tiny_affect",
          "model": {"backbone": {"name": "resnet", "stem_widths": [4], "stem_strides": [2], "widths": [8],
                                 "depths": [1]},
                    "head": {"name": "multitask", "heads": {"cls": {"name": "linear", "num_outputs": 3},
                                                            "va": {"name": "tanh", "num_outputs": 2}}}},
          "input": {"image_size": 48, "crop": 44, "channels": 1, "per_image_standardization": True,
                    "mean": None, "std": None, "test_crops": "none"},
          "class_names": ["a", "b", "c"]}
  model = composite.build_model(meta["model"])
  variables = model.init(jax.random.key(1), train=False, image=np.zeros((1, 44, 44, 1), np.float32))
  pretrained.save(str(tmp_path / "tiny_affect"), meta, variables)
  p = pretrained.load(str(tmp_path / "tiny_affect.json"))
  rng = np.random.default_rng(0)
  faces_ = rng.integers(0, 256, (4, 48, 48), np.uint8)
  for i, f in enumerate(faces_):
    Image.fromarray(f).save(tmp_path / f"{i}.png")
  df = predict([str(tmp_path / f"{i}.png") for i in range(4)], predictor=p, detect=False, align=ALIGN,
               progress=False)
  assert list(df.columns[-3:]) == ["label", "valence", "arousal"]
  x = faces_.astype(np.float64)[..., None] / 255  # NumPy: per-image standardisation, whole 48 px image
  x = (x - x.mean((1, 2, 3), keepdims=True)) / np.maximum(x.std((1, 2, 3), keepdims=True), 1 / (255 * 48))
  out = model.apply(p.variables, train=False, image=x.astype(np.float32))
  np.testing.assert_allclose(df[["valence", "arousal"]].to_numpy(), np.asarray(out["valence_arousal"]), atol=1e-5)
  z = np.asarray(out["logits"], np.float64)
  e = np.exp(z - z.max(1, keepdims=True))
  np.testing.assert_allclose(df[["p_a", "p_b", "p_c"]].to_numpy(), e / e.sum(1, keepdims=True), atol=1e-5)
  np.testing.assert_allclose(df[["p_a", "p_b", "p_c"]].to_numpy(), p.predict_proba(faces_), atol=1e-6)


def test_real_detector_on_afew_frames(predictor, tmp_path):
  """fer_jax.detect.MTCNN end to end on two real film frames: one face each, where the annotation is."""
  pytest.importorskip("fer_jax.detect", reason="fer_jax.detect (MTCNN) is not in this checkout")
  from fer_jax.predict.tracking import box_iou
  frames, lms = _afew([0, 20])
  for i, f in zip((0, 20), frames):
    Image.fromarray(f).save(tmp_path / f"{i:05d}.png")
  df = predict([str(tmp_path)], predictor=predictor, align=ALIGN, test_crops="center", progress=False)
  assert list(df["status"]) == ["ok", "ok"] and list(df["face"]) == [0, 0]
  for row, lm in zip(df.itertuples(), lms):
    lm_box = np.array([*lm.min(0), *lm.max(0)])
    box = np.array([row.x0, row.y0, row.x1, row.y1])
    assert box_iou(box, lm_box)[0, 0] > 0.3 and row.det_score > 0.9
    cx, cy = (lm_box[:2] + lm_box[2:]) / 2
    assert row.x0 < cx < row.x1 and row.y0 < cy < row.y1
    five = np.array([[row.le_x, row.le_y], [row.re_x, row.re_y], [row.nose_x, row.nose_y], [row.lm_x, row.lm_y],
                     [row.rm_x, row.rm_y]])
    # MTCNN's points near the annotated eye centres / nose tip / mouth corners: within 15% of the face width.
    assert np.abs(five - _five(lm)).max() < 0.15 * (lm_box[2] - lm_box[0])
  np.testing.assert_allclose(df[PROB_COLUMNS].sum(1), 1.0, atol=1e-5)


def test_faceless_frames_are_written_in_batches_too(predictor, tmp_path, monkeypatch):
  """Rows wait for at most batch_size frames, even when no face fills the crop batch: when the detector
  sees frame 4, the rows of frames 1-2 are on disk and frame 3's waits."""
  monkeypatch.setattr(faces, "DETECT_BATCH", 1)
  for i in range(5):
    Image.fromarray(np.full((20, 20 + i, 3), 9 * i, np.uint8)).save(tmp_path / f"{i}.png")
  out = tmp_path / "t.csv"
  seen = []

  class Watcher(ShapeDetector):
    def detect_batch(self, images):
      seen.append(len(pd.read_csv(out)))
      return super().detect_batch(images)

  df = predict([str(tmp_path)], predictor=predictor, detector=Watcher(set()), align=ALIGN, batch_size=2,
               output=str(out), progress=False)
  assert seen == [0, 0, 2, 2, 4]
  assert list(df["status"]) == ["no_face"] * 5 and len(pd.read_csv(out)) == 5


def test_detector_batches_same_size_frames_on_request(monkeypatch):
  """On CPU frames go to the detector one by one (batching measured slower there); with a batch size of 8
  (accelerators), 5 same-size frames and then 2 of another size make 2 calls, padded to 8 and 2 frames."""
  seen = []

  class Recorder(FakeDetector):
    def detect_batch(self, images):
      seen.append(images.shape[:3])
      return super().detect_batch(images)

  frames = [sources.Frame(f"f{i}", i, None, np.full((20, 24, 3), i, np.uint8)) for i in range(5)]
  frames += [sources.Frame(f"g{i}", i, None, np.full((30, 24, 3), i, np.uint8)) for i in range(2)]
  out = list(faces.faces_in_frames(frames, detector=Recorder([]), align=ALIGN))
  assert [f.source for f, _ in out] == [f.source for f in frames] and all(c == [] for _, c in out)
  assert seen == [(1, 20, 24)] * 5 + [(1, 30, 24)] * 2
  seen.clear()
  monkeypatch.setattr(faces, "DETECT_BATCH_CPU", 8)
  list(faces.faces_in_frames(frames, detector=Recorder([]), align=ALIGN))
  assert seen == [(8, 20, 24), (2, 30, 24)]


def test_a_training_work_dir_is_a_model_too(tmp_path, monkeypatch):
  """``--workdir``: a 3-step toy training run (its own process) -> ``pretrained.from_workdir`` holds the
  checkpoint's EMA weights (as orbax restored them in the driver) and its class names, and ``fer-jax predict
  --workdir`` writes its probabilities."""
  import subprocess
  import sys
  from train_driver import check_ok, final_params
  workdir, data = tmp_path / "run", tmp_path / "data"
  env = dict(os.environ, TOY_DATA_DIR=str(data), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  check_ok(subprocess.run([sys.executable, str(ROOT / "tests" / "train_driver.py"), str(workdir), "3"], env=env,
                          capture_output=True, text=True, timeout=600))
  monkeypatch.setenv("TOY_DATA_DIR", str(data))
  model = pretrained.from_workdir(str(workdir))
  assert model.class_names == ("tl", "tr", "bl", "br")
  saved = final_params(workdir)
  import jax
  leaves = jax.tree_util.tree_leaves_with_path(model.variables["params"])
  assert leaves
  for path, leaf in leaves:
    np.testing.assert_array_equal(np.asarray(leaf), saved["['ema_params']" + jax.tree_util.keystr(path)])
  assert model.image_size == 18  # the run's resize; faces of that size go to the model unresampled
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 90, (2, 18, 18, 1)).astype(np.uint8)
  imgs[0, :9, :9] += 100
  imgs[1, 9:, 9:] += 100
  for i, im in enumerate(imgs):
    Image.fromarray(im[..., 0]).save(tmp_path / f"{i}.png")
  out = tmp_path / "t.csv"
  from fer_jax import main as main_lib  # the console script, whose absl flags must not clash with --workdir's
  with pytest.raises(SystemExit) as exit_:
    main_lib.run(["fer-jax", "predict", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--workdir",
                  str(workdir), "--no-detect", "--output", str(out), "-q"])
  assert exit_.value.code == 0
  table = pd.read_csv(out)
  np.testing.assert_allclose(table[[f"p_{c}" for c in model.class_names]].to_numpy(),
                             model.predict_proba(imgs), atol=1e-6)


def test_predict_and_explain_run_without_tensorflow(tmp_path):
  """The core needs no TensorFlow: detection, alignment, classification, Parquet output and IG heat maps run
  in a fresh interpreter where importing tensorflow fails."""
  import subprocess
  import sys
  import textwrap
  from fer_jax.predict import demo
  from fer_jax.testing import HIDE_TENSORFLOW
  rendered = demo.make_photos(str(tmp_path / "photos"), n=1)
  code = textwrap.dedent(f"""
      import sys
      from fer_jax.predict import cli
      from fer_jax.explain import cli as explain_cli
      assert cli.main([{str(tmp_path / 'photos')!r}, "--output", {str(tmp_path / 't.parquet')!r}, "-q",
                       "--test_crops", "center"]) == 0
      assert explain_cli.main([{str(tmp_path / 'photos')!r}, "--out_dir", {str(tmp_path / 'ex')!r},
                               "--steps", "8"]) == 0
      print("LEAKED", [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")])
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW + code], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "LEAKED []" in proc.stdout
  table = pd.read_parquet(tmp_path / "t.parquet")
  assert list(table["status"]) == ["ok"] * len(rendered)  # every rendered face found, nothing else
  assert sorted(p.name for p in (tmp_path / "ex").glob("*.png")) == [
      f"scene_0_face{k}.png" for k in range(len(rendered))]
