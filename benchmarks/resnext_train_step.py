"""ResNeXt-50 32x4d train-step throughput: fer_jax (Flax, one row per conv impl) vs timm (PyTorch).

One optimisation step on a fixed random batch -- forward in train mode (BatchNorm batch statistics, running
statistics updated), softmax cross-entropy, backward, AdamW -- for ``fer_jax.registry.get_model(name,
num_classes, conv_impl=...)`` under ``jax.jit`` with the train state (params, BN statistics, optimiser)
donated, and for timm's model of the same name in PyTorch (channels_last memory format,
``torch.optim.AdamW``). Same batch, image size, classes and optimiser hyper-parameters (paper 2's recipe:
112 px faces, 8 AffectNet classes; Adam lr 1e-4, weight decay 5e-4). The torch side runs once per
``--torch-threads`` value (default 2 threads, the reference of the ratios). Every contender is compiled /
warmed up first, then the contenders are timed interleaved (``--rounds`` rounds of ``--steps`` steps), so
load from other processes on a shared machine hits all of them alike. Reported: median (and min) step
time, images/s, and the time ratio ours / timm.

Conv impls (``fer_jax.models.conv_lib.CONV_IMPLS``): 'split' (the CPU default: grouped 3x3 as block-diagonal
chunks, kernel gradients as per-tap matmuls, max-pool as nine maxima), 'split_ad' (same forward, XLA's own
gradients), 'dense' (grouped 3x3 as one block-diagonal convolution). 'xla' (XLA's grouped convolution)
spends seconds per layer in its kernel gradient on CPU; pass it in ``--impls`` only with time to spare.

Run (batch 16, 112 px; ~8 minutes on the loaded 2-core machine, one run):

  .venv/bin/python benchmarks/resnext_train_step.py --json /tmp/resnext_train_step.json

  .venv/bin/python benchmarks/resnext_train_step.py --batch 32 --impls split
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from fer_jax.layers import conv as conv_lib  # noqa: E402
from fer_jax.models import resnext  # noqa: E402
from fer_jax.registry import get_model  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)


def make_jax_step(name, impl, args, images, labels):
  """Returns (step_fn, initial loss, compile s, #params); step_fn() runs one donated train step."""
  model = get_model(name, num_classes=args.num_classes, conv_impl=impl)
  tx = optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay)
  return _interleaved.batchnorm_ce_step(model, tx, images, labels)


def make_torch_step(name, args, images_nhwc, labels, threads):
  """Returns (step_fn, initial loss, description); step_fn sets ``threads`` intra-op threads."""
  from fer_jax.testing import import_timm  # pylint: disable=import-outside-toplevel
  torch, timm = import_timm()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, num_classes=args.num_classes)
  model, opt, x, y = _interleaved.torch_train_setup(torch, model, args.lr, args.weight_decay, images_nhwc,
                                                   labels)
  step = _interleaved.torch_ce_step(torch, model, opt, x, y, threads)

  n_params = sum(p.numel() for p in model.parameters())
  return step, step(), (f"timm {timm.__version__} {name}; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, {n_params / 1e6:.2f}M params")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="resnext50_32x4d", help="a fer_jax.models.resnext SIZES name")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--size", type=int, default=112)
  ap.add_argument("--num-classes", type=int, default=8)
  ap.add_argument("--impls", default="split,split_ad", help="comma-separated conv impls for the JAX model")
  ap.add_argument("--torch-threads", default="2",
                  help="comma-separated torch.set_num_threads values, one torch contender each (the first "
                       "is the reference of the ratios); empty: skip PyTorch")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--weight-decay", type=float, default=5e-4)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  if args.model not in resnext.SIZES:
    raise ValueError(f"--model {args.model!r}; expected one of {sorted(resnext.SIZES)}")
  impls = [conv_lib.resolve_conv_impl(name) for name in args.impls.split(",")]  # clear error on a typo

  images, labels = _interleaved.random_batch(args.batch, args.size, args.num_classes)
  images_j, labels_j = jnp.asarray(images), jnp.asarray(labels)
  load_start = os.getloadavg()

  contenders, info, torch_names = _interleaved.train_step_contenders(
      impls, lambda impl: make_jax_step(args.model, impl, args, images_j, labels_j),
      lambda impl: f"fer_jax {args.model}, conv_impl={impl!r}",
      [int(t) for t in args.torch_threads.split(",") if t.strip()],
      lambda threads: make_torch_step(args.model, args, images, labels, threads))

  times = _interleaved.time_interleaved(contenders, args.warmup, args.rounds, args.steps)
  load_end = os.getloadavg()
  rows = _interleaved.summarize(times, info, args.batch, torch_names)

  print(f"\n{args.model}, batch {args.batch}, {args.size} px, {args.num_classes} classes, AdamW, BN in train "
        f"mode; {args.rounds} rounds x {args.steps} timed steps each (after {args.warmup} warm-up), "
        f"interleaved; {os.cpu_count()} cpus, load avg {load_start[0]:.1f} -> {load_end[0]:.1f}")
  if torch_names:
    print(f"torch side: {info[torch_names[0]]['source']}")
  _interleaved.print_train_step_table(rows, torch_names)

  if args.json:
    meta = {"model": args.model, "batch": args.batch, "size": args.size, "num_classes": args.num_classes,
            "lr": args.lr, "weight_decay": args.weight_decay, "warmup": args.warmup, "rounds": args.rounds,
            "steps_per_round": args.steps, "cpus": os.cpu_count(), "jax": jax.__version__,
            "machine": platform.processor() or platform.machine(),
            "load_avg_start": load_start, "load_avg_end": load_end}
    _interleaved.write_json(args.json, meta, rows)


if __name__ == "__main__":
  main()
