"""MobileNetV3 train-step time: fer_jax (Flax, one row per depthwise impl) vs timm (PyTorch).

One optimisation step on a fixed random batch -- forward in train mode (BatchNorm on batch statistics,
running statistics updated), softmax cross-entropy, backward, AdamW -- for our
``fer_jax.models.mobilenetv3.VARIANTS['mobilenetv3_large_100'](num_classes, depthwise_impl=...)`` under
``jax.jit`` with the train state donated, and for timm's ``mobilenetv3_large_100`` in PyTorch
(channels_last memory format, ``torch.optim.AdamW``, ``torch.set_num_threads(n)`` for each
``--torch-threads`` value; the first is the reference of the ratios). Same batch, classes and optimiser
hyper-parameters; dropout and stochastic depth off on both sides (timm's defaults). Every contender is
compiled / warmed up first, then they are timed interleaved (``--rounds`` rounds of ``--steps`` steps each;
benchmarks/_interleaved.py), so load from other processes on the shared machine hits all of them alike. Reported: median (and min) step time,
images/s and the ratio of step times ours / timm's.

Run (MobileNetV3-Large 1.0, batch 32, 112 px; ~2 minutes on 2 cores):

  .venv/bin/python benchmarks/mobilenetv3_train_step.py --json /tmp/mobilenetv3_train_step.json

``--model mobilenetv3_small_100`` (or another ``mobilenetv3.VARIANTS`` name) for the other sizes.

``--impls shift,xla`` adds XLA's grouped convolution (slow on CPU: several seconds per step).
``--xla-single-thread`` runs XLA on one thread (``XLA_FLAGS``), the match of ``--torch-threads 1``: on the
shared, loaded 2-core machine both frameworks lose much of their time at 2-thread barriers.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
import efficientnet_train_step  # noqa: E402  (the same benchmark; it reads --xla-single-thread first)

if __name__ == "__main__":
  efficientnet_train_step.main(default_model="mobilenetv3_large_100", description=__doc__)
