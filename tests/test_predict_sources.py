"""fer_jax.predict.sources: image modes against NumPy references, bad files, folder discovery, and videos
written here with PyAV (frame indices and times with every=2, corrupt and empty videos)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from fer_jax.predict import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
AFEW = ROOT.parent / "shared" / "data" / "afew_va" / "001"


def _gradient(h=20, w=30):
  y, x = np.mgrid[:h, :w]
  return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def _read(path) -> np.ndarray:
  frames = list(sources.iter_frames(str(path)))
  assert len(frames) == 1 and frames[0].frame_index is None and frames[0].time_s is None
  assert frames[0].image.dtype == np.uint8 and frames[0].image.shape[-1] == 3
  return frames[0].image


def test_rgb_and_grey_png(tmp_path):
  rgb = _gradient()
  Image.fromarray(rgb).save(tmp_path / "a.png")
  np.testing.assert_array_equal(_read(tmp_path / "a.png"), rgb)
  Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
  np.testing.assert_array_equal(_read(tmp_path / "g.png"), np.repeat(rgb[..., :1], 3, -1))


def test_16bit_png_scaled_to_8bit(tmp_path):
  values = np.array([[0, 1, 128, 129], [257, 32768, 65279, 65535]], np.uint16)
  Image.fromarray(values).save(tmp_path / "deep.png")
  assert Image.open(tmp_path / "deep.png").mode.startswith("I")
  expected = np.array([[0, 0, 0, 1], [1, 128, 254, 255]], np.uint8)  # round(v * 255 / 65535) by hand
  np.testing.assert_array_equal(_read(tmp_path / "deep.png"), np.repeat(expected[..., None], 3, -1))


def test_rgba_composited_on_white(tmp_path):
  rgb = _gradient()
  alpha = np.tile(np.array([0, 64, 128, 255], np.uint8), (20, 30 // 4 + 1))[:, :30]
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "t.png")
  a = alpha[..., None] / 255.0
  expected = rgb * a + 255 * (1 - a)
  got = _read(tmp_path / "t.png").astype(np.float64)
  assert np.abs(got - expected).max() <= 1.0
  np.testing.assert_array_equal(got[alpha == 0], 255)
  np.testing.assert_array_equal(got[alpha == 255], rgb[alpha == 255])


def test_palette_image(tmp_path):
  img = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  img.save(tmp_path / "p.png")
  indices = np.asarray(Image.open(tmp_path / "p.png"))
  palette = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
  np.testing.assert_array_equal(_read(tmp_path / "p.png"), palette[indices])


def test_cmyk_jpeg(tmp_path):
  rgb = _gradient(40, 60)
  Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
  assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
  got = _read(tmp_path / "c.jpg").astype(np.int64)
  assert np.abs(got - rgb).mean() < 3.0  # JPEG loss only: not inverted, not channel-swapped


def test_exif_orientation_applied(tmp_path):
  rgb = _gradient()
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
  np.testing.assert_array_equal(_read(tmp_path / "o.png"), np.rot90(rgb, k=-1))


def test_truncated_and_non_image_files_raise_input_error(tmp_path):
  Image.fromarray(_gradient(64, 64)).save(tmp_path / "full.png")
  data = (tmp_path / "full.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
  with pytest.raises(sources.InputError, match=r"cut\.png.*(truncated|unreadable)"):
    _read(tmp_path / "cut.png")
  (tmp_path / "text.png").write_text("not a picture")
  with pytest.raises(sources.InputError, match=r"text\.png: not an image"):
    _read(tmp_path / "text.png")
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(sources.InputError, match=r"notes\.txt: neither an image .* nor a video"):
    _read(tmp_path / "notes.txt")
  with pytest.raises(sources.InputError, match=r"missing\.jpg: no such file"):
    _read(tmp_path / "missing.jpg")


def test_huge_image_refused(tmp_path, monkeypatch):
  Image.fromarray(_gradient(20, 30)).save(tmp_path / "big.png")
  monkeypatch.setattr(sources, "MAX_PIXELS", 599)
  with pytest.raises(sources.InputError, match=r"big\.png: 30x20 = 600 pixels is over the limit of 599"):
    _read(tmp_path / "big.png")


def test_discover_expands_folders_sorted_and_keeps_files_as_given(tmp_path):
  (tmp_path / "d" / "sub").mkdir(parents=True)
  for name in ("d/b.png", "d/a.JPG", "d/sub/c.mp4", "d/notes.txt", "d/sub/x.json", "loose.dat"):
    (tmp_path / name).write_bytes(b"")
  got = sources.discover([str(tmp_path / "loose.dat"), str(tmp_path / "d"), str(tmp_path / "d" / "b.png")])
  assert got == [str(tmp_path / n) for n in ("loose.dat", "d/a.JPG", "d/b.png", "d/sub/c.mp4")]


def _write_video(path, frames, rate=25, codec="mpeg4", size=None):
  import av
  with av.open(str(path), "w") as out:
    stream = out.add_stream(codec, rate=rate)
    stream.width, stream.height = size or (frames[0].shape[1], frames[0].shape[0])
    stream.pix_fmt = "yuv420p"
    out.start_encoding()  # writes the header even when no frame follows
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def _afew_frames(n, size=(96, 80)):
  if not AFEW.exists():
    pytest.skip(f"AFEW-VA frames not found at {AFEW}")
  return [np.asarray(Image.open(AFEW / f"{i:05d}.png").convert("RGB").resize(size)) for i in range(n)]


def test_video_every_2_indices_and_times(tmp_path):
  frames = _afew_frames(7)
  _write_video(tmp_path / "v.mp4", frames)
  got = list(sources.iter_frames(str(tmp_path / "v.mp4"), every=2))
  assert [f.frame_index for f in got] == [0, 2, 4, 6]
  np.testing.assert_allclose([f.time_s for f in got], [0.0, 0.08, 0.16, 0.24], atol=1e-9)  # index / 25 fps
  for f in got:  # the decoded frame is the frame written (mpeg4 at default quality: lossy, but close)
    assert f.image.shape == (80, 96, 3) and f.source == str(tmp_path / "v.mp4")
    err = np.abs(f.image.astype(int) - frames[f.frame_index].astype(int)).mean()
    others = [np.abs(f.image.astype(int) - g.astype(int)).mean() for i, g in enumerate(frames)
              if np.abs(g.astype(int) - frames[f.frame_index].astype(int)).mean() > 2]
    assert err < 12 and all(err < o for o in others)
  assert sources.count_frames(str(tmp_path / "v.mp4"), every=2) == 4


def test_corrupt_and_empty_videos(tmp_path):
  frames = _afew_frames(3)
  _write_video(tmp_path / "ok.mp4", frames)
  data = (tmp_path / "ok.mp4").read_bytes()
  (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 3])  # the moov index is at the end: unplayable
  with pytest.raises(sources.InputError, match=r"cut\.mp4: "):
    list(sources.iter_frames(str(tmp_path / "cut.mp4")))
  (tmp_path / "junk.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
  with pytest.raises(sources.InputError, match=r"junk\.avi: "):
    list(sources.iter_frames(str(tmp_path / "junk.avi")))
  for name in ("empty.mkv", "empty.mp4"):
    _write_video(tmp_path / name, [], size=(16, 16))
    with pytest.raises(sources.InputError, match=name.replace(".", r"\.") + r": .*no (decodable frames|video stream)"):
      list(sources.iter_frames(str(tmp_path / name)))
