"""iResNet train-step time: fer_jax's ``iresnet`` backbone (Flax) vs the PyTorch reference of
tests/iresnet_reference.py (insightface's ArcFace iResNet architecture).

One optimisation step on a fixed random batch of 112x112 faces -- forward in train mode (BatchNorm batch
statistics, running statistics updated), a linear classifier on the 512-d embedding, softmax
cross-entropy, backward, SGD with momentum 0.9 and weight decay 5e-4 (arcface_torch's optimiser) -- for
ours under ``jax.jit`` with the state donated (one row per ``--dtypes`` compute dtype), and for the
torch module in channels_last memory format with ``torch.optim.SGD`` (insightface's fixed ``features``
scale is left out of the optimiser, as its ``requires_grad = False`` does). The torch side runs once per
``--torch-threads`` value (default: the core count, the reference of the ratios, and 1 thread). Every
contender is compiled / warmed up first, then they are timed interleaved (``--rounds`` rounds of
``--steps`` steps each) so load from other processes hits them alike; reported are the median (and min)
step time, images/s and the time ratio to each torch run.

Run (iresnet50, batch 16; ~5 minutes on 2 cores):

  .venv/bin/python benchmarks/iresnet_train_step.py --json /tmp/iresnet_train_step.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # repo root
sys.path.insert(0, os.path.join(_ROOT, "tests"))  # tests/iresnet_reference.py

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from fer_jax.models.iresnet import IResNet  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)


class Classifier(nn.Module):
  """iResNet embedding -> Dense(num_classes)."""

  size: str
  num_classes: int
  dtype: object = None

  @nn.compact
  def __call__(self, x, train=False):
    emb = IResNet(size=self.size, dtype=self.dtype, name="backbone")(x, train=train)["features"]
    return nn.Dense(self.num_classes, name="head")(emb)


def make_jax_step(dtype_name, args, images, labels):
  """Returns (step_fn, first loss, compile s, #params); step_fn() runs one donated train step."""
  model = Classifier(args.size, args.num_classes, None if dtype_name == "float32" else jnp.dtype(dtype_name))
  tx = optax.chain(optax.add_decayed_weights(args.weight_decay), optax.sgd(args.lr, momentum=0.9))
  return _interleaved.batchnorm_ce_step(model, tx, images, labels)


def make_torch_step(args, images_nhwc, labels, threads):
  """Returns (step_fn, first loss, description); step_fn sets ``threads`` intra-op threads."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  import iresnet_reference as ref  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch.nn.Sequential(ref.IResNetReference(ref.DEPTHS[args.size]), torch.nn.Linear(512, args.num_classes))
  model = model.to(memory_format=torch.channels_last).train()
  opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=0.9,
                        weight_decay=args.weight_decay)
  x = torch.from_numpy(np.asarray(images_nhwc)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  y = torch.from_numpy(np.asarray(labels)).long()
  step = _interleaved.torch_ce_step(torch, model, opt, x, y, threads)

  n_params = sum(p.numel() for p in model.parameters())
  return step, step(), (f"tests/iresnet_reference.py {args.size} + Linear; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, {n_params / 1e6:.2f}M params")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--size", default="r50", help="r18, r34, r50, r100 or r200")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--num-classes", type=int, default=7)
  ap.add_argument("--dtypes", default="float32", help="comma-separated compute dtypes of our model")
  ap.add_argument("--torch-threads", default=f"{os.cpu_count()},1",
                  help="comma-separated torch.set_num_threads values (the first is the reference of the "
                       "ratios); empty: skip PyTorch")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=2, help="timed steps per contender per round")
  ap.add_argument("--lr", type=float, default=0.02)
  ap.add_argument("--weight-decay", type=float, default=5e-4)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  images, labels = _interleaved.random_batch(args.batch, 112, args.num_classes)
  images = images * 2 - 1  # insightface's (x - 127.5) / 127.5 range
  images_j, labels_j = jnp.asarray(images), jnp.asarray(labels)
  load_start = os.getloadavg()

  contenders, info, torch_names = _interleaved.train_step_contenders(
      args.dtypes.split(","), lambda dt: make_jax_step(dt, args, images_j, labels_j),
      lambda dt: f"fer_jax iresnet size={args.size!r}, dtype={dt}",
      [int(t) for t in args.torch_threads.split(",") if t.strip()],
      lambda threads: make_torch_step(args, images, labels, threads))

  times = _interleaved.time_interleaved(contenders, args.warmup, args.rounds, args.steps)
  load_end = os.getloadavg()
  rows = _interleaved.summarize(times, info, args.batch, torch_names)

  print(f"\niresnet {args.size}, batch {args.batch}, 112 px, {args.num_classes} classes, SGD momentum 0.9; "
        f"{args.rounds} rounds x {args.steps} timed steps each (after {args.warmup} warm-up), interleaved; "
        f"{os.cpu_count()} cpus, load avg {load_start[0]:.1f} -> {load_end[0]:.1f}")
  _interleaved.print_train_step_table(rows, torch_names)

  if args.json:
    meta = {"size": args.size, "batch": args.batch, "image_size": 112, "num_classes": args.num_classes,
            "lr": args.lr, "weight_decay": args.weight_decay, "warmup": args.warmup, "rounds": args.rounds,
            "steps_per_round": args.steps, "cpus": os.cpu_count(), "jax": jax.__version__,
            "machine": platform.processor() or platform.machine(), "load_avg_start": load_start,
            "load_avg_end": load_end}
    _interleaved.write_json(args.json, meta, rows)


if __name__ == "__main__":
  main()
