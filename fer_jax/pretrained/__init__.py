"""Trained FER models shipped inside the package: no network, no unpickling.

    >>> from fer_jax import pretrained
    >>> pretrained.list_pretrained()
    ['fer2013_resnet_s']
    >>> model = pretrained.load('fer2013_resnet_s')
    >>> model.class_names
    ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
    >>> probs = model.predict_proba(faces)  # uint8 (N, H, W) grey or (N, H, W, 1 | 3); float32 (N, 7)

Each model is two files in ``fer_jax/pretrained/weights/``: ``<name>.msgpack`` (Flax msgpack of
``{'params', 'batch_stats'}``: plain arrays, no code is run to read it) and ``<name>.json`` (the model
spec, the test-time preprocessing, the class names, how it was trained and what it scored, and the
SHA-256 of the msgpack file). ``load`` also takes the path of such a ``.json`` file, e.g. one written by
``python -m fer_jax.pretrained.package`` from a training work dir.

Weights trained on FER2013 inherit its terms: non-commercial research use only.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax.models import composite, convert
from fer_jax.train.preprocess import preprocess_images

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
FORMAT_VERSION = 1
TEST_CROPS = ("ten", "flip", "center", "none")


class PretrainedFileError(ValueError):
  """A model file is missing, corrupt, or does not fit the model its metadata describes."""


def list_pretrained() -> List[str]:
  """Names of the models shipped in the package (``load`` accepts each)."""
  if not os.path.isdir(WEIGHTS_DIR):
    return []
  return sorted(f[:-5] for f in os.listdir(WEIGHTS_DIR)
                if f.endswith(".json") and os.path.exists(os.path.join(WEIGHTS_DIR, f[:-5] + ".msgpack")))


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _resolve(name_or_path: str) -> Tuple[str, str]:
  """-> (metadata .json path, weights .msgpack path)."""
  if name_or_path.endswith(".json") or os.sep in name_or_path:
    meta = name_or_path if name_or_path.endswith(".json") else name_or_path + ".json"
    if not os.path.exists(meta):
      raise FileNotFoundError(f"No model metadata file {meta!r}")
  else:
    names = list_pretrained()
    if name_or_path not in names:
      raise KeyError(f"No shipped model named {name_or_path!r}; shipped: {names} "
                     "(or pass the path of a <name>.json written by fer_jax.pretrained.package)")
    meta = os.path.join(WEIGHTS_DIR, name_or_path + ".json")
  weights = meta[:-5] + ".msgpack"
  if not os.path.exists(weights):
    raise FileNotFoundError(f"Model metadata {meta} has no weights file beside it: {weights} is missing")
  return meta, weights


def read_variables(weights_path: str, expected_sha256: Optional[str] = None) -> Dict[str, Any]:
  """A Flax msgpack file -> nested dict of NumPy arrays (msgpack holds data only: nothing is executed)."""
  if expected_sha256 is not None:
    got = sha256_file(weights_path)
    if got != expected_sha256:
      raise PretrainedFileError(f"{weights_path} has SHA-256 {got}, but its metadata says {expected_sha256}: "
                                "the file is corrupt or was replaced; reinstall the package or re-export it")
  with open(weights_path, "rb") as f:
    data = f.read()
  try:
    tree = flax.serialization.msgpack_restore(data)
  except Exception as e:  # noqa: BLE001 -- msgpack raises several kinds on bad bytes
    raise PretrainedFileError(f"{weights_path} is not a Flax msgpack weights file "
                              f"({type(e).__name__}: {e})") from e
  if not isinstance(tree, dict) or "params" not in tree:
    raise PretrainedFileError(f"{weights_path} holds no 'params' tree")
  return tree


def check_faces(faces: Any, name: str = "predict_proba") -> np.ndarray:
  """uint8 (N, H, W) or (N, H, W, C), C in {1, 3}, N >= 1 -> (N, H, W, C) uint8; errors start with ``name``."""
  want = "a uint8 array of face crops, shape (N, H, W) grey or (N, H, W, 1 | 3), N >= 1"
  if not isinstance(faces, (np.ndarray, jax.Array)):
    faces = np.asarray(faces)
  if faces.dtype != np.uint8:
    raise TypeError(f"{name} got dtype {faces.dtype} with shape {tuple(faces.shape)}; expected {want} "
                    "(pixel values 0..255; convert float images with (x * 255).round().astype(np.uint8))")
  if faces.ndim == 3:
    faces = faces[..., None]
  if faces.ndim != 4:
    raise ValueError(f"{name} got shape {tuple(faces.shape)} ({faces.ndim}-D); expected {want}")
  if faces.shape[-1] not in (1, 3):
    raise ValueError(f"{name} got shape {tuple(faces.shape)}: {faces.shape[-1]} channels; expected {want}")
  if faces.shape[0] == 0:
    raise ValueError(f"{name} got an empty batch, shape {tuple(faces.shape)}; expected {want}")
  if faces.shape[1] < 1 or faces.shape[2] < 1:
    raise ValueError(f"{name} got shape {tuple(faces.shape)} with an empty image side; expected {want}")
  return np.asarray(faces)


def to_grey(x: jax.Array) -> jax.Array:
  """RGB -> luma with ITU-R 601-2 weights (PIL's ``convert('L')``): (..., 3) -> (..., 1)."""
  w = jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
  return jnp.sum(x.astype(jnp.float32) * w, axis=-1, keepdims=True)


def test_crops_fn(x: jax.Array, crop: int, mode: str) -> jax.Array:
  """(B, S, S, C) -> (B, K, crop, crop, C): 'center' (K = 1, as pipeline.center_crop), 'flip' (K = 2: the
  centre crop and its mirror) or 'ten' (K = 10: tl, tr, bl, br, centre, then the same of the mirrored
  image, as pipeline.ten_crop)."""
  s = x.shape[1]
  c0 = int(round((s - crop) / 2.0))
  def five(y):
    return [y[:, :crop, :crop], y[:, :crop, s - crop:], y[:, s - crop:, :crop], y[:, s - crop:, s - crop:],
            y[:, c0:c0 + crop, c0:c0 + crop]]
  if mode == "center":
    return five(x)[4][:, None]
  if mode == "flip":
    centre = five(x)[4]
    return jnp.stack([centre, centre[:, :, ::-1]], axis=1)
  return jnp.stack(five(x) + five(x[:, :, ::-1]), axis=1)


class Predictor:
  """A trained classifier as a function of face crops: ``predict_proba(faces) -> (N, classes)``.

  Test-time preprocessing follows the training run (``meta['input']``): grey or RGB as trained (RGB is
  converted to luma for a grey model), bilinear resize to ``image_size`` (a no-op for 48-px FER2013
  faces), then ``crop``-px test crops whose logits are averaged ('ten' = the ten-crop of the README's
  accuracy, 'flip' = centre crop and its mirror, 'center' = one crop, 10x faster), then softmax. Jit-compiled once per input shape; batches
  of ``batch_size`` (the last one padded) run on JAX's default device.
  """

  def __init__(self, meta: Mapping[str, Any], variables: Mapping[str, Any]):
    self.meta = dict(meta)
    self.name = str(meta.get("name", "model"))
    self.class_names: Tuple[str, ...] = tuple(meta["class_names"])
    inp = meta["input"]
    self.image_size, self.crop = int(inp["image_size"]), int(inp["crop"])
    self.channels = int(inp["channels"])
    self._input_cfg = ml_collections.ConfigDict(dict(input=dict(
        per_image_standardization=bool(inp.get("per_image_standardization", False)),
        channels=self.channels, mean=inp.get("mean"), std=inp.get("std"))))
    self.model = composite.build_model(meta["model"])
    self.variables = jax.tree.map(jnp.asarray, dict(variables))
    self._fns: Dict[Tuple[str, Tuple[int, ...]], Any] = {}

  @property
  def default_test_crops(self) -> str:
    return str(self.meta["input"].get("test_crops", "center"))

  def forward_outputs(self, variables, x: jax.Array, test_crops: str = "center") -> Dict[str, jax.Array]:
    """Every per-example output of the model (``logits``, and e.g. ``valence_arousal`` for affect heads),
    float32 and averaged over the test crops: float (B, image_size, image_size, channels) pixels in
    [0, 255] (already resized and in the model's channels) -> test crops -> normalisation -> model."""
    if test_crops not in TEST_CROPS:
      raise ValueError(f"test_crops={test_crops!r}; expected one of {TEST_CROPS}")
    if test_crops == "none" or self.crop >= self.image_size:
      crops = x[:, None]
    else:
      crops = test_crops_fn(x, self.crop, test_crops)
    b, k = crops.shape[:2]
    flat = preprocess_images(crops.reshape((b * k,) + crops.shape[2:]), self._input_cfg)
    out = self.model.apply(variables, train=False, image=flat)
    return {name: v.astype(jnp.float32).reshape((b, k) + v.shape[1:]).mean(1) for name, v in out.items()
            if jnp.ndim(v) >= 1 and v.shape[0] == b * k}

  def forward(self, variables, x: jax.Array, test_crops: str = "center", output: str = "probs") -> jax.Array:
    """The differentiable model path (:meth:`forward_outputs`) -> the crops' mean logits (``output='logits'``)
    or their softmax (``'probs'``), float32 (B, classes). Pure and jit-able: what ``predict_proba`` runs after
    its resize and rounding, and what ``fer_jax.explain`` differentiates and ``fer_jax.export`` converts."""
    if output not in ("probs", "logits"):
      raise ValueError(f"output={output!r}; expected 'probs' or 'logits'")
    logits = self.forward_outputs(variables, x, test_crops)["logits"]
    return logits if output == "logits" else jax.nn.softmax(logits, axis=-1)

  def to_model_input(self, faces: jax.Array) -> jax.Array:
    """uint8 (B, H, W, 1 | 3) faces -> float (B, image_size, image_size, channels) on the uint8 grid: luma for
    a grey model, bilinear antialiased resize, rounded as PIL rounds (what the training pipeline saw)."""
    x = faces.astype(jnp.float32)
    if x.shape[-1] == 3 and self.channels == 1:
      x = to_grey(x)
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[-1]), "linear",
                           antialias=True)
    return jnp.clip(jnp.round(x), 0, 255)

  def _logits_fn(self, mode: str):
    return jax.jit(lambda variables, faces: self.forward(variables, self.to_model_input(faces), mode))

  def predict_proba(self, faces: Any, *, test_crops: Optional[str] = None, batch_size: int = 256) -> np.ndarray:
    """Class probabilities, float32 (N, len(class_names)), rows summing to 1.

    Args:
      faces: uint8 face crops, (N, H, W) grey or (N, H, W, 1 | 3); any H and W.
      test_crops: 'ten' | 'flip' (centre crop + mirror) | 'center' | 'none' (whole image); default: as
        the model was evaluated.
      batch_size: faces per device call (the last batch is padded to it).
    """
    faces = check_faces(faces)
    mode = test_crops or self.default_test_crops
    if mode not in TEST_CROPS:
      raise ValueError(f"test_crops={mode!r}; expected one of {TEST_CROPS}")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
    n = faces.shape[0]
    bs = min(batch_size, n)
    key = (mode, (bs,) + faces.shape[1:])
    if key not in self._fns:
      self._fns[key] = self._logits_fn(mode)
    fn = self._fns[key]
    out = []
    for start in range(0, n, bs):
      chunk = faces[start:start + bs]
      if chunk.shape[0] < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - chunk.shape[0],) + chunk.shape[1:], np.uint8)])
      out.append(np.asarray(fn(self.variables, chunk))[:min(bs, n - start)])
    return np.concatenate(out).astype(np.float32)

  def predict(self, faces: Any, **kwargs) -> np.ndarray:
    """Class indices (N,) int64 into ``class_names``."""
    return np.argmax(self.predict_proba(faces, **kwargs), axis=-1)


def load(name_or_path: str) -> Predictor:
  """A shipped model by name (``list_pretrained()``), or a ``<name>.json`` path with its ``.msgpack``."""
  meta_path, weights_path = _resolve(name_or_path)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise PretrainedFileError(f"{meta_path} is not valid JSON: {e}") from e
  missing = [k for k in ("model", "input", "class_names", "sha256") if k not in meta]
  if missing:
    raise PretrainedFileError(f"{meta_path} lacks the fields {missing}")
  if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
    raise PretrainedFileError(f"{meta_path} has format_version {meta['format_version']}; this fer_jax reads "
                              f"<= {FORMAT_VERSION}: upgrade fer_jax")
  variables = read_variables(weights_path, meta["sha256"])
  predictor = Predictor(meta, {k: variables[k] for k in ("params", "batch_stats") if k in variables})
  inp = meta["input"]
  dummy = jnp.zeros((1, inp["crop"], inp["crop"], inp["channels"]), jnp.float32)
  expected = jax.eval_shape(lambda: predictor.model.init(jax.random.key(0), train=False, image=dummy))
  try:
    convert.check_tree_against(predictor.variables, dict(expected), f"The arrays of {weights_path}")
  except ValueError as e:
    raise PretrainedFileError(f"{e}\n(Is {meta_path} the metadata written with these weights?)") from e
  return predictor


def default_model() -> str:
  """The shipped model with the best recorded validation accuracy (the CLI's default ``--model``)."""
  names = list_pretrained()
  if not names:
    raise PretrainedFileError(f"No shipped model in {WEIGHTS_DIR}: pass a <name>.json path or a --workdir")
  def accuracy(name):
    with open(os.path.join(WEIGHTS_DIR, name + ".json")) as f:
      return (json.load(f).get("results") or {}).get("accuracy") or 0.0
  return max(names, key=accuracy)


def from_workdir(workdir: str, step: Optional[int] = None) -> Predictor:
  """A ``Predictor`` of a training work dir's checkpoint (latest, or ``step``), as ``package`` would ship it."""
  from fer_jax.pretrained import from_run  # pylint: disable=import-outside-toplevel  (imports the trainer)
  from fer_jax.train import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir!r} is not a directory")
  config, exp, variables, step = from_run.variables_from_workdir(workdir, step)
  meta = from_run.build_meta(config, exp, step, os.path.basename(os.path.normpath(workdir)), "",
                            workdir_lib.read_metrics(workdir))
  return Predictor(meta, variables)


def resolve(model: Optional[str] = None, workdir: Optional[str] = None, step: Optional[int] = None) -> Predictor:
  """The model a command runs: ``workdir``'s checkpoint, else ``model`` (a shipped name or a .json path),
  else :func:`default_model`. Giving both is an error."""
  if model and workdir:
    raise ValueError(f"Give a model name ({model!r}) or a work dir ({workdir!r}), not both")
  if workdir:
    return from_workdir(workdir, step)
  return load(model or default_model())


def save(path_prefix: str, meta: Mapping[str, Any], variables: Mapping[str, Any]) -> Tuple[str, str]:
  """Writes ``<prefix>.msgpack`` and ``<prefix>.json`` (adds sha256 and format_version); returns both paths.

  Written to temporary names first and renamed, so an interrupted save leaves no half file."""
  tree = {k: jax.tree.map(lambda a: np.asarray(a), flax.core.unfreeze(v)) for k, v in variables.items()}
  weights, meta_path = path_prefix + ".msgpack", path_prefix + ".json"
  os.makedirs(os.path.dirname(os.path.abspath(weights)), exist_ok=True)
  with open(weights + ".tmp", "wb") as f:
    f.write(flax.serialization.msgpack_serialize(tree))
  meta = dict(meta, sha256=sha256_file(weights + ".tmp"), format_version=FORMAT_VERSION)
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  os.replace(weights + ".tmp", weights)
  os.replace(meta_path + ".tmp", meta_path)
  return weights, meta_path


__all__: Sequence[str] = ("list_pretrained", "load", "resolve", "from_workdir", "default_model", "Predictor", "save", "PretrainedFileError")
