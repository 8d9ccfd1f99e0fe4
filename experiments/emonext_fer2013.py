r"""EmoNeXt on FER2013 (El Boudouri & Bohi, MMSP 2023, arXiv 2501.08199): the rows of Table II.

One size per row: ``size=tiny|small|base|large|xlarge``; ``arch=emonext`` (STN -> ConvNeXt + SE -> head,
trained with CE + lambda * the self-attention regulariser) or ``arch=convnext`` for the row's ConvNeXt
(same backbone, no STN / SE / SA). FER2013 test (PrivateTest) accuracy, %, to reproduce:

  =======  ========  =======  ===========================  ============================
  size     ConvNeXt  EmoNeXt  params ConvNeXt (7 classes)  params EmoNeXt (code / paper)
  =======  ========  =======  ===========================  ============================
  tiny     71.99     73.34    27,825,511                   29,973,739 / 29,974,891
  small    72.34     74.33    49,460,071                   51,608,299 / 51,609,451
  base     73.22     74.91    87,573,639                   90,715,659 / 90,717,707
  large    73.46     75.57    196,241,095                  202,221,643 / 202,226,251
  xlarge   74.15     76.12    348,162,311                  358,115,979 / 358,124,171
  =======  ========  =======  ===========================  ============================

(parameter counts at 224 px: STN 868,740, SE and attention per ``fer_jax.models.emonext``; the
trainer logs the count of the model it builds; every size's breakdown:
``python -c "from fer_jax.models import emonext as e; print(e.format_param_count_table(e.param_count_table()))"``.)

Paper vs official code (``reading=``, PAPERS.md section 1): ``code`` (default) puts one SE block after
the stride-2 conv of downsampling layers 1-3 and uses the B x B attention across the batch (scale
C^-1/4, lambda 1); ``paper`` puts SE after every stage and attends over the feature vector (scale
1/sqrt(d), lambda 1, not given in the paper).

The official recipe: 48 px grey -> resize 236 -> random crop 224, grey copied to 3 channels, pixels in
[0, 1] (no normalisation); horizontal + vertical flips, rotation 20 degrees; AdamW, warm-restart cosine
(peak 1e-3, 128 warm-up steps, 1024-step cycles), batch 64, label smoothing 0.2, drop path 0.1, EMA 0.99
every 16 steps, grad-norm clip 1.0; test: ten-crop with averaged logits, EMA weights. Loss terms:
``ce`` (weight 1, smoothing 0.2) + ``sa`` (weight lambda = 1). ImageNet-22k ConvNeXt weights for the
backbone: ``--config.init_weights=/path/convnext_tiny_22k.safetensors`` (timm or official checkpoints;
STN, SE, attention and head stay freshly initialised). The official code trains up to 300 epochs with
early stopping (patience 12); we train a fixed ``epochs`` (default 100) and evaluate the final EMA weights.

TPU pod (one process per host; global batch 64 as in the paper, or scale it with the learning rate)::

    python -m fer_jax.main --jax_distributed \
      --config=experiments/emonext_fer2013.py:size=xlarge \
      --config.dataset.manual_dir=/path/to/fer2013 --config.dataset.data_dir=gs://BUCKET/tfds \
      --config.init_weights=/path/convnext_xlarge_22k_224.safetensors --workdir=gs://BUCKET/emonext_xl

CPU (``cpu``): the same model family at CPU scale: atto-sized unless ``size`` is given, stem patch 4,
64 px crops unless ``res`` is given (``res=48``: 48 px crops of 51 px images), batch 64, 6 epochs,
warm-up cosine 2e-3, per-image standardisation, no EMA, centre-crop test; with ``arch=emonext`` and
``arch=convnext`` this is the README's EmoNeXt vs ConvNeXt comparison at an equal budget::

    python -m fer_jax.main --config=experiments/emonext_fer2013.py:cpu,res=48 \
      --config.dataset.manual_dir=../shared/data/fer2013 --workdir=runs/emonext_cpu
    python -m fer_jax.main --config=experiments/emonext_fer2013.py:cpu,res=48,arch=convnext \
      --config.dataset.manual_dir=../shared/data/fer2013 --workdir=runs/convnext_cpu

Options: ``size`` (tiny|small|base|large|xlarge, or atto|femto|pico|nano; default tiny, atto with
``cpu``), ``arch`` (emonext|convnext), ``reading`` (code|paper), ``res`` (crop; images are resized to
res * 236/224; default 224, 64 with ``cpu``), ``epochs`` or ``steps``, ``batch``, ``cpu``, ``minutes``
(wall-clock training budget, 0 = none), ``runlocal``.
"""

from fer_jax import config_utils

SIZES = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")
ARCHS = ("emonext", "convnext")
READINGS = {"code": ("downsample", "batch"), "paper": ("stage", "feature")}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, size="", arch="emonext", reading="code", res=0, epochs=0.0, steps=0,
                               batch=64, cpu=False, minutes=0.0, runlocal=False)
  arg.size = arg.size or ("atto" if arg.cpu else "tiny")
  arg.res = arg.res or (64 if arg.cpu else 224)
  config_utils.check_choice(arg, "size", SIZES)
  config_utils.check_choice(arg, "arch", ARCHS)
  config_utils.check_choice(arg, "reading", sorted(READINGS))
  config_utils.check_steps_or_epochs(arg)
  if arg.arch == "convnext" and arg.reading != "code":
    raise ValueError(f"Config options arch=convnext and reading={arg.reading} contradict each other: the "
                     "ConvNeXt baseline has no SE / attention to place")
  se_placement, sa_mode = READINGS[arg.reading]

  c = config_utils.base_config()
  c.dataset.update(name="fer2013/fer2013", num_classes=7, image_size=48)
  c.input.update(batch_size=arg.batch, eval_batch_size=64, resize=round(arg.res * 236 / 224),
                 crop=arg.res, channels=3, rotation=20.0, hflip=True, vflip=True, eval_crops="ten",
                 per_image_standardization=False)
  backbone = dict(name="emonext", size=arg.size, drop_path_rate=0.1, layer_scale_init_value=1e-6)
  if arg.arch == "convnext":
    backbone.update(use_stn=False, se_placement="none", sa_mode=None)
  else:
    backbone.update(use_stn=True, se_placement=se_placement, se_reduction=16, sa_mode=sa_mode)
  c.model.backbone = backbone
  c.model.head = dict(name="linear", num_outputs=7)
  c.loss = dict(ce=dict(weight=1.0, label_smoothing=0.2))
  if arg.arch == "emonext":
    c.loss.sa = dict(weight=1.0)
  c.optimizer.update(name="adamw", lr=1e-4, weight_decay=0.05, grad_clip_norm=1.0)
  c.schedule.update(name="cosine_warm_restarts", peak_value=1e-3, min_value=0.0, warmup_steps=128,
                    cycle_steps=1024, gamma=1.0)
  c.ema.update(decay=0.99, every=16, eval_with_ema=True)
  c.num_train_steps = arg.steps
  c.num_epochs = 0.0 if arg.steps else (arg.epochs or 100.0)
  c.log_every_steps = 50
  c.evals = config_utils.evals("classification", every_steps=2000)
  c.checkpoint.every_steps = 1000
  c.train_time_limit_minutes = arg.minutes
  if arg.cpu:
    # CPU scale: small model, 64 px, per-image standardisation, one warm-up cosine over the budget.
    c.input.update(per_image_standardization=True, eval_crops="center", vflip=False, rotation=10.0,
                   eval_batch_size=256)
    c.model.backbone.stem_patch_size = 4
    c.optimizer.update(lr=2e-3)
    c.schedule = config_utils.base_config().schedule
    c.schedule.update(name="warmup_cosine", warmup_steps=300)
    c.loss.ce.label_smoothing = 0.1
    c.ema.update(decay=0.0)  # a few thousand steps are too few for a useful weight average
    c.num_epochs = 0.0 if arg.steps else (arg.epochs or 6.0)
    c.log_every_steps = 100
    c.evals = config_utils.evals("classification", every_steps=0)
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
