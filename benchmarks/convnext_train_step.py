"""ConvNeXt train-step throughput: fer_jax (Flax, one row per depthwise impl) vs timm (PyTorch).

One optimisation step on a fixed random batch -- forward, softmax cross-entropy, backward, AdamW --
for our ``fer_jax.registry.get_model(name, num_classes, depthwise_impl=...)`` under ``jax.jit``
with the train state donated, and for timm's model of the same name in PyTorch (channels_last
memory format, ``torch.optim.AdamW``). Same batch size, image size, classes and optimiser
hyper-parameters; stochastic depth off on both sides (the timm default). The torch side runs once
per ``--torch-threads`` value (default: ``torch.set_num_threads(os.cpu_count())``, the reference
of the ratios, and 1 thread -- on a loaded 2-core machine OpenMP's 2-thread barriers can make
torch several times slower than 1 thread). XLA always uses its own pool over all cores. Every
contender is compiled / warmed up first, then the contenders are timed interleaved: ``--rounds``
rounds of ``--steps`` steps each, so load from other processes on a shared machine hits all of
them alike. Reported: median (and min) step time over all timed steps, images/s = batch /
median, and the time ratio to each torch run.

If ``import timm`` fails (e.g. torchvision missing or built for another torch), the torch side
falls back to a plain-PyTorch ConvNeXt defined below that mirrors timm's (Conv2d stem +
LayerNorm2d, 7x7 depthwise Conv2d -> NHWC LayerNorm -> Linear 4C -> GELU -> Linear C -> layer
scale (NCHW LayerNorm2d + 1x1 convs for atto..nano, timm's ``conv_mlp``), 2x2 stride-2
downsampling, pooled LayerNorm head); the output says which one ran. (Checked once against timm's
own module, loaded with torchvision stubbed out: identical outputs for convnext_tiny and
convnext_atto given the same weights.) With ``--stem-patch`` other than 4 the timm model gets
its stem conv swapped for a p x p / stride-p one: timm's own ``patch_size=2`` would also add a
stride-2 downsample to stage 0, unlike ``fer_jax``'s ``stem_patch_size``.

Run (ConvNeXt-T, batch 32, 64 px, all impls; ~3 minutes on 2 cores):

  .venv/bin/python benchmarks/convnext_train_step.py --json /tmp/convnext_train_step.json

ConvNeXt-atto at 48 px with stem patch 2:

  .venv/bin/python benchmarks/convnext_train_step.py --model convnext_atto --batch 64 --size 48 \
      --stem-patch 2 --json /tmp/convnext_atto_train_step.json
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from fer_jax.layers.depthwise import IMPLEMENTATIONS, resolve_impl  # noqa: E402
from fer_jax.registry import get_model  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)

# (depths, dims, conv_mlp) of timm's ConvNeXt variants, for the plain-PyTorch fallback.
_VARIANTS = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320), True),
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384), True),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512), True),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640), True),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), False),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768), False),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024), False),
}


# ----------------------------------------------------------------------------------------------
# JAX side.


def make_jax_step(name, impl, args, images, labels):
  """Returns (step_fn, initial loss, compile s, #params); step_fn() runs one donated train step."""
  model = get_model(name, num_classes=args.num_classes, stem_patch_size=args.stem_patch,
                    depthwise_impl=impl)
  params = model.init(jax.random.key(0), images[:1], train=False)["params"]
  tx = optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay)
  state = {"params": params, "opt": tx.init(params)}

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state, x, y, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  return _interleaved.compile_jax_step(train_step, state, images, labels)


# ----------------------------------------------------------------------------------------------
# PyTorch side.


def _plain_torch_convnext(torch, depths, dims, conv_mlp, num_classes, patch):
  """ConvNeXt as in timm's ``ConvNeXt`` (ls_init 1e-6, LN eps 1e-6, no drop path).

  ``conv_mlp`` (timm's atto..nano) keeps the block NCHW: LayerNorm2d + 1x1-conv MLP; otherwise the
  block permutes to NHWC for LayerNorm + Linear MLP, as in timm. Same parameters in the same order
  as timm's model (with ``patch`` replacing timm's 4x4 stem conv, see ``make_torch_step``).
  """
  nn, F = torch.nn, torch.nn.functional

  class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):  # NCHW -> LN over C
      x = x.permute(0, 2, 3, 1)
      x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
      return x.permute(0, 3, 1, 2)

  class Block(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.gamma = nn.Parameter(1e-6 * torch.ones(c))
      self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
      if conv_mlp:
        self.norm = LayerNorm2d(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
      else:
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
      self.act = nn.GELU()

    def forward(self, x):
      y = self.conv_dw(x)
      if conv_mlp:
        y = self.fc2(self.act(self.fc1(self.norm(y))))
      else:
        y = self.fc2(self.act(self.fc1(self.norm(y.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
      return x + y.mul(self.gamma.reshape(1, -1, 1, 1))

  class ConvNeXt(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, dims[0], patch, stride=patch),
                                LayerNorm2d(dims[0], eps=1e-6))
      stages = []
      for i, (d, c) in enumerate(zip(depths, dims)):
        down = [] if i == 0 else [LayerNorm2d(dims[i - 1], eps=1e-6),
                                  nn.Conv2d(dims[i - 1], c, 2, stride=2)]
        stages.append(nn.Sequential(*down, *[Block(c) for _ in range(d)]))
      self.stages = nn.Sequential(*stages)
      self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
      self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
      x = self.stages(self.stem(x)).mean((2, 3))
      return self.fc(self.head_norm(x))

  return ConvNeXt()


def make_torch_step(name, args, images_nhwc, labels, threads):
  """Returns (step_fn, initial loss, description); step_fn sets ``threads`` intra-op threads."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  try:
    from fer_jax.testing import import_timm  # pylint: disable=import-outside-toplevel
    _, timm = import_timm()
    model = timm.create_model(name, pretrained=False, num_classes=args.num_classes)
    source = f"timm {timm.__version__} {name}"
    if args.stem_patch != 4:
      # timm's patch_size=2 also adds a stride-2 downsample to stage 0 (it keeps total stride 4);
      # fer_jax's stem_patch_size does not, so swap only the stem conv to match our model.
      c0 = model.stem[0].out_channels
      model.stem[0] = torch.nn.Conv2d(3, c0, args.stem_patch, stride=args.stem_patch)
      source += f" with a {args.stem_patch}x{args.stem_patch}/{args.stem_patch} stem conv"
  except Exception as e:  # noqa: BLE001  (ImportError, or torchvision's RuntimeError)
    if name not in _VARIANTS:
      raise RuntimeError(f"timm unavailable ({e!r}) and no plain-PyTorch fallback for {name!r}; "
                         f"fallback knows {sorted(_VARIANTS)}") from e
    model = _plain_torch_convnext(torch, *_VARIANTS[name], args.num_classes, args.stem_patch)
    source = (f"plain-PyTorch ConvNeXt fallback ({name} depths/dims) -- timm import failed: "
              f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
  model, opt, x, y = _interleaved.torch_train_setup(torch, model, args.lr, args.weight_decay,
                                                   images_nhwc, labels)
  step = _interleaved.torch_ce_step(torch, model, opt, x, y, threads)

  n_params = sum(p.numel() for p in model.parameters())
  return step, step(), f"{source}; torch {torch.__version__}, {torch.get_num_threads()} threads, " \
                       f"{n_params / 1e6:.2f}M params"


# ----------------------------------------------------------------------------------------------


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="convnext_tiny")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--stem-patch", type=int, default=4)
  ap.add_argument("--num-classes", type=int, default=7)
  ap.add_argument("--impls", default=",".join(IMPLEMENTATIONS),
                  help="comma-separated depthwise impls for the JAX model")
  ap.add_argument("--torch-threads", default=f"{os.cpu_count()},1",
                  help="comma-separated torch.set_num_threads values, one torch contender each "
                       "(the first, default the core count, is the reference of the ratios); "
                       "empty: skip PyTorch")
  ap.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
  ap.add_argument("--rounds", type=int, default=4)
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
      lambda impl: f"fer_jax {args.model}, depthwise_impl={impl!r}",
      [int(t) for t in args.torch_threads.split(",") if t.strip()],
      lambda threads: make_torch_step(args.model, args, images, labels, threads))

  times = _interleaved.time_interleaved(contenders, args.warmup, args.rounds, args.steps)
  load_end = os.getloadavg()
  rows = _interleaved.summarize(times, info, args.batch, torch_names)

  print(f"\n{args.model}, batch {args.batch}, {args.size} px, stem patch {args.stem_patch}, "
        f"{args.num_classes} classes, AdamW; {args.rounds} rounds x {args.steps} timed steps each "
        f"(after {args.warmup} warm-up), interleaved; {os.cpu_count()} cpus, "
        f"load avg {load_start[0]:.1f} -> {load_end[0]:.1f}")
  if torch_names:
    print(f"torch side: {info[torch_names[-1]]['source'].split('; torch ')[0]}")
  _interleaved.print_train_step_table(rows, torch_names)

  if args.json:
    meta = {"model": args.model, "batch": args.batch, "size": args.size,
            "stem_patch": args.stem_patch, "num_classes": args.num_classes, "lr": args.lr,
            "weight_decay": args.weight_decay, "warmup": args.warmup, "rounds": args.rounds,
            "steps_per_round": args.steps, "cpus": os.cpu_count(), "jax": jax.__version__,
            "machine": platform.processor() or platform.machine(),
            "load_avg_start": load_start, "load_avg_end": load_end}
    _interleaved.write_json(args.json, meta, rows)


if __name__ == "__main__":
  main()
