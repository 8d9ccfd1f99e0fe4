r"""SeLiNet (Khargonkar et al., ISCAS 2023, arXiv 2307.02773; PAPERS.md section 3) on EMOTIC.

A lightweight body branch (MobileNetV3 on the person crop), an image-aesthetics branch (a small CNN on the
whole image, trained to predict five aesthetics attributes computed on the fly) and a gated fusion network,
with multitask heads: EMOTIC's 26 categories (``emotic_l2``) and 3-way sentiment (``sentiment``), see
``fer_jax.models.selinet`` for what the paper fixes and what we chose. ``arch=selinet`` (MobileNetV3-Large
0.75) or ``arch=ondevice`` (MobileNetV3-Small 0.5, thinner aesthetics branch; int8 TFLite export).

EMOTIC test mean AP over the 26 categories (%), to reproduce, and our parameter counts
(``python -m fer_jax.models.selinet``; the paper gives only the size reductions):

  ==================  ======  ===========  ============================================
  model               mAP     parameters   smaller than the baseline (paper / ours)
  ==================  ======  ===========  ============================================
  EMOTIC baseline     27.38   22,623,389   (emotic_baseline.py)
  SeLiNet             27.17   3,106,898    >85% / 86.3%
  on-device SeLiNet   26.42   871,218      >93% / 96.1%
  ==================  ======  ===========  ============================================

Sentiment labels (``sentiment=``): ``valence`` (default: negative / neutral / positive for EMOTIC valence
(v - 1) / 9 below 0.4 / between / above 0.6, i.e. ratings 1-4 / 5-6 / 7-10; our reading of the paper) or
``categories`` (the majority polarity of the person's categories); ``fer_jax.train.tasks.emotic``. ``vad``
adds a sigmoid VAD head trained with ``smooth_l1``. We chose: the recipe of ``emotic_baseline.py`` (AdamW
1e-3, weight decay 5e-4, batch 64, 15 epochs, warm-up cosine, flips), loss weights emotic_l2 1, sentiment
1, aesthetics 10 (its mean squared error of [0, 1] attributes is ~100x smaller than the category loss);
ImageNet MobileNetV3 weights for the body: ``--config.init_weights=mobilenetv3_large_075.safetensors``
(``PRETRAINED`` 'selinet'; the paper does not say how its branches were initialised).

EMOTIC (manual download, ``tfds_builders/emotic``) on a TPU pod (one process per host)::

    python -m fer_jax.main --jax_distributed --config=experiments/selinet_emotic.py:arch=selinet \
      --config.dataset.manual_dir=/path/to/emotic --config.dataset.data_dir=gs://BUCKET/tfds \
      --config.init_weights=/path/mobilenetv3_large_075.safetensors --workdir=gs://BUCKET/runs/selinet

(``arch=ondevice`` with ``mobilenetv3_small_050`` weights for the on-device model; on one machine drop
``--jax_distributed``). Then export: ``python benchmarks/selinet_export.py --workdir=...``.

Runnable without EMOTIC (``data=synthetic``): ``synthetic_expressions/scenes`` (96 px context, 64 px body
crops, the same record fields).

Options (after ``:``): ``arch`` (selinet | ondevice), ``data`` (emotic | synthetic), ``sentiment``
(valence | categories), ``vad``, ``steps`` or ``epochs``, ``batch``, ``runlocal``.
"""

import ml_collections

from fer_jax import config_utils
from fer_jax.models import selinet
from fer_jax.train.tasks import emotic as emotic_task

# data -> (TFDS name, context size, body size, default steps (0: epochs), default epochs)
DATA = {"emotic": ("emotic/c224_b128", 224, 128, 0, 15.0),
        "synthetic": ("synthetic_expressions/scenes", 96, 64, 1500, 0.0)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def base(data: str, batch: int, steps: int, epochs: float, sentiment: str) -> ml_collections.ConfigDict:
  """Everything but the model and the loss: data, task options, input, optimiser, evaluators."""
  name, context, body, default_steps, default_epochs = DATA[data]
  c = config_utils.base_config()
  c.task = "emotic"
  c.dataset.update(name=name, image_size=context)
  c.task_options = emotic_task.default_options(body_size=body, context_size=context, sentiment_from=sentiment)
  c.input.update(batch_size=batch, eval_batch_size=128, channels=3, hflip=True, rotation=0.0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
  c.input.resize = context  # the task gives each image its own size (task_options); these are the context's
  c.input.crop = context
  c.optimizer.update(name="adamw", lr=1e-3, weight_decay=5e-4, grad_clip_norm=1.0)
  c.schedule.update(name="warmup_cosine", warmup_steps=100 if data == "synthetic" else 500)
  if steps or epochs:
    c.num_train_steps, c.num_epochs = steps, float(epochs)
  else:
    c.num_train_steps, c.num_epochs = default_steps, default_epochs
  c.log_every_steps = 50
  c.checkpoint.every_steps = 500
  c.evals = config_utils.evals("emotic", every_steps=500)
  return c


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, arch="selinet", data="emotic", sentiment="valence", vad=False, steps=0,
                               epochs=0.0, batch=64, runlocal=False)
  config_utils.check_choice(arg, "arch", sorted(selinet.ARCHS))
  config_utils.check_choice(arg, "data", sorted(DATA))
  config_utils.check_choice(arg, "sentiment", emotic_task.SENTIMENT_SOURCES)
  config_utils.check_steps_or_epochs(arg)
  c = base(arg.data, arg.batch, arg.steps, arg.epochs, arg.sentiment)
  c.model.backbone = dict(name="selinet", **selinet.ARCHS[arg.arch])
  c.model.head = selinet.heads(vad=arg.vad)
  c.loss = dict(emotic_l2=dict(weight=1.0, weights="dynamic", target="categories"),
                sentiment=dict(weight=1.0), aesthetics=dict(weight=10.0))
  if arg.vad:
    c.loss.smooth_l1 = dict(weight=1.0)
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
