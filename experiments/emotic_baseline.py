r"""The EMOTIC baseline (Kosti et al., TPAMI 2019, sec. 5), SeLiNet's reference (PAPERS.md section 3).

Body crop (128 px) and whole image (224 px) -> two ResNet-18s -> concat -> Dense 256 -> BN -> ReLU ->
Dropout 0.5 -> Dense 26 (categories) and Dense 3 (valence / arousal / dominance)
(``fer_jax.models.emotic_baseline``), trained with EMOTIC's dynamically weighted squared error on the
categories (``emotic_l2``, w_i = 1 / ln(n_i + 1.2) from the batch's counts) and smooth L1 on VAD
(``smooth_l1``), through the ``emotic`` task and evaluator (per-category AP, mAP, VAD MAE).

EMOTIC test mean AP over the 26 categories (%), to reproduce:

  ================================  ======  ===========
  model                             mAP     parameters
  ================================  ======  ===========
  Kosti et al. baseline (body+ctx)  27.38   22,623,389
  SeLiNet (Khargonkar et al.)       27.17   (selinet_emotic.py)
  on-device SeLiNet                 26.42   (selinet_emotic.py)
  ================================  ======  ===========

(parameters of this file's model with both heads, counted by
``python -m fer_jax.models.selinet``.) Paper says: ImageNet weights for the body branch and Places365
for the context branch. ``--config.init_weights=resnet18.safetensors`` loads one timm / torchvision
ResNet-18 into both branches (``PRETRAINED`` 'emotic_baseline'). We chose: AdamW 1e-3, weight decay 5e-4,
batch 64, 15 epochs (``steps`` overrides), warm-up cosine, ImageNet mean / std, horizontal flips of each
input; loss weights 1 and 1 (the paper combines the two losses with weights it does not give).

EMOTIC (manual download, ``tfds_builders/emotic``) on a TPU pod (one process per host)::

    python -m fer_jax.main --jax_distributed --config=experiments/emotic_baseline.py \
      --config.dataset.manual_dir=/path/to/emotic --config.dataset.data_dir=gs://BUCKET/tfds \
      --config.init_weights=/path/resnet18.safetensors --workdir=gs://BUCKET/runs/emotic_baseline

and on one machine drop ``--jax_distributed``.

Runnable without EMOTIC (``data=synthetic``): the built-in ``synthetic_expressions/scenes`` people in
rendered scenes (96 px context, 64 px body crops, the same record fields); ``size=cpu`` swaps the two
ResNet-18s for narrow ResNets (one basic block per stage, 16..128 channels) that train on 2 CPU cores in
minutes.

Options (after ``:``): ``data`` (emotic | synthetic), ``size`` (resnet18 | cpu), ``steps`` or
``epochs``, ``batch``, ``runlocal``.
"""

import os

from fer_jax import config_utils
from fer_jax.models import emotic_baseline, selinet  # noqa: F401  (registers the 'emotic_baseline' backbone)

HERE = os.path.dirname(os.path.abspath(__file__))

SIZES = {"resnet18": "resnet18",
         "cpu": dict(block="basic", depths=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16)}


def get_config(arg=None):
  common = config_utils.load_module(os.path.join(HERE, "selinet_emotic.py"))
  arg = config_utils.parse_arg(arg, data="emotic", size="resnet18", steps=0, epochs=0.0, batch=64,
                               runlocal=False)
  config_utils.check_choice(arg, "data", sorted(common.DATA))
  config_utils.check_choice(arg, "size", sorted(SIZES))
  config_utils.check_steps_or_epochs(arg)
  c = common.base(arg.data, arg.batch, arg.steps, arg.epochs, sentiment="valence")
  c.model.backbone = dict(name="emotic_baseline", branch=SIZES[arg.size], fusion_width=256, dropout_rate=0.5)
  c.model.head = selinet.baseline_heads()
  c.loss = dict(emotic_l2=dict(weight=1.0, weights="dynamic", target="categories"),
                smooth_l1=dict(weight=1.0))
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
