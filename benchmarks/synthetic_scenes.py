"""Synthetic scenes (`fer_jax.data.synthetic_scenes`): contact sheet, rendering speed, label statistics.

    .venv/bin/python benchmarks/synthetic_scenes.py --json /tmp/synthetic_scenes.json

* Contact sheet of validation scenes 0..15 of the `synthetic_expressions/scenes` config (seed 0, 96 px
  context, 64 px body), each with its ground truth and categories: ``--png`` (default
  ``benchmarks/results/synthetic_scenes.png``). Left: the context, with the person box; right: the body
  crop; both upscaled x2 (nearest).
* Speed: ``sample_scenes`` (draw + render + crop + labels) on one process, ms per example.
* Category frequencies of the train split (8000) and the mean AP on the test split (1000) of "oracles"
  that know some of the generating factors exactly: a per-category table P(category | factors) counted on
  40000 other draws (seed 1), scored on test. Factors: face = the face class; body = arms, slump level
  (upright / middle / slumped), tilted or not; scene = warmth, brightness, clutter levels and the
  companion. All three together give mAP 1 (the rules are functions of them). A model that reads only
  the face cannot beat the face oracle, so the gap to 1 is what the body and context add.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fer_jax.data import synthetic
from fer_jax.data import synthetic_scenes as ss
from fer_jax.metrics.multilabel import average_precision

_T = ss.THRESHOLDS


def _levels(p) -> dict:
  """Discrete factors of draws (the rules' predicates)."""
  post, mood = p["posture"], p["scene_mood"]
  three = lambda x, lo, hi: np.where(x < lo, 0, np.where(x > hi, 2, 1))
  return {
      "face": p["label"],
      "body": (np.argmax(post[:, :4], 1) * 6 + three(post[:, 4], _T["upright"], _T["slumped"]) * 2
               + (np.abs(post[:, 5]) > _T["tilted"])),
      "scene": (three(mood[:, 0], _T["cold"], _T["warm"]) * 18 + three(mood[:, 1], _T["dark"], _T["bright"]) * 6
                + three(mood[:, 2], _T["calm"], _T["busy"]) * 2 + (mood[:, 3] > 0.5)),
  }


def oracle_map(train, test) -> dict:
  cats_tr = ss.scene_categories(train["label"], train["posture"], train["scene_mood"])
  cats_te = ss.scene_categories(test["label"], test["posture"], test["scene_mood"])
  lt, le = _levels(train), _levels(test)
  prior = cats_tr.mean(0)
  out = {"prevalence (no input)": float(np.mean(average_precision(np.tile(prior, (len(cats_te), 1)),
                                                                  cats_te)))}
  for parts in (("face",), ("body",), ("scene",), ("face", "body"), ("face", "scene"), ("body", "scene")):
    key = lambda lv: np.stack([lv[k] for k in parts], 1)
    table = {}
    for row, c in zip(map(tuple, key(lt)), cats_tr):
      s, n = table.get(row, (0.0, 0))
      table[row] = (s + c, n + 1)
    scores = np.array([table[r][0] / table[r][1] if r in table else prior for r in map(tuple, key(le))])
    out[" + ".join(parts)] = float(np.mean(average_precision(scores, cats_te)))
  out["face + body + scene"] = float(np.mean(average_precision(cats_te, cats_te)))  # the rules themselves
  return out


def contact_sheet(path: str, n: int = 16, cols: int = 4, zoom: int = 2) -> None:
  r = ss.sample_scenes(0, "validation", 0, n)
  s, b = r["context"].shape[1], r["body"].shape[1]
  tile_w, text_h = zoom * (s + b) + 8, 86
  tile_h = zoom * s + text_h
  rows = (n + cols - 1) // cols
  sheet = Image.new("RGB", (cols * tile_w, rows * tile_h), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  try:
    font = ImageFont.load_default(size=11)
  except TypeError:  # Pillow without FreeType
    font = ImageFont.load_default()
  for i in range(n):
    x0, y0 = (i % cols) * tile_w, (i // cols) * tile_h
    ctx = Image.fromarray(r["context"][i]).resize((zoom * s, zoom * s), Image.Resampling.NEAREST)
    box = r["bbox"][i] * s * zoom
    ImageDraw.Draw(ctx).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 255))
    sheet.paste(ctx, (x0, y0))
    sheet.paste(Image.fromarray(r["body"][i]).resize((zoom * b, zoom * b), Image.Resampling.NEAREST),
                (x0 + zoom * s + 2, y0))
    post, mood = r["posture"][i], r["scene_mood"][i]
    arms = ss.ARMS[int(np.argmax(post[:4]))]
    w, br, cl, comp = mood
    level = lambda x, lo, hi, names: names[0] if x < lo else names[2] if x > hi else names[1]
    cats = [c for c, on in zip(ss.EMOTIC_CATEGORIES, r["categories"][i]) if on]
    lines = [f"#{i} face {synthetic.CLASS_NAMES[r['label'][i]]}, arms {arms}",
             f"slump {post[4]:.2f}, tilt {post[5]:+.2f}, lean {post[6]:+.2f}",
             f"{level(w, _T['cold'], _T['warm'], ('cold', 'neutral', 'warm'))} {w:+.2f}, "
             f"{level(br, _T['dark'], _T['bright'], ('dark', 'mid', 'bright'))} {br:.2f}, "
             f"{level(cl, _T['calm'], _T['busy'], ('calm', 'mid', 'busy'))} {cl:.2f}"
             + (", companion" if comp > 0.5 else ""),
             "VAD " + " ".join(f"{v:.2f}" for v in r["vad"][i])]
    text, line = [], ""
    for c in cats:
      if len(line) + len(c) > 44:
        text.append(line)
        line = ""
      line += ("" if not line else ", ") + c
    lines += text + [line]
    for j, t in enumerate(lines[:7]):
      draw.text((x0 + 2, y0 + zoom * s + 2 + 12 * j), t, fill=(0, 0, 0), font=font)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  sheet.save(path, optimize=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--png", default="benchmarks/results/synthetic_scenes.png")
  ap.add_argument("--json", default=None)
  ap.add_argument("--speed_examples", type=int, default=500)
  args = ap.parse_args()

  contact_sheet(args.png)
  print(f"contact sheet: {args.png}")

  load0 = os.getloadavg()[0]
  t0, c0 = time.perf_counter(), time.process_time()
  ss.sample_scenes(1, "train", 0, args.speed_examples)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  speed = {"examples": args.speed_examples, "ms_per_example_wall": 1e3 * wall / args.speed_examples,
           "ms_per_example_cpu": 1e3 * cpu / args.speed_examples,
           "load_average": [load0, os.getloadavg()[0]]}
  print(f"sample_scenes, {args.speed_examples} examples: {speed['ms_per_example_wall']:.2f} ms/example wall, "
        f"{speed['ms_per_example_cpu']:.2f} ms CPU (load average {load0:.1f})")

  # Labels do not depend on the image size (the pixel noise is the last draw), so draw at 16 px.
  train, test = ss.draw_scenes(0, "train", 0, 8000, size=16), ss.draw_scenes(0, "test", 0, 1000, size=16)
  cats = ss.scene_categories(train["label"], train["posture"], train["scene_mood"])
  freq = dict(zip(ss.EMOTIC_CATEGORIES, map(float, cats.mean(0))))
  print("\ncategory        train frequency")
  for name, f in sorted(freq.items(), key=lambda x: -x[1]):
    print(f"{name:16s} {f:.3f}")
  vad = ss.scene_vad(train["label"], train["intensity"], train["posture"], train["scene_mood"])
  print(f"categories per person {cats.sum(1).mean():.2f}; VAD mean {vad.mean(0).round(3)} std "
        f"{vad.std(0).round(3)}; valence < 0.4 / 0.4-0.6 / > 0.6: "
        f"{(vad[:, 0] < 0.4).mean():.3f} / {((vad[:, 0] >= 0.4) & (vad[:, 0] <= 0.6)).mean():.3f} / "
        f"{(vad[:, 0] > 0.6).mean():.3f}")
  oracles = oracle_map(ss.draw_scenes(1, "train", 0, 40000, size=16), test)
  print("\noracle (factors known)     test mAP")
  for k, v in oracles.items():
    print(f"{k:26s} {v:.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"speed": speed, "frequency": freq, "categories_per_person": float(cats.sum(1).mean()),
                 "vad_mean": vad.mean(0).tolist(), "vad_std": vad.std(0).tolist(), "oracle_map": oracles,
                 "png": args.png, "numpy": np.__version__, "python": platform.python_version()}, f, indent=1)


if __name__ == "__main__":
  main()
