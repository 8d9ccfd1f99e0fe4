r"""A compact BatchNorm ResNet on FER2013 at 48 px: the CPU-scale model (<= 60 min on 2 cores).

FER2013 is a manual download (see tfds_builders/fer2013/README.md): put ``fer2013.csv`` (or ``.csv.gz``)
in one directory and pass it as ``dataset.manual_dir``. The README's results-table run:

    python -m fer_jax.main --config=experiments/resnet_fer2013.py \
        --config.dataset.manual_dir=../shared/data/fer2013 --workdir=runs/resnet_fer2013

Recipe: grey 48x48 faces, rotation +-10 deg, random 44-px crop, horizontal flip; SGD with Nesterov
momentum 0.9, weight decay 5e-4, one warm-up cosine schedule; label smoothing 0.1; weight EMA;
ten-crop test (corners + centre, and their mirrors). Model: ``fer_jax.models.resnet`` size ``fer_s``.

Options (after ``:``): ``size`` (fer_xs|fer_s|fer_m|resnet18_48), ``crop`` (train / test crop of the
48-px face, default 44), ``epochs`` (default 30) or ``steps``, ``batch`` (default 128), ``lr``
(default 0.1), ``wd`` (weight decay, default 5e-4), ``smoothing`` (label smoothing, default 0.1),
``ema`` (EMA decay, 0 = off; default 0.999), ``ten_crop`` (default True; False = centre crop),
``seed`` (default 0), ``runlocal`` (a few steps on a slice, for smoke tests).
"""

from fer_jax import config_utils

SIZES = ("fer_xs", "fer_s", "fer_m", "resnet18_48")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, size="fer_s", crop=44, epochs=0.0, steps=0, batch=128, lr=0.1,
                               wd=5e-4, smoothing=0.1, ema=0.999, ten_crop=True, seed=0, runlocal=False)
  config_utils.check_choice(arg, "size", SIZES)
  if not 16 <= arg.crop <= 48:
    raise ValueError(f"Config option crop={arg.crop}; expected an int in [16, 48] (the faces are 48 px)")
  config_utils.check_steps_or_epochs(arg)
  c = config_utils.base_config()
  c.seed = arg.seed
  c.dataset.update(name="fer2013/fer2013", num_classes=7, image_size=48)
  c.input.update(batch_size=arg.batch, eval_batch_size=256, resize=48, crop=arg.crop, channels=1,
                 rotation=10.0, hflip=True, vflip=False, per_image_standardization=True,
                 eval_crops="ten" if arg.ten_crop else "center")
  c.model.backbone = dict(name="resnet", size=arg.size)
  c.model.head = dict(name="linear", num_outputs=7, kernel_init="lecun")
  c.loss = dict(ce=dict(weight=1.0, label_smoothing=arg.smoothing))
  c.optimizer.update(name="sgd", lr=arg.lr, momentum=0.9, nesterov=True, weight_decay=arg.wd,
                     grad_clip_norm=0.0)
  c.schedule.update(name="warmup_cosine", warmup_steps=224)
  c.ema.update(decay=arg.ema, every=1, eval_with_ema=True, warmup=True)
  c.num_train_steps = arg.steps
  c.num_epochs = 0.0 if arg.steps else (arg.epochs or 30.0)
  c.log_every_steps = 100
  # validation = PublicTest; test = PrivateTest, evaluated only when the CSV holds it. Final only:
  # on 2 CPU cores a ten-crop pass over PublicTest costs about a third of a training epoch.
  c.evals = config_utils.evals("classification", every_steps=0)
  c.checkpoint.every_steps = 1000
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
