r"""MTCNN per-frame time: ours (JAX) vs facenet-pytorch, smallest face 20 / 40 px, and frames batched by 8.

    .venv/bin/python benchmarks/mtcnn_speed.py --clip=../shared/data/afew_va/001 [--rounds=5]

The 42 genuine 720x576 AFEW-VA frames; every contender is warmed up (compiled) on them first, then the
contenders take turns, each processing all frames once per round; per-frame medians over rounds. facenet's
torchvision NMS cannot load beside CPU torch here, so it runs with a plain-torch NMS of the same rules
(greedy, IoU > threshold suppressed, per image), as in tests/test_mtcnn.py. Writes
benchmarks/results/mtcnn_speed.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _interleaved import write_json  # noqa: E402


def torch_batched_nms(boxes, scores, idxs, threshold):
  import torch  # noqa: PLC0415
  keep = []
  for c in torch.unique(idxs):
    sel = torch.nonzero(idxs == c).flatten()
    order = sel[torch.argsort(scores[sel], descending=True)]
    while order.numel():
      i = order[0]
      keep.append(i)
      if order.numel() == 1:
        break
      rest = order[1:]
      xx1 = torch.maximum(boxes[i, 0], boxes[rest, 0])
      yy1 = torch.maximum(boxes[i, 1], boxes[rest, 1])
      xx2 = torch.minimum(boxes[i, 2], boxes[rest, 2])
      yy2 = torch.minimum(boxes[i, 3], boxes[rest, 3])
      inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
      area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
      iou = inter / (area(boxes[i]) + area(boxes[rest]) - inter)
      order = rest[iou <= threshold]
  keep = torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)
  return keep[torch.argsort(scores[keep], descending=True)]


def facenet_mtcnn():
  from fer_jax.testing import import_timm  # noqa: PLC0415  (imports torchvision around its CUDA-only ops)
  torch, _ = import_timm()
  torch.set_num_threads(os.cpu_count())
  from facenet_pytorch import MTCNN  # noqa: PLC0415
  from facenet_pytorch.models.utils import detect_face  # noqa: PLC0415
  detect_face.batched_nms = torch_batched_nms
  return MTCNN(keep_all=True, device="cpu", select_largest=False)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--clip", default=os.path.join(HERE, "..", "..", "shared", "data", "afew_va", "001"))
  ap.add_argument("--rounds", type=int, default=5)
  args = ap.parse_args()
  from fer_jax.detect import MTCNN  # noqa: PLC0415
  frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(glob.glob(os.path.join(args.clip, "*.png")))]
  batch = np.stack(frames[:40]).reshape(5, 8, *frames[0].shape)
  ours20, ours40, theirs = MTCNN(), MTCNN(min_face_size=40), facenet_mtcnn()
  contenders = {
      "ours, min face 20 (default), one frame per call": (lambda: [ours20.detect(f) for f in frames], len(frames)),
      "ours, min face 40, one frame per call": (lambda: [ours40.detect(f) for f in frames], len(frames)),
      "ours, min face 20, 8 frames per call": (lambda: [ours20.detect_batch(b) for b in batch], 40),
      "facenet-pytorch, min face 20, one frame per call": (
          lambda: [theirs.detect(Image.fromarray(f)) for f in frames], len(frames)),
  }
  for fn, _ in contenders.values():
    fn()
  times = {k: [] for k in contenders}
  for _ in range(args.rounds):
    for k, (fn, n) in contenders.items():
      t0 = time.perf_counter()
      fn()
      times[k].append((time.perf_counter() - t0) / n)
  ref = float(np.median(times["facenet-pytorch, min face 20, one frame per call"]))
  rows = {}
  print(f"{len(frames)} AFEW-VA frames of {frames[0].shape[1]}x{frames[0].shape[0]}, {os.cpu_count()} CPUs, "
        f"medians of {args.rounds} rounds")
  for k, ts in times.items():
    med = float(np.median(ts))
    rows[k] = {"ms_per_frame": med * 1e3, "vs_facenet_time": med / ref, "per_round_ms": [t * 1e3 for t in ts]}
    print(f"{k:52s} {med * 1e3:7.1f} ms/frame  ({med / ref:.2f}x facenet's time)")
  write_json(os.path.join(HERE, "results", "mtcnn_speed.json"),
             {"command": "python " + " ".join(sys.argv), "frames": len(frames)}, rows)


if __name__ == "__main__":
  main()
