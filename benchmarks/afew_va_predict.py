r"""``fer-jax predict`` on the genuine AFEW-VA clip: detected faces against the annotated landmarks.

    .venv/bin/python benchmarks/afew_va_predict.py --clip=../shared/data/afew_va/001 [--out=runs/afew_va_predict]

Runs the CLI twice, as a user would: on the 42 PNG frames (a folder), and on an H.264 video made from
them at 25 fps (PyAV's libx264, CRF 18), each with ``--annotate``. Then, per frame, compares the detection
with the clip's 68 annotated landmarks (``001.json``):

* box: IoU of the detected box with the bounding box of the 68 points (the two boxes frame a face
  differently - MTCNN's runs from the brows to the chin, the landmarks' from the jaw line's ends and the
  brows - so the IoU of a perfect detection is below 1; we report it as measured);
* landmarks: the 5 detected points against the matching annotated ones - eye centres (means of points 36-41
  and 42-47), nose tip (30), mouth corners (48, 54) - mean error in pixels and as a share of the annotated
  inter-ocular distance (NME, the face-alignment literature's measure).

Writes ``<out>/frames.csv``, ``<out>/video.csv``, the annotated outputs, and
benchmarks/results/afew_va_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIVE = ("le", "re", "nose", "lm", "rm")


def annotated_five(lm68: np.ndarray) -> np.ndarray:
  return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])


def iou(a, b) -> float:
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_video(frame_paths, path: str, fps: int = 25) -> None:
  import av  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
    first = Image.open(frame_paths[0])
    stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
    for p in frame_paths:
      frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(p).convert("RGB")), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def evaluate(table, annotations, frame_of_row):
  ious, errs, nmes, missing, extra = [], [], [], [], 0
  for key, ann in annotations.items():
    rows = [r for r in table if frame_of_row(r) == key and r["status"] == "ok"]
    if not rows:
      missing.append(key)
      continue
    extra += len(rows) - 1
    best = max(rows, key=lambda r: r["det_score"])
    lm68 = np.asarray(ann["landmarks"], np.float64)
    gt_box = (*lm68.min(0), *lm68.max(0))
    ious.append(iou([best[c] for c in ("x0", "y0", "x1", "y1")], gt_box))
    det5 = np.asarray([[best[f"{p}_x"], best[f"{p}_y"]] for p in FIVE])
    ref5 = annotated_five(lm68)
    e = np.linalg.norm(det5 - ref5, axis=1)
    errs.append(e)
    nmes.append(e.mean() / np.linalg.norm(ref5[0] - ref5[1]))
  errs = np.asarray(errs)
  return {"frames": len(annotations), "frames_with_face": len(ious), "frames_missed": missing,
          "extra_faces": extra, "iou_mean": float(np.mean(ious)), "iou_min": float(np.min(ious)),
          "iou_median": float(np.median(ious)),
          "landmark_error_px_mean": float(errs.mean()),
          "landmark_error_px_per_point": dict(zip(FIVE, map(float, errs.mean(0)))),
          "nme_interocular_mean": float(np.mean(nmes)), "iou_per_frame": [float(v) for v in ious]}


def read_rows(path):
  import pandas as pd  # noqa: PLC0415
  return pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict("records")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--clip", default=os.path.join(ROOT, "..", "shared", "data", "afew_va", "001"))
  ap.add_argument("--out", default=os.path.join(ROOT, "runs", "afew_va_predict"))
  args = ap.parse_args()
  clip = os.path.abspath(args.clip)
  meta = json.load(open(os.path.join(clip, os.path.basename(clip) + ".json")))
  annotations = meta["frames"]
  frames = [os.path.join(clip, k + ".png") for k in sorted(annotations)]
  os.makedirs(args.out, exist_ok=True)
  video = os.path.join(args.out, "clip.mp4")
  make_video(frames, video)

  results = {}
  for name, inputs in (("frames", [clip]), ("video", [video])):
    table = os.path.join(args.out, f"{name}.csv")
    cmd = [sys.executable, "-m", "fer_jax.main", "predict", *inputs, "--output", table, "--overwrite",
           "--annotate", os.path.join(args.out, f"annotated_{name}")]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = read_rows(table)
    if name == "frames":
      frame_of_row = lambda r: os.path.splitext(os.path.basename(r["source"]))[0]  # noqa: E731
    else:
      keys = sorted(annotations)
      frame_of_row = lambda r: keys[int(r["frame"])]  # noqa: E731
    res = evaluate(rows, annotations, frame_of_row)
    labels = [r["label"] for r in rows if r["status"] == "ok"]
    res["labels"] = {lab: labels.count(lab) for lab in sorted(set(labels))}
    res["tracks"] = sorted({int(r["track"]) for r in rows if r["status"] == "ok"})
    res["command"] = " ".join(cmd)
    results[name] = res
    print(f"{name}: faces in {res['frames_with_face']}/{res['frames']} frames (+{res['extra_faces']} extra), "
          f"IoU mean {res['iou_mean']:.3f} (min {res['iou_min']:.3f}), 5-point error "
          f"{res['landmark_error_px_mean']:.2f} px, NME {res['nme_interocular_mean']:.3f}, labels {res['labels']}")
  sys.path.insert(0, HERE)
  from _interleaved import write_json  # noqa: PLC0415
  write_json(os.path.join(HERE, "results", "afew_va_predict.json"),
             {"command": "python " + " ".join(sys.argv), "clip": os.path.basename(clip),
              "frame_size": "720x576"}, results)


if __name__ == "__main__":
  main()
