r"""Di Luzio, Rosato & Panella (arXiv 2407.14865): one per-emotion binary CNN + LSTM over facial-landmark
sequences (one model of the emotion bank), on the built-in synthetic clips (no data needed).

The ``synthetic_expressions/sequences`` clips (2000 / 300 / 300 clips of 16 frames going from neutral to
an expression's apex, 8 classes, the iBUG-68 landmarks of every frame after a slowly drifting pose) are
generated on first use. One model says whether a clip shows ``emotion`` (target 1) or any other class
(target 0): the ``landmark_sequence`` task (normalised landmarks + displacement from the first frame,
small similarity jitter in training; ``fer_jax/train/tasks/landmark_sequence.py``), the
``landmark_cnn_lstm`` backbone (``fer_jax/models/landmark_lstm.py``) with a 1-logit ``linear`` head,
the ``bce`` loss and the ``binary`` evaluator (accuracy, balanced accuracy, F1, AUC; the scores are
saved as ``scores_<split>.npz``). Training draws half its clips from the emotion and half from the
other classes (``class_balanced`` sampler; the splits hold 1 clip in 8 of each class).

    python -m fer_jax.main --config=experiments/emotion_bank_synthetic.py:emotion=happy,arch=temo \
      --workdir=runs/bank/happy_temo

Architectures (``arch``): ``temo`` (T-EMO: everything trained), ``remo`` (R-EMO: the convolutional
front end stays random and frozen, ``landmark_lstm.FRONT_END_FROZEN``; its BatchNorm, the frame dense
layer, the LSTM and the head train), ``binary`` (T-EMO with binarized convs and frame dense layer:
weights and activations in {-1, +1}, straight-through estimators; LSTM and head float; freeze it for
XNOR-popcount inference with ``landmark_lstm.pack_landmark_model``), ``binary_lstm`` (the LSTM binarized
too, ``fer_jax.layers.binary_lstm``: every product but the head's runs packed). The paper gives no sizes,
optimiser or schedule: ours are below (AdamW 2e-3, warm-up cosine, batch 32 clips, 600 steps).

On a TPU pod slice (one process per host; the 8 models of the bank are 8 such runs, ``emotion=``):

    python -m fer_jax.main --jax_distributed \
      --config=experiments/emotion_bank_synthetic.py:emotion=surprise,arch=binary,size=base,batch=256 \
      --config.dataset.data_dir=gs://BUCKET/tfds --workdir=gs://BUCKET/runs/bank/surprise_binary

Options (after ``:``): ``emotion`` (a class name or id: angry, disgust, fear, happy, sad, surprise,
neutral, contempt), ``arch`` (temo | remo | binary | binary_lstm), ``size`` (tiny | small | base; default small),
``steps``, ``batch`` (clips per global batch), ``landmarks`` (the kept landmarks: indices and inclusive
ranges separated by commas or ``+``, e.g. ``landmarks=17-67`` or ``landmarks=36,39,42,45,48-67``; a
single number N keeps the first N of ``ranking``; a single landmark k is ``k-k``), ``ranking`` (a JSON
file: a list of landmark indices, most relevant first, or ``{"ranking": [...]}``, e.g. from an
Integrated-Gradients ranking), ``seed``, ``runlocal``, ``data`` (``exact``: the rendered landmarks, which
every variant separates; ``tracked``: ``synthetic_expressions/sequences_tracked``, the same clips with a
face tracker's landmark error, 0.05 inter-ocular distances per point, where the variants differ).
"""

import json
import os
import re

from fer_jax import config_utils
from fer_jax.data import synthetic
from fer_jax.models import landmark_lstm
from fer_jax.train.tasks import landmark_sequence

ARCHS = ("temo", "remo", "binary", "binary_lstm")
SIZES = tuple(landmark_lstm.SIZES)
DEFAULTS = dict(emotion="happy", arch="temo", size="", steps=600, batch=32, landmarks="", ranking="",
                seed=0, runlocal=False)
# data= -> the synthetic_expressions config: exact rendered landmarks, or a face tracker's (error 0.05
# inter-ocular distances, twice that on the jaw, correlated over frames; the same clips otherwise).
DATA = {"exact": "sequences", "tracked": "sequences_tracked"}


def merge_landmark_lists(arg):
  """``'landmarks=1,2,5-9,steps=3'`` -> ``'landmarks=1+2+5-9,steps=3'``: the commas of a landmark list
  would otherwise split the option string (``config_utils.parse_arg``)."""
  if not isinstance(arg, str):
    return arg
  out = []
  for item in arg.split(","):
    if out and out[-1].startswith("landmarks=") and re.fullmatch(r"\s*\d+(-\d+)?\s*", item):
      out[-1] += "+" + item.strip()
    else:
      out.append(item)
  return ",".join(out)


def read_ranking(path):
  """Landmark indices, most relevant first, from a JSON list or ``{"ranking": [...]}``."""
  try:
    with open(os.path.expanduser(path)) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Config option ranking={path!r}: cannot read a JSON landmark ranking ({e})") from None
  ranking = data.get("ranking") if isinstance(data, dict) else data
  if not isinstance(ranking, list) or not all(isinstance(i, int) and i >= 0 for i in ranking):
    raise ValueError(f"Config option ranking={path!r}: expected a JSON list of landmark indices >= 0 (or "
                     f"{{'ranking': [...]}}), got {str(data)[:80]}")
  return ranking


def parse_landmarks(spec: str, ranking: str, num_landmarks: int):
  """The ``landmarks=`` option -> a tuple of kept landmark indices (None: all); see the docstring."""
  spec = spec.strip()
  if not spec:
    return None
  tokens = [t.strip() for t in spec.split("+")]
  if len(tokens) == 1 and re.fullmatch(r"\d+", tokens[0]):
    count = int(tokens[0])
    if not ranking:
      raise ValueError(f"Config option landmarks={spec}: a single number is a count of landmarks to keep, "
                       "taken from ranking=FILE (give one), or write one landmark k as landmarks=k-k")
    order = read_ranking(ranking)
    if not 1 <= count <= len(order):
      raise ValueError(f"Config option landmarks={count}: expected a count in 1..{len(order)} (the length "
                       f"of ranking={ranking!r})")
    kept = tuple(order[:count])
  else:
    kept = []
    for t in tokens:
      m = re.fullmatch(r"(\d+)(?:-(\d+))?", t)
      if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise ValueError(f"Config option landmarks={spec.replace('+', ',')}: {t!r} is not an index or an "
                         "increasing range a-b")
      lo = int(m.group(1))
      kept.extend(range(lo, int(m.group(2) or lo) + 1))
    kept = tuple(kept)
  dup = sorted({i for i in kept if kept.count(i) > 1})
  if dup:
    raise ValueError(f"Config option landmarks={spec.replace('+', ',')} lists landmarks {dup} twice")
  bad = [i for i in kept if i >= num_landmarks]
  if bad:
    raise ValueError(f"Config option landmarks: indices {bad} are not landmarks (0..{num_landmarks - 1})")
  return kept


def parse_emotion(emotion, class_names):
  """A class name or id -> the id."""
  e = str(emotion).strip()
  if e.isdigit() and int(e) < len(class_names):
    return int(e)
  if e in class_names:
    return class_names.index(e)
  raise ValueError(f"Config option emotion={emotion!r}; expected one of {list(class_names)} or an id "
                   f"0..{len(class_names) - 1}")


def bank_config(arg, *, class_names, present=None):
  """The shared recipe of one per-emotion model (``arg``: the parsed options); the dataset fields are
  the caller's. ``present``: the class ids that occur in training (others get sampler weight 0)."""
  config_utils.check_choice(arg, "arch", ARCHS)
  size = arg.size or "small"
  if size not in SIZES:
    raise ValueError(f"Config option size={size!r}; expected one of {list(SIZES)}")
  if arg.batch < 1 or arg.steps < 1:
    raise ValueError(f"Config options steps={arg.steps}, batch={arg.batch}; expected positive integers")
  positive = parse_emotion(arg.emotion, class_names)
  present = tuple(range(len(class_names))) if present is None else tuple(present)
  if positive not in present:
    raise ValueError(f"Config option emotion={arg.emotion!r}: class {class_names[positive]!r} has no "
                     f"training examples in this dataset (classes present: {[class_names[i] for i in present]})")

  c = config_utils.base_config()
  c.seed = arg.seed
  c.task = "landmark_sequence"
  c.dataset.num_classes = len(class_names)
  c.task_options = landmark_sequence.task_options(
      positive_class=positive, landmarks=parse_landmarks(arg.landmarks, arg.ranking, 68),
      augment=dict(scale=0.05, rotation=5.0, translation=0.05))
  backbone = dict(name="landmark_cnn_lstm", size=size)
  if arg.arch == "remo":
    backbone["random_front_end"] = True
    c.optimizer.frozen = landmark_lstm.FRONT_END_FROZEN
  elif arg.arch in ("binary", "binary_lstm"):
    backbone["binary"] = True
    backbone["binary_lstm"] = arg.arch == "binary_lstm"
  c.model.backbone = backbone
  c.model.head = dict(name="linear", num_outputs=1)
  c.loss = dict(bce=dict(weight=1.0))
  # Half the training clips from the emotion, half spread evenly over the other classes present.
  weights = [0.0] * len(class_names)
  for k in present:
    weights[k] = float(len(present) - 1) if k == positive else 1.0
  c.input.update(batch_size=arg.batch, eval_batch_size=100, num_threads=2,
                 sampler=dict(name="class_balanced", class_weights=tuple(weights)))
  # No weight decay on latent binary kernels (it would pull them to 0, flipping signs at random).
  c.optimizer.update(name="adamw", lr=2e-3, weight_decay=1e-4, grad_clip_norm=1.0,
                     no_decay_regex="latent_kernel" if arg.arch.startswith("binary") else "$^")
  c.schedule.update(name="warmup_cosine", warmup_steps=100)
  c.num_train_steps = arg.steps
  c.log_every_steps = 50
  c.evals = config_utils.evals("binary", every_steps=200)
  c.checkpoint.every_steps = 500
  return c


def get_config(arg=None):
  arg = config_utils.parse_arg(merge_landmark_lists(arg), **DEFAULTS, data="exact")
  config_utils.check_choice(arg, "data", tuple(DATA))
  c = bank_config(arg, class_names=synthetic.CLASS_NAMES)
  c.dataset.update(name=f"synthetic_expressions/{DATA[arg.data]}", image_size=48)
  if arg.runlocal:
    config_utils.apply_runlocal(c)
  return c
