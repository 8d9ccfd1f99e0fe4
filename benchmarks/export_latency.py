r"""Batch-1 CPU latency of the shipped model: JAX (jit) vs its TFLite and ONNX exports, float32 and int8, with
file sizes and parity against JAX, measured in one run on the same CPU.

Run (needs the export extra and the FER2013 CSV):

    .venv/bin/python benchmarks/export_latency.py --fer2013=../shared/data/fer2013/fer2013.csv.gz \
        [--test_crops=center] [--threads=1] [--rounds=7] [--steps=100]

Each export is made by ``fer_jax.export.export`` (int8: calibrated on the first ``--calibration_size``
Training faces) and checked on the first 1,000 PublicTest faces: max |dp| of the probabilities and top-1
agreement vs JAX, and accuracy against the FER2013 labels. Latency: one face (1, 48, 48, 1) per call;
interleaved rounds (each contender runs ``--steps`` calls per round), medians. TFLite (ai_edge_litert, XNNPACK)
and onnxruntime run with ``--threads`` intra-op threads; JAX with XLA's CPU defaults. Results go to
benchmarks/results/export_latency.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _interleaved import time_interleaved, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--fer2013", default=os.path.join(HERE, "..", "..", "shared", "data", "fer2013",
                                                    "fer2013.csv.gz"))
  ap.add_argument("--model", default="fer2013_resnet_s")
  ap.add_argument("--test_crops", default="center")
  ap.add_argument("--calibration_size", type=int, default=200)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--out", default=os.path.join(HERE, "results", "export_latency.json"))
  args = ap.parse_args()

  import jax
  from fer_jax import export, pretrained
  from fer_jax.export import faces

  predictor = pretrained.load(args.model)
  check, labels = faces.read_fer2013(args.fer2013, "PublicTest", 1000)
  calib = faces.read_fer2013(args.fer2013, "Training", args.calibration_size)[0]
  x1 = check[:1].astype(np.float32)
  jax_probs = predictor.predict_proba(check, test_crops=args.test_crops)
  results, contenders = {}, {}
  fn = jax.jit(lambda v, x: predictor.forward(v, x, args.test_crops))
  contenders["jax jit float32"] = lambda: jax.block_until_ready(fn(predictor.variables, x1))
  results["jax jit float32"] = {"size_bytes": os.path.getsize(os.path.join(pretrained.WEIGHTS_DIR,
                                                                           args.model + ".msgpack")),
                                "accuracy": float(np.mean(jax_probs.argmax(1) == labels))}
  with tempfile.TemporaryDirectory() as d:
    for fmt in ("tflite", "onnx"):
      for int8 in (False, True):
        name = f"{fmt} {'int8' if int8 else 'float32'}"
        path = os.path.join(d, f"m_{int8}.{fmt}")
        r = export.export(predictor, fmt, path, int8=int8, test_crops=args.test_crops,
                          calibration=calib if int8 else None, check_faces=check, latency_runs=0, strict=False)
        run = export.runner(path, num_threads=args.threads)
        probs = run(check.astype(np.float32))
        results[name] = {"size_bytes": r.size_bytes, "max_abs_diff_vs_jax": r.max_abs_diff,
                         "top1_agreement_vs_jax": r.top1_agreement, "passed": r.passed, "criterion": r.criterion,
                         "accuracy": float(np.mean(probs.argmax(1) == labels)),
                         "convert_seconds": r.convert_seconds}
        contenders[name] = lambda run=run: run(x1)
  # (The runners keep their models in memory after the files are gone.)
  times = time_interleaved(contenders, warmup=20, rounds=args.rounds, steps=args.steps)
  base = float(np.median(times["jax jit float32"]))
  for k, ts in times.items():
    t = np.asarray(ts)
    results[k].update(median_ms=float(np.median(t) * 1e3), min_ms=float(t.min() * 1e3), n_calls=int(t.size),
                      speedup_vs_jax=base / float(np.median(t)))
  meta = {"command": "python benchmarks/export_latency.py --fer2013=../shared/data/fer2013/fer2013.csv.gz "
                     f"--test_crops={args.test_crops} --threads={args.threads}",
          "model": args.model, "test_crops": args.test_crops, "batch": 1, "threads": args.threads,
          "check_faces": "first 1000 PublicTest rows", "calibration_faces": f"first {len(calib)} Training rows",
          "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__}
  print(f"{'':18s} {'median ms':>10s} {'size MiB':>9s} {'max|dp|':>9s} {'top-1 agr':>9s} {'accuracy':>9s}")
  for k, r in results.items():
    print(f"{k:18s} {r['median_ms']:10.3f} {r['size_bytes'] / 2**20:9.2f} "
          f"{r.get('max_abs_diff_vs_jax', 0.0):9.2e} {100 * r.get('top1_agreement_vs_jax', 1.0):8.1f}% "
          f"{100 * r['accuracy']:8.1f}%")
  write_json(args.out, meta, results)


if __name__ == "__main__":
  main()
