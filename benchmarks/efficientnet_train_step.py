"""EfficientNet train-step time: fer_jax (Flax, one row per depthwise impl) vs timm (PyTorch).

One optimisation step on a fixed random batch -- forward in train mode (BatchNorm on batch statistics,
running statistics updated), softmax cross-entropy, backward, AdamW -- for our
``get_model('efficientnet_b0', num_classes, depthwise_impl=...)`` under ``jax.jit`` with the train state
donated, and for timm's ``efficientnet_b0`` in PyTorch (channels_last memory format,
``torch.optim.AdamW``, ``torch.set_num_threads(n)`` for each ``--torch-threads`` value; the first is the
reference of the ratios). Same batch, classes and optimiser hyper-parameters; dropout and stochastic
depth off on both sides (timm's defaults). Every contender is compiled / warmed up first, then they are
timed interleaved (``--rounds`` rounds of ``--steps`` steps each; benchmarks/_interleaved.py), so load
from other processes on the shared machine hits all of them alike. Reported: median (and min) step time,
images/s and the ratio of step times ours / timm's.

Run (EfficientNet-B0, batch 32, 112 px; ~3 minutes on 2 cores):

  .venv/bin/python benchmarks/efficientnet_train_step.py --json /tmp/efficientnet_train_step.json

``--impls shift,xla`` adds XLA's grouped convolution (slow on CPU: several seconds per step).
``--xla-single-thread`` runs XLA on one thread (``XLA_FLAGS``), the match of ``--torch-threads 1``: on the
shared, loaded 2-core machine both frameworks lose much of their time at 2-thread barriers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--xla-single-thread" in sys.argv:  # must be set before jax is imported
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from fer_jax.layers.depthwise import resolve_impl  # noqa: E402
from fer_jax.registry import get_model  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)


def make_jax_step(name, impl, args, images, labels):
  """Returns (step_fn, initial loss, compile s, #params); step_fn() runs one donated train step."""
  model = get_model(name, num_classes=args.num_classes, depthwise_impl=impl)
  tx = optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay)
  return _interleaved.batchnorm_ce_step(model, tx, images, labels)


def make_torch_step(name, args, images_nhwc, labels, threads):
  """Returns (step_fn, initial loss, description); step_fn sets ``threads`` intra-op threads."""
  import torch  # pylint: disable=import-outside-toplevel
  from fer_jax.testing import import_timm  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  _, timm = import_timm()
  model = timm.create_model(name, pretrained=False, num_classes=args.num_classes)
  model, opt, x, y = _interleaved.torch_train_setup(torch, model, args.lr, args.weight_decay,
                                                   images_nhwc, labels)
  step = _interleaved.torch_ce_step(torch, model, opt, x, y, threads)

  n_params = sum(p.numel() for p in model.parameters())
  return step, step(), (f"timm {timm.__version__} {name}, channels_last; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, {n_params / 1e6:.2f}M params")


def main(default_model="efficientnet_b0", description=__doc__):
  """The benchmark of any registered timm-layout depthwise family (EfficientNet, MobileNetV3)."""
  ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default=default_model,
                  help="a registered model taking depthwise_impl: efficientnet_b0 ... b7, mobilenetv3_*")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--size", type=int, default=112)
  ap.add_argument("--num-classes", type=int, default=7)
  ap.add_argument("--impls", default="shift", help="comma-separated depthwise impls for the JAX model")
  ap.add_argument("--torch-threads", default="2",
                  help="comma-separated torch.set_num_threads values, one torch contender each (the "
                       "first is the reference of the ratios); empty: skip PyTorch")
  ap.add_argument("--xla-single-thread", action="store_true",
                  help="run XLA on one thread (compare with --torch-threads 1; on a loaded machine "
                       "multi-threaded contenders lose time at their barriers)")
  ap.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--weight-decay", type=float, default=0.05)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  impls = [resolve_impl(name) for name in args.impls.split(",")]  # clear error on a typo
  images, labels = _interleaved.random_batch(args.batch, args.size, args.num_classes)
  images_j, labels_j = jnp.asarray(images), jnp.asarray(labels)
  load_start = os.getloadavg()

  contenders, info, torch_names = _interleaved.train_step_contenders(
      impls, lambda impl: make_jax_step(args.model, impl, args, images_j, labels_j),
      lambda impl: f"fer_jax {args.model}, depthwise_impl={impl!r}"
                   + (", XLA on 1 thread" if args.xla_single_thread else ""),
      [int(t) for t in args.torch_threads.split(",") if t.strip()],
      lambda threads: make_torch_step(args.model, args, images, labels, threads))

  times = _interleaved.time_interleaved(contenders, args.warmup, args.rounds, args.steps)
  load_end = os.getloadavg()
  rows = _interleaved.summarize(times, info, args.batch, torch_names)

  xla_threads = "XLA 1 thread" if args.xla_single_thread else "XLA thread pool"
  print(f"\n{args.model}, batch {args.batch}, {args.size} px, {args.num_classes} classes, AdamW, {xla_threads}; "
        f"{args.rounds} rounds x {args.steps} timed steps each (after {args.warmup} warm-up), "
        f"interleaved; {os.cpu_count()} cpus, load avg {load_start[0]:.1f} -> {load_end[0]:.1f}")
  _interleaved.print_train_step_table(rows, torch_names)

  if args.json:
    meta = {"model": args.model, "batch": args.batch, "size": args.size, "num_classes": args.num_classes,
            "lr": args.lr, "weight_decay": args.weight_decay, "warmup": args.warmup,
            "rounds": args.rounds, "steps_per_round": args.steps, "cpus": os.cpu_count(),
            "xla_single_thread": args.xla_single_thread,
            "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
            "load_avg_start": load_start, "load_avg_end": load_end}
    _interleaved.write_json(args.json, meta, rows)


if __name__ == "__main__":
  main()
