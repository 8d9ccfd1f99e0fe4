r"""The pairwise sweep: every pair of classes as a two-class model, one after the other, resumable.

    python -m fer_jax.pairwise.sweep --config=experiments/pairwise_ferplus.py[:options] \
        --workdir=runs/pairs_ferplus [--pairs=0-1,3-5] [--single] [--single_budget=per_model|total|both]

For each pair (i, j) (all K (K - 1) / 2 of the config's classes, or those of ``--pairs``) the config file's
``get_config`` is called with ``pair=i-j`` added to the options and the model is trained by the shared
trainer (``train_and_evaluate``) in ``WORKDIR/pair_i-j`` (a killed pair resumes from its checkpoint). The
finished model then scores the whole, all-class test split (``config.pairwise.test_split``) and
``pair_i-j/margins.npz`` gets the per-image margins ``score_j - score_i`` (logit difference of a softmax
head, cosine difference of an ArcFace head) and labels. A pair whose ``margins.npz`` exists is skipped, so
rerunning the command after a kill redoes nothing finished. ``--single`` also trains the single K-class model
(the config without ``pair``); its budget: ``per_model`` (default; in ``WORKDIR/single``) = the same steps as
each pair model (the paper's protocol: every model gets the full recipe), ``total`` (in
``WORKDIR/single_total``) = the pair models' steps summed (equal total compute), ``both`` = the two. At the end
``fer_jax.pairwise.report`` writes the pair table, the heat maps and one-vs-one voting vs the single models.
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
from fer_jax.pairwise import pairs as pairs_lib
from fer_jax.pairwise import report
from fer_jax.pairwise.pairs import Pair

BUDGETS = ("per_model", "total", "both")

TrainFn = Callable[[ml_collections.ConfigDict, str], Dict[str, Any]]
ScoreFn = Callable[[ml_collections.ConfigDict, str], Tuple[np.ndarray, np.ndarray]]
CountFn = Callable[[ml_collections.ConfigDict], List[int]]


# ----------------------------------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------------------------------

def split_spec(spec: str) -> Tuple[str, str]:
  """'experiments/x.py:a=1,b' -> ('experiments/x.py', 'a=1,b')."""
  path, _, arg = spec.partition(":")
  return path, arg


def config_for(spec: str, pair: Optional[Pair], overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of one pair model (``pair=i-j`` added to the options), or of the single model (None), with
  the ``--config.FIELD=VALUE`` ``overrides`` applied (``config_utils.apply_overrides``)."""
  path, arg = split_spec(spec)
  keys = [item.partition("=")[0].strip() for item in arg.split(",") if item.strip()]
  if "pair" in keys:
    raise ValueError(f"--config={spec!r} sets pair; the sweep sets pair=i-j itself (use --pairs=i-j,...)")
  module = config_utils.load_module(path)
  if pair is not None:
    arg = ",".join(filter(None, [arg, f"pair={pairs_lib.pair_name(pair)}"]))
  config = module.get_config(arg) if arg else module.get_config()
  config_utils.apply_overrides(config, overrides)
  if "pairwise" not in config:
    raise ValueError(f"{path} has no config.pairwise section (num_classes, test_split, class_names); "
                     "derive it from experiments/pairwise_affectnet.py")
  return config


# ----------------------------------------------------------------------------------------------------
# Scoring the whole test split and counting the training labels (the real, trainer-backed functions).
# ----------------------------------------------------------------------------------------------------

def _all_classes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` reading every class of the dataset (no ``classes`` restriction)."""
  c = ml_collections.ConfigDict(config.to_dict())
  k = int(config.pairwise.num_classes)
  c.dataset.classes = tuple(range(k))
  c.dataset.num_classes = k
  return c


def score_test_split(config: ml_collections.ConfigDict, workdir: str) -> Tuple[np.ndarray, np.ndarray]:
  """(labels (N,), class scores (N, num_outputs)) of ``workdir``'s last checkpoint on the whole test split.

  The evaluation pipeline of the config (its test crops, batch size; the images in the split's order), the
  model's ``logits`` or ``cosine``, every class of the dataset kept."""
  from fer_jax.train import optim, trainer
  import jax
  c = _all_classes(config)
  split = c.pairwise.test_split
  exp = trainer.Experiment(c, workdir)
  manager = trainer.create_checkpoint_manager(workdir, c, create=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {manager.directory} to score")
  tx = optim.create_optimizer(c, optim.create_schedule(c, 1))
  state, shardings = trainer.create_train_state(c, exp.model, tx, jax.random.key(0), exp.mesh, exp.task,
                                                exp.source(split))
  state, _ = trainer.restore_checkpoint(manager, state, None)
  manager.close()
  predict = exp.predict_fn(exp.jit_eval_step(shardings), trainer._eval_params(state, c),  # noqa: SLF001
                           state.model_state)
  labels, scores = [], []
  for batch in exp.eval_dataset(split):
    out = predict(batch)
    keep = np.asarray(out["mask"]).astype(bool)
    labels.append(np.asarray(out["labels"])[keep])
    scores.append(np.asarray(out["scores"], np.float32)[keep])
  return np.concatenate(labels).astype(np.int64), np.concatenate(scores)


def count_train_labels(config: ml_collections.ConfigDict) -> List[int]:
  """Training images per class of the whole (all-class) train split."""
  import importlib
  from fer_jax.data import samplers, sources
  c = config.dataset
  if c.get("import_module"):
    importlib.import_module(c.import_module)  # registers the user's own TFDS builders
  builder = sources.get_builder(c.name, data_dir=c.get("data_dir"), manual_dir=c.get("manual_dir"))
  labels = samplers.read_labels(builder.as_data_source(split=c.train_split), c.get("label_key", "label"))
  return np.bincount(np.asarray(labels), minlength=int(config.pairwise.num_classes)).tolist()


# ----------------------------------------------------------------------------------------------------
# The sweep.
# ----------------------------------------------------------------------------------------------------

def _save_npz(path: str, **arrays: np.ndarray) -> None:
  """Written to a temporary name, then renamed: the file exists only once complete (it marks a done job)."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _fmt(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _write_sweep_file(workdir: str, spec: str, config, class_names, train_counts, budget: str,
                      is_writer: bool = True) -> None:
  k = int(config.pairwise.num_classes)
  meta = {"config": spec, "class_names": list(class_names), "num_classes": k,
          "pairs": [pairs_lib.pair_name(p) for p in pairs_lib.all_pairs(k)],
          "test_split": str(config.pairwise.test_split), "dataset": str(config.dataset.name),
          "head": str(config.pairwise.get("head", "")),
          "train_counts": train_counts, "budget": budget}
  path = os.path.join(workdir, report.SWEEP_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old.get("config") != spec:
      raise ValueError(f"{workdir} holds a sweep of --config={old.get('config')!r}, not {spec!r}: use "
                       "another --workdir (the finished pairs would mix two configs)")
  if is_writer:
    with open(path, "w") as f:
      json.dump(meta, f, indent=2)


def run_sweep(spec: str, workdir: str, pairs: Optional[Sequence[Pair]] = None, single: bool = False,
              single_budget: str = "per_model", train_fn: Optional[TrainFn] = None,
              score_fn: Optional[ScoreFn] = None, count_fn: Optional[CountFn] = None,
              log: Callable[[str], None] = print, overrides: Sequence[str] = (),
              is_writer: Optional[bool] = None) -> Dict[str, Any]:
  """Trains the pairs not finished yet (then the single model), scores them, writes the report.

  Several processes (``jax.distributed``, a TPU pod slice) run the same sweep together: every one trains and
  scores (collectively), only process 0 (``is_writer``, default ``jax.process_index() == 0``) writes the
  sweep's own files, so ``workdir`` must be one shared directory (an NFS / Filestore mount).

  ``train_fn`` / ``score_fn`` / ``count_fn`` default to the trainer's ``train_and_evaluate``,
  :func:`score_test_split` and :func:`count_train_labels` (tests pass instant fakes). Returns
  ``{'trained': [...], 'skipped': [...], 'report': ...}``, or stops early with ``'preempted': name`` when a
  signal stopped a training run (rerun the command to resume it)."""
  if single_budget not in BUDGETS:
    raise ValueError(f"single_budget={single_budget!r}; expected one of {BUDGETS}")
  if train_fn is None:
    from fer_jax.train import trainer
    train_fn = trainer.train_and_evaluate
  score_fn = score_fn or score_test_split
  count_fn = count_fn or count_train_labels
  if is_writer is None:
    import jax
    is_writer = jax.process_index() == 0
  base = config_for(spec, None, overrides)
  k = int(base.pairwise.num_classes)
  class_names = list(base.pairwise.class_names)
  if len(class_names) != k:
    raise ValueError(f"config.pairwise.class_names has {len(class_names)} names for num_classes={k}")
  todo = list(pairs) if pairs is not None else pairs_lib.all_pairs(k)
  for p in todo:
    pairs_lib.parse_pair(pairs_lib.pair_name(p), k)  # range check
  os.makedirs(workdir, exist_ok=True)
  counts_path = os.path.join(workdir, "train_counts.json")
  if os.path.exists(counts_path):
    with open(counts_path) as f:
      train_counts = json.load(f)
  else:
    train_counts = [int(n) for n in count_fn(base)]
    if is_writer:
      with open(counts_path, "w") as f:
        json.dump(train_counts, f)
  _write_sweep_file(workdir, spec, base, class_names, train_counts, single_budget, is_writer)

  out: Dict[str, Any] = {"trained": [], "skipped": []}
  t0 = time.time()
  run_times: List[float] = []
  total_steps = 0
  jobs: List[Tuple[str, Optional[Pair]]] = [(pairs_lib.pair_dirname(p), p) for p in todo]
  if single:
    jobs += [(report.SINGLE_DIRS[b], None) for b in ("per_model", "total") if single_budget in (b, "both")]
  for n, (name, pair) in enumerate(jobs, 1):
    sub = os.path.join(workdir, name)
    done_file = os.path.join(sub, report.MARGINS_FILE if pair else report.SCORES_FILE)
    what = (f"pair {pairs_lib.pair_name(pair)} ({pairs_lib.pair_label(pair, class_names)})" if pair
            else f"single {k}-class model ({report.SINGLE_TITLES[name]})")
    config = config_for(spec, pair, overrides)
    if pair is not None:
      total_steps += int(config.num_train_steps or 0)
    if os.path.exists(done_file):
      out["skipped"].append(name)
      log(f"[{n}/{len(jobs)}] {what}: finished earlier, skipped ({done_file})")
      continue
    if name == report.SINGLE_DIRS["total"]:
      steps = _all_pair_steps(spec, k, overrides)
      config.num_train_steps, config.num_epochs = steps, 0.0
    t = time.time()
    log(f"[{n}/{len(jobs)}] {what}: training in {sub}")
    results = train_fn(config, sub)
    if isinstance(results, dict) and results.get("preempted_at_step") is not None:
      log(f"[{n}/{len(jobs)}] {what}: stopped by a signal at step {results['preempted_at_step']}; rerun the "
          "same command to resume it (finished pairs are skipped)")
      out["preempted"] = name
      return out
    labels, scores = score_fn(config, sub)
    scores = np.asarray(scores, np.float32)
    if pair is not None:
      if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"{what}: the model gives scores of shape {scores.shape}; a pair model must give 2")
      if is_writer:
        _save_npz(done_file, labels=np.asarray(labels, np.int64), margins=scores[:, 1] - scores[:, 0],
                  scores=scores, pair=np.asarray(pair, np.int64))
    elif is_writer:
      _save_npz(done_file, labels=np.asarray(labels, np.int64), scores=scores)
    run_times.append(time.time() - t)
    out["trained"].append(name)
    remaining = sum(1 for nm, _ in jobs[n:] if not _is_done(workdir, nm))
    eta = np.mean(run_times) * remaining
    log(f"[{n}/{len(jobs)}] {what}: done in {_fmt(run_times[-1])}; elapsed {_fmt(time.time() - t0)}, "
        f"ETA {_fmt(eta)} ({remaining} to go)")
  if is_writer:
    out["report"] = report.build_report(workdir)
  return out


def _is_done(workdir: str, name: str) -> bool:
  f = report.SCORES_FILE if name in report.SINGLE_TITLES else report.MARGINS_FILE
  return os.path.exists(os.path.join(workdir, name, f))


def _all_pair_steps(spec: str, k: int, overrides: Sequence[str]) -> int:
  return int(sum(int(config_for(spec, p, overrides).num_train_steps or 0) for p in pairs_lib.all_pairs(k)))


EPILOG = """\
examples:
  fer-jax pairwise --config=experiments/pairwise_ferplus.py --workdir=runs/pairs_ferplus --single \\
      --single_budget=both
  fer-jax pairwise --config=experiments/pairwise_affectnet.py:backbone=iresnet100 --workdir=runs/pairs_affn \\
      --config.dataset.manual_dir=~/data/affectnet --config.init_weights=~/weights/ms1mv3_r100.pth --single

Rerun the same command after a kill or Ctrl-C: finished pairs are skipped, an unfinished one resumes from its
checkpoint. Outputs (in --workdir): pairs.csv / pairs.md, pair_accuracy.png, pair_balanced_accuracy.png,
ovo.json, ovo_confusion.png, comparison.md (python -m fer_jax.pairwise.report rewrites them at any time).
"""


def main(argv=None) -> int:
  """``fer-jax pairwise`` / ``python -m fer_jax.pairwise.sweep``; returns the exit status."""
  parser = argparse.ArgumentParser(prog="fer-jax pairwise", description=__doc__.split("\n\n")[0],
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  parser.add_argument("--config", required=True, help="experiment file[:options] with a config.pairwise "
                      "section, e.g. experiments/pairwise_ferplus.py:head=softmax")
  parser.add_argument("--workdir", required=True, help="the sweep's directory (one sub-dir per pair)")
  parser.add_argument("--pairs", default="all", help="pairs to train now, e.g. '0-1,3-5' (default: all)")
  parser.add_argument("--single", action="store_true", help="also train the single K-class model")
  parser.add_argument("--single_budget", default="per_model", choices=BUDGETS,
                      help="single model steps: per_model = one pair model's; total = all pairs' summed; "
                      "both = the two models")
  parser.add_argument("--jax_distributed", action="store_true",
                      help="jax.distributed.initialize() first: the same command on every host of a pod slice "
                      "(the work dir must be shared)")
  parser.add_argument("--config.FIELD=VALUE", dest="_overrides", metavar="", default=None,
                      help="override a field of every model's config, e.g. --config.dataset.manual_dir=DIR "
                      "(an unknown field fails at once, naming it)")
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  if len(overrides) != len(rest):
    parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
  from absl import logging
  logging.set_verbosity(logging.INFO)
  try:
    base = config_for(args.config, None, overrides)
    pairs = pairs_lib.parse_pairs(args.pairs, int(base.pairwise.num_classes))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.jax_distributed:
    import jax
    jax.distributed.initialize()
  out = run_sweep(args.config, args.workdir, pairs, single=args.single, single_budget=args.single_budget,
                  overrides=overrides)
  if "preempted" in out:
    return 1
  if "report" not in out:  # not process 0
    return 0
  rep = out["report"]
  with open(os.path.join(args.workdir, "pairs.md")) as f:
    print(f.read())
  print(f"{rep['finished']}/{rep['pairs']} pairs finished; {report.summary_line(rep['pair_summary'])}; outputs in "
        f"{os.path.abspath(args.workdir)}")
  if "comparison_markdown" in rep:
    print(rep["comparison_markdown"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
