r"""Pairwise learning on FER+ at CPU scale: the real-data check of experiments/pairwise_affectnet.py.

FER+ (the ``ferplus`` config of our fer2013 builder: FER2013's images, Microsoft's majority-vote labels)
has AffectNet's 8 expressions, contempt included, and real class imbalance, but in its own order:
0 neutral, 1 happiness, 2 surprise, 3 sadness, 4 anger, 5 disgust, 6 fear, 7 contempt (``pair=5-6`` is
disgust vs fear; ``classes=7`` drops contempt). Derived from pairwise_affectnet's ``get_config`` (same
heads, samplers, probe / fine-tune, lr 1e-4, weight decay 5e-4, clipping 1.0); what differs: AdamW
(decoupled decay) instead of Adam with L2, the data
(../shared/data/fer2013), 48-px grey faces with 44-px crops and per-image standardisation as the shipped
FER2013 ResNet ``fer2013_resnet_s`` expects (its backbone and BatchNorm statistics initialise every model),
a fixed budget of ``steps`` per model (default 150) of ``batch`` 64, a short warm-up cosine schedule.

The shared data holds FER2013's Training and PublicTest only: ``validation`` = PublicTest is the test split
here (no model selection on it: a fixed step budget, the last step scored). The README's run (28 pairs +
the single 8-class model with the same per-model steps):

    python -m fer_jax.pairwise.sweep --config=experiments/pairwise_ferplus.py --workdir=runs/pairs_ferplus \
        --single

Options (after ``:``): ``pair`` (``i-j``; empty = all classes), ``classes`` (8 or 7), ``head`` (arcface |
softmax), ``s``, ``m``, ``easy_margin`` (ArcFace scale, margin, easy-margin instead of the fallback),
``probe`` (linear probe instead of fine-tuning), ``sampler`` (weighted | undersample | uniform), ``steps``
(default 150), ``batch`` (default 64), ``lr`` (default 1e-4), ``wd`` (default 5e-4), ``ten_crop`` (ten-crop
test instead of the centre crop), ``seed``, ``runlocal``.
"""

import os

from fer_jax import config_utils

_BASE = config_utils.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "pairwise_affectnet.py"))
CLASS_NAMES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
MANUAL_DIR = "../shared/data/fer2013"


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, pair="", classes=8, head="arcface", s=64.0, m=0.5, easy_margin=False,
                               probe=False, sampler="weighted", steps=150, batch=64, lr=1e-4, wd=5e-4,
                               ten_crop=False, seed=0, runlocal=False)
  base = dict(arg)
  ten_crop = base.pop("ten_crop")
  if arg.steps < 1:
    raise ValueError(f"Config option steps={arg.steps}; expected a positive number of steps per model")
  base.update(backbone="resnet_fer_s", runlocal=False)
  c = _BASE.get_config(base)
  c.dataset.update(name="fer2013/ferplus", manual_dir=MANUAL_DIR, image_size=48)
  c.input.update(batch_size=arg.batch, eval_batch_size=256, resize=48, crop=44, channels=1,
                 per_image_standardization=True, rotation=10.0, hflip=True,
                 eval_crops="ten" if ten_crop else "center", mean=None, std=None)
  _BASE.apply_model_options(c, _BASE.options(base), CLASS_NAMES[:arg.classes], "validation")
  c.optimizer.name = "adamw"  # decoupled decay (5e-4 x lr per step: negligible in 150 steps)
  c.schedule.update(name="warmup_cosine", warmup_steps=min(20, arg.steps // 5))
  c.num_train_steps = arg.steps
  c.num_epochs = 0.0
  c.log_every_steps = 50
  # PublicTest (the builder's `validation` split) is this run's test split; no PrivateTest in the data.
  c.evals = config_utils.evals("classification", test=None, every_steps=0)
  c.checkpoint.every_steps = 50
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
