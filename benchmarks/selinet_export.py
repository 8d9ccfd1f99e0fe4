r"""SeLiNet (or any ``emotic``-task model) from a training work dir to TFLite and ONNX, float32 and int8: file
sizes, batch-1 CPU latency, and the exported models' EMOTIC metrics against JAX's on a split.

    .venv/bin/python benchmarks/selinet_export.py --workdir=runs/selinet/ondevice \
        [--split=test] [--calibration=200] [--runs=100] [--threads=1] [--formats=tflite,onnx]

(the data are read from the dataset and data_dir of the run's saved config: run it from the directory the
training ran in when that data_dir is relative).

A thin caller of ``fer_jax.export.scenes.export_run`` (what ``fer-jax export --workdir RUN`` runs for an
``emotic`` run; see its docstring for the file's contract: inputs ``body`` / ``context`` float32 pixels 0..255,
outputs ``category_scores``, ``sentiment_probs``, ``vad``), with the whole ``--split`` as check examples and
the check reported, not enforced. int8 is calibrated on the first ``--calibration`` training examples.

Reported (JSON in ``<workdir>/export/report.json``, files next to it; keys ``float32`` / ``int8`` are the TFLite
files, ``onnx_float32`` / ``onnx_int8`` the ONNX ones): size; median latency of ``--runs`` single-example calls
(``--threads`` runtime threads; JAX: the jitted model as trained, all threads); max |difference| of each output
vs JAX, sentiment agreement; per-category AP, mAP and sentiment accuracy / macro-F1 of JAX and of each file on
``--split``; whether the export check passed.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

FORMATS = ("tflite", "onnx")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--split", default="test")
  ap.add_argument("--calibration", type=int, default=200)
  ap.add_argument("--runs", type=int, default=100)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--out_dir", default=None)
  ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: tflite, onnx")
  args = ap.parse_args()
  formats = [f for f in args.formats.split(",") if f]
  bad = sorted(set(formats) - set(FORMATS))
  if bad:
    ap.error(f"--formats={args.formats!r}: unknown {bad}; expected some of {list(FORMATS)}")

  import jax
  from fer_jax.export import median_latency_ms, scenes

  run = scenes.load_run(args.workdir)
  out_dir = args.out_dir or os.path.join(args.workdir, "export")
  os.makedirs(out_dir, exist_ok=True)
  report = {"workdir": args.workdir, "step": run.step, "split": args.split,
            "params": int(sum(np.size(a) for a in jax.tree.leaves(run.variables["params"])))}
  for fmt in formats:
    for int8 in (False, True):
      name = "int8" if int8 else "float32"
      key = name if fmt == "tflite" else f"onnx_{name}"
      path = os.path.join(out_dir, f"model_{name}.{fmt}")
      r = scenes.export_run(run, fmt, path, int8=int8, check_split=args.split, n_check=None,
                            n_calibration=args.calibration, overwrite=True, strict=False,
                            latency_runs=args.runs, num_threads=args.threads, verbose=True)
      if "jax" not in report:
        report["n"] = r.n_check
        one = {k: v[:1].astype(np.float32) for k, v in run.read(args.split, 1)[0].items()}
        fn = jax.jit(lambda body, context: run.forward(run.variables, body, context, run.exp.model))
        report["jax"] = {**r.jax, "latency_ms_batch1": median_latency_ms(
            lambda x: jax.block_until_ready(fn(**x)), one, args.runs)}
      entry = {"path": path, "size_bytes": r.size_bytes, "size_mib": r.size_bytes / 2**20,
               "convert_seconds": r.convert_seconds, "latency_ms_batch1": r.latency_ms_batch1,
               "max_abs_diff": r.max_abs_diff, **r.file, "check_passed": r.passed, "criterion": r.criterion}
      if r.sentiment_agreement is not None:
        entry["sentiment_agreement_vs_jax"] = r.sentiment_agreement
      report[key] = entry
  report["threads"] = args.threads
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  rows = [k for k in ("float32", "int8", "onnx_float32", "onnx_int8") if k in report]
  print(json.dumps({k: v for k, v in report.items() if k not in ["jax"] + rows}))
  for k in rows:
    e = report[k]
    print(f"{k}: {e['size_mib']:.2f} MiB, {e['latency_ms_batch1']:.3f} ms, mAP {100 * e['map']:.2f} "
          f"(JAX {100 * report['jax']['map']:.2f}), sentiment agreement "
          f"{100 * e.get('sentiment_agreement_vs_jax', float('nan')):.1f}%")


if __name__ == "__main__":
  main()
