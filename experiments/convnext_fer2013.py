r"""ConvNeXt on FER2013 (or FER+ labels), sized for CPU or a TPU / GPU.

FER2013 is a manual download (see tfds_builders/fer2013/README.md): put ``fer2013.csv`` (or ``.csv.gz``)
(and, for FER+, ``fer2013new.csv``) in one directory and pass it as ``dataset.manual_dir``.

CPU-sized run (the README's results table; <= 60 min on 2 cores):

    python -m fer_jax.main --config=experiments/convnext_fer2013.py:size=atto,res=64,epochs=16 \
        --config.dataset.manual_dir=../shared/data/fer2013 --workdir=runs/fer2013_atto48

Options (after ``:``): ``size`` (atto|femto|pico|nano|tiny|small|base|large|xlarge), ``res`` (input
crop size; images are resized to res*52/48 then cropped, as EmoNeXt resizes 236 -> crops 224),
``patch`` (stem patch size; default 2 below 64 px, else 4), ``epochs`` (default 16) or ``steps``, ``batch``, ``lr``,
``ferplus`` (FER+ majority labels, 8 classes), ``ten_crop`` (ten-crop test), ``runlocal``.
"""

from fer_jax import config_utils

SIZES = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, size="atto", res=64, patch=0, epochs=0.0, steps=0, batch=128,
                               ferplus=False, ten_crop=False, runlocal=False, lr=2e-3)
  config_utils.check_choice(arg, "size", SIZES)
  c = config_utils.base_config()
  c.dataset.name = "fer2013/ferplus" if arg.ferplus else "fer2013/fer2013"
  c.dataset.num_classes = 8 if arg.ferplus else 7
  c.dataset.image_size = 48
  resize = max(arg.res, round(arg.res * 52 / 48))
  c.input.update(batch_size=arg.batch, eval_batch_size=256, resize=resize, crop=arg.res,
                 rotation=10.0, hflip=True, vflip=False, per_image_standardization=True,
                 eval_crops="ten" if arg.ten_crop else "center")
  c.model.backbone = dict(name="convnext", size=arg.size, drop_path_rate=0.1, layer_scale_init_value=1e-6,
                          stem_patch_size=arg.patch or (2 if arg.res < 64 else 4))
  c.model.head = dict(name="linear", num_outputs=c.dataset.num_classes)
  c.loss = dict(ce=dict(weight=1.0, label_smoothing=0.1))
  c.optimizer.update(name="adamw", lr=arg.lr, weight_decay=0.05, grad_clip_norm=1.0)
  c.schedule.update(name="warmup_cosine", warmup_steps=300)
  config_utils.check_steps_or_epochs(arg)
  c.num_train_steps = arg.steps
  c.num_epochs = 0.0 if arg.steps else (arg.epochs or 16.0)
  c.log_every_steps = 100
  # validation = PublicTest; test = PrivateTest, evaluated only when the CSV holds it.
  c.evals = config_utils.evals("classification", every_steps=1000)
  c.checkpoint.every_steps = 1000
  c.ema.update(decay=0.999, every=1)
  c.train_time_limit_minutes = 0.0  # e.g. 58 for a wall-clock-budgeted CPU run
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
