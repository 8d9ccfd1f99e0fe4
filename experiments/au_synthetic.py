r"""Action-unit intensity regression on the built-in synthetic expressions (no data needed).

The renderer (``fer_jax.data.synthetic``) draws each face from 20 FACS action-unit intensities in
[0, 1] (16 bilateral AUs, and AU12 / AU14 per side as R12, L12, R14, L14), stored per image as
``action_units``. The main job's ConvNeXt (``convnext_synthetic.py``, whose ``get_config`` this file
calls) regresses them through the ``action_units`` task, head, loss term (``au_mse``) and evaluator, all
added by registration (``fer_jax/train/tasks/action_units.py``, ``fer_jax/evaluators/action_units.py``)
with no edit of the trainer:

    python -m fer_jax.main --config=experiments/au_synthetic.py --workdir=runs/au_synthetic

Reported (README results table): per-AU Pearson CC and MAE on the test split, AU presence AP / mAP
(present = intensity > ``threshold``; the renderer adds up to 0.1 of jitter to absent AUs, hence the
default 0.1). No horizontal flips: they would swap the one-sided AUs.

Options (after ``:``): ``size`` (a ConvNeXt size, or ``small_custom``, the main job's 4-stage net),
``steps``, ``batch``, ``threshold`` (presence), ``runlocal``.
"""

import os

from fer_jax import config_utils
from fer_jax.data import synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = ("small_custom", "atto", "femto", "pico", "nano")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, size="small_custom", steps=1500, batch=64, threshold=0.1, runlocal=False)
  config_utils.check_choice(arg, "size", SIZES)
  base = config_utils.load_module(os.path.join(HERE, "convnext_synthetic.py"))
  c = base.get_config(dict(steps=arg.steps, batch=arg.batch))
  c.task = "action_units"
  c.au = dict(key="action_units", names=synthetic.AU_NAMES, threshold=arg.threshold)
  c.input.hflip = False
  if arg.size != "small_custom":
    c.model.backbone = dict(name="convnext", size=arg.size, stem_patch_size=2)
  c.model.head = dict(name="action_units", num_outputs=synthetic.NUM_AUS)
  c.loss = dict(au_mse=dict(weight=1.0))
  c.evals = config_utils.evals("action_units", every_steps=500)
  c.checkpoint.every_steps = 500
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
