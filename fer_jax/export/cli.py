"""``fer-jax export``: a shipped model or a training work dir's checkpoint -> .tflite / .onnx, checked against JAX.
A work dir of the ``emotic`` task (SeLiNet, the EMOTIC baseline: two inputs) goes to ``fer_jax.export.scenes``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

EPILOG = """\
examples:
  fer-jax export --model fer2013_resnet_s --format tflite --output fer.tflite \\
      --check ../shared/data/fer2013/fer2013.csv.gz
  fer-jax export --model fer2013_resnet_s --format onnx --int8 --output fer_int8.onnx \\
      --calibration ../shared/data/fer2013/fer2013.csv.gz --check ../shared/data/fer2013/fer2013.csv.gz
  fer-jax export --workdir runs/resnet_fer2013_seed0 --format tflite --test_crops flip --output run.tflite
  fer-jax export --workdir runs/selinet_ondevice --format onnx --int8 --output selinet_int8.onnx

The file takes float32 (N, 48, 48, 1) pixel values 0..255 (grey faces resized to the model's size; no
scaling) and returns float32 (N, 7) probabilities; the contract and class names are in its metadata.
--calibration / --check take a FER2013 CSV (calibration: its first Training rows; check: its first 1,000
PublicTest rows) or a folder of face images; without them synthetic faces are used (and said so).

A --workdir trained with the emotic task (experiments/selinet_emotic.py, emotic_baseline.py) exports a
two-input file: body (1, b, b, 3) and context (1, s, s, 3) float32 pixels 0..255 -> category_scores (1, 26),
sentiment_probs (1, 3; with a sentiment head), vad (1, 3; with a VAD head). It is calibrated on the first
--calibration_size examples of the run's training split and checked on the first --check_size examples of
--check_split (default test) of the run's dataset (float: max |d| <= 1e-4; int8: mAP at most 2 points below
JAX's); --test_crops, --calibration, --check and --batch_size dynamic are for face classifiers and refused.
Needs the export extra: pip install 'fer_jax[export]' and pip install --no-deps jax2onnx==0.17.1.
"""


def build_parser() -> argparse.ArgumentParser:
  from fer_jax.export import DEFAULT_CALIBRATION_FACES, DEFAULT_CHECK_FACES  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      prog="fer-jax export", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Export a FER model to TFLite or ONNX (float32 or int8) for mobile / edge inference; the "
                  "exported file is checked against JAX (float: max |dp| <= 1e-4; int8: top-1 agreement >= 98%, "
                  "emotic-task runs: mAP at most 2 points below JAX's) and its size and batch-1 CPU latency are "
                  "printed.")
  from fer_jax.predict import cli as predict_cli  # pylint: disable=import-outside-toplevel
  predict_cli.add_model_arguments(p)
  p.add_argument("--format", required=True, choices=("tflite", "onnx"))
  p.add_argument("--output", required=True, help="the .tflite / .onnx file to write")
  p.add_argument("--int8", action="store_true", help="full-integer post-training quantization")
  p.add_argument("--test_crops", default=None, choices=("center", "flip", "ten", "none"),
                 help="test-time crops inside the exported model (default: center, one crop, for mobile)")
  p.add_argument("--batch_size", default="1",
                 help="the file's fixed batch size, or 'dynamic' (default: 1)")
  p.add_argument("--calibration", help="int8 calibration faces: a FER2013 .csv[.gz] (Training rows) or an image "
                 "folder (default: synthetic faces)")
  p.add_argument("--calibration_size", type=int, default=DEFAULT_CALIBRATION_FACES,
                 help=f"calibration faces (default: {DEFAULT_CALIBRATION_FACES})")
  p.add_argument("--check", help="faces to check against JAX: a FER2013 .csv[.gz] (PublicTest rows) or an image "
                 "folder (default: synthetic faces)")
  p.add_argument("--check_size", type=int, default=DEFAULT_CHECK_FACES,
                 help=f"check faces (default: {DEFAULT_CHECK_FACES})")
  p.add_argument("--check_split", default=None,
                 help="emotic-task work dirs: the split of the run's dataset to check on (default: test)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  p.add_argument("--no_strict", action="store_true", help="write the file even if the check fails")
  p.add_argument("--report", help="also write the report (sizes, parity, latency) to this .json file")
  return p


def _batch_size(text: str) -> Optional[int]:
  if text == "dynamic":
    return None
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise ValueError(f"--batch_size={text!r}; expected a positive integer or 'dynamic'")
  return value


def _rows(source: str, usage: str) -> str:
  return "" if os.path.isdir(source) else f"{usage} "


def main(argv: Optional[List[str]] = None) -> int:
  """Runs ``fer-jax export``; returns the exit status (0 ok, 1 error; 2 usage, from argparse)."""
  args = build_parser().parse_args(argv)
  from fer_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
  from fer_jax.export import faces, scenes  # pylint: disable=import-outside-toplevel
  try:
    batch_size = _batch_size(args.batch_size)
    for name in ("calibration_size", "check_size"):
      if getattr(args, name) < 1:
        raise ValueError(f"--{name}={getattr(args, name)}; expected a positive integer")
    if args.step is not None and not args.workdir:
      raise ValueError(f"--step={args.step} needs --workdir")
    suffix = export_lib.FORMATS[args.format]
    if not args.output.endswith(suffix):
      raise ValueError(f"--output={args.output!r} does not end in {suffix!r}, as --format={args.format} files do")
    if os.path.exists(args.output) and not args.overwrite:
      raise FileExistsError(f"--output={args.output!r} already exists; pass --overwrite to replace it")
    if args.workdir and scenes.is_scene_run(args.workdir):
      report = _export_scenes(args, batch_size, scenes)
    else:
      if args.check_split is not None:
        raise ValueError(f"--check_split={args.check_split!r} is for emotic-task work dirs; for a face classifier "
                         "pass --check")
      report = _export_faces(args, batch_size, export_lib, pretrained, faces)
    if args.report:
      tmp = args.report + ".tmp"
      with open(tmp, "w") as f:
        json.dump(report.to_dict(), f, indent=2)
        f.write("\n")
      os.replace(tmp, args.report)
    if not report.passed:
      print(f"warning: the check failed ({report.criterion}); written anyway (--no_strict)", file=sys.stderr)
  except (ValueError, TypeError, KeyError, OSError, ImportError, RuntimeError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return 1
  return 0


def _export_scenes(args, batch_size, scenes):
  """An emotic-task work dir: calibration / check examples from the run's own splits."""
  refused = [f"--{k}" for k in ("test_crops", "calibration", "check") if getattr(args, k)]
  if refused:
    raise ValueError(f"{', '.join(refused)}: face-classifier options; {args.workdir} is an emotic-task run "
                     "(body + context), calibrated on its training split and checked on --check_split")
  if batch_size is None:
    raise ValueError("--batch_size=dynamic: a two-input (emotic-task) file has a fixed batch; pass an integer")
  split = args.check_split or "test"
  what = f"{args.calibration_size} training examples, " if args.int8 else ""
  print(f"{args.workdir}: emotic-task run (body + context inputs); {what}check on the first {args.check_size} "
        f"{split!r} examples of its dataset", flush=True)
  return scenes.export_run(args.workdir, args.format, args.output, int8=args.int8, step=args.step,
                           batch_size=batch_size, check_split=split, n_check=args.check_size,
                           n_calibration=args.calibration_size, overwrite=args.overwrite,
                           strict=not args.no_strict, verbose=True)


def _export_faces(args, batch_size, export_lib, pretrained, faces):
  """A face classifier (shipped model or work dir)."""
  predictor = pretrained.resolve(args.model, args.workdir, args.step)
  size, ch = predictor.image_size, predictor.channels
  calibration = None
  if args.int8:
    if args.calibration:
      calibration = faces.load_faces(args.calibration, args.calibration_size, "Training", size, ch)
      print(f"calibration: {len(calibration)} {_rows(args.calibration, 'Training')}faces from {args.calibration}",
            flush=True)
    else:
      print(f"no --calibration: calibrating on {args.calibration_size} synthetic faces (fer_jax.data.synthetic); "
            "pass --calibration fer2013.csv.gz for real faces", flush=True)
  elif args.calibration:
    print("--calibration is used only with --int8; ignored", flush=True)
  check = None
  if args.check:
    check = faces.load_faces(args.check, args.check_size, "PublicTest", size, ch)
    print(f"check: {len(check)} {_rows(args.check, 'PublicTest')}faces from {args.check}", flush=True)
  else:
    print(f"no --check: checking against JAX on {export_lib.SYNTHETIC_CHECK_FACES} synthetic faces "
          "(fer_jax.data.synthetic); pass --check fer2013.csv.gz for the acceptance check on real faces",
          flush=True)
  return export_lib.export(
      predictor, args.format, args.output, int8=args.int8, test_crops=args.test_crops or "center",
      calibration=calibration, batch_size=batch_size, check_faces=check, overwrite=args.overwrite,
      strict=not args.no_strict, n_calibration=args.calibration_size, verbose=True)


if __name__ == "__main__":
  sys.exit(main())
