"""fer_jax.detect (MTCNN in JAX) against facenet-pytorch 2.6.0: each network, the area resampling, the
NMS, the whole detector on genuine AFEW-VA frames (one face, several faces, none), bad input, the
weight file (checksum, offline load without torch)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from fer_jax.detect import MTCNN, Detections, MTCNNWeightsError, load_variables, nets, resample
from fer_jax.detect import convert_mtcnn, params as mtcnn_params
from fer_jax.detect.nms import nms

ROOT = pathlib.Path(__file__).resolve().parents[1]
AFEW = ROOT.parent / "shared" / "data" / "afew_va" / "001"
FRAMES = ("00000", "00010", "00020", "00041")
# Detector parity tolerances: the two run the same float32 arithmetic except inside the convolutions
# (XLA vs oneDNN summation order, ~1e-6 relative), which moves boxes / landmarks by ~1e-4 px.
BOX_TOL_PX, SCORE_TOL = 0.02, 1e-4


def _torch():
  from fer_jax.testing import import_timm  # pylint: disable=import-outside-toplevel
  try:
    torch, _ = import_timm()
  except ImportError as e:
    pytest.skip(f"torch / torchvision unusable: {e}")
  return torch


def _facenet_src_dir():
  try:
    d = convert_mtcnn.default_source_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  return d


def reference_batched_nms(boxes, scores, idxs, threshold):
  """torchvision.ops.batched_nms semantics, written with plain loops: per category, by descending score,
  drop a box whose IoU (areas (x1 - x0) (y1 - y0), no +1) with a kept box exceeds ``threshold``;
  the kept indices by descending score."""
  torch = _torch()
  b = boxes.detach().cpu().numpy().astype(np.float32)
  s = scores.detach().cpu().numpy()
  c = idxs.detach().cpu().numpy()
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  kept = []
  for cat in np.unique(c):
    ids = np.nonzero(c == cat)[0]
    ids = ids[np.argsort(-s[ids], kind="stable")]
    alive = np.ones(len(ids), bool)
    for a, i in enumerate(ids):
      if not alive[a]:
        continue
      kept.append(i)
      for k in range(a + 1, len(ids)):
        j = ids[k]
        w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
        h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
        inter = np.float32(w * h)
        if alive[k] and inter / (area[i] + area[j] - inter) > threshold:
          alive[k] = False
  kept = np.asarray(kept, np.int64)
  return torch.as_tensor(kept[np.argsort(-s[kept], kind="stable")])


@pytest.fixture(scope="module")
def facenet():
  """facenet_pytorch's module, importable with the CPU torch here (see fer_jax.testing.import_timm) and
  with torchvision's compiled nms (unloadable here) replaced by ``reference_batched_nms``."""
  _torch()
  try:
    import facenet_pytorch  # pylint: disable=import-outside-toplevel
    from facenet_pytorch.models.utils import detect_face  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    pytest.skip(f"facenet_pytorch is not installed: {e}")
  detect_face.batched_nms = reference_batched_nms
  return facenet_pytorch


@pytest.fixture(scope="module")
def torch_nets(facenet):
  """facenet's PNet / RNet / ONet with its own weights (read with weights_only=True)."""
  torch = _torch()
  src = _facenet_src_dir()
  out = {}
  for name, cls in (("pnet", facenet.PNet), ("rnet", facenet.RNet), ("onet", facenet.ONet)):
    net = cls(pretrained=False)
    net.load_state_dict(torch.load(os.path.join(src, f"{name}.pt"), map_location="cpu", weights_only=True))
    out[name] = net.eval()
  return out


@pytest.fixture(scope="module")
def detector():
  return MTCNN()


def _frame(name):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = AFEW / f"{name}.png"
  if not path.exists():
    pytest.skip(f"AFEW-VA frames not found at {AFEW} (genuine data needed for the detector parity test)")
  return np.asarray(Image.open(path).convert("RGB"))


def _no_face_frame():
  """720 x 576, no face: the right half of frame 0 (car window and seat) next to its mirror image."""
  right = _frame("00000")[:, 360:]
  return np.ascontiguousarray(np.concatenate([right[:, ::-1], right], 1))


def _multi_face_frame():
  """The no-face frame with three real faces (frames 0, 20, 41, from their iBUG-68 annotations) pasted
  at 220, 130 and 80 px."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  canvas = _no_face_frame().copy()
  ann = json.loads((AFEW / "001.json").read_text())["frames"]
  for name, side, (x, y) in (("00000", 220, (20, 30)), ("00020", 130, (400, 60)), ("00041", 80, (330, 400))):
    lm = np.asarray(ann[name]["landmarks"], np.float64)
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    c, half = (np.array([x0, y0]) + [x1, y1]) / 2, 0.75 * max(x1 - x0, y1 - y0)
    box = tuple(int(v) for v in (c[0] - half, c[1] - half, c[0] + half, c[1] + half))
    face = Image.fromarray(_frame(name)).crop(box).resize((side, side), Image.Resampling.BILINEAR)
    canvas[y:y + side, x:x + side] = np.asarray(face)
  return canvas


def _torch_nchw(torch, x_nhwc):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2))))


# ---------------------------------------------------------------------------------------------------
# (a) Networks, resampling, NMS.


@pytest.mark.parametrize("name, shape", [("pnet", (2, 37, 50, 3)), ("pnet", (1, 12, 13, 3)),
                                         ("rnet", (7, 24, 24, 3)), ("onet", (7, 48, 48, 3))])
def test_networks_match_facenet(torch_nets, name, shape):
  """Shipped weights in our Flax nets vs facenet's torch nets with its own .pt weights (random input in
  the normalised pixel range; odd sizes exercise the ceil-mode pooling)."""
  torch = _torch()
  x = np.random.default_rng(hash(shape) % 2**32).uniform(-1, 1, shape).astype(np.float32)
  module = {"pnet": nets.PNet(), "rnet": nets.RNet(), "onet": nets.ONet()}[name]
  got = module.apply(load_variables()[name], x)
  with torch.no_grad():
    want = [t.numpy() for t in torch_nets[name](_torch_nchw(torch, x))]
  if name == "pnet":
    want = [np.transpose(w, (0, 2, 3, 1)) for w in want]
  for g, w in zip(got, want):
    g = np.asarray(g)
    assert g.shape == w.shape
    err = np.abs(g - w).max()
    assert err < 2e-5 * max(1.0, np.abs(w).max()), (name, err)


def test_shipped_weights_are_the_conversion_of_facenets():
  torch = _torch()
  src = _facenet_src_dir()
  shipped = load_variables()
  for name in ("pnet", "rnet", "onet"):
    sd = torch.load(os.path.join(src, f"{name}.pt"), map_location="cpu", weights_only=True)
    conv = convert_mtcnn.state_dict_to_params(sd)
    assert jax.tree.structure(conv) == jax.tree.structure(shipped[name]["params"])
    jax.tree.map(np.testing.assert_array_equal, conv, shipped[name]["params"])
    # And an independent hand mapping of one conv and one dense weight.
    np.testing.assert_array_equal(shipped[name]["params"]["conv1"]["kernel"][1, 2, 0],
                                  sd["conv1.weight"][:, 0, 1, 2].numpy())
  np.testing.assert_array_equal(shipped["onet"]["params"]["dense5"]["kernel"][17, 3],
                                torch.load(os.path.join(src, "onet.pt"), weights_only=True)["dense5.weight"][3, 17])


def test_area_resampling_bitwise_equal_to_torch():
  """Pyramid levels (down and up) and box crops vs torch.nn.functional.interpolate(mode='area')."""
  torch = _torch()
  img = np.random.default_rng(0).integers(0, 256, (2, 61, 83, 3), np.uint8)
  t = torch.from_numpy(img).permute(0, 3, 1, 2).float()
  ii = resample.integral_image(img)
  for size in [(37, 50), (13, 17), (61, 83), (90, 100), (12, 12)]:
    want = torch.nn.functional.interpolate(t, size=size, mode="area").permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(resample.area_resize(ii, size)), want)
  # rows [y0, y1) x cols [x0, x1) of image b: whole image, inner boxes, 1-pixel and thin boxes
  boxes = np.array([[0, 61, 0, 83, 0], [5, 50, 9, 70, 1], [10, 13, 20, 22, 1], [60, 61, 0, 1, 0],
                    [3, 40, 4, 10, 0]], np.int32)
  for size in (24, 48):
    got = np.asarray(resample.area_crops(ii, boxes[:, 4], boxes[:, 0], boxes[:, 1], boxes[:, 2],
                                         boxes[:, 3], size))
    for k, (y0, y1, x0, x1, b) in enumerate(boxes):
      want = torch.nn.functional.interpolate(t[b:b + 1, :, y0:y1, x0:x1], size=(size, size), mode="area")
      np.testing.assert_array_equal(got[k], want[0].permute(1, 2, 0).numpy())


def _reference_min_nms(boxes, scores, threshold):
  """facenet's nms_numpy(..., 'Min') restated: +1 areas, overlap = inter / min(area), kept if <= thr."""
  x0, y0, x1, y1 = boxes.T
  area = (x1 - x0 + 1) * (y1 - y0 + 1)
  order, kept = list(np.argsort(-scores, kind="stable")), []
  while order:
    i, order = order[0], order[1:]
    kept.append(i)
    rest = np.array(order, np.int64)
    if not len(rest):
      break
    w = np.maximum(0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
    h = np.maximum(0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
    order = list(rest[(w * h) / np.minimum(area[i], area[rest]) <= threshold])
  return np.array(kept, np.int64)


@pytest.mark.parametrize("n", [1, 5, 70, 300])
def test_nms_matches_references(n):
  torch = _torch()
  rng = np.random.default_rng(n)
  xy = rng.uniform(0, 200, (n, 2))
  wh = rng.uniform(5, 60, (n, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32) / n  # distinct
  cats = rng.integers(0, 3, n)
  for thr in (0.3, 0.5, 0.7):
    want = reference_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(cats),
                                 thr).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, cats, thr), want)
    np.testing.assert_array_equal(nms(boxes, scores, None, thr, mode="min"),
                                  _reference_min_nms(boxes, scores, thr))
  if n > 5:  # the tests above must have suppressed something
    assert len(nms(boxes, scores, None, 0.3)) < n


# ---------------------------------------------------------------------------------------------------
# (b) The whole detector vs facenet_pytorch.MTCNN.


def _assert_same_detections(got: Detections, boxes, probs, points, what):
  if boxes is None:
    assert len(got.boxes) == 0, (what, got)
    return 0.0
  assert len(got.boxes) == len(boxes), (what, got.boxes, boxes)
  boxes = np.asarray(boxes, np.float64)
  err_box = np.abs(got.boxes - boxes).max()
  err_lm = np.abs(got.landmarks - np.asarray(points, np.float64)).max()
  err_p = np.abs(got.scores - np.asarray(probs, np.float64)).max()
  assert err_box < BOX_TOL_PX and err_lm < BOX_TOL_PX and err_p < SCORE_TOL, (what, err_box, err_lm, err_p)
  assert np.all(np.diff(got.scores) <= 0)
  assert got.boxes.dtype == got.scores.dtype == got.landmarks.dtype == np.float32
  return max(err_box, err_lm)


def test_detector_matches_facenet_on_real_frames(facenet, detector):
  # select_largest=False: facenet then keeps its final NMS order (by score), as we do.
  ref = facenet.MTCNN(keep_all=True, device="cpu", select_largest=False)
  images = {f: _frame(f) for f in FRAMES}
  images["several"] = _multi_face_frame()
  images["none"] = _no_face_frame()
  counts = {}
  for what, img in images.items():
    boxes, probs, points = ref.detect(img, landmarks=True)
    got = detector.detect(img)
    _assert_same_detections(got, boxes, probs, points, what)
    counts[what] = len(got.boxes)
  assert counts["several"] == 3 and counts["none"] == 0 and all(counts[f] == 1 for f in FRAMES), counts


def test_detect_batch_matches_facenet_batch_and_single(facenet, detector):
  ref = facenet.MTCNN(keep_all=True, device="cpu", select_largest=False)
  batch = np.stack([_frame("00041"), _multi_face_frame(), _no_face_frame()])
  boxes, probs, points = ref.detect(batch, landmarks=True)
  got = detector.detect_batch(batch)
  assert len(got) == 3
  for k in range(3):
    _assert_same_detections(got[k], boxes[k], probs[k], points[k], k)
    single = detector.detect(batch[k])
    for a, b in zip(got[k], single):
      np.testing.assert_allclose(a, b, atol=1e-3)


def test_landmarks_order_agrees_with_ibug_annotation(detector):
  """MTCNN's 5 points vs the 5-point reduction of the frame's iBUG-68 annotation (another annotator):
  same order (image-left eye first), within 15 px on a ~100 px face."""
  ann = json.loads((AFEW / "001.json").read_text())["frames"] if AFEW.exists() else None
  for f in FRAMES:
    d = detector.detect(_frame(f))
    lm = np.asarray(ann[f]["landmarks"], np.float64)
    five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    assert np.abs(d.landmarks[0] - five).max() < 15, (f, d.landmarks[0], five)
    assert d.landmarks[0, 0, 0] < d.landmarks[0, 1, 0] and d.landmarks[0, 3, 0] < d.landmarks[0, 4, 0]


# ---------------------------------------------------------------------------------------------------
# (c) Bad input.


@pytest.mark.parametrize("image, match", [
    (np.zeros((64, 64, 3), np.float32), "uint8"),
    (np.zeros((64, 64), np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((64, 64, 4), np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((1, 64, 64, 3), np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((11, 64, 3), np.uint8), "too small"),
    (np.zeros((64, 19, 3), np.uint8), "too small"),
])
def test_detect_rejects_bad_images(detector, image, match):
  with pytest.raises(ValueError, match=match):
    detector.detect(image)


def test_detect_batch_rejects_bad_batches(detector):
  with pytest.raises(ValueError, match=r"shape \(B, H, W, 3\)"):
    detector.detect_batch(np.zeros((64, 64, 3), np.uint8))
  with pytest.raises(ValueError, match="at least one"):
    detector.detect_batch(np.zeros((0, 64, 64, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    detector.detect_batch(np.zeros((2, 64, 64, 3), np.int64))


@pytest.mark.parametrize("kwargs, match", [({"min_face_size": 0}, "min_face_size"),
                                           ({"factor": 1.0}, "factor"),
                                           ({"thresholds": (0.6, 0.7)}, "thresholds"),
                                           ({"thresholds": (0.6, 0.7, 1.5)}, "thresholds")])
def test_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MTCNN(**kwargs)


def test_blank_image_has_no_faces(detector):
  d = detector.detect(np.full((40, 50, 3), 128, np.uint8))
  assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.landmarks.shape == (0, 5, 2)


# ---------------------------------------------------------------------------------------------------
# (d) The weight file.


def test_corrupt_or_missing_weights_are_reported(tmp_path):
  src = pathlib.Path(mtcnn_params.WEIGHTS_FILE)
  blob = bytearray(src.read_bytes())
  blob[len(blob) // 2] ^= 1
  (tmp_path / "mtcnn.msgpack").write_bytes(bytes(blob))
  shutil.copy(src.with_suffix(".json"), tmp_path / "mtcnn.json")
  with pytest.raises(MTCNNWeightsError, match="corrupt: sha256"):
    load_variables(str(tmp_path / "mtcnn.msgpack"))
  with pytest.raises(MTCNNWeightsError, match="missing"):
    MTCNN(weights=str(tmp_path / "nope.msgpack"))
  sidecar = json.loads(src.with_suffix(".json").read_text())
  assert sidecar["sha256"] == __import__("hashlib").sha256(src.read_bytes()).hexdigest()
  assert (src.parent / "LICENSE-facenet-pytorch.txt").read_text().startswith("MIT License")


def test_loads_and_detects_without_torch():
  """In a fresh interpreter where ``import torch`` fails: fer_jax.detect loads the shipped weights and
  detects (a real frame when present, else a blank one), importing neither torch nor facenet_pytorch."""
  frame = AFEW / "00000.png"
  prog = f"""
import sys
sys.modules['torch'] = None
import numpy as np
from fer_jax.detect import MTCNN
det = MTCNN()
path = {str(frame)!r}
import os
if os.path.exists(path):
  from PIL import Image
  img = np.asarray(Image.open(path).convert('RGB'))[100:260, 160:310]
  n_want = 1
else:
  img, n_want = np.full((40, 40, 3), 200, np.uint8), 0
d = det.detect(img)
assert len(d.boxes) == n_want, d
assert not any(m.split('.')[0] in ('torch', 'facenet_pytorch', 'torchvision') for m in sys.modules
               if sys.modules[m] is not None), [m for m in sys.modules if 'torch' in m]
print('ok', len(d.boxes))
"""
  r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, cwd=str(ROOT), timeout=300)
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.slow
def test_detector_matches_facenet_on_all_afew_frames(facenet, detector):
  """All 42 frames of the clip, one by one and as one batch (~1 min)."""
  ref = facenet.MTCNN(keep_all=True, device="cpu", select_largest=False)
  frames = np.stack([_frame(f"{i:05d}") for i in range(42)])
  batch = detector.detect_batch(frames)
  for i, img in enumerate(frames):
    boxes, probs, points = ref.detect(img, landmarks=True)
    _assert_same_detections(detector.detect(img), boxes, probs, points, i)
    _assert_same_detections(batch[i], boxes, probs, points, i)
