r"""SeLiNet (or any ``emotic``-task model) from a training work dir to TFLite float32 and int8: file sizes,
batch-1 CPU latency with ai_edge_litert, and the exported models' EMOTIC metrics against JAX's on a split.

    .venv/bin/python benchmarks/selinet_export.py --workdir=runs/selinet/ondevice \
        [--split=test] [--calibration=200] [--runs=100] [--threads=1]

(the data are read from the dataset and data_dir of the run's saved config: run it from the directory the
training ran in when that data_dir is relative).

The exported file takes the two named inputs ``body`` (1, B, B, 3) and ``context`` (1, S, S, 3), float32 pixel
values 0..255 (the dataset's uint8 images as float), and returns ``category_scores`` (1, 26: the model's
category outputs, EMOTIC's ranking scores) and, for models with a sentiment head, ``sentiment_probs``
(1, 3: softmax). Scaling and the mean / std normalisation of the training config are inside the file.
Convolutions are exported with XLA's implementations (``conv_impl`` / ``depthwise_impl`` 'xla': the same
parameters; the CPU-fast training kernels would export as shifted multiply-adds). int8: every layer after
the first convolution of each input (``fer_jax.export.tflite``), calibrated on the first ``--calibration``
training examples.

Reported (JSON in ``<workdir>/export/report.json``, files next to it): size; median latency of ``--runs``
single-example calls after 10 warm-up calls (``--threads`` interpreter threads); max |difference| of the
category scores and sentiment probabilities vs JAX, sentiment agreement; per-category AP, mAP and sentiment
accuracy / macro-F1 of JAX and of each file on ``--split``, through the ``emotic`` evaluator's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def export_spec(spec):
  """A model config with XLA's convolution implementations everywhere they can be chosen."""
  spec = json.loads(json.dumps(spec))

  def walk(node):
    if isinstance(node, dict):
      if "name" in node and node["name"] in ("selinet", "emotic_baseline", "resnext"):
        node.setdefault("conv_impl", "xla")
      if "name" in node and node["name"] in ("selinet", "mobilenetv3", "efficientnet"):
        node.setdefault("depthwise_impl", "xla")
      for k in ("conv_impl", "depthwise_impl"):
        if k in node:
          node[k] = "xla"
      for v in node.values():
        walk(v)
  walk(spec)
  return spec


def latency_ms(fn, runs: int) -> float:
  for _ in range(10):
    fn()
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def scores(categories, labels, sentiment_pred=None, sentiment=None):
  from fer_jax.metrics import classification as cls_metrics
  from fer_jax.metrics.multilabel import average_precision
  ap = average_precision(categories, labels)
  out = {"map": float(ap.mean()), "ap": [float(a) for a in ap]}
  if sentiment_pred is not None:
    s = cls_metrics.scores_from_confusion(cls_metrics.confusion_matrix(sentiment, sentiment_pred, 3))
    out.update(sentiment_accuracy=float(s["accuracy"]), sentiment_macro_f1=float(s["macro_f1"]))
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--split", default="test")
  ap.add_argument("--calibration", type=int, default=200)
  ap.add_argument("--runs", type=int, default=100)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--out_dir", default=None)
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  from fer_jax.export import tflite
  from fer_jax.models import composite, emotic_baseline, selinet  # noqa: F401  (register the backbones)
  from fer_jax.pretrained.from_run import variables_from_workdir

  config, exp, variables, step = variables_from_workdir(args.workdir)
  model = composite.build_model(export_spec(config.model.to_dict()))
  mean = np.asarray(config.input.mean, np.float32)
  std = np.asarray(config.input.std, np.float32)
  has_sentiment = "sentiment" in dict(config.loss)

  def fn(body, context):
    def norm(x):
      return (x / 255.0 - mean) / std
    out = model.apply(variables, body=norm(body), context=norm(context), train=False)
    res = {"category_scores": out["multilabel_logits"].astype(jnp.float32)}
    if has_sentiment:
      res["sentiment_probs"] = jax.nn.softmax(out["sentiment_logits"].astype(jnp.float32))
    return res

  def read(split, n=None):
    src = exp.source(split)
    n = len(src) if n is None else min(n, len(src))
    rec = [src[i] for i in range(n)]
    x = {k: np.stack([r[k] for r in rec]).astype(np.float32) for k in ("body", "context")}
    return x, np.stack([r["categories"] for r in rec]), np.stack([r["vad"] for r in rec])

  x_test, labels, vad = read(args.split)
  x_cal, _, _ = read(config.dataset.train_split, args.calibration)
  task = exp.task
  sentiment = np.asarray(task.sentiment({"categories": jnp.asarray(labels), "vad": jnp.asarray(vad)}))
  jfn = jax.jit(fn)
  ref = {k: [] for k in jax.eval_shape(jfn, **{k: v[:1] for k, v in x_test.items()})}
  for i in range(0, len(labels), 100):
    out = jfn(**{k: v[i:i + 100] for k, v in x_test.items()})
    for k in ref:
      ref[k].append(np.asarray(out[k]))
  ref = {k: np.concatenate(v) for k, v in ref.items()}

  def summarise(out):
    sp = out["sentiment_probs"].argmax(1) if has_sentiment else None
    return scores(out["category_scores"], labels, sp, sentiment if has_sentiment else None)

  one = {k: v[:1] for k, v in x_test.items()}
  jax_latency = latency_ms(lambda: jax.block_until_ready(jfn(**one)), args.runs)
  report = {"workdir": args.workdir, "step": step, "split": args.split, "n": int(len(labels)),
            "params": int(sum(np.size(a) for a in jax.tree.leaves(variables["params"]))),
            "jax": {**summarise(ref), "latency_ms_batch1": jax_latency}}
  out_dir = args.out_dir or os.path.join(args.workdir, "export")
  os.makedirs(out_dir, exist_ok=True)
  shapes = {k: (1,) + v.shape[1:] for k, v in x_test.items()}
  for int8 in (False, True):
    name = "int8" if int8 else "float32"
    t = time.time()
    data = tflite.convert(fn, shapes, int8=int8, calibration=x_cal if int8 else None,
                          metadata={"fer_jax_export": 1, "model": os.path.basename(args.workdir.rstrip("/")),
                                    "inputs": "body, context: float32 pixels 0..255", "outputs": sorted(ref)})
    seconds = time.time() - t
    path = os.path.join(out_dir, f"model_{name}.tflite")
    with open(path, "wb") as f:
      f.write(data)
    runner = tflite.Runner(data, num_threads=args.threads)
    got = runner(x_test)
    entry = {"path": path, "size_bytes": len(data), "size_mib": len(data) / 2**20, "convert_seconds": seconds,
             "latency_ms_batch1": latency_ms(lambda: runner(one), args.runs),
             "max_abs_diff": {k: float(np.abs(got[k] - ref[k]).max()) for k in ref}, **summarise(got)}
    if has_sentiment:
      entry["sentiment_agreement_vs_jax"] = float(np.mean(got["sentiment_probs"].argmax(1) ==
                                                          ref["sentiment_probs"].argmax(1)))
    report[name] = entry
    print(f"{name}: {entry['size_mib']:.2f} MiB, {entry['latency_ms_batch1']:.3f} ms, mAP {entry['map']:.4f} "
          f"(JAX {report['jax']['map']:.4f}), max |d| {entry['max_abs_diff']}", flush=True)
  report["threads"] = args.threads
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps({k: v for k, v in report.items() if k not in ("jax", "float32", "int8")}))


if __name__ == "__main__":
  main()
