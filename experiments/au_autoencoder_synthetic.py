r"""The Action-Unit module of Di Luzio et al. (arXiv 2407.14865; ../shared/PAPERS.md section 4): a ResNet
autoencoder + MLP regressing 20 AU intensities, on the built-in synthetic faces (no data needed).

Model (``fer_jax/models/au_autoencoder.py``): backbone ``au_autoencoder`` (a timm-layout ResNet encoder,
a light upsampling decoder -> ``reconstruction``, the code -> ``features``), head ``au_mlp``
(Dense 256 -> ReLU -> Dense 20 -> sigmoid -> ``au_intensity``), task / evaluator ``action_units`` as in
``au_synthetic.py`` (whose ``get_config`` this file calls: same data, splits, augmentation and evaluators).

Paper says "ResNet-50 autoencoder + MLP" and nothing more. We chose three ``stage`` settings:

* ``stage=ae`` (stage 1): the autoencoder alone, loss ``reconstruction`` (MSE to the preprocessed input);
* ``stage=mlp`` (stage 2): the MLP on the frozen stage-1 autoencoder (``model.backbone_frozen``: BatchNorm
  on running statistics, no gradient; ``optimizer.frozen='^backbone/'``), loss ``au_mse``; ``ae=`` names
  the stage-1 model, written from its work dir by ``fer_jax.pretrained.package``;
* ``stage=joint`` (default): one run, ``au_mse`` + ``recon`` x ``reconstruction``, end to end.

CPU scale (README results; 2 shared cores): our small encoder (``size=small_custom``) at 44 px, joint::

    python -m fer_jax.main --config=experiments/au_autoencoder_synthetic.py:size=small_custom,res=44,steps=500 \
        --workdir=runs/au_joint_small

and two-stage (stage 1 -> a model file -> stage 2)::

    python -m fer_jax.main --config=experiments/au_autoencoder_synthetic.py:size=small_custom,res=44,stage=ae,steps=300 \
        --workdir=runs/au_ae_small
    python -m fer_jax.pretrained.package --workdir=runs/au_ae_small --name=au_ae_small --out_dir=runs
    python -m fer_jax.main --config=experiments/au_autoencoder_synthetic.py:size=small_custom,res=44,stage=mlp,steps=500,ae=runs/au_ae_small.json \
        --workdir=runs/au_mlp_small

The paper's ResNet-50 at 64 px on a TPU VM (the same command on every worker of a pod slice), optionally
from ImageNet weights (timm / torchvision ``resnet50``: the encoder is imported, the decoder stays fresh)::

    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd fer_jax && \
        .venv/bin/python -m fer_jax.main --jax_distributed \
        --config=experiments/au_autoencoder_synthetic.py:size=resnet50,stage=joint,steps=3000,batch=256 \
        --config.init_weights=/mnt/shared/weights/resnet50.safetensors --workdir=gs://BUCKET/au_ae50"

Options (after ``:``): ``size`` (the encoder: a ``resnext`` size, default resnet50, or ``small_custom``: one
basic block per stage at 32..256 channels and a decoder of 96..12, for CPU runs), ``stage`` (ae | mlp |
joint), ``ae`` (stage=mlp only: the stage-1 ``.json``), ``recon`` (stage=joint: weight of the
reconstruction term, default 0.1), ``code`` (what the MLP reads: flatten = the last feature map, the
autoencoder's latent, default; pool = its average), ``code_dim`` (width of a Dense bottleneck on it; 0 =
none), ``res`` (crop size; images are first resized to 12/11 of it, as au_synthetic's 44-of-48),
``steps``, ``batch``, ``threshold`` (AU presence), ``data`` (synthetic | ckplus), ``fold`` (CK+ test fold
0..9), ``runlocal``.

CK+ (``data=ckplus``; a licensed manual download, see tfds_builders/ckplus/README.md): the apex (last)
frame of each sequence's 96-px crops, 20 AU intensities from its FACS file (FACS A..E = 0.2..1.0), task
``action_units_apex``, train on 9 subject folds and evaluate on fold ``fold`` (no validation split)::

    python -m fer_jax.main --config=experiments/au_autoencoder_synthetic.py:data=ckplus,size=resnet50,res=64,steps=600 \
        --config.dataset.manual_dir=/data/ckplus --config.init_weights=~/weights/resnet50.safetensors \
        --workdir=runs/au_ckplus_fold0
"""

import os

from fer_jax import config_utils
from fer_jax.data import synthetic
from fer_jax.models import resnext
from fer_jax.models.au_autoencoder import CODES

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("joint", "ae", "mlp")
DATA = ("synthetic", "ckplus")
CKPLUS_FOLDS = 10
# Our CPU-sized encoder (not a timm size): one basic block per stage at half ResNet-18's widths; 1.66M
# parameters with its decoder and the MLP on the flattened 2x2x256 code at 44 px (1.46M on the pooled
# code; au_synthetic's ConvNeXt: 1.18M). A train step costs ~1/12 of ResNet-18's here (0.30 vs 3.7 CPU
# seconds at batch 32, 44 px).
CUSTOM = {"small_custom": dict(block="basic", depths=(1, 1, 1, 1), widths=(32, 64, 128, 256), stem_width=32,
                               decoder_widths=(96, 48, 24, 12))}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, size="resnet50", stage="joint", ae="", recon=0.1, code="flatten", code_dim=0,
                               res=64,
                               steps=1500, batch=64, threshold=0.1, data="synthetic", fold=0, runlocal=False)
  config_utils.check_choice(arg, "size", sorted(resnext.SIZES) + sorted(CUSTOM))
  config_utils.check_choice(arg, "stage", STAGES)
  config_utils.check_choice(arg, "data", DATA)
  config_utils.check_choice(arg, "code", CODES)
  if not 0 <= arg.fold < CKPLUS_FOLDS:
    raise ValueError(f"Config option fold={arg.fold}; expected 0..{CKPLUS_FOLDS - 1} (CK+ subject folds)")
  if arg.fold and arg.data != "ckplus":
    raise ValueError(f"Config options fold={arg.fold} and data={arg.data} contradict each other: fold= picks "
                     "the CK+ test fold")
  if arg.stage == "mlp" and not arg.ae:
    raise ValueError("Config option stage=mlp trains the MLP on a frozen stage-1 autoencoder: give ae=PATH, the "
                     ".json that fer_jax.pretrained.package wrote from the stage=ae work dir")
  if arg.ae and arg.stage != "mlp":
    raise ValueError(f"Config options ae={arg.ae!r} and stage={arg.stage} contradict each other: ae= is the "
                     "stage-1 model of stage=mlp")
  if arg.res < 8 or arg.code_dim < 0 or arg.recon < 0:
    raise ValueError(f"Config options res={arg.res} (>= 8), code_dim={arg.code_dim} (>= 0), recon={arg.recon} "
                     "(>= 0): out of range")
  base = config_utils.load_module(os.path.join(HERE, "au_synthetic.py"))
  c = base.get_config(dict(steps=arg.steps, batch=arg.batch, threshold=arg.threshold))
  c.input.update(resize=int(round(arg.res * 12 / 11)), crop=arg.res)
  encoder = CUSTOM[arg.size] if arg.size in CUSTOM else dict(size=arg.size)
  c.model.backbone = dict(name="au_autoencoder", **encoder, code=arg.code, code_dim=arg.code_dim)
  c.model.head = dict(name="au_mlp", num_outputs=synthetic.NUM_AUS, hidden=(256,))
  # ResNet + BatchNorm from scratch: AdamW 1e-3 (au_synthetic's ConvNeXt uses 2e-3), wd 0.05, warm-up cosine.
  c.optimizer.update(lr=1e-3, weight_decay=0.05)
  if arg.stage == "joint":
    c.loss = dict(au_mse=dict(weight=1.0), reconstruction=dict(weight=arg.recon))
  elif arg.stage == "ae":
    c.loss = dict(reconstruction=dict(weight=1.0))
  else:
    c.loss = dict(au_mse=dict(weight=1.0))
    c.init_weights = arg.ae
    c.model.backbone_frozen = True
    c.optimizer.frozen = "^backbone/"
  if arg.data == "ckplus":
    # The CK+ builder (tfds_builders/ckplus): 96-px grey crops of 16 frames per sequence, neutral -> peak,
    # 'action_units' from the peak's FACS codes; train = 9 subject folds, test = fold ``fold``, no
    # validation split. The task 'action_units_apex' reads the last frame. CK+ codes carry no side (R12,
    # L12, R14, L14 are never set), so horizontal flips are safe here.
    c.dataset.name = "ckplus/crop_96" + (f"_fold{arg.fold}" if arg.fold else "")
    c.dataset.image_key = "frames"
    c.task = "action_units_apex"
    c.input.hflip = True
    c.evals = config_utils.evals("action_units", validation="test", test=None, every_steps=500)
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
