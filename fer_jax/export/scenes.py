"""Export a two-input ``emotic``-task run (SeLiNet, on-device SeLiNet, the EMOTIC baseline; PAPERS.md section 3)
to TFLite or ONNX, checked against JAX on the run's own data before it is written.

    >>> from fer_jax.export import scenes
    >>> report = scenes.export_run('runs/selinet_ondevice', 'onnx', 'selinet.onnx', int8=True)
    >>> print(report.summary())

The file takes two named inputs, float32 pixel values 0..255 (the dataset's uint8 images as float, at the
task's sizes: ``task_options.body_size`` / ``context_size``): ``body`` (B, b, b, C), the person's crop, and
``context`` (B, s, s, C), the whole image; and returns ``category_scores`` (B, 26: the category outputs, the
ranking scores EMOTIC's mean AP is computed from), ``sentiment_probs`` (B, 3: negative / neutral / positive,
softmax; models with a sentiment head) and ``vad`` (B, 3; models with a VAD head). The training config's
scaling and normalisation (``fer_jax.train.preprocess.preprocess_images``) are inside the file. The contract,
category and sentiment names, the run's name and checkpoint step are stored in its metadata, as
``fer_jax.export.export`` stores them for a face classifier.

Convolutions are exported with XLA's implementations (:func:`export_spec`: the same parameters; the CPU-fast
training kernels would export as shifted multiply-adds), and explicitly padded max-pools (ResNet stems: the
EMOTIC baseline) as edge padding + 'VALID' pool (``fer_jax.export.onnx.max_pool_compatible``: the same values,
and no -inf padding for int8 calibration); JAX, the reference, is the model as trained.

Checks (the first ``n_check`` examples of ``check_split``, read as the evaluators read them):
- float: max |difference| <= ``fer_jax.export.FLOAT_TOLERANCE`` in every output;
- int8: mean AP over the categories at most ``INT8_MAX_MAP_DROP`` below JAX's on the same examples (we chose
  2 points: int8 cost 0.8-0.9 points on the synthetic scenes' 1,000 test people). Sentiment agreement with
  JAX is reported, not enforced (sentiment is barely learnt at CPU scale, its probabilities near-uniform).
A failed check raises ``fer_jax.export.ExportCheckError`` and writes nothing (``strict=False`` writes anyway);
the file is written to a temporary name and renamed; an existing ``output`` needs ``overwrite=True``.

int8 calibration: the first ``n_calibration`` training examples; int8 weights and activations after the first
convolution of each input, the preprocessing and the heads' last ops float32 (``fer_jax.export.tflite`` /
``.onnx``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from fer_jax import export as export_lib

INPUT_NAMES = ("body", "context")
INT8_MAX_MAP_DROP = 0.02  # mean AP in [0, 1]: 2 points
TASK = "emotic"


def export_spec(spec: Mapping[str, Any]) -> Dict[str, Any]:
  """A model config with XLA's convolution implementations everywhere they can be chosen."""
  spec = json.loads(json.dumps(dict(spec)))

  def walk(node):
    if isinstance(node, dict):
      if node.get("name") in ("selinet", "emotic_baseline", "resnext"):
        node.setdefault("conv_impl", "xla")
      if node.get("name") in ("selinet", "mobilenetv3", "efficientnet"):
        node.setdefault("depthwise_impl", "xla")
      for k in ("conv_impl", "depthwise_impl"):
        if k in node:
          node[k] = "xla"
      for v in node.values():
        walk(v)
  walk(spec)
  return spec


def is_scene_run(workdir: str) -> bool:
  """Whether ``workdir``'s saved config trains the ``emotic`` task (False when it has none)."""
  from fer_jax.train import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  saved = workdir_lib.read_saved_config(workdir)
  return bool(saved) and saved.get("task") == TASK


@dataclasses.dataclass
class SceneRun:
  """An ``emotic`` run's checkpoint, its model as trained and as exported, and its data."""
  workdir: str
  name: str
  config: Any
  exp: Any
  variables: Dict[str, Any]
  step: int
  export_model: Any
  output_names: Tuple[str, ...]
  input_shapes: Dict[str, Tuple[int, ...]]  # per example: (H, W, C)

  def forward(self, variables, body, context, model=None) -> Dict[str, Any]:
    """float32 pixels 0..255 -> {output name: float32 (B, ...)}: the exported function (``model`` None: the
    export model; ``self.exp.model``: the model as trained)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from fer_jax.train.preprocess import preprocess_images  # pylint: disable=import-outside-toplevel
    model = self.export_model if model is None else model
    out = model.apply(variables, body=preprocess_images(body, self.config),
                      context=preprocess_images(context, self.config), train=False)
    res = {"category_scores": out["multilabel_logits"].astype(jnp.float32)}
    if "sentiment_logits" in out:
      res["sentiment_probs"] = jax.nn.softmax(out["sentiment_logits"].astype(jnp.float32), axis=-1)
    if "vad" in out:
      res["vad"] = out["vad"].astype(jnp.float32).reshape(body.shape[0], -1)
    return res

  def read(self, split: str, n: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The first ``n`` (None: all) examples of ``split`` as the evaluators read them: ({'body', 'context'}
    uint8, categories (n, 26), sentiment labels (n,) int)."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from fer_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    src = self.exp.source(split)
    n = len(src) if n is None else min(int(n), len(src))
    if n < 1:
      raise ValueError(f"split {split!r} of {self.config.dataset.name!r} has no examples to read")
    transform = pipeline.RecordEvalTransform(self.exp.task.fields(), self.exp.aug)
    rec = [transform.map(src[i]) for i in range(n)]
    x = {k: np.stack([r[k] for r in rec]) for k in INPUT_NAMES}
    labels = np.stack([r["categories"] for r in rec]).astype(np.float32)
    vad = np.stack([r["vad"] for r in rec]).astype(np.float32)
    sentiment = np.asarray(self.exp.task.sentiment({"categories": jnp.asarray(labels), "vad": jnp.asarray(vad)}))
    return x, labels, sentiment

  def jax_outputs(self, x: Mapping[str, np.ndarray], batch: int = 100, model=None) -> Dict[str, np.ndarray]:
    """:meth:`forward` of the model as trained (``model`` None) over uint8 or float examples, in jitted
    batches (the last one padded)."""
    import jax  # pylint: disable=import-outside-toplevel
    model = self.exp.model if model is None else model
    fn = jax.jit(lambda v, body, context: self.forward(v, body, context, model))
    n = len(x["body"])
    bs = min(batch, n)
    out: Dict[str, list] = {}
    for start in range(0, n, bs):
      chunk = {k: np.asarray(x[k][start:start + bs], np.float32) for k in INPUT_NAMES}
      m = len(chunk["body"])
      if m < bs:
        chunk = {k: np.concatenate([v, np.zeros((bs - m,) + v.shape[1:], np.float32)]) for k, v in chunk.items()}
      for k, v in fn(self.variables, **chunk).items():
        out.setdefault(k, []).append(np.asarray(v)[:m])
    return {k: np.concatenate(v) for k, v in out.items()}


def load_run(workdir: str, step: Optional[int] = None) -> SceneRun:
  """An ``emotic``-task training work dir's checkpoint (the latest, or ``step``) as a :class:`SceneRun`."""
  import jax  # pylint: disable=import-outside-toplevel
  from fer_jax.models import composite  # pylint: disable=import-outside-toplevel
  from fer_jax.pretrained import from_run  # pylint: disable=import-outside-toplevel
  from fer_jax.train import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir={workdir!r} is not a directory")
  saved = workdir_lib.read_saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{workdir} has no readable {workdir_lib.CONFIG_NAME}: is it a training work dir?")
  if saved.get("task") != TASK:
    raise ValueError(f"{workdir} trains task {saved.get('task')!r}; fer_jax.export.scenes exports {TASK!r} runs "
                     "(body + context inputs); export a face classifier with fer_jax.export.export")
  config, exp, variables, step = from_run.variables_from_workdir(workdir, step)
  names = tuple(getattr(exp.model, "input_names", ()))
  if sorted(names) != sorted(INPUT_NAMES):
    raise ValueError(f"the model of {workdir} takes inputs {list(names)}; expected {list(INPUT_NAMES)}")
  o = config.task_options
  channels = int(config.input.get("channels", 3))
  shapes = {"body": (int(o.body_size), int(o.body_size), channels),
            "context": (int(o.context_size), int(o.context_size), channels)}
  export_model = composite.build_model(export_spec(config.model.to_dict()))
  run = SceneRun(workdir=workdir, name=os.path.basename(os.path.normpath(workdir)), config=config, exp=exp,
                 variables=jax.tree.map(np.asarray, variables), step=int(step), export_model=export_model,
                 output_names=(), input_shapes=shapes)
  one = {k: jax.ShapeDtypeStruct((1,) + s, np.float32) for k, s in shapes.items()}
  out = jax.eval_shape(lambda b, c: run.forward(run.variables, b, c), one["body"], one["context"])
  run.output_names = tuple(k for k in ("category_scores", "sentiment_probs", "vad") if k in out)
  return run


def scores(outputs: Mapping[str, np.ndarray], labels: np.ndarray,
           sentiment: Optional[np.ndarray] = None) -> Dict[str, Any]:
  """Per-category AP and mAP (EMOTIC's: AP 0 for a category without positives), and with ``sentiment_probs``
  the sentiment accuracy / macro-F1 against ``sentiment`` labels."""
  from fer_jax.metrics import classification as cls_metrics  # pylint: disable=import-outside-toplevel
  from fer_jax.metrics.multilabel import average_precision  # pylint: disable=import-outside-toplevel
  ap = average_precision(outputs["category_scores"], labels)
  out: Dict[str, Any] = {"map": float(ap.mean()), "ap": [float(a) for a in ap]}
  if "sentiment_probs" in outputs and sentiment is not None:
    pred = outputs["sentiment_probs"].argmax(1)
    s = cls_metrics.scores_from_confusion(cls_metrics.confusion_matrix(sentiment, pred, 3))
    out.update(sentiment_accuracy=float(s["accuracy"]), sentiment_macro_f1=float(s["macro_f1"]))
  return out


@dataclasses.dataclass
class SceneExportReport:
  """What :func:`export_run` wrote and how well it matches JAX on the check examples."""
  path: str
  format: str
  int8: bool
  batch_size: int
  size_bytes: int
  model: str
  step: int
  check_split: str
  n_check: int
  max_abs_diff: Dict[str, float]  # per output, file vs JAX
  jax: Dict[str, Any]  # scores() of JAX on the check examples
  file: Dict[str, Any]  # scores() of the file
  sentiment_agreement: Optional[float]  # same argmax as JAX; None without a sentiment head
  criterion: str
  passed: bool
  latency_ms_batch1: Optional[float]  # median over single-example calls, this CPU; None if batch > 1
  n_calibration: int  # int8 only
  convert_seconds: float
  written: bool

  def summary(self) -> str:
    kind = f"{self.format} {'int8' if self.int8 else 'float32'}"
    lat = "n/a" if self.latency_ms_batch1 is None else f"{self.latency_ms_batch1:.3f} ms"
    cal = f"; calibrated on {self.n_calibration} training examples" if self.int8 else ""
    diff = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
    sent = ("" if self.sentiment_agreement is None
            else f", sentiment agreement {100 * self.sentiment_agreement:.1f}%")
    return (f"{kind} of {self.model} (step {self.step}, batch {self.batch_size}) -> {self.path}"
            f"{'' if self.written else ' (NOT written)'}: {self.size_bytes / 2**20:.2f} MiB, batch-1 CPU latency "
            f"{lat}{cal}\ncheck vs JAX on {self.n_check} {self.check_split} examples: max |d| {diff}; mAP "
            f"{100 * self.file['map']:.2f} (JAX {100 * self.jax['map']:.2f}){sent} -> "
            f"{'PASS' if self.passed else 'FAIL'} ({self.criterion})")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def metadata(run: SceneRun, fmt: str, int8: bool, batch_size: int) -> Dict[str, Any]:
  """The input / output contract and settings stored in the exported file."""
  from fer_jax.pretrained.from_run import LICENSE_NOTES  # pylint: disable=import-outside-toplevel
  b, c = run.input_shapes["body"], run.input_shapes["context"]
  task = run.exp.task
  colour = "grey" if b[-1] == 1 else "RGB"
  outputs = {"category_scores": f"float32 ({batch_size}, {task.num_categories}) category scores (ranking "
                                "scores; EMOTIC mAP) in category_names order"}
  if "sentiment_probs" in run.output_names:
    outputs["sentiment_probs"] = (f"float32 ({batch_size}, 3) sentiment probabilities (softmax) in "
                                  "sentiment_names order")
  if "vad" in run.output_names:
    outputs["vad"] = f"float32 ({batch_size}, 3) valence, arousal, dominance (EMOTIC ratings scaled to [0, 1])"
  quant = ("int8 weights (per channel) and activations after the first convolution of each input; "
           "preprocessing and first convolutions float32; float32 inputs and outputs") if int8 else "none (float32)"
  meta = {
      "fer_jax_export": export_lib.EXPORT_FORMAT_VERSION,
      "model": run.name,
      "step": run.step,
      "task": TASK,
      "dataset": str(run.config.dataset.name),
      "category_names": list(task.category_names),
      "inputs": {"body": f"float32 ({batch_size}, {b[0]}, {b[1]}, {b[2]}) pixel values 0..255 of the person's "
                         f"{colour} body crop resized to {b[0]}x{b[1]} (uint8 values as float, not scaled)",
                 "context": f"float32 ({batch_size}, {c[0]}, {c[1]}, {c[2]}) pixel values 0..255 of the whole "
                            f"{colour} image resized to {c[0]}x{c[1]} (uint8 values as float, not scaled)"},
      "outputs": outputs,
      "input_shapes": {k: [batch_size, *s] for k, s in run.input_shapes.items()},
      "output_names": list(run.output_names),
      "format": fmt,
      "quantization": quant,
      "license": LICENSE_NOTES.get(str(run.config.dataset.name).split("/")[0], "See the training dataset's terms."),
  }
  if "sentiment_probs" in run.output_names:
    meta["sentiment_names"] = list(task.sentiment_names)
  return meta


def export_run(run: Any, format: str = "tflite", output: Optional[str] = None, int8: bool = False,  # noqa: A002
               *, step: Optional[int] = None, batch_size: int = 1, check_split: str = "test",
               n_check: Optional[int] = export_lib.DEFAULT_CHECK_FACES,
               n_calibration: int = export_lib.DEFAULT_CALIBRATION_FACES, overwrite: bool = False,
               strict: bool = True, latency_runs: int = 50, num_threads: Optional[int] = None,
               verbose: bool = True) -> SceneExportReport:
  """Converts an ``emotic`` run to ``format``, checks it against JAX on its data, writes it.

  Args:
    run: a training work dir, or a :class:`SceneRun` (:func:`load_run`: one restore for several exports).
    format: 'tflite' or 'onnx'; ``output`` must end in '.tflite' / '.onnx'.
    int8: full-integer post-training quantization, calibrated on the first ``n_calibration`` training examples.
    step: with a work dir, this checkpoint step (None: the latest).
    batch_size: the file's fixed batch size.
    check_split: the split whose first ``n_check`` examples (None: all) are compared with JAX.
    overwrite: replace an existing ``output`` (else FileExistsError).
    strict: a failed check raises ``ExportCheckError`` and writes nothing; False writes anyway.
    latency_runs: single-example calls timed for the median latency (0: not measured).
    num_threads: threads of the exported model's runtime (None: its default).
    verbose: print the summary.
  """
  if format not in export_lib.FORMATS:
    raise ValueError(f"format={format!r}; expected one of {sorted(export_lib.FORMATS)}")
  suffix = export_lib.FORMATS[format]
  if not isinstance(output, (str, os.PathLike)) or not str(output):
    raise ValueError(f"output={output!r}; expected the path of the {suffix} file to write")
  output = os.fspath(output)
  if not output.endswith(suffix):
    raise ValueError(f"output={output!r} does not end in {suffix!r}, as format={format!r} files do")
  if os.path.isdir(output):
    raise IsADirectoryError(f"output={output!r} is a directory; expected a {suffix} file path")
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"output={output!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r}; expected a positive int (two-input files have a fixed batch)")
  for name, value in (("n_check", n_check), ("n_calibration", n_calibration)):
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f"{name}={value!r}; expected a positive int")
  from fer_jax.export import onnx as backend_onnx  # pylint: disable=import-outside-toplevel
  if format == "tflite":
    from fer_jax.export import tflite as backend  # pylint: disable=import-outside-toplevel
    backend._tf()  # pylint: disable=protected-access  (fail on a missing extra before any work)
  else:
    from fer_jax.export import onnx as backend  # pylint: disable=import-outside-toplevel
    backend._modules()  # pylint: disable=protected-access
  if not isinstance(run, SceneRun):
    run = load_run(os.fspath(run), step)
  elif step is not None and step != run.step:
    raise ValueError(f"step={step}, but the loaded run is at step {run.step}; load_run(workdir, step={step})")

  shapes = {k: (batch_size,) + s for k, s in run.input_shapes.items()}
  x_check, labels, sentiment = run.read(check_split, n_check)
  for k, s in shapes.items():
    if x_check[k].shape[1:] != s[1:]:
      raise ValueError(f"split {check_split!r} gives {k} images of shape {x_check[k].shape[1:]}; the task's "
                       f"input is {s[1:]}")
  ref = run.jax_outputs(x_check)
  x_cal = None
  if int8:
    cal, _, _ = run.read(str(run.config.dataset.train_split), n_calibration)
    x_cal = {k: v.astype(np.float32) for k, v in cal.items()}
  meta = metadata(run, format, int8, batch_size)
  variables = run.variables

  def fn(body, context):
    return run.forward(variables, body, context)

  if format == "tflite":  # explicit max-pool padding as edge padding, as the ONNX backend does (int8 ranges)
    fn = backend_onnx.max_pool_compatible(fn)
  kwargs = dict(doc=json.dumps({"inputs": meta["inputs"], "outputs": meta["outputs"]})) if format == "onnx" else {}
  t0 = time.perf_counter()
  model = backend.convert(fn, shapes, int8=int8, calibration=x_cal, metadata=meta, **kwargs)
  seconds = time.perf_counter() - t0
  runner = backend.Runner(model, num_threads)
  got = runner({k: v.astype(np.float32) for k, v in x_check.items()})
  if sorted(got) != sorted(ref):
    raise RuntimeError(f"The exported model returned outputs {sorted(got)}; JAX {sorted(ref)}")
  max_diff = {k: float(np.max(np.abs(got[k].astype(np.float64) - ref[k]))) for k in run.output_names}
  has_sentiment = "sentiment_probs" in ref
  jax_scores = scores(ref, labels, sentiment if has_sentiment else None)
  file_scores = scores(got, labels, sentiment if has_sentiment else None)
  agreement = (float(np.mean(got["sentiment_probs"].argmax(1) == ref["sentiment_probs"].argmax(1)))
               if has_sentiment else None)
  if int8:
    drop = jax_scores["map"] - file_scores["map"]
    criterion = f"int8: mAP at most {100 * INT8_MAX_MAP_DROP:g} points below JAX's"
    passed = drop <= INT8_MAX_MAP_DROP
  else:
    tol = export_lib.FLOAT_TOLERANCE
    criterion, passed = f"float: max |d| <= {tol:g} in every output", max(max_diff.values()) <= tol
  latency = None
  if latency_runs and batch_size == 1:
    one = {k: v[:1].astype(np.float32) for k, v in x_check.items()}
    latency = export_lib.median_latency_ms(runner, one, latency_runs)
  report = SceneExportReport(
      path=output, format=format, int8=bool(int8), batch_size=batch_size, size_bytes=len(model), model=run.name,
      step=run.step, check_split=check_split, n_check=len(labels), max_abs_diff=max_diff, jax=jax_scores,
      file=file_scores, sentiment_agreement=agreement, criterion=criterion, passed=bool(passed),
      latency_ms_batch1=latency, n_calibration=0 if x_cal is None else len(x_cal["body"]),
      convert_seconds=seconds, written=False)
  if not passed and strict:
    raise export_lib.ExportCheckError(
        f"The exported model fails its check against JAX, so {output} was not written (pass strict=False / "
        f"--no_strict to write it anyway):\n{report.summary()}", report)
  return export_lib.write_checked(model, output, report, overwrite=overwrite, verbose=verbose)
