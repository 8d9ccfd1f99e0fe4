r"""Hasani & Mahoor's Inception-ResNet models (``inception_resnet_affwild.py``) trained on AFEW-VA.

AFEW-VA (Kossaifi et al., IVC 2017): 600 movie clips, per-frame valence / arousal on -10..10 (scaled
to [-1, 1]) and 68 landmarks; the ``afew_va/aligned_112`` crops are similarity-aligned to the
68-point mean shape. AFEW-VA has no official split: fold ``k`` of our 5 by-clip folds is the test
set, fold ``k + 1`` the validation set (``tfds_builders/afew_va/README.md``). The Hasani & Mahoor
paper does not report AFEW-VA numbers; this is the second in-the-wild VA benchmark for the same
models (the AFEW-VA paper's baselines report RMSE / CC / ICC per fold).

    python -m fer_jax.main --config=experiments/inception_resnet_afewva.py:arch=deep,fold=0 \
      --config.dataset.manual_dir=/path/to/afew_va --workdir=runs/afewva_deep_f0

Options: ``arch`` (shallow | deep | lstm), ``fold`` (0-4), ``width``, ``loss``, ``steps``,
``clip_batch``, ``window`` (at most 16), ``runlocal``: all but ``fold`` passed to the Aff-Wild file's
``get_config``. 112 px inputs with the paper's 'VALID' padding (minimum 75 px).
"""

import os

from fer_jax import config_utils

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, arch="deep", fold=0, width=0.0, loss="", steps=20_000, clip_batch=0,
                               window=0, runlocal=False)
  if not 0 <= arg.fold < 5:
    raise ValueError(f"Config option fold={arg.fold}; expected 0..4")
  base = config_utils.load_module(os.path.join(HERE, "inception_resnet_affwild.py"))
  options = {k: v for k, v in arg.items() if k != "fold"}
  options["window"] = min(arg.window or (16 if arg.arch == "lstm" else 4), 16)
  c = base.get_config(dict(options, data="affwild", res=112))
  c.dataset.update(name="afew_va/aligned_112" + (f"_fold{arg.fold}" if arg.fold else ""), image_size=112)
  c.affect.update(video_key="clip_id", mask_key="frame_mask", frame_index_key="frame_index")
  c.input.update(resize=112, crop=112)
  c.evals = config_utils.evals("affect")
  if arg.runlocal:
    config_utils.apply_runlocal(c, batch=2)
  return c
