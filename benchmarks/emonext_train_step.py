"""EmoNeXt train-step throughput: fer_jax (Flax) vs a PyTorch EmoNeXt (timm ConvNeXt + torch STN /
SE / self-attention from ``benchmarks/emonext_torch_reference.py``).

One optimisation step on a fixed random batch with the official training objective -- forward,
L = CE (label smoothing 0.2) + 1.0 * L_SA, backward, AdamW -- for
``fer_jax.registry.get_model(model, num_classes, depthwise_impl=...)`` under ``jax.jit`` (train state
donated, STN BatchNorm statistics updated) and for the torch reference around
``timm.create_model(<model with 'emonext' -> 'convnext'>)`` (channels_last, ``torch.optim.AdamW``).
Same configuration on both sides (``--se-placement``, ``--sa-mode``, ``--no-stn``), stochastic
depth off. Every contender is compiled / warmed up first, then the contenders run interleaved:
``--rounds`` rounds of ``--steps`` timed steps each, so load from other processes hits them alike.
Reported: median (and min) step time, images/s = batch / median, and the time ratio to the first
torch contender (``--torch-threads``, default 2 = the machine's cores, then 1: on a loaded 2-core
machine OpenMP's 2-thread barriers can make torch several times slower than 1 thread; XLA uses its
own pool).

Run (EmoNeXt-T, batch 16, 224 px; a few minutes on 2 shared cores):

  .venv/bin/python benchmarks/emonext_train_step.py \
      --json benchmarks/results/emonext_train_step.json

Shorter (what produced the committed JSON; see its 'meta' for the exact arguments):

  .venv/bin/python benchmarks/emonext_train_step.py --batch 8 --rounds 2 --steps 2 --warmup 1 \
      --json benchmarks/results/emonext_train_step.json
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # repo root
sys.path.insert(0, _HERE)  # emonext_torch_reference

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from fer_jax.layers.depthwise import resolve_impl  # noqa: E402
from fer_jax.models.emonext import emonext_loss  # noqa: E402
from fer_jax.registry import get_model  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)


def _model_kwargs(args):
  return dict(use_stn=not args.no_stn, se_placement=args.se_placement,
              sa_mode=None if args.sa_mode == "none" else args.sa_mode)


def make_jax_step(args, impl, images, labels):
  """Returns (step_fn, first loss, compile s, #params)."""
  model = get_model(args.model, num_classes=args.num_classes, depthwise_impl=impl,
                    **_model_kwargs(args))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images[:1])
  params = variables["params"]
  tx = optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay)
  state = {"params": params, "batch_stats": variables.get("batch_stats", {}),
           "opt": tx.init(params)}

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state, x, y, rng):
    def loss_fn(p):
      v = {"params": p}
      if state["batch_stats"]:
        v["batch_stats"] = state["batch_stats"]
      (logits, aux), upd = model.apply(v, x, train=True, return_features=True,
                                       rngs={"dropout": rng}, mutable=["batch_stats"])
      loss, _ = emonext_loss(logits, aux, y, sa_weight=args.sa_weight,
                             label_smoothing=args.label_smoothing)
      return loss, upd.get("batch_stats", {})

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "batch_stats": stats,
            "opt": opt}, loss

  return _interleaved.compile_jax_step(train_step, state, images, labels)


def make_torch_step(args, images_nhwc, labels, threads):
  """Returns (step_fn, first loss, description)."""
  import torch  # pylint: disable=import-outside-toplevel
  from fer_jax.testing import import_timm  # pylint: disable=import-outside-toplevel
  import emonext_torch_reference as reference  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  _, timm = import_timm()
  variant = args.model.replace("emonext", "convnext")
  model = reference.build_torch_emonext(timm, variant, num_classes=args.num_classes,
                                        image_size=args.size, **_model_kwargs(args))
  model, opt, x, y = _interleaved.torch_train_setup(torch, model, args.lr, args.weight_decay,
                                                   images_nhwc, labels)
  ce = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

  def step():
    torch.set_num_threads(threads)
    opt.zero_grad(set_to_none=True)
    logits, _, sa_loss, _ = model(x)
    loss = ce(logits, y) + args.sa_weight * sa_loss
    loss.backward()
    opt.step()
    return float(loss.detach())

  n_params = sum(p.numel() for p in model.parameters())
  desc = (f"torch reference: timm {timm.__version__} {variant} + torch STN/SE/SA; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, channels_last, "
          f"{n_params / 1e6:.2f}M params (incl. the official unused attention value Linear)")
  return step, step(), desc


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="emonext_tiny")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--num-classes", type=int, default=7)
  ap.add_argument("--se-placement", default="downsample", choices=("downsample", "stage", "none"))
  ap.add_argument("--sa-mode", default="batch", choices=("batch", "feature", "none"))
  ap.add_argument("--no-stn", action="store_true")
  ap.add_argument("--impls", default="auto", help="comma-separated depthwise impls (JAX side)")
  ap.add_argument("--torch-threads", default="2,1",
                  help="comma-separated torch.set_num_threads values, one torch contender each; "
                       "the first is the ratios' reference; empty: skip PyTorch")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=2, help="timed steps per contender per round")
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--weight-decay", type=float, default=0.05)
  ap.add_argument("--label-smoothing", type=float, default=0.2)
  ap.add_argument("--sa-weight", type=float, default=1.0)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  impls = [resolve_impl(name) for name in args.impls.split(",")]
  images, labels = _interleaved.random_batch(args.batch, args.size, args.num_classes)
  images_j, labels_j = jnp.asarray(images), jnp.asarray(labels)
  load_start = os.getloadavg()

  contenders, info, torch_names = _interleaved.train_step_contenders(
      impls, lambda impl: make_jax_step(args, impl, images_j, labels_j),
      lambda impl: f"fer_jax {args.model}, depthwise_impl={impl!r}",
      [int(t) for t in args.torch_threads.split(",") if t.strip()],
      lambda threads: make_torch_step(args, images, labels, threads))

  times = _interleaved.time_interleaved(contenders, args.warmup, args.rounds, args.steps)
  load_end = os.getloadavg()
  rows = _interleaved.summarize(times, info, args.batch, torch_names)

  print(f"\n{args.model} ({_model_kwargs(args)}), batch {args.batch}, {args.size} px, "
        f"{args.num_classes} classes, CE(ls {args.label_smoothing}) + {args.sa_weight} L_SA, AdamW; "
        f"{args.rounds} rounds x {args.steps} timed steps (after {args.warmup} warm-up), "
        f"interleaved; {os.cpu_count()} cpus, load avg {load_start[0]:.1f} -> {load_end[0]:.1f}")
  _interleaved.print_train_step_table(rows, torch_names)

  if args.json:
    meta = {"argv": sys.argv[1:], "model": args.model, **_model_kwargs(args), "batch": args.batch,
            "size": args.size, "num_classes": args.num_classes, "lr": args.lr,
            "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
            "sa_weight": args.sa_weight, "warmup": args.warmup, "rounds": args.rounds,
            "steps_per_round": args.steps, "cpus": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(),
            "machine": platform.processor() or platform.machine(),
            "load_avg_start": load_start, "load_avg_end": load_end}
    _interleaved.write_json(args.json, meta, rows)


if __name__ == "__main__":
  main()
