r"""The emotion bank: K one-vs-rest landmark models of one variant, trained one after the other, resumable.

    fer-jax emotion-bank --config=experiments/emotion_bank_synthetic.py:arch=temo,size=tiny,steps=300 \
        --workdir=runs/bank [--emotions=happy,sad] [--explain] [--afew_va=DIR] [--prune=68,51,34,17,8]

Di Luzio, Rosato & Panella (arXiv 2407.14865; PAPERS.md section 4) recognise an emotion with a set of
binary (one emotion vs the rest) CNN + LSTM models over facial-landmark sequences. For each emotion k
(every class with training clips, or ``--emotions``) the config file's ``get_config`` is called with
``emotion=k`` added to its options, and the model is trained by the shared trainer
(``train_and_evaluate``) in ``WORKDIR/<variant>/<emotion>/`` (``<variant>``: ``remo``, ``temo`` or
``binary`` from the backbone config, ``_keep<N>`` appended when the config keeps N landmarks). A killed
model resumes from its checkpoint. The finished model's logits on every clip of the validation and
test splits (those its ``binary`` evaluators saved, or a new pass: ``score_run``) go with the clips'
class labels and the model's training times into ``<emotion>/bank_scores.npz``; a model whose ``bank_scores.npz`` exists is
skipped, so rerunning the command redoes nothing finished.

The report (``fer_jax.emotion_bank.report``, in ``WORKDIR/<variant>/``) calibrates every model's logit
by Platt scaling on the validation split (``fer_jax.emotion_bank.calibration``), predicts the class
with the largest calibrated probability, and writes the per-emotion and multi-class results, the
confusion matrix (PNG) and the training times. ``--explain`` adds Integrated-Gradients landmark
relevance and heat maps (``fer_jax.emotion_bank.explain``); ``--prune`` the progressive landmark
pruning (``fer_jax.emotion_bank.pruning``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from fer_jax import config_utils
from fer_jax.emotion_bank import members as members_lib
from fer_jax.pairwise.sweep import _fmt, _save_npz, split_spec  # the pair sweep's small helpers

BANK_FILE = "bank.json"
SCORES_FILE = "bank_scores.npz"
SPLITS = ("validation", "test")

TrainFn = Callable[[ml_collections.ConfigDict, str], Dict[str, Any]]
ScoreFn = Callable[[ml_collections.ConfigDict, str], Dict[str, Tuple[np.ndarray, np.ndarray]]]
ClassesFn = Callable[[ml_collections.ConfigDict], Tuple[List[str], List[int]]]


# ----------------------------------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------------------------------

def _option_keys(arg: str) -> List[str]:
  return [item.partition("=")[0].strip() for item in arg.split(",") if item.strip()]


def emotion_config(spec: str, emotion: Optional[str], overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of the model of ``emotion`` (a class name or id, added as ``emotion=...``; None: the
  file's default), with the ``--config.FIELD=VALUE`` ``overrides`` applied."""
  path, arg = split_spec(spec)
  if "emotion" in _option_keys(arg):
    raise ValueError(f"--config={spec!r} sets emotion; the bank sets emotion=... itself (use --emotions=...)")
  module = config_utils.load_module(path)
  if emotion is not None:
    arg = ",".join(filter(None, [arg, f"emotion={emotion}"]))
  config = module.get_config(arg) if arg else module.get_config()
  config_utils.apply_overrides(config, overrides)
  if config.get("task") != "landmark_sequence" or config.get("task_options", {}).get("positive_class") is None:
    raise ValueError(f"{path} does not make a one-vs-rest landmark model (config.task={config.get('task')!r}, "
                     "task_options.positive_class unset); derive it from experiments/emotion_bank_synthetic.py")
  return config


def bank_dirname(config: ml_collections.ConfigDict) -> str:
  """``<variant>`` or ``<variant>_keep<N>`` (N kept landmarks)."""
  kept = config.task_options.get("landmarks")
  name = members_lib.variant_name(config)
  return name if kept is None else f"{name}_keep{len(kept)}"


def dataset_classes(config: ml_collections.ConfigDict) -> Tuple[List[str], List[int]]:
  """(class names, training clips per class) of the config's dataset (builds it when missing)."""
  import importlib
  from fer_jax.data import samplers, sources
  ds = config.dataset
  if ds.get("import_module"):
    importlib.import_module(ds.import_module)
  builder = sources.get_builder(ds.name, data_dir=ds.get("data_dir"), manual_dir=ds.get("manual_dir"))
  key = ds.get("label_key", "label")
  k = int(ds.num_classes)
  names = list(getattr(builder.info.features[key], "names", None) or [str(i) for i in range(k)])
  labels = samplers.read_labels(builder.as_data_source(split=ds.get("train_split", "train")), key)
  return names, np.bincount(np.asarray(labels), minlength=k).tolist()


def parse_emotions(text: Optional[str], class_names: Sequence[str], counts: Sequence[int]) -> List[int]:
  """'happy,3' -> [3, ...] in the given order; None / 'all': every class with training clips."""
  if text is None or text.strip() in ("", "all"):
    return [k for k in range(len(class_names)) if counts[k] > 0]
  out = []
  for item in text.split(","):
    e = item.strip()
    if e.isdigit() and int(e) < len(class_names):
      k = int(e)
    elif e in class_names:
      k = list(class_names).index(e)
    else:
      raise ValueError(f"--emotions: {e!r} is not one of {list(class_names)} or an id 0..{len(class_names) - 1}")
    if counts[k] == 0:
      raise ValueError(f"--emotions: {class_names[k]!r} has no training clips")
    if k in out:
      raise ValueError(f"--emotions lists {class_names[k]!r} twice")
    out.append(k)
  return out


# ----------------------------------------------------------------------------------------------------
# Scoring a finished member.
# ----------------------------------------------------------------------------------------------------

def score_member(config: ml_collections.ConfigDict, workdir: str,
                 splits: Sequence[str] = SPLITS) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """split -> (class labels (N,), logits (N,)) of ``workdir``'s last checkpoint on every clip of the split
  (the model restored and run again: ``members.Member.logits``)."""
  member = members_lib.load_member(workdir)
  out = {}
  for split in splits:
    clips, labels = members_lib.split_clips(member.exp, split)
    out[split] = (labels, member.logits(clips))
  return out


_LABELS: Dict[Tuple[str, str, str], np.ndarray] = {}


def split_labels(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """Class labels (N,) of every record of ``split`` in the data source's order (the evaluators' order in a
  single process), read once per dataset and split."""
  from fer_jax.data import samplers, sources
  ds = config.dataset
  key = (str(ds.name), str(ds.get("data_dir")), split)
  if key not in _LABELS:
    builder = sources.get_builder(ds.name, data_dir=ds.get("data_dir"), manual_dir=ds.get("manual_dir"))
    _LABELS[key] = samplers.read_labels(builder.as_data_source(split=split), ds.get("label_key", "label"))
  return _LABELS[key]


def score_run(config: ml_collections.ConfigDict, workdir: str,
              splits: Sequence[str] = SPLITS) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Like :func:`score_member`, from the ``scores_<evaluator>.npz`` files the trainer's ``binary`` evaluators
  wrote at the end of training (no second pass), when every split has one whose 0 / 1 labels are exactly
  ``class label == positive class`` of the split's records in order; otherwise :func:`score_member`."""
  k = int(config.task_options.positive_class)
  out = {}
  for split in splits:
    names = [n for n, e in (config.get("evals") or {}).items() if e.get("type") == "binary" and e.get("split") == split]
    path = os.path.join(workdir, f"scores_{names[0]}.npz") if names else None
    if path is None or not os.path.exists(path) or config.dataset.get("classes") is not None:
      return score_member(config, workdir, splits)
    labels = split_labels(config, split)
    with np.load(path) as d:
      scores, binary = d["scores"], d["labels"]
    if scores.shape != labels.shape or not np.array_equal(binary, (labels == k).astype(binary.dtype)):
      return score_member(config, workdir, splits)
    out[split] = (labels, scores.astype(np.float32))
  return out


def load_scores(path: str) -> Dict[str, np.ndarray]:
  with np.load(path) as d:
    return {k: d[k] for k in d.files}


# ----------------------------------------------------------------------------------------------------
# The bank.
# ----------------------------------------------------------------------------------------------------

def recipe(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The resolved config without what differs between the bank's models (positive class, sampler)."""
  from fer_jax.train import workdir as workdir_lib
  d = workdir_lib.config_to_dict(config)
  d.get("task_options", {}).pop("positive_class", None)
  d.get("input", {}).pop("sampler", None)
  return d


def _write_bank_file(bank_dir: str, meta: Dict[str, Any], log: Callable[[str], None] = print) -> None:
  path = os.path.join(bank_dir, BANK_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for key in ("config", "overrides"):
      if old.get(key) != meta[key]:
        raise ValueError(f"{bank_dir} holds a bank of {key} {old.get(key)!r}, not {meta[key]!r}: use another "
                         "--workdir (the finished models would mix two configs)")
    if "recipe" in old:
      from fer_jax.train import workdir as workdir_lib
      changes = workdir_lib.config_changes(old["recipe"], meta["recipe"])
      if changes:  # the config FILE changed under the same options: finished models keep the old recipe
        log(f"warning: {path}: the config resolves differently than when the bank started "
            f"({workdir_lib.format_changes(changes)}); finished models keep the old recipe, new ones get this one")
      meta = {**meta, "recipe": old["recipe"]}
    meta = {**meta, "emotions": list(old.get("emotions", [])) + meta["emotions"]}
  meta["emotions"] = sorted(set(meta["emotions"]), key=meta["class_names"].index)  # class order
  os.makedirs(bank_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(path + ".tmp", path)


def run_bank(spec: str, workdir: str, emotions: Optional[str] = None, train_fn: Optional[TrainFn] = None,
             score_fn: Optional[ScoreFn] = None, classes_fn: Optional[ClassesFn] = None,
             log: Callable[[str], None] = print, overrides: Sequence[str] = (), plot: bool = True) -> Dict[str, Any]:
  """Trains the bank's models not finished yet, scores them, writes the bank report (``plot``: with the
  confusion-matrix PNG).

  ``train_fn`` / ``score_fn`` / ``classes_fn`` default to the trainer's ``train_and_evaluate``,
  :func:`score_run` and :func:`dataset_classes` (tests pass instant fakes). Returns ``{'bank_dir',
  'trained', 'skipped', 'report'}``, or stops early with ``'preempted': emotion`` when a signal stopped a
  training run (rerun the command to resume it). Single-process: the scoring and the report run here.
  """
  if train_fn is None:
    from fer_jax.train import trainer
    train_fn = trainer.train_and_evaluate
  score_fn = score_fn or score_run
  classes_fn = classes_fn or dataset_classes
  base = emotion_config(spec, None, overrides)
  bank_dir = os.path.join(workdir, bank_dirname(base))
  names, counts = classes_fn(base)
  if len(names) != int(base.dataset.num_classes) or len(counts) != len(names):
    raise ValueError(f"the dataset has {len(names)} class names {names} and {len(counts)} class counts; "
                     f"config.dataset.num_classes={base.dataset.num_classes}")
  todo = parse_emotions(emotions, names, counts)
  kept = base.task_options.get("landmarks")
  _write_bank_file(bank_dir, {
      "config": spec, "overrides": list(overrides), "variant": members_lib.variant_name(base),
      "class_names": list(names), "train_counts": [int(c) for c in counts],
      "emotions": [names[k] for k in todo], "landmarks": None if kept is None else [int(i) for i in kept],
      "dataset": str(base.dataset.name), "recipe": recipe(base)}, log)

  out: Dict[str, Any] = {"bank_dir": bank_dir, "trained": [], "skipped": []}
  t0 = time.time()
  run_times: List[float] = []
  for n, k in enumerate(todo, 1):
    name = names[k]
    sub = os.path.join(bank_dir, name)
    done_file = os.path.join(sub, SCORES_FILE)
    what = f"[{n}/{len(todo)}] {name} vs rest"
    if os.path.exists(done_file):
      out["skipped"].append(name)
      log(f"{what}: finished earlier, skipped ({done_file})")
      continue
    config = emotion_config(spec, str(k), overrides)
    if int(config.task_options.positive_class) != k:
      raise ValueError(f"emotion={k} gave a config with task_options.positive_class="
                       f"{config.task_options.positive_class}")
    log(f"{what}: training in {sub}")
    t = time.time()
    results = train_fn(config, sub)
    wall = time.time() - t
    if isinstance(results, dict) and results.get("preempted_at_step") is not None:
      log(f"{what}: stopped by a signal at step {results['preempted_at_step']}; rerun the same command to "
          "resume it (finished models are skipped)")
      out["preempted"] = name
      return out
    t_score = time.time()
    scores = score_fn(config, sub)
    arrays: Dict[str, np.ndarray] = {}
    for split in SPLITS:
      labels, logits = scores[split]
      arrays[f"{split}_labels"] = np.asarray(labels, np.int64)
      arrays[f"{split}_logits"] = np.asarray(logits, np.float32)
    results = results if isinstance(results, dict) else {}
    os.makedirs(sub, exist_ok=True)
    _save_npz(done_file, **arrays, positive_class=np.int64(k),
              train_seconds=np.float64(results.get("train_seconds", np.nan)),
              wall_seconds=np.float64(wall), score_seconds=np.float64(time.time() - t_score),
              steps=np.int64(results.get("step", -1)), param_count=np.int64(results.get("param_count", -1)))
    run_times.append(time.time() - t)
    out["trained"].append(name)
    remaining = sum(1 for j in todo[n:] if not os.path.exists(os.path.join(bank_dir, names[j], SCORES_FILE)))
    log(f"{what}: done in {_fmt(run_times[-1])} (training {_fmt(wall)}); elapsed {_fmt(time.time() - t0)}, "
        f"ETA {_fmt(np.mean(run_times) * remaining)} ({remaining} to go)")
  from fer_jax.emotion_bank import report
  out["report"] = report.build_bank_report(bank_dir, plot=plot)
  return out


EPILOG = """\
examples:
  fer-jax emotion-bank --config=experiments/emotion_bank_synthetic.py:arch=remo,size=tiny,steps=300 \\
      --workdir=runs/bank --explain
  fer-jax emotion-bank --config=experiments/emotion_bank_synthetic.py:arch=temo,size=tiny,steps=300 \\
      --workdir=runs/bank --prune=68,51,34,17,8
  python -m fer_jax.emotion_bank.report --workdir=runs/bank    # the variants side by side

Rerun the same command after a kill or Ctrl-C: finished models are skipped, an unfinished one resumes from
its checkpoint. Outputs (in WORKDIR/<variant>/): bank_report.md / .json, confusion_test.png; with --explain
relevance_<split>.npz / .json, heatmap_mean_face.png (and heatmap_afew_va_geometry.png, heatmap_afew_va.png);
with --noise noise.json;
with --prune WORKDIR/<variant>_keep<N>/ banks and WORKDIR/<variant>/pruning.md, pruning.png,
pruning_landmarks.png.
"""


def main(argv=None) -> int:
  """``fer-jax emotion-bank`` / ``python -m fer_jax.emotion_bank.bank``; returns the exit status."""
  parser = argparse.ArgumentParser(prog="fer-jax emotion-bank", description=__doc__.split("\n\n")[0],
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  parser.add_argument("--config", required=True, help="experiment file[:options] of one per-emotion model, "
                      "e.g. experiments/emotion_bank_synthetic.py:arch=remo (without emotion=)")
  parser.add_argument("--workdir", required=True, help="the banks' directory (WORKDIR/<variant>/<emotion>/)")
  parser.add_argument("--emotions", default=None, help="emotions to train now, names or ids, e.g. "
                      "'happy,sad' (default: every class with training clips)")
  parser.add_argument("--explain", action="store_true", help="Integrated-Gradients landmark relevance per "
                      "emotion and heat maps, once every model is finished")
  parser.add_argument("--split", default="test", help="--explain: the split whose clips are explained")
  parser.add_argument("--baseline", default="first", choices=("first", "mean"), help="IG baseline: the "
                      "clip's own first (neutral) frame repeated, or the mean neutral face")
  parser.add_argument("--ig_steps", type=int, default=32, help="IG path points (Gauss-Legendre)")
  parser.add_argument("--afew_va", default=None, help="a clip folder of the AFEW-VA layout (PNG frames + "
                      "<clip>.json with 68 landmarks per frame): the heat map on its face and the bank on it")
  parser.add_argument("--noise", default=None, help="test-time landmark noise, fractions of the inter-ocular "
                      "distance, e.g. 0,0.02,0.05,0.1: the bank recalibrated and scored on noisy clips "
                      "(fer_jax.emotion_bank.robustness)")
  parser.add_argument("--prune", default=None, help="landmarks kept per pruning level, e.g. 68,51,34,17,8 "
                      "(the first is the full bank)")
  parser.add_argument("--prune_schedule", default="progressive", choices=("progressive", "fixed"),
                      help="progressive: re-rank with the IG of each pruned bank; fixed: one ranking from the "
                      "full bank")
  parser.add_argument("--prune_split", default="validation", help="the split whose IG ranks the landmarks")
  parser.add_argument("--config.FIELD=VALUE", dest="_overrides", metavar="", default=None,
                      help="override a field of every model's config (an unknown field fails at once)")
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  if len(overrides) != len(rest):
    parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
  from absl import logging
  logging.set_verbosity(logging.INFO)
  try:
    base = emotion_config(args.config, None, overrides)
    members_lib.variant_name(base)
    keeps = None
    sigmas = None
    if args.noise:
      from fer_jax.emotion_bank import robustness
      sigmas = robustness.parse_sigmas(args.noise)
    if args.prune:
      from fer_jax.emotion_bank import pruning
      keeps = pruning.parse_keeps(args.prune, int(base.task_options.num_landmarks))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if keeps is not None:
    out = pruning.run_pruning(args.config, args.workdir, keeps, schedule=args.prune_schedule,
                              split=args.prune_split, baseline=args.baseline, n_steps=args.ig_steps,
                              emotions=args.emotions, overrides=overrides, noise=sigmas)
    if "preempted" in out:
      return 1
    print(out["markdown"])
    if not (args.explain or args.afew_va):
      return 0
    sigmas = None  # the pruning table has the full bank's noise rows; explain it below (nothing retrained)
  out = run_bank(args.config, args.workdir, args.emotions, overrides=overrides)
  if "preempted" in out:
    return 1
  rep = out["report"]
  print(rep["markdown"])
  if args.explain or args.afew_va or sigmas:
    if not rep.get("complete"):
      print("error: --explain / --afew_va / --noise need every emotion's model; train the others first",
            file=sys.stderr)
      return 1
    from fer_jax.emotion_bank import explain
    loaded = explain.load_bank(out["bank_dir"])
    if args.explain or args.afew_va:
      ex = explain.explain_bank(out["bank_dir"], split=args.split, baseline=args.baseline, n_steps=args.ig_steps,
                                afew_va=args.afew_va, loaded=loaded)
      print(ex["markdown"])
    if sigmas:
      from fer_jax.emotion_bank import robustness
      rows = robustness.bank_noise(out["bank_dir"], sigmas, loaded=loaded)
      print(robustness.noise_markdown({rep["variant"]: rows}))
  print(f"outputs in {os.path.abspath(out['bank_dir'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
