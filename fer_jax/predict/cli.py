"""``fer-jax predict INPUT... --output FILE``: faces and emotions of photos, folders and videos -> a table.

Exit status: 0 when at least one input was read, 1 when every input failed (or none was found), 2 for a
usage error (bad flag, unknown model, existing output without --overwrite), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

EPILOG = """\
example:
  fer-jax predict photos/ clip.mp4 --output faces.csv --every 2 --annotate annotated/

Output columns (one row per face, per frame without a face, per unreadable input):
  source, frame, time_s, face, track, status, error, x0, y0, x1, y1, det_score,
  le_x, le_y, re_x, re_y, nose_x, nose_y, lm_x, lm_y, rm_x, rm_y, p_<class>..., label
  [, valence, arousal]  (see fer_jax/predict/writers.py)
"""


def add_input_arguments(p: argparse.ArgumentParser) -> None:
  """The positional INPUT... of the subcommands that read photos and videos (predict, explain)."""
  p.add_argument("inputs", nargs="+", metavar="INPUT",
                 help="image or video files, or folders (searched recursively for images and videos)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
  """--model | --workdir [--step]: the arguments of ``fer_jax.pretrained.resolve``, shared by the subcommands."""
  src = p.add_mutually_exclusive_group()
  src.add_argument("--model", default=None,
                   help="a shipped model name or a <name>.json path (default: the best shipped model)")
  src.add_argument("--workdir", default=None, help="a training work dir: use its latest checkpoint")
  p.add_argument("--step", type=int, default=None, help="with --workdir: this checkpoint step")


def build_parser() -> argparse.ArgumentParser:
  from fer_jax.predict.faces import ALIGNMENTS  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      prog="fer-jax predict", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Detect, align, track and classify the faces in images and videos; write one row per face\n"
                  "to a CSV, JSON-lines or Parquet file (by the --output extension), batch by batch.")
  add_input_arguments(p)
  add_model_arguments(p)
  p.add_argument("--output", "-o", required=True, help="FILE.csv | FILE.jsonl | FILE.parquet")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
  p.add_argument("--every", type=int, default=1, metavar="N", help="process every N-th video frame (default 1)")
  p.add_argument("--no-detect", "--no_detect", dest="detect", action="store_false",
                 help="no face detection: every input (frame) is an aligned face crop")
  p.add_argument("--align", choices=ALIGNMENTS, default="fer2013",
                 help="fer2013: landmarks onto FER2013's face framing (default); arcface: onto the ArcFace "
                      "template; box: a square crop of the detector box")
  p.add_argument("--test_crops", "--test-crops", choices=("ten", "flip", "center", "none"), default=None,
                 help="test-time crops averaged (default: as the model was evaluated; 'center' is ~10x "
                      "faster than 'ten')")
  p.add_argument("--batch_size", "--batch-size", type=int, default=256, metavar="N",
                 help="faces per classifier batch; rows are written per batch (default 256)")
  p.add_argument("--annotate", metavar="DIR", default=None,
                 help="write copies of the inputs with boxes, landmarks, track ids and labels drawn into DIR")
  p.add_argument("--max_gap", "--max-gap", type=int, default=5, metavar="N",
                 help="tracking: frames a face may be missing and keep its track id (default 5)")
  p.add_argument("--min_face", "--min-face", type=int, default=20, metavar="PX",
                 help="smallest face side the detector looks for, in pixels (default 20; 40 ran 1.8x faster at 720x576)")
  p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  for name in ("every", "batch_size"):
    if getattr(args, name) < 1:
      print(f"error: --{name}={getattr(args, name)}; expected a positive integer", file=sys.stderr)
      return 2
  if args.min_face < 12:
    print(f"error: --min_face={args.min_face}; expected an integer >= 12 (MTCNN's smallest window)",
          file=sys.stderr)
    return 2
  if args.max_gap < 0:
    print(f"error: --max_gap={args.max_gap}; expected an integer >= 0", file=sys.stderr)
    return 2
  logging.basicConfig(format="%(message)s", level=logging.WARNING)
  logging.getLogger("fer_jax").setLevel(logging.INFO)  # ours, not every library's INFO lines
  from fer_jax.predict import runner, writers  # pylint: disable=import-outside-toplevel
  try:
    writers.format_of(args.output)
    if os.path.exists(args.output) and not args.overwrite:  # before the model loads
      raise FileExistsError(f"output {args.output!r} exists; pass --overwrite to replace it")
    if args.step is not None and not args.workdir:
      raise ValueError("--step needs --workdir")
    from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
    predictor = pretrained.resolve(args.model, args.workdir, args.step)
    df = runner.predict(args.inputs, predictor=predictor, detect=args.detect, every=args.every,
                        align=args.align, test_crops=args.test_crops, batch_size=args.batch_size,
                        output=args.output, overwrite=args.overwrite, annotate=args.annotate,
                        progress=not args.quiet, max_gap=args.max_gap,
                        min_face=args.min_face)
  except KeyboardInterrupt:
    print(f"interrupted; the rows so far are in {args.output}", file=sys.stderr)
    return 130
  except KeyError as e:  # unknown model: the message lists the shipped ones
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  s = df.attrs["summary"]
  print(f"predict: {s['files']} file(s), {s['files_ok']} read, {s['frames']} frame(s), {s['faces']} face(s), "
        f"{len(s['errors'])} error(s); {len(df)} row(s) written to {args.output}")
  for msg in s["errors"]:
    print(f"  error: {msg}")
  return 0 if s["files_ok"] > 0 else 1
