"""``fer-jax explain INPUT... --out_dir DIR``: Integrated Gradients pictures and per-region tables of the
faces in photos, folders and videos (``fer_jax.explain.faces`` on ``fer_jax.predict``'s face crops).

Writes ``DIR/<input stem>[_f<frame>]_face<k>.png`` per face (a ``_<n>`` suffix when two inputs share a stem)
and ``DIR/regions.csv``, one row per face and region (``REGIONS_5``, or ``REGIONS_68`` for faces given 68
landmarks with ``--landmarks68``). Exit status: 0 when at least one input was read, 1 when every input failed
(or none was found), 2 for a usage error (bad flag, unknown model or class), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

CSV_COLUMNS = ("source", "frame", "face", "target", "probability", "region", "abs_sum", "share", "signed_sum",
               "area", "predicted", "output", "value", "baseline_value", "delta", "landmarks", "png")
DELTA_WARN = 0.1  # relative completeness error above which a face is reported

EPILOG = """\
example:
  fer-jax explain photos/ clip.mp4 --every 25 --out_dir explained/
  fer-jax explain fer_faces/ --no-detect --target happy --steps 128 --out_dir explained/

Each picture: the face, |IG| as a heat map, the signed IG (red raises the target's logit, blue lowers it),
under the target class, its probability and the regions with the largest share of |IG|.
regions.csv columns: source, frame, face, target, probability, region, abs_sum, share, signed_sum,
  area (the region's fraction of the crop), predicted, output, value (F(x)), baseline_value (F(x')),
  delta (sum IG - (F(x) - F(x'))), landmarks ('5' | '68' | 'none'), png.
Defaults: the target's logit (not its probability, which saturates), a blurred baseline (the shipped
model standardises each image, so constant black / mean baselines are degenerate: see
fer_jax/explain/faces.py).
"""


def build_parser() -> argparse.ArgumentParser:
  from fer_jax.explain.faces import BASELINES, OUTPUTS  # pylint: disable=import-outside-toplevel
  from fer_jax.explain.integrated_gradients import METHODS  # pylint: disable=import-outside-toplevel
  from fer_jax.predict import cli as predict_cli  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      prog="fer-jax explain", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Integrated Gradients of the emotion classifier on the faces in images and videos: a PNG "
                  "per face and a CSV of the attribution per facial region.")
  predict_cli.add_input_arguments(p)
  predict_cli.add_model_arguments(p)
  p.add_argument("--out_dir", "--out-dir", required=True, metavar="DIR",
                 help="where the PNGs and regions.csv go")
  p.add_argument("--target", default="predicted",
                 help="the class explained: 'predicted' (default, each face's most probable class), a class "
                      "name or an index")
  p.add_argument("--no-detect", "--no_detect", dest="detect", action="store_false",
                 help="no face detection: every input (frame) is an aligned face crop")
  p.add_argument("--align", default="fer2013", help="face alignment of fer_jax.predict (default fer2013)")
  p.add_argument("--every", type=int, default=1, metavar="N",
                 help="explain every N-th video frame (default 1)")
  p.add_argument("--steps", type=int, default=64, metavar="N", help="IG path points (default 64)")
  p.add_argument("--method", choices=METHODS, default="gausslegendre",
                 help="IG quadrature (default gausslegendre)")
  p.add_argument("--baseline", choices=BASELINES, default="blur", help="IG baseline (default blur)")
  p.add_argument("--output", choices=OUTPUTS, default="logits", help="what IG explains (default logits)")
  p.add_argument("--test_crops", "--test-crops", choices=("ten", "flip", "center", "none"), default="center",
                 help="test-time crops averaged in the explained output (default center; ten is 10x slower)")
  p.add_argument("--landmarks68", metavar="FILE.json", default=None,
                 help="68 iBUG landmarks per frame in frame pixels, AFEW-VA layout ({'frames': {'<frame file "
                      "stem or 5-digit index>': {'landmarks': [[x, y] * 68]}}}): regions from them")
  p.add_argument("--display", type=int, default=192, metavar="PX",
                 help="panel size in the PNGs (default 192)")
  p.add_argument("--batch_size", "--batch-size", type=int, default=8, metavar="N",
                 help="faces per compiled IG call (default 8)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace the regions.csv and PNGs of an earlier run in --out_dir")
  return p


def _load_landmarks68(path: str) -> Dict[str, np.ndarray]:
  """AFEW-VA-style JSON -> key -> float (68, 2); a clear error for another layout."""
  with open(path) as f:
    data = json.load(f)
  frames = data.get("frames") if isinstance(data, dict) else None
  if not isinstance(frames, dict):
    raise ValueError(f"--landmarks68 {path}: expected a JSON object with a 'frames' object, got "
                     f"{type(frames).__name__ if isinstance(data, dict) else type(data).__name__}")
  out = {}
  for key, entry in frames.items():
    lm = np.asarray((entry or {}).get("landmarks", []), np.float64)
    if lm.shape != (68, 2):
      raise ValueError(f"--landmarks68 {path}: frame {key!r} has landmarks of shape {lm.shape}; "
                       "expected (68, 2)")
    out[str(key)] = lm
  return out


def _crop_landmarks68(crop, table: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
  """The 68 points of ``crop``'s frame mapped into the crop, if the table has them and they match the face
  (their 5-point summary within 0.25 inter-ocular distances of the face's 5 landmarks on average)."""
  from fer_jax.explain.faces import landmarks_to_crop  # pylint: disable=import-outside-toplevel
  keys = [os.path.splitext(os.path.basename(crop.source))[0]] if crop.frame_index is None else \
      [f"{crop.frame_index:05d}", str(crop.frame_index)]
  lm = next((table[k] for k in keys if k in table), None)
  face = np.asarray(crop.landmarks, np.float64)
  if lm is None or not np.isfinite(face).all():
    return None
  five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
  iod = np.linalg.norm(five[1] - five[0])
  if iod <= 0 or np.linalg.norm(five - face, axis=1).mean() > 0.25 * iod:
    return None
  return landmarks_to_crop(lm, face, crop.crop_landmarks)


def _title(stem: str, crop, res, i: int, stats: Dict[str, Dict[str, Any]], baseline: str,
           class_names) -> List[str]:
  frame = f" frame {crop.frame_index}" if crop.frame_index is not None else ""
  where = f"{stem}{frame} face {crop.face_index}"
  pred = int(np.argmax(res.probs[i]))
  names = [n for n in stats if n != "rest"] + ["rest"]
  top = sorted(names, key=lambda n: -float(stats[n]["share"]))[:4]
  regions = ", ".join(f"{n} {100 * float(stats[n]['share']):.0f}%" for n in top)
  return [f"{where}: {res.target_names[i]} p={res.target_probs[i]:.2f}"
          + ("" if pred == res.targets[i] else f" (predicted {class_names[pred]} {res.probs[i, pred]:.2f})"),
          f"IG of the {res.target_names[i]} {res.output[:-1]} vs a {baseline} baseline; completeness error "
          f"{100 * res.relative_delta[i]:.1f}%",
          f"|IG|: {regions}"]


class _Explainer:
  """Collects face crops, explains them in batches, writes the PNGs and the CSV rows."""

  def __init__(self, predictor, args, writer, table68):
    self.predictor, self.args, self.writer, self.table68 = predictor, args, writer, table68
    self.pending: list = []
    self.names: Dict[str, str] = {}  # stem -> the source that owns it
    self.faces, self.high_delta = 0, []

  def add(self, crop):
    self.pending.append(crop)
    if len(self.pending) >= self.args.batch_size:
      self.flush()

  def _stem(self, source: str) -> str:
    stem = os.path.splitext(os.path.basename(source))[0] or "input"
    cand, n = stem, 1
    while self.names.setdefault(cand, source) != source:
      n += 1
      cand = f"{stem}_{n}"
    return cand

  def flush(self):
    from fer_jax.explain import faces as ef  # pylint: disable=import-outside-toplevel
    if not self.pending:
      return
    crops, self.pending = self.pending, []
    a = self.args
    res = ef.explain_faces(self.predictor, np.stack([c.crop for c in crops]), target=a.target,
                           baseline=a.baseline, n_steps=a.steps, method=a.method, test_crops=a.test_crops,
                           output=a.output, batch_size=a.batch_size)
    hw = crops[0].crop.shape[:2]
    for i, crop in enumerate(crops):
      lm68 = _crop_landmarks68(crop, self.table68) if self.table68 else None
      lm5 = np.asarray(crop.crop_landmarks, np.float64)
      if lm68 is not None:
        kind, lm = "68", lm68
      elif np.isfinite(lm5).all() and np.linalg.norm(lm5[1] - lm5[0]) > 0:
        kind, lm = "5", lm5
      else:
        kind, lm = "none", None
      masks = ef.face_region_masks(lm, hw) if lm is not None else {"rest": np.ones(hw, bool)}
      stats = ef.region_stats(res.attributions[i], masks)
      stem = self._stem(crop.source)
      frame = "" if crop.frame_index is None else f"_f{crop.frame_index}"
      png = os.path.join(a.out_dir, f"{stem}{frame}_face{crop.face_index}.png")
      title = _title(stem, crop, res, i, stats, a.baseline, self.predictor.class_names)
      image = ef.explanation_image(crop.crop, res.attributions[i], landmarks=lm, display=a.display,
                                   title=title)
      ef.write_explanation_png(png, image)
      pred = self.predictor.class_names[int(np.argmax(res.probs[i]))]
      face = [crop.source, "" if crop.frame_index is None else crop.frame_index, crop.face_index,
              res.target_names[i], f"{res.target_probs[i]:.6g}"]
      tail = [pred, res.output, f"{res.values[i]:.6g}", f"{res.baseline_values[i]:.6g}",
              f"{res.delta[i]:.6g}", kind, png]
      for region, s in stats.items():
        numbers = [f"{float(s[k]):.6g}" for k in ("abs_sum", "share", "signed_sum", "area")]
        self.writer.writerow(face + [region] + numbers + tail)
      if res.relative_delta[i] > DELTA_WARN:
        self.high_delta.append(f"{png}: |delta| = {100 * res.relative_delta[i]:.0f}% of |F(x) - F(x')|")
      self.faces += 1


def _check_args(args, class_names) -> Optional[str]:
  for name in ("every", "steps", "batch_size"):
    if getattr(args, name) < 1:
      return f"--{name}={getattr(args, name)}; expected a positive integer"
  if args.display < 8:
    return f"--display={args.display}; expected at least 8 pixels"
  if args.target != "predicted":
    from fer_jax.explain.faces import resolve_targets  # pylint: disable=import-outside-toplevel
    try:
      resolve_targets(args.target, [0], class_names)
    except ValueError as e:
      return f"--target: {e}"
  return None


def main(argv: Optional[list[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  csv_path = os.path.join(args.out_dir, "regions.csv")
  if os.path.exists(csv_path) and not args.overwrite:  # before the model loads; nothing is touched
    print(f"error: {csv_path} exists (an earlier run's results); pass --overwrite to replace them, or "
          "another --out_dir", file=sys.stderr)
    return 2
  try:
    from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
    from fer_jax.predict import faces as faces_lib  # pylint: disable=import-outside-toplevel
    from fer_jax.predict import sources  # pylint: disable=import-outside-toplevel
    if args.step is not None and not args.workdir:
      raise ValueError("--step needs --workdir")
    predictor = pretrained.resolve(args.model, args.workdir, args.step)
    problem = _check_args(args, predictor.class_names)
    if problem:
      raise ValueError(problem)
    faces_lib.check_align(args.align)
    table68 = _load_landmarks68(args.landmarks68) if args.landmarks68 else None
  except KeyError as e:  # unknown model: the message lists the shipped ones
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  files = sources.discover(args.inputs)
  os.makedirs(args.out_dir, exist_ok=True)
  errors: List[str] = []
  files_ok = 0
  try:
    with open(csv_path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(CSV_COLUMNS)
      explainer = _Explainer(predictor, args, writer, table68)
      for path in files:
        got_frame = False
        try:
          frames = sources.iter_frames(path, every=args.every)
          for _, crops in faces_lib.faces_in_frames(frames, detect=args.detect, size=predictor.image_size,
                                                    align=args.align):
            got_frame = True
            for crop in crops:
              explainer.add(crop)
        except sources.InputError as e:
          errors.append(str(e))
        files_ok += got_frame
      explainer.flush()
  except KeyboardInterrupt:
    print(f"interrupted; the faces explained so far are in {args.out_dir}", file=sys.stderr)
    return 130
  print(f"explain: {len(files)} file(s), {files_ok} read, {explainer.faces} face(s), {len(errors)} error(s); "
        f"pictures and {csv_path} in {args.out_dir}")
  for msg in errors:
    print(f"  error: {msg}")
  if explainer.high_delta:
    print(f"  {len(explainer.high_delta)} face(s) with a completeness error above {DELTA_WARN:.0%} (raise "
          f"--steps{'' if args.baseline == 'blur' else ', or use --baseline blur'}):")
    for msg in explainer.high_delta:
      print(f"    {msg}")
  if not files:
    print("  error: no image or video files found in the inputs", file=sys.stderr)
  return 0 if files_ok > 0 else 1


if __name__ == "__main__":
  sys.exit(main())
