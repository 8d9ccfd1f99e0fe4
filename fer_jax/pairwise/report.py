"""The sweep's outputs from whatever has finished in its work dir (Waldner & Mitra 2024, PAPERS.md section 2).

    python -m fer_jax.pairwise.report --workdir=runs/pairs_ferplus

Reads ``sweep.json`` and each ``pair_i-j/margins.npz`` (and ``single*/scores.npz``) the sweep wrote, and
writes beside them:

* ``pairs.csv`` / ``pairs.md``: pair, class names, training images per class, test images per class,
  accuracy and balanced accuracy (mean of the two recalls) on the test images of the pair's two classes;
* ``pair_accuracy.png`` (and ``pair_balanced_accuracy.png``): the K x K heat map, cell (i, j) = (j, i) = the
  pair's value, diagonal and unfinished pairs blank;
* ``ovo.json``, ``ovo_confusion.png``: one-vs-one voting of the finished pair models over the whole test
  split (``fer_jax.pairwise.voting``), only when every pair has finished; ``single_confusion.png`` /
  ``single_total_confusion.png`` for the single models;
* ``comparison.md``: OvO vs the single K-class models (``single``: the steps of one pair model;
  ``single_total``: the steps of all pair models): accuracy, macro-F1, per-class recall.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from fer_jax.metrics import classification as cls_metrics
from fer_jax.pairwise import pairs as pairs_lib
from fer_jax.pairwise import voting
from fer_jax.pairwise.pairs import Pair

SWEEP_FILE = "sweep.json"
MARGINS_FILE = "margins.npz"
# The single K-class models by budget: their sub-dirs and the names of their columns in the comparison.
SINGLE_DIRS = {"per_model": "single", "total": "single_total"}
SINGLE_TITLES = {"single": "steps of one pair model", "single_total": "steps of all pair models"}
SCORES_FILE = "scores.npz"


# ----------------------------------------------------------------------------------------------------
# Numbers.
# ----------------------------------------------------------------------------------------------------

def pair_metrics(labels: np.ndarray, margins: np.ndarray, pair: Pair) -> Dict[str, Any]:
  """Accuracy and balanced accuracy of one pair model on the test images of its two classes.

  ``labels``: (N,) labels of the whole test split; ``margins``: (N,) score_j - score_i (> 0 predicts j)."""
  i, j = pair
  labels, margins = np.asarray(labels), np.asarray(margins, np.float64)
  if labels.shape != margins.shape:
    raise ValueError(f"pair {pairs_lib.pair_name(pair)}: labels shape {labels.shape} != margins shape "
                     f"{margins.shape}")
  keep = (labels == i) | (labels == j)
  y = labels[keep] == j
  pred = margins[keep] > 0
  n = np.array([(~y).sum(), y.sum()], np.int64)
  recall = np.array([np.mean(~pred[~y]) if n[0] else np.nan, np.mean(pred[y]) if n[1] else np.nan])
  return {"pair": pairs_lib.pair_name(pair), "n_test": n.tolist(),
          "accuracy": float(np.mean(pred == y)) if keep.any() else float("nan"),
          "balanced_accuracy": float(np.nanmean(recall)) if n.any() else float("nan"),
          "recall": recall.tolist()}


def pair_summary(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Mean (over the finished pairs) accuracy and balanced accuracy, and the weakest pair by each."""
  if not results:
    return {}
  out: Dict[str, Any] = {}
  for key in ("accuracy", "balanced_accuracy"):
    values = np.array([r[key] for r in results], np.float64)
    worst = int(np.nanargmin(values))
    out[f"mean_{key}"] = float(np.nanmean(values))
    out[f"min_{key}"] = {"pair": results[worst]["pair"], "value": float(values[worst])}
  return out


def summary_line(summary: Mapping[str, Any]) -> str:
  if not summary:
    return "no pair finished"
  return (f"mean pair accuracy {summary['mean_accuracy']:.4f} (lowest {summary['min_accuracy']['value']:.4f}, "
          f"pair {summary['min_accuracy']['pair']}); mean pair balanced accuracy "
          f"{summary['mean_balanced_accuracy']:.4f} (lowest {summary['min_balanced_accuracy']['value']:.4f}, "
          f"pair {summary['min_balanced_accuracy']['pair']})")


def pair_matrix(values: Mapping[Pair, float], num_classes: int) -> np.ndarray:
  """(K, K) float64: M[i, j] = M[j, i] = values[(i, j)]; NaN on the diagonal and for missing pairs."""
  m = np.full((num_classes, num_classes), np.nan)
  for (i, j), v in values.items():
    if not 0 <= i < j < num_classes:
      raise ValueError(f"pair ({i}, {j}) is not 0 <= i < j < {num_classes}")
    m[i, j] = m[j, i] = v
  return m


def classification_summary(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]
                           ) -> Dict[str, Any]:
  """Accuracy, macro-F1, per-class recall / F1 and the confusion matrix of K-class predictions."""
  k = len(class_names)
  cm = cls_metrics.confusion_matrix(np.asarray(labels), np.asarray(predictions), k)
  s = cls_metrics.scores_from_confusion(cm)
  return {"accuracy": float(s["accuracy"]), "macro_f1": float(s["macro_f1"]),
          "recall": {n: float(r) for n, r in zip(class_names, s["recall"])},
          "f1": {n: float(f) for n, f in zip(class_names, s["f1"])},
          "support": {n: int(c) for n, c in zip(class_names, s["support"])},
          "confusion_matrix": cm.tolist(), "class_names": list(class_names)}


# ----------------------------------------------------------------------------------------------------
# Tables and pictures.
# ----------------------------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  def fmt(v):
    if isinstance(v, float):
      return "-" if np.isnan(v) else f"{v:.4f}"
    return str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


PAIR_HEADER = ("pair", "class_i", "class_j", "n_train_i", "n_train_j", "n_test_i", "n_test_j", "accuracy",
               "balanced_accuracy")


def pair_rows(results: Sequence[Mapping[str, Any]], class_names: Sequence[str],
              train_counts: Optional[Sequence[int]]) -> List[List[Any]]:
  rows = []
  for r in results:
    i, j = pairs_lib.parse_pair(r["pair"], len(class_names))
    n_train = [train_counts[i], train_counts[j]] if train_counts is not None else ["", ""]
    rows.append([r["pair"], class_names[i], class_names[j], *n_train, *r["n_test"], r["accuracy"],
                 r["balanced_accuracy"]])
  return rows


def write_pair_table(rows: Sequence[Sequence[Any]], csv_path: str, md_path: str) -> None:
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(PAIR_HEADER)
    w.writerows(rows)
  with open(md_path, "w") as f:
    f.write(markdown_table(PAIR_HEADER, rows))


def write_heatmap(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str) -> None:
  """The K x K pair heat map (value printed in each finished cell; diagonal / missing cells blank)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(1.4 + 0.85 * k, 1.0 + 0.75 * k), dpi=100)
  masked = np.ma.masked_invalid(matrix)
  cmap = plt.get_cmap("viridis").with_extremes(bad="white")
  im = ax.imshow(masked, cmap=cmap, vmin=np.nanmin(matrix) if np.isfinite(matrix).any() else 0.5, vmax=1.0)
  for i in range(k):
    for j in range(k):
      if np.isfinite(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                color="black" if matrix[i, j] > np.nanmean(matrix) else "white")
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def comparison_markdown(models: Mapping[str, Mapping[str, Any]], class_names: Sequence[str]) -> str:
  """One row per metric (accuracy, macro-F1, recall of each class), one column per model."""
  names = list(models)
  rows = [["accuracy"] + [models[n]["accuracy"] for n in names],
          ["macro-F1"] + [models[n]["macro_f1"] for n in names]]
  rows += [[f"recall {c}"] + [models[n]["recall"][c] for n in names] for c in class_names]
  return markdown_table(["metric"] + names, rows)


# ----------------------------------------------------------------------------------------------------
# The work dir.
# ----------------------------------------------------------------------------------------------------

def read_sweep(workdir: str) -> Dict[str, Any]:
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: is {workdir!r} a work dir of fer_jax.pairwise.sweep?")
  with open(path) as f:
    return json.load(f)


def load_npz(path: str) -> Dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def finished_pairs(workdir: str, pairs: Sequence[Pair]) -> Dict[Pair, Dict[str, np.ndarray]]:
  out = {}
  for p in pairs:
    path = os.path.join(workdir, pairs_lib.pair_dirname(p), MARGINS_FILE)
    if os.path.exists(path):
      out[p] = load_npz(path)
  return out


def build_report(workdir: str) -> Dict[str, Any]:
  """Writes the tables / heat maps / OvO results of ``workdir`` (a sweep's) and returns them."""
  sweep = read_sweep(workdir)
  names = list(sweep["class_names"])
  k = len(names)
  pairs = [pairs_lib.parse_pair(p, k) for p in sweep["pairs"]]
  done = finished_pairs(workdir, pairs)
  results = [pair_metrics(d["labels"], d["margins"], p) for p, d in done.items()]
  out: Dict[str, Any] = {"finished": len(done), "pairs": len(pairs), "pair_results": results,
                         "pair_summary": pair_summary(results)}
  write_pair_table(pair_rows(results, names, sweep.get("train_counts")), os.path.join(workdir, "pairs.csv"),
                   os.path.join(workdir, "pairs.md"))
  for key, title in (("accuracy", "pair accuracy"), ("balanced_accuracy", "pair balanced accuracy")):
    values = {pairs_lib.parse_pair(r["pair"], k): r[key] for r in results}
    if values:
      write_heatmap(pair_matrix(values, k), names, os.path.join(workdir, f"pair_{key}.png"),
                    f"{title} ({_test_name(sweep)}, {len(values)}/{len(pairs)} pairs)")
  models: Dict[str, Dict[str, Any]] = {}
  pictures: Dict[str, str] = {}  # model name -> its confusion-matrix PNG
  scored: Dict[str, np.ndarray] = {}  # the test labels each model saw (they must be the same)
  if done and len(done) == len(pairs) == len(pairs_lib.all_pairs(k)):
    labels = scored["pair models"] = _same_labels({pairs_lib.pair_name(p): d["labels"] for p, d in done.items()})
    margins = np.stack([done[p]["margins"] for p in pairs], axis=1)
    name = f"one-vs-one ({len(pairs)} pair models)"
    models[name] = classification_summary(labels, voting.ovo_predict(margins, pairs, k), names)
    pictures[name] = "ovo_confusion.png"
  for sub, title in SINGLE_TITLES.items():
    single_path = os.path.join(workdir, sub, SCORES_FILE)
    if os.path.exists(single_path):
      s = load_npz(single_path)
      scored[sub] = s["labels"]
      name = f"single {k}-class model ({title})"
      models[name] = classification_summary(s["labels"], np.argmax(s["scores"], 1), names)
      pictures[name] = f"{sub}_confusion.png"
  if len(scored) > 1:
    _same_labels(scored)
  for name, png in pictures.items():
    from fer_jax.train import plots
    import matplotlib.pyplot as plt
    fig = plots.confusion_matrix_figure(np.asarray(models[name]["confusion_matrix"]), names,
                                        f"{name} ({_test_name(sweep)})")
    fig.savefig(os.path.join(workdir, png))
    plt.close(fig)
  out["models"] = models
  if models:
    text = comparison_markdown(models, names)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
      f.write(text)
    out["comparison_markdown"] = text
  with open(os.path.join(workdir, "ovo.json"), "w") as f:
    json.dump({"finished": out["finished"], "pairs": out["pairs"], "budget": sweep.get("budget"),
               "test_split": sweep.get("test_split"), "pair_summary": out["pair_summary"], "models": models},
              f, indent=2)
  return out


def _test_name(sweep: Mapping[str, Any]) -> str:
  """'fer2013/ferplus: validation' (the dataset, when the sweep recorded it, and the scored split)."""
  split = sweep.get("test_split", "test")
  return f"{sweep['dataset']}: {split}" if sweep.get("dataset") else split


def _same_labels(labels: Mapping[str, np.ndarray]) -> np.ndarray:
  """The test labels every model scored must be the same images in the same order."""
  items = list(labels.items())
  first_name, first = items[0]
  for name, other in items[1:]:
    if other.shape != first.shape or not np.array_equal(other, first):
      raise ValueError(f"The test labels of {name} differ from those of {first_name} ({other.shape} vs "
                       f"{first.shape}): the models did not score the same test split in the same order")
  return first


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the work dir of a fer_jax.pairwise.sweep run")
  args = parser.parse_args(argv)
  out = build_report(args.workdir)
  with open(os.path.join(args.workdir, "pairs.md")) as f:
    print(f.read())
  print(f"{out['finished']}/{out['pairs']} pairs finished; {summary_line(out['pair_summary'])}.")
  if "comparison_markdown" in out:
    print(out["comparison_markdown"])


if __name__ == "__main__":
  main()
