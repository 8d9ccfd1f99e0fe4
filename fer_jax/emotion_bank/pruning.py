"""Progressive landmark pruning of the bank: drop the least relevant landmarks, retrain, measure.

    fer-jax emotion-bank --config=experiments/emotion_bank_synthetic.py:arch=temo,size=tiny,steps=300 \
        --workdir=runs/bank --prune=68,51,34,17,8 [--prune_schedule=progressive|fixed] [--prune_split=validation]

Di Luzio et al. (PAPERS.md section 4) remove the least relevant landmarks (by their improved IG)
progressively and report that accuracy rose while compute fell. Ours (the ranking details are our
choice, the paper's are unknown):

* level 0 is the full bank (``fer_jax.emotion_bank.bank``, all L landmarks), each next level keeps
  ``keeps[i]`` landmarks, the SAME set for all K models of the bank (one landmark tracker output serves
  every model; per-emotion sets would save nothing on the shared input), chosen by the GLOBAL relevance
  (``explain.global_relevance``: the sum over emotions of each emotion's |IG| share, so every emotion
  weighs the same);
* ``schedule='progressive'`` (default): the ranking of level i comes from the IG of the bank retrained
  at level i - 1, restricted to its kept landmarks (re-ranking after each retraining, the paper's
  "progressive removal"); ``'fixed'``: one ranking from the full bank (``regions.pruning_schedule``);
* the ranking's IG is computed on the VALIDATION split (``split``), so that the test split that scores
  each level played no part in choosing its landmarks;
* every level's bank is retrained from scratch with the kept landmarks (the config option
  ``landmarks=i+j+...``, kept in ascending index order, so the convolutions along the landmark axis still
  see facial neighbours) in ``WORKDIR/<variant>_keep<N>/``, and reported like the full bank.

Outputs in ``WORKDIR/<variant>/``: ``pruning.json`` (the kept sets: a rerun reuses them), ``pruning.md``
(accuracy and compute per level; binary banks also the latency of their packed XNOR-popcount models,
``landmark_lstm.pack_landmark_model``), ``pruning.png`` (accuracy, multiply-accumulates and latency vs landmarks
kept) and ``pruning_landmarks.png`` (the kept points of each level on the mean face).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.emotion_bank import bank as bank_lib
from fer_jax.emotion_bank import compute, explain
from fer_jax.models import landmark_lstm
from fer_jax.emotion_bank import members as members_lib
from fer_jax.emotion_bank import report as report_lib

SCHEDULES = ("progressive", "fixed")
PRUNING_FILE = "pruning.json"

__all__ = ["SCHEDULES", "parse_keeps", "next_kept", "run_pruning", "level_compute", "pruning_markdown"]


def parse_keeps(text: str, num_landmarks: int) -> List[int]:
  """'68,51,34,17,8' -> [68, 51, 34, 17, 8]: strictly decreasing counts in 1..L; L is put first if absent
  (the full bank is level 0)."""
  try:
    keeps = [int(t) for t in str(text).split(",") if t.strip()]
  except ValueError:
    raise ValueError(f"--prune={text!r}: expected comma-separated landmark counts, e.g. 68,51,34,17,8") from None
  if not keeps or any(not 1 <= k <= num_landmarks for k in keeps):
    raise ValueError(f"--prune={text!r}: every count must lie in 1..{num_landmarks}")
  if any(b >= a for a, b in zip(keeps, keeps[1:])):
    raise ValueError(f"--prune={text!r}: the counts must decrease strictly")
  return keeps if keeps[0] == num_landmarks else [num_landmarks] + keeps


def next_kept(kept: Sequence[int], relevance, keep: int) -> List[int]:
  """The ``keep`` most relevant of the ``kept`` landmarks (``relevance``: (L,) over all landmarks; ties: the
  lower index), in ascending order."""
  kept = [int(i) for i in kept]
  if not 1 <= keep <= len(kept):
    raise ValueError(f"cannot keep {keep} of {len(kept)} landmarks")
  r = np.asarray(relevance, np.float64)
  order = sorted(kept, key=lambda i: (-r[i], i))
  return sorted(order[:keep])


def _spec_with_landmarks(spec: str, kept: Sequence[int], num_landmarks: int) -> str:
  if len(kept) == num_landmarks:
    return spec
  return f"{spec}{',' if ':' in spec else ':'}landmarks={'+'.join(str(i) for i in kept)}"


def _relevance(bank_dir: str, split: str, baseline: str, n_steps: int, explain_fn, log) -> np.ndarray:
  """The bank's global relevance on ``split`` (read back when this bank was explained before)."""
  path = os.path.join(bank_dir, f"relevance_{split}.npz")
  info = os.path.join(bank_dir, f"relevance_{split}.json")
  if os.path.exists(path) and os.path.exists(info):
    with open(info) as f:
      old = json.load(f)
    if old.get("baseline") == baseline and old.get("n_steps") == n_steps:
      with np.load(path) as d:
        return d["global_relevance"]
  return np.asarray(explain_fn(bank_dir, split=split, baseline=baseline, n_steps=n_steps, log=log)["global_relevance"])


def run_pruning(spec: str, workdir: str, keeps: Sequence[int], schedule: str = "progressive",
                split: str = "validation", baseline: str = "first", n_steps: int = 32,
                emotions: Optional[str] = None, overrides: Sequence[str] = (), log: Callable[[str], None] = print,
                measure: bool = True, noise: Optional[Sequence[float]] = None, **bank_kwargs) -> Dict[str, Any]:
  """Trains / reuses every level's bank, ranks with IG, writes the pruning report (module docstring).

  ``bank_kwargs`` go to ``bank.run_bank`` (tests pass its fakes; ``explain_fn`` replaces
  ``explain.explain_bank``). ``measure=False`` skips the compute measurement (tests); ``noise`` (sigmas,
  fractions of the inter-ocular distance) adds each level's accuracy on noisy test clips
  (``robustness.noise_curve``)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
  explain_fn = bank_kwargs.pop("explain_fn", None) or (
      lambda d, **kw: explain.explain_bank(d, plot=False, **kw))
  path, arg = bank_lib.split_spec(spec)
  bad = [k for k in bank_lib._option_keys(arg) if k in ("landmarks", "ranking")]  # noqa: SLF001
  if bad:
    raise ValueError(f"--config={spec!r} sets {bad}; pruning chooses the landmarks itself")
  base = bank_lib.emotion_config(spec, None, overrides)
  num_l = int(base.task_options.num_landmarks)
  if list(keeps)[0] != num_l:
    raise ValueError(f"keeps={list(keeps)} must start with all {num_l} landmarks (parse_keeps adds it)")
  home = os.path.join(workdir, bank_lib.bank_dirname(base))
  os.makedirs(home, exist_ok=True)
  state_path = os.path.join(home, PRUNING_FILE)
  state = {"config": spec, "overrides": list(overrides), "schedule": schedule, "split": split,
           "baseline": baseline, "n_steps": n_steps, "levels": []}
  if os.path.exists(state_path):
    with open(state_path) as f:
      old = json.load(f)
    for key in ("config", "overrides", "schedule", "split", "baseline", "n_steps"):
      if old.get(key) != state[key]:
        raise ValueError(f"{state_path} was made with {key}={old.get(key)!r}, not {state[key]!r}: use another "
                         "--workdir (its kept landmark sets came from that setting)")
    state["levels"] = old.get("levels", [])
  stored = {lv["keep"]: lv for lv in state["levels"]}

  def save_state():
    with open(state_path + ".tmp", "w") as f:
      json.dump(state, f, indent=2)
    os.replace(state_path + ".tmp", state_path)

  levels: List[Dict[str, Any]] = []
  kept = list(range(num_l))
  full_relevance = None
  prev_dir = None
  for i, keep in enumerate(keeps):
    if i > 0:
      if keep in stored:
        new = [int(j) for j in stored[keep]["kept"]]
        if not set(new) <= set(kept) or len(new) != keep:
          raise ValueError(f"{state_path}: level keep={keep} holds {new}, not {keep} landmarks of the previous "
                           "level's set; remove the file to choose again")
      else:
        if schedule == "fixed":
          if full_relevance is None:
            full_relevance = _relevance(levels[0]["bank_dir"], split, baseline, n_steps, explain_fn, log)
          rel = full_relevance
        else:
          rel = _relevance(prev_dir, split, baseline, n_steps, explain_fn, log)
        new = next_kept(kept, rel, keep)
      kept = new
    log(f"pruning level {i}: {keep} landmarks")
    out = bank_lib.run_bank(_spec_with_landmarks(spec, kept, num_l), workdir, emotions, log=log,
                            overrides=overrides, **bank_kwargs)
    if "preempted" in out:
      return {"preempted": out["preempted"], "levels": levels}
    level = {"keep": keep, "kept": kept, "bank_dir": out["bank_dir"]}
    levels.append(level)
    if keep not in stored:
      state["levels"] = [lv for lv in state["levels"] if lv["keep"] != keep] + [level]
      state["levels"].sort(key=lambda lv: -lv["keep"])
      save_state()
    if not out["report"].get("complete"):
      log(f"pruning stops at {keep} landmarks: the bank is not complete (--emotions?)")
      break
    prev_dir = out["bank_dir"]
  results = [dict(level, **{k: v for k, v in report_lib.bank_results(level["bank_dir"]).items()
                            if k in ("multiclass", "mean_accuracy", "mean_f1", "train_seconds_total",
                                     "wall_seconds_total", "emotions", "variant")}) for level in levels]
  if measure and all("multiclass" in r for r in results):
    for r, c in zip(results, level_compute([r["bank_dir"] for r in results], noise=noise)):
      r["noise"] = c.pop("noise", None)
      r["compute"] = c
  text = pruning_markdown(results, schedule, split)
  for r in results:
    r.pop("emotions", None)
  with open(os.path.join(home, "pruning_results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(home, "pruning.md"), "w") as f:
    f.write(text + "\n")
  if measure and results and all("compute" in r for r in results):
    _plot(results, os.path.join(home, "pruning.png"))
    _plot_kept(home, results, split)
  return {"levels": results, "markdown": text, "home": home}


# ----------------------------------------------------------------------------------------------------
# Compute per level.
# ----------------------------------------------------------------------------------------------------

def latency_functions(members: Sequence[Any], raw: jax.Array) -> Dict[str, Callable[[], jax.Array]]:
  """Jitted batch-1 calls from stored landmarks ``raw`` (normalisation included) to logits: 'model' (the
  first member), 'bank' (all members vmapped over stacked parameters: (K, B)) and, for binary members, the
  same of their packed XNOR-popcount models ('model_packed', 'bank_packed';
  ``landmark_lstm.pack_landmark_model``)."""
  m = members[0]

  def bank_fn(model):
    def run(vs, r):
      x = m.task.preprocess({"landmarks": r})["landmarks"]
      return jax.vmap(lambda v: model.apply(v, train=False, landmarks=x)["logits"][:, 0])(vs)
    return jax.jit(run)

  def model_fn(model):
    return jax.jit(lambda v, r: model.apply(v, train=False, landmarks=m.task.preprocess({"landmarks": r})[
        "landmarks"])["logits"])

  stack = lambda vs: jax.tree.map(lambda *a: jnp.stack(a), *vs)  # noqa: E731
  runs = {"": (m.model, [mm.variables for mm in members])}
  if m.config.model.backbone.get("binary"):
    packed = [landmark_lstm.pack_landmark_model(mm.model, mm.variables) for mm in members]
    runs["_packed"] = (packed[0][0], [v for _, v in packed])
  fns = {}
  for suffix, (model, variables) in runs.items():
    one, all_ = model_fn(model), bank_fn(model)
    fns["model" + suffix] = lambda f=one, v=variables[0]: f(v, raw)
    fns["bank" + suffix] = lambda f=all_, v=stack(variables): f(v, raw)
  return fns


def level_compute(bank_dirs: Sequence[str], rounds: int = 5, calls: int = 20,
                  noise: Optional[Sequence[float]] = None) -> List[Dict[str, Any]]:
  """Per bank: MACs per clip per model (``compute.macs``), XLA's flops, and batch-1 latency of one model and
  of the whole bank (its K models vmapped over stacked parameters), both from stored landmarks (normalisation
  included) to logits; latencies timed interleaved across the banks. ``noise``: also ``robustness.bank_noise``
  (key 'noise')."""
  from fer_jax.emotion_bank import robustness
  fns, rows = {}, []
  for d in bank_dirs:
    loaded = explain.load_bank(d)
    members = loaded[1]
    m = members[0]
    task = m.task
    raw = jnp.asarray(np.asarray(members_lib.split_clips(m.exp, "test[:1]")[0]))
    x = task.preprocess({"landmarks": raw})["landmarks"]
    counts = compute.macs(dict(m.config.model.backbone), int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    flops = compute.xla_flops(lambda v, x, m=m: m.model.apply(v, train=False, landmarks=x)["logits"],
                              m.variables, x)
    for key, fn in latency_functions(members, raw).items():
      fns[(d, key)] = fn
    rows.append({"macs": counts, "xla_flops_per_model": flops, "models": len(members),
                 "bank_macs": counts["total"] * len(members)})
    if noise:
      rows[-1]["noise"] = robustness.bank_noise(d, noise, loaded=loaded)
  lat = compute.latency_ms(fns, rounds=rounds, calls=calls)
  for d, row in zip(bank_dirs, rows):
    for key in ("model", "bank", "model_packed", "bank_packed"):
      if (d, key) in lat:
        row[f"latency_{key}_ms"] = lat[(d, key)]
  return rows


def pruning_markdown(results: Sequence[Dict[str, Any]], schedule: str, split: str) -> str:
  sigmas = [n["sigma"] for n in (results[0].get("noise") or []) if n["sigma"] > 0] if results else []
  packed = any("latency_bank_packed_ms" in (r.get("compute") or {}) for r in results)
  lines = [f"Landmark pruning ({schedule} ranking by the global |IG| share on the {split} split; each level "
           "retrained; test split)", "",
           "| landmarks kept | multi-class acc % | macro-F1 % | one-vs-rest acc % / F1 % (mean) | " +
           "".join(f"acc % at noise {s:g} IOD | " for s in sigmas) + "MACs per clip, one "
           "model (bank) | XLA flops, one model | latency one model / bank, ms (batch 1) | " +
           ("packed: one model / bank, ms | " if packed else "") + "bank training s |",
           "|---|---|---|---|" + "---|" * len(sigmas) + "---|---|---|" + ("---|" if packed else "") + "---|"]
  for r in results:
    m = r.get("multiclass")
    c = r.get("compute")
    acc = f"{100 * m['accuracy']:.1f} | {100 * m['macro_f1']:.1f}" if m else " | "
    comp = (f"{c['macs']['total']:,} ({c['bank_macs']:,}) | {c['xla_flops_per_model']:,.0f} | "
            f"{c['latency_model_ms']['median_ms']:.3f} / {c['latency_bank_ms']['median_ms']:.3f}") if c else " | | "
    if packed:
      comp += (f" | {c['latency_model_packed_ms']['median_ms']:.3f} / {c['latency_bank_packed_ms']['median_ms']:.3f}"
               if c and "latency_bank_packed_ms" in c else " | ")
    noisy = {n["sigma"]: n for n in (r.get("noise") or [])}
    cells = "".join(f"{100 * noisy[s]['accuracy']:.1f} | " if s in noisy else " | " for s in sigmas)
    lines.append(f"| {r['keep']} | {acc} | {100 * r['mean_accuracy']:.1f} / {100 * r['mean_f1']:.1f} | {cells}{comp} | "
                 f"{r['train_seconds_total']:.0f} |")
  if results:
    lines.append("")
    for r in results[1:]:
      lines.append(f"- kept {r['keep']}: {', '.join(map(str, r['kept']))}")
  return "\n".join(lines)


def _plot(results: Sequence[Dict[str, Any]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image
  from fer_jax.train import plots
  keep = [r["keep"] for r in results]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.6), dpi=110)
  a1.plot(keep, [100 * r["multiclass"]["accuracy"] for r in results], "o-", label="multi-class accuracy")
  a1.plot(keep, [100 * r["multiclass"]["macro_f1"] for r in results], "s--", label="multi-class macro-F1")
  a1.plot(keep, [100 * r["mean_accuracy"] for r in results], "^:", label="one-vs-rest accuracy (mean)")
  values = [100 * r["multiclass"]["accuracy"] for r in results]
  sigmas = [n["sigma"] for n in (results[0].get("noise") or []) if n["sigma"] > 0]
  for sigma in sigmas:
    acc = [100 * next(n["accuracy"] for n in r["noise"] if n["sigma"] == sigma) for r in results]
    values += acc
    a1.plot(keep, acc, ".-", alpha=0.7, label=f"multi-class accuracy, landmark noise {sigma:g} IOD")
  a1.set_ylim(max(0.0, min(values) - 5.0), 101.0)
  a1.set_xlabel("landmarks kept")
  a1.set_ylabel("test %")
  a1.invert_xaxis()
  a1.grid(alpha=0.3)
  a1.legend(fontsize=7)
  a2.plot(keep, [r["compute"]["macs"]["total"] / 1e6 for r in results], "o-", color="tab:red")
  a2.set_xlabel("landmarks kept")
  a2.set_ylabel("MACs per clip, one model (M)", color="tab:red")
  a2.invert_xaxis()
  a2.grid(alpha=0.3)
  a3 = a2.twinx()
  a3.plot(keep, [r["compute"]["latency_bank_ms"]["median_ms"] for r in results], "s--", color="tab:blue", mfc="none",
          label="float simulation" if "latency_bank_packed_ms" in results[0]["compute"] else None)
  if "latency_bank_packed_ms" in results[0]["compute"]:
    a3.plot(keep, [r["compute"]["latency_bank_packed_ms"]["median_ms"] for r in results], "d:", color="tab:blue",
            label="packed XNOR-popcount")
    a3.legend(fontsize=7, loc="upper right")
  a3.set_ylabel(f"bank latency, batch 1 (ms; {results[0]['compute']['models']} models)", color="tab:blue")
  fig.suptitle(f"bank {results[0].get('variant', '')}: landmark pruning", fontsize=9)
  fig.tight_layout()
  Image.fromarray(plots.figure_to_array(fig)).save(path)


def _plot_kept(home: str, results: Sequence[Dict[str, Any]], split: str) -> None:
  path = os.path.join(results[0]["bank_dir"], f"relevance_{split}.npz")
  if not os.path.exists(path):
    return
  with np.load(path) as d:
    face = d["mean_face"]
  panels = []
  for r in results:
    v = np.zeros(face.shape[0])
    v[r["kept"]] = 1.0
    panels.append((f"{r['keep']} kept: acc {100 * r['multiclass']['accuracy']:.1f}%", v))
  fig = explain.face_heatmap_figure(face, panels, "landmarks kept at each pruning level", size=40.0,
                                    top=[r["keep"] if r["keep"] <= 17 else 0 for r in results])
  explain._save_figure(fig, os.path.join(home, "pruning_landmarks.png"))  # noqa: SLF001
