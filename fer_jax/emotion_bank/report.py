"""The bank's results from whatever has finished in its directory, and the variants side by side.

    python -m fer_jax.emotion_bank.report --workdir=runs/bank [--time_steps]

``build_bank_report(bank_dir)`` reads ``bank.json`` and each ``<emotion>/bank_scores.npz`` the bank wrote
and writes beside them:

* per emotion (one vs rest, on the test split): accuracy, F1 and balanced accuracy at the model's own
  threshold (logit 0, what it was trained for), ROC AUC, the Platt parameters (a, b) fitted on the
  validation split, the training time (the trainer's loop, compile included, summed over resumed runs)
  and the wall time of the trainer call (data, model, checkpoints, evaluations);
* once every emotion has a model: the multi-class prediction = argmax of the calibrated probabilities
  (``calibration.combine``), its accuracy, macro-F1, per-class recall and confusion matrix
  (``confusion_test.png``), beside the argmax of the raw logits (what calibration changes);
* ``bank_report.json`` and ``bank_report.md``.

``compare_variants(workdir)`` puts every ``<variant>/bank_report.json`` under ``workdir`` in one table
(``variants.md``); ``--time_steps`` adds the bare train-step time of each variant's model, timed
interleaved on the same batch (``fer_jax.emotion_bank.compute.time_train_steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from fer_jax.emotion_bank import bank as bank_lib
from fer_jax.emotion_bank import calibration
from fer_jax.evaluators.binary import binary_scores

REPORT_JSON = "bank_report.json"
REPORT_MD = "bank_report.md"
CONFUSION_PNG = "confusion_test.png"


def _read_json(path: str) -> Dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def bank_results(bank_dir: str) -> Dict[str, Any]:
  """The numbers of the report (no files written)."""
  meta = _read_json(os.path.join(bank_dir, bank_lib.BANK_FILE))
  names = meta["class_names"]
  k_all = len(names)
  wanted = [k for k in range(k_all) if meta["train_counts"][k] > 0]
  rows, scores = [], {}
  ref_labels: Dict[str, np.ndarray] = {}
  for k in wanted:
    path = os.path.join(bank_dir, names[k], bank_lib.SCORES_FILE)
    if not os.path.exists(path):
      continue
    d = bank_lib.load_scores(path)
    if int(d["positive_class"]) != k:
      raise ValueError(f"{path} holds the model of class {int(d['positive_class'])}, not {k} ({names[k]})")
    for split in bank_lib.SPLITS:
      labels = d[f"{split}_labels"]
      if split not in ref_labels:
        ref_labels[split] = labels
      elif not np.array_equal(ref_labels[split], labels):
        raise ValueError(f"{path}: its {split} clips are not those of the other models (another dataset or "
                         "order); every model must score the same clips")
    platt = calibration.fit_platt(d["validation_logits"], d["validation_labels"] == k)
    test = binary_scores(d["test_logits"], (d["test_labels"] == k).astype(np.int64))
    rows.append({"emotion": names[k], "class_id": k, "accuracy": test["accuracy"], "f1": test["f1"],
                 "balanced_accuracy": test["balanced_accuracy"], "auc": test["auc"],
                 "precision": test["precision"], "recall": test["recall"], "positives": test["positives"],
                 "n": test["n"], "platt_a": platt["a"], "platt_b": platt["b"],
                 "train_seconds": float(d["train_seconds"]), "wall_seconds": float(d["wall_seconds"]),
                 "steps": int(d["steps"]), "param_count": int(d["param_count"])})
    scores[k] = (d["test_logits"].astype(np.float64), platt)
  out: Dict[str, Any] = {"bank_dir": os.path.abspath(bank_dir), "variant": meta["variant"],
                         "config": meta["config"], "class_names": names, "landmarks": meta.get("landmarks"),
                         "emotions": rows, "finished": len(rows), "wanted": len(wanted),
                         "complete": len(rows) == len(wanted) and len(wanted) >= 2}
  if rows:
    out["mean_accuracy"] = float(np.mean([r["accuracy"] for r in rows]))
    out["mean_f1"] = float(np.mean([r["f1"] for r in rows]))
    out["train_seconds_total"] = float(np.sum([r["train_seconds"] for r in rows]))
    out["wall_seconds_total"] = float(np.sum([r["wall_seconds"] for r in rows]))
  if out["complete"]:
    labels = ref_labels["test"]
    logits = np.stack([scores[k][0] for k in wanted], 1)
    probs = np.stack([calibration.apply_platt(scores[k][0], scores[k][1]["a"], scores[k][1]["b"])
                      for k in wanted], 1)
    pred = calibration.combine(probs, wanted)
    out["multiclass"] = calibration.multiclass_metrics(labels, pred, k_all)
    out["multiclass_raw_logits"] = calibration.multiclass_metrics(labels, calibration.combine(logits, wanted),
                                                                  k_all)
    out["test_probabilities"] = probs
    out["test_labels"] = labels
  return out


def _pct(x: float) -> str:
  return f"{100 * x:.1f}"


def bank_markdown(res: Dict[str, Any]) -> str:
  names = res["class_names"]
  lines = [f"Bank `{res['variant']}` ({res['finished']}/{res['wanted']} models; config `{res['config']}`)", "",
           "| emotion vs rest | test acc % | F1 % | balanced acc % | AUC | Platt a, b | train s | wall s |",
           "|---|---|---|---|---|---|---|---|"]
  for r in res["emotions"]:
    lines.append(f"| {r['emotion']} | {_pct(r['accuracy'])} | {_pct(r['f1'])} | {_pct(r['balanced_accuracy'])} | "
                 f"{r['auc']:.3f} | {r['platt_a']:.2f}, {r['platt_b']:.2f} | {r['train_seconds']:.0f} | "
                 f"{r['wall_seconds']:.0f} |")
  if res["emotions"]:
    lines.append(f"| **mean / total** | {_pct(res['mean_accuracy'])} | {_pct(res['mean_f1'])} | | | | "
                 f"{res['train_seconds_total']:.0f} | {res['wall_seconds_total']:.0f} |")
  if "multiclass" in res:
    m, raw = res["multiclass"], res["multiclass_raw_logits"]
    lines += ["", f"Multi-class (argmax of Platt-calibrated probabilities), test: accuracy **{_pct(m['accuracy'])}%**, "
              f"macro-F1 {_pct(m['macro_f1'])}% (argmax of raw logits: {_pct(raw['accuracy'])}% / "
              f"{_pct(raw['macro_f1'])}%)", "",
              "| class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
              "| recall % | " + " | ".join(_pct(v) for v in m["recall"]) + " |"]
  return "\n".join(lines)


def build_bank_report(bank_dir: str, plot: bool = True) -> Dict[str, Any]:
  """Writes bank_report.json / .md (and confusion_test.png when complete); returns the results."""
  res = bank_results(bank_dir)
  res["markdown"] = bank_markdown(res)
  with open(os.path.join(bank_dir, REPORT_MD), "w") as f:
    f.write(res["markdown"] + "\n")
  if "multiclass" in res and plot:
    from fer_jax.train import plots
    m = res["multiclass"]
    plots.save_confusion_matrix(np.asarray(m["confusion_matrix"]), res["class_names"],
                                os.path.join(bank_dir, CONFUSION_PNG),
                                title=f"bank {res['variant']}, test: acc {_pct(m['accuracy'])}%, "
                                f"macro-F1 {_pct(m['macro_f1'])}%")
  data = {k: v for k, v in res.items() if k not in ("test_probabilities", "test_labels", "markdown")}
  with open(os.path.join(bank_dir, REPORT_JSON), "w") as f:
    json.dump(data, f, indent=2)
  return res


# ----------------------------------------------------------------------------------------------------
# The variants side by side.
# ----------------------------------------------------------------------------------------------------

def _variant_reports(workdir: str) -> List[Dict[str, Any]]:
  out = []
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, REPORT_JSON)
    if os.path.exists(path):
      out.append(_read_json(path))
  order = {"remo": 0, "temo": 1, "binary": 2}
  return sorted(out, key=lambda r: (r.get("landmarks") is not None, order.get(r["variant"], 9), r["variant"]))


def compare_variants(workdir: str, step_times: Optional[Dict[str, Dict[str, float]]] = None) -> str:
  """variants.md: per-emotion test accuracy / F1, multi-class accuracy / macro-F1 and training times of
  every full-landmark bank under ``workdir``; returns the markdown."""
  reps = [r for r in _variant_reports(workdir) if r.get("landmarks") is None]
  if not reps:
    raise FileNotFoundError(f"no <variant>/{REPORT_JSON} under {workdir}; run fer-jax emotion-bank first")
  names = reps[0]["class_names"]
  head = "| emotion vs rest (test acc % / F1 %) | " + " | ".join(f"`{r['variant']}`" for r in reps) + " |"
  lines = [head, "|---|" + "---|" * len(reps)]
  for k, name in enumerate(names):
    cells = []
    for r in reps:
      row = next((e for e in r["emotions"] if e["class_id"] == k), None)
      cells.append("" if row is None else f"{_pct(row['accuracy'])} / {_pct(row['f1'])}")
    if any(cells):
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("| mean of the one-vs-rest models | " + " | ".join(
      f"{_pct(r['mean_accuracy'])} / {_pct(r['mean_f1'])}" for r in reps) + " |")
  lines.append("| **multi-class** (argmax of calibrated probabilities): acc % / macro-F1 % | " + " | ".join(
      f"**{_pct(r['multiclass']['accuracy'])}** / {_pct(r['multiclass']['macro_f1'])}" if "multiclass" in r else ""
      for r in reps) + " |")
  lines.append("| multi-class, argmax of raw logits | " + " | ".join(
      f"{_pct(r['multiclass_raw_logits']['accuracy'])} / {_pct(r['multiclass_raw_logits']['macro_f1'])}"
      if "multiclass_raw_logits" in r else "" for r in reps) + " |")
  lines.append("| training loop, s per model (mean) / bank total | " + " | ".join(
      f"{r['train_seconds_total'] / max(r['finished'], 1):.0f} / {r['train_seconds_total']:.0f}" for r in reps) + " |")
  lines.append("| trainer call wall time, s per model (mean) / bank total | " + " | ".join(
      f"{r['wall_seconds_total'] / max(r['finished'], 1):.0f} / {r['wall_seconds_total']:.0f}" for r in reps) + " |")
  if step_times:
    lines.append("| bare train step, ms (median, interleaved) | " + " | ".join(
        f"{step_times[r['variant']]['median_ms']:.2f}" if r["variant"] in step_times else "" for r in reps) + " |")
  noise = {}
  for r in reps:
    path = os.path.join(r["bank_dir"], "noise.json")
    if os.path.exists(path):
      noise[r["variant"]] = {n["sigma"]: n for n in _read_json(path)}
  for sigma in sorted({s for v in noise.values() for s in v if s > 0}):
    lines.append(f"| multi-class acc % / macro-F1 % with landmark noise {sigma:g} IOD (test) | " + " | ".join(
        f"{_pct(noise[r['variant']][sigma]['accuracy'])} / {_pct(noise[r['variant']][sigma]['macro_f1'])}"
        if sigma in noise.get(r["variant"], {}) else "" for r in reps) + " |")
  params = {r["variant"]: r["emotions"][0]["param_count"] for r in reps if r["emotions"]}
  lines += ["", "Parameters per model: " + ", ".join(f"{v} {n:,}" for v, n in params.items()) + "."]
  text = "\n".join(lines)
  with open(os.path.join(workdir, "variants.md"), "w") as f:
    f.write(text + "\n")
  return text


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fer_jax.emotion_bank.report", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the --workdir of fer-jax emotion-bank")
  parser.add_argument("--time_steps", action="store_true", help="also time each variant's bare train step "
                      "(interleaved, on one batch of training clips)")
  parser.add_argument("--rounds", type=int, default=5, help="--time_steps: rounds of 20 steps per variant")
  args = parser.parse_args(argv)
  for name in sorted(os.listdir(args.workdir)):
    if os.path.exists(os.path.join(args.workdir, name, bank_lib.BANK_FILE)):
      build_bank_report(os.path.join(args.workdir, name))
  step_times = None
  if args.time_steps:
    from fer_jax.emotion_bank import compute
    specs = {}
    for r in _variant_reports(args.workdir):
      if r.get("landmarks") is None:
        meta = _read_json(os.path.join(r["bank_dir"], bank_lib.BANK_FILE))
        specs[r["variant"]] = (meta["config"], meta["overrides"])
    step_times = compute.time_train_steps(specs, rounds=args.rounds)
    with open(os.path.join(args.workdir, "train_step_times.json"), "w") as f:
      json.dump(step_times, f, indent=2)
  print(compare_variants(args.workdir, step_times))
  return 0


if __name__ == "__main__":
  sys.exit(main())
