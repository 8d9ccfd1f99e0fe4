r"""FER2013's face framing as a 5-point template, measured with our MTCNN; and whether detect + align
with that template preserves the shipped classifier's accuracy.

    .venv/bin/python benchmarks/fer2013_template.py --fer2013=../shared/data/fer2013 [--part template|accuracy|all]

Part ``template`` (FER2013 Training faces, the first ``--n_train``): each 48x48 grey face is upscaled 3x
(PIL bicubic) to 144 px, padded by 36 px of grey 128 on every side (MTCNN misses ~15 % of the tight
FER2013 crops unpadded, ~6 % padded), made RGB and run through ``fer_jax.detect.MTCNN`` (defaults).
Faces with exactly one detection of score >= 0.95 are kept; their 5 landmarks are mapped back to
48-px coordinates with pixel centres at integers, ``p48 = (p144 - 36 + 0.5) / 3 - 0.5``, and the
per-point median is the template (``fer_jax.data.align.FER2013_TEMPLATE_48``); the spread is given as
per-point std and inter-quartile range.

Part ``accuracy`` (the first ``--n_test`` PublicTest faces): the shipped model
(``pretrained.load('fer2013_resnet_s').predict_proba(..., test_crops='ten')``) on (a) each face as is;
(b) the face upscaled (bicubic) to a random side in [64, 112] px, pasted at a random position into a
144x144 canvas of smoothed grey noise, detected by MTCNN (top-scoring face), and aligned back to 48 px
by ``align_face(canvas, landmarks, template='fer2013', out_size=48, supersample=4)`` (rounded to
uint8); (c) control: the same pasted face cut back by its known paste square (no detection, no
rotation; the same resampling as (b)). A face without detection counts as wrong in (b); accuracy on
the detected ones is also given with (a)'s and (c)'s on the same faces. Results: benchmarks/results/fer2013_template.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _interleaved import write_json  # noqa: E402

UP, PAD, MIN_SCORE = 3, 36, 0.95
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fer2013_template.json")


def read_fer2013(folder: str, usage: str, n: int):
  import pandas as pd  # pylint: disable=import-outside-toplevel
  df = pd.read_csv(os.path.join(folder, "fer2013.csv.gz"))
  df = df[df.Usage == usage].iloc[:n]
  faces = np.stack([np.array(p.split(), np.uint8).reshape(48, 48) for p in df.pixels])
  return faces, df.emotion.to_numpy()


def _resize(face: np.ndarray, side: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC))


def _detect_all(det, images: np.ndarray, batch: int = 64):
  out = []
  for i in range(0, len(images), batch):
    out += det.detect_batch(images[i:i + batch])
  return out


def measure_template(det, faces: np.ndarray):
  imgs = np.stack([np.pad(_resize(f, 48 * UP), PAD, constant_values=128) for f in faces])
  t0 = time.time()
  dets = _detect_all(det, np.repeat(imgs[..., None], 3, -1))
  seconds = time.time() - t0
  n_found = np.array([len(d.scores) for d in dets])
  keep = [i for i, d in enumerate(dets) if len(d.scores) == 1 and d.scores[0] >= MIN_SCORE]
  lm48 = np.stack([(dets[i].landmarks[0].astype(np.float64) - PAD + 0.5) / UP - 0.5 for i in keep])
  q25, med, q75 = np.percentile(lm48, [25, 50, 75], axis=0)
  return {
      "template_48": np.round(med, 3).tolist(),
      "points": ["image-left eye", "image-right eye", "nose", "image-left mouth corner", "image-right mouth corner"],
      "n_faces": len(faces), "n_used": len(keep),
      "n_no_detection": int((n_found == 0).sum()), "n_several": int((n_found > 1).sum()),
      "std_48": np.round(lm48.std(0), 3).tolist(), "iqr_48": np.round(q75 - q25, 3).tolist(),
      "mean_48": np.round(lm48.mean(0), 3).tolist(),
      "detect_seconds": round(seconds, 1), "detect_ms_per_face": round(1000 * seconds / len(faces), 2),
  }


def textured_canvases(n: int, size: int, rng) -> np.ndarray:
  """Grey 128 +- smoothed uniform noise (a 9x9 box blur of +-60 noise), uint8 (n, size, size)."""
  noise = rng.uniform(-60, 60, (n, size + 8, size + 8))
  c = np.cumsum(np.cumsum(np.pad(noise, ((0, 0), (1, 0), (1, 0))), 1), 2)
  blur = (c[:, 9:, 9:] - c[:, :-9, 9:] - c[:, 9:, :-9] + c[:, :-9, :-9]) / 81
  return np.clip(128 + 3 * blur, 0, 255).astype(np.uint8)


def measure_accuracy(det, faces: np.ndarray, labels: np.ndarray, seed: int = 0):
  import jax  # pylint: disable=import-outside-toplevel
  from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
  from fer_jax.data import align  # pylint: disable=import-outside-toplevel
  model = pretrained.load("fer2013_resnet_s")
  as_is = model.predict_proba(faces, test_crops="ten").argmax(1) == labels
  rng = np.random.default_rng(seed)
  size = 3 * 48
  canvases = textured_canvases(len(faces), size, rng)
  sides = rng.integers(64, 113, len(faces))
  cut_back = np.zeros_like(faces)
  for k, (f, s) in enumerate(zip(faces, sides)):
    y, x = rng.integers(0, size - s + 1, 2)
    canvases[k, y:y + s, x:x + s] = _resize(f, int(s))
    # Control (c): the known paste square back to 48 px, pixel edges onto pixel edges (no detection).
    k48 = 48 / s
    m = np.array([[k48, 0, (0.5 - x) * k48 - 0.5], [0, k48, (0.5 - y) * k48 - 0.5]], np.float32)
    crop = np.asarray(align.warp_affine(canvases[k].astype(np.float32), m, 48, supersample=4))
    cut_back[k] = np.clip(np.round(crop), 0, 255).astype(np.uint8)
  t0 = time.time()
  dets = _detect_all(det, np.repeat(canvases[..., None], 3, -1))
  seconds = time.time() - t0
  found = np.array([len(d.scores) > 0 for d in dets])
  aligned = np.zeros_like(faces)
  warp = jax.jit(lambda img, lm: align.align_face(img, lm, template="fer2013", out_size=48, supersample=4).image)
  for k in np.nonzero(found)[0]:
    crop = np.asarray(warp(canvases[k].astype(np.float32), dets[k].landmarks[0]))
    aligned[k] = np.clip(np.round(crop), 0, 255).astype(np.uint8)
  pasted = (model.predict_proba(aligned, test_crops="ten").argmax(1) == labels) & found
  control = model.predict_proba(cut_back, test_crops="ten").argmax(1) == labels
  return {
      "n_faces": len(faces), "canvas": f"{size}x{size} smoothed grey noise", "face_side_px": [64, 112],
      "accuracy_as_is": round(float(as_is.mean()), 4),
      "accuracy_pasted_detected_aligned": round(float(pasted.mean()), 4),
      "detection_rate": round(float(found.mean()), 4),
      "accuracy_pasted_on_detected": round(float(pasted[found].mean()), 4),
      "accuracy_as_is_on_detected": round(float(as_is[found].mean()), 4),
      "accuracy_pasted_cut_back_by_known_box": round(float(control.mean()), 4),
      "accuracy_pasted_cut_back_on_detected": round(float(control[found].mean()), 4),
      "detect_ms_per_canvas": round(1000 * seconds / len(faces), 2),
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--fer2013", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                     "fer2013"))
  ap.add_argument("--part", default="all", choices=["template", "accuracy", "all"])
  ap.add_argument("--n_train", type=int, default=4000)
  ap.add_argument("--n_test", type=int, default=1000)
  args = ap.parse_args(argv)
  from fer_jax.detect import MTCNN  # pylint: disable=import-outside-toplevel
  det = MTCNN()
  old = {}
  if os.path.exists(RESULTS):
    import json  # pylint: disable=import-outside-toplevel
    with open(RESULTS) as f:
      old = json.load(f).get("results", {})
  results = dict(old)
  if args.part in ("template", "all"):
    faces, _ = read_fer2013(args.fer2013, "Training", args.n_train)
    results["template"] = measure_template(det, faces)
    print("template (48 px):", results["template"]["template_48"], "from", results["template"]["n_used"], "faces")
  if args.part in ("accuracy", "all"):
    from fer_jax.data import align  # pylint: disable=import-outside-toplevel
    if "fer2013" not in align.TEMPLATES:
      raise SystemExit("fer_jax.data.align has no 'fer2013' template yet: run --part template first and "
                       "copy its numbers into align.FER2013_TEMPLATE_48")
    faces, labels = read_fer2013(args.fer2013, "PublicTest", args.n_test)
    results["accuracy"] = measure_accuracy(det, faces, labels)
    results["accuracy"]["template_used_48"] = np.round(align.FER2013_TEMPLATE_48, 3).tolist()
    print(results["accuracy"])
  meta = {"script": "benchmarks/fer2013_template.py", "detector": "fer_jax.detect.MTCNN() defaults",
          "upscale": UP, "pad": PAD, "min_score": MIN_SCORE, "cpu_count": os.cpu_count()}
  write_json(RESULTS, meta, results)


if __name__ == "__main__":
  main()
