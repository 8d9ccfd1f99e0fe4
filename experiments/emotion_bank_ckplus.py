r"""Di Luzio, Rosato & Panella (arXiv 2407.14865): one per-emotion binary CNN + LSTM over landmark
sequences (one model of the emotion bank) on CK+, subject-wise folds.

CK+ (Lucey et al. 2010): 327 labelled sequences of 118 subjects from a neutral face to the peak of
anger, contempt, disgust, fear, happy, sadness or surprise, with 68 AAM-tracked landmarks per frame;
the ``ckplus`` builder (``tfds_builders/ckplus/``, a manual download) resamples each to 16 frames and
deals the subjects into 10 folds: ``fold=k`` trains on the other 9 folds and tests on fold k (the
configs ``ckplus/crop_48[_fold<k>]``; the frames are not used, so the smaller crops are built). The
labels follow CK+'s order: 0 neutral (no labelled sequence has it), 1 anger, 2 contempt, 3 disgust,
4 fear, 5 happy, 6 sadness, 7 surprise. The models read ``landmarks_image`` (the tracked landmarks in
image pixels; ``landmarks`` is in per-frame crop pixels, which already removes each frame's scale
and position); the recipe is ``emotion_bank_synthetic.py``'s (``bank_config``): normalised landmarks
+ displacement from the first frame, ``landmark_cnn_lstm`` + 1-logit head, ``bce``, half the training
draws from the emotion, ``binary`` evaluator on the test fold. The paper reports no per-fold numbers
we can compare with (PAPERS.md section 4); 10-fold results are the mean over ``fold=0..9``.

    python -m fer_jax.main --config=experiments/emotion_bank_ckplus.py:emotion=happy,arch=temo,fold=0 \
      --config.dataset.manual_dir=/path/to/ckplus --workdir=runs/bank_ck/happy_temo_f0

On a TPU pod slice (one process per host):

    python -m fer_jax.main --jax_distributed \
      --config=experiments/emotion_bank_ckplus.py:emotion=surprise,arch=binary,fold=3 \
      --config.dataset.manual_dir=/path/to/ckplus --config.dataset.data_dir=gs://BUCKET/tfds \
      --workdir=gs://BUCKET/runs/bank_ck/surprise_binary_f3

Options (after ``:``): ``emotion`` (anger, contempt, disgust, fear, happy, sadness, surprise or the
id 1-7), ``fold`` (0-9), ``arch`` (temo | remo | binary | binary_lstm), ``size`` (tiny | small | base; default
small), ``steps``, ``batch`` (clips per global batch), ``landmarks``, ``ranking``
(kept landmarks, as in ``emotion_bank_synthetic.py``), ``seed``, ``runlocal``.
"""

import os

from fer_jax import config_utils

HERE = os.path.dirname(os.path.abspath(__file__))
# tfds_builders.ckplus.ckplus_dataset_builder.EMOTION_NAMES (tests check that they agree).
EMOTION_NAMES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
LABELLED = tuple(range(1, 8))  # CK+'s labelled sequences: no neutral one
NUM_FOLDS = 10


def get_config(arg=None):
  base = config_utils.load_module(os.path.join(HERE, "emotion_bank_synthetic.py"))
  arg = config_utils.parse_arg(base.merge_landmark_lists(arg),
                               **dict(base.DEFAULTS, steps=1000, fold=0))
  if not 0 <= arg.fold < NUM_FOLDS:
    raise ValueError(f"Config option fold={arg.fold}; expected 0..{NUM_FOLDS - 1}")
  c = base.bank_config(arg, class_names=EMOTION_NAMES, present=LABELLED)
  c.dataset.update(name="ckplus/crop_48" + (f"_fold{arg.fold}" if arg.fold else ""), image_size=48)
  c.task_options.update(landmarks_key="landmarks_image", num_frames=16, num_landmarks=68)
  # The builder's configs have train and test splits only (no validation fold).
  c.evals = config_utils.evals("binary", validation=None)
  c.evals.test.optional = False
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
