r"""The Action-Unit module of Di Luzio, Rosato & Panella (arXiv 2407.14865, 2024; PAPERS.md section 4): a
ResNet-50 autoencoder whose code feeds an MLP that regresses action-unit intensities.

Paper says: "an Action-Unit module built on a ResNet-50 autoencoder + MLP" (from the paper's summary; no
layer sizes, decoder, losses or training schedule are given). We chose::

  image (B, H, W, C) -> encoder: ResNeXtBackbone (timm layout, any ``resnext.SIZES`` name; 'resnet50' is
                        the paper's) -> last stage map (B, H/32, W/32, D) and its average pool (B, D)
    code     = the last map flattened (B, h w D): the latent the decoder reads ('flatten', default), or
               its average pool (B, D) ('pool'); optionally Dense(code_dim) of it -> 'features' (the MLP's input)
    decoder  = conv1x1 -> BN -> ReLU (D -> widths[0]), then per width w: 2x nearest upsampling -> conv3x3
               (no bias) -> BN -> ReLU; bilinear resize to (H, W) when the map is not there yet (stride 32
               from a 2x2 map at 44-64 px); conv3x3 (+ bias) to C channels    -> 'reconstruction'
  head 'au_mlp': Dense -> ReLU [-> dropout] per hidden width -> Dense(K) -> sigmoid -> 'au_intensity'

The decoder reads the last feature map, so the code the MLP sees by default is that whole latent: on a
frozen stage-1 autoencoder the MLP reached test mean CC 0.22 from it and 0.09 from its average pool
(synthetic faces, README). The decoder's output is a linear conv, so the target is the
image exactly as the model sees it (after ``input`` preprocessing, e.g. per-image standardisation). Loss
terms: ``au_mse`` (the action-unit task's) plus ``reconstruction`` (registered here: mean squared error of
``reconstruction`` against the batch field ``image``, which the tasks hold preprocessed when the loss
runs). Training, in ``experiments/au_autoencoder_synthetic.py``: ``stage=ae`` (autoencoder only,
reconstruction loss) then ``stage=mlp`` (the MLP on the frozen autoencoder), the two-stage reading of
"autoencoder + MLP"; or ``stage=joint`` (both losses, weighted, end to end).

For CK+ (``tfds_builders/ckplus``: clips of face crops, neutral -> peak, FACS-coded at the peak) the task
``action_units_apex`` (registered here) is the 'action_units' task reading the last frame of ``frames``.

Parameters: ``encoder/`` is a 'resnext' backbone's tree (timm / torchvision ResNet weights import into it:
``load_pretrained``, registered in ``PRETRAINED``), then ``code/`` (when ``code_dim``) and ``decoder/``
(``reduce``, ``reduce_bn``, ``block{i}/{conv,bn}``, ``out``, ``out_bias``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data import pipeline
from fer_jax.layers.conv import Conv2d
from fer_jax.models import resnext
from fer_jax.registry import BACKBONES, HEADS, LOSSES, PRETRAINED, TASKS

DECODER_WIDTHS = (256, 128, 64, 32, 16)  # 5 doublings = the encoder's stride 32
CODES = ("flatten", "pool")


def _bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """The encoder's BatchNorm (torch momentum 0.1, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=resnext.BN_MOMENTUM, epsilon=resnext.BN_EPS,
                      dtype=dtype, name=name)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """(B, h, w, C) -> (B, factor h, factor w, C), each pixel repeated (torch ``Upsample(mode='nearest')``)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def resize_bilinear(x: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Bilinear resize to ``size`` with half-pixel centres and no antialiasing (torch
  ``F.interpolate(mode='bilinear', align_corners=False)``)."""
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear", antialias=False)


class DecoderBlock(nn.Module):
  """2x nearest upsampling -> conv3x3 (pad 1, no bias) -> BatchNorm -> ReLU."""

  features: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv2d(self.features, 3, 1, 1, impl=self.conv_impl, dtype=self.dtype, name="conv")(upsample_nearest(x))
    return nn.relu(_bn(train, self.dtype, "bn")(x))


class Decoder(nn.Module):
  """Feature map (B, h, w, D) -> image (B, H, W, out_channels): reduce, one ``DecoderBlock`` per width,
  bilinear resize to ``size`` if needed, conv3x3 + bias (linear output)."""

  widths: Sequence[int] = DECODER_WIDTHS
  out_channels: int = 3
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, size: Tuple[int, int], train: bool = False) -> jax.Array:
    widths = tuple(self.widths)
    if not widths or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
      raise ValueError(f"au_autoencoder decoder_widths={self.widths!r}; expected a non-empty sequence of "
                       "positive ints (one upsampling block each)")
    conv = functools.partial(Conv2d, impl=self.conv_impl, dtype=self.dtype)
    x = nn.relu(_bn(train, self.dtype, "reduce_bn")(conv(widths[0], 1, name="reduce")(x)))
    for i, w in enumerate(widths):
      x = DecoderBlock(int(w), self.conv_impl, self.dtype, name=f"block{i}")(x, train)
    if tuple(x.shape[1:3]) != tuple(size):
      x = resize_bilinear(x, tuple(size))
    # fan-in init: an output of about the input's scale at the start (fer_jax's He fan-out gives ~10x).
    x = conv(self.out_channels, 3, 1, 1, kernel_init=nn.initializers.lecun_normal(), name="out")(x)
    bias = self.param("out_bias", nn.initializers.zeros, (self.out_channels,), jnp.float32)
    return x + bias.astype(x.dtype)


class AUAutoencoder(nn.Module):
  """Backbone 'au_autoencoder': images -> {'features': the code (B, code_dim, h w D or D), 'reconstruction':
  (B, H, W, C)}, both float32.

  Attributes:
    size: the encoder, a ``resnext.SIZES`` name ('resnet50': the paper's; 'resnet18' for CPU runs), or None
      to give ``block``, ``depths``, ``widths`` (and ``groups``, ``base_width``, ``stem_width``) as for
      'resnext'.
    code: 'flatten' (the last feature map, (B, h w D); the autoencoder's latent) or 'pool' (its average,
      (B, D), the 'resnext' backbone's features).
    code_dim: 0 = that vector is the code; > 0 = a Dense bottleneck of that width on it.
    decoder_widths: channels of the upsampling blocks (one 2x block each).
    zero_init_residual, conv_impl, dtype: as ``resnext.ResNeXtBackbone``.
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  block: Optional[str] = None
  depths: Optional[Sequence[int]] = None
  widths: Optional[Sequence[int]] = None
  groups: Optional[int] = None
  base_width: Optional[int] = None
  stem_width: Optional[int] = None
  code: str = "flatten"
  code_dim: int = 0
  decoder_widths: Sequence[int] = DECODER_WIDTHS
  zero_init_residual: bool = True
  conv_impl: str = "auto"
  dtype: Any = None

  def resolved(self) -> Tuple[Any, ...]:
    """(encoder architecture, code_dim, decoder widths): equal for configs that build the same tree (``code``
    changes what the head reads, not the parameters: a stage-1 model of either code loads into the other)."""
    if self.code not in CODES:
      raise ValueError(f"au_autoencoder code={self.code!r}; expected one of {CODES}")
    arch = resnext.resolve_arch(self.size, self.block, self.depths, self.widths, self.groups, self.base_width,
                                self.stem_width)
    if isinstance(self.code_dim, bool) or not isinstance(self.code_dim, (int, np.integer)) or self.code_dim < 0:
      raise ValueError(f"au_autoencoder code_dim={self.code_dim!r}; expected an int >= 0 (0: no bottleneck)")
    widths = tuple(self.decoder_widths) if isinstance(self.decoder_widths, (list, tuple)) else ()
    if not widths or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
      raise ValueError(f"au_autoencoder decoder_widths={self.decoder_widths!r}; expected a non-empty sequence "
                       "of positive ints (one 2x upsampling block each)")
    return arch, int(self.code_dim), tuple(int(w) for w in widths)

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    arch, code_dim, widths = self.resolved()
    if image.ndim != 4:
      raise ValueError(f"au_autoencoder expects images (B, H, W, C); got shape {image.shape}")
    encoder = resnext.ResNeXtBackbone(**dict(zip(resnext.ARCH_FIELDS, arch)),
                                      zero_init_residual=self.zero_init_residual, conv_impl=self.conv_impl,
                                      dtype=self.dtype, return_feature_map=True, name="encoder")
    enc = encoder(image, train=train)
    fmap = enc["feature_map"]
    code = enc["features"] if self.code == "pool" else fmap.reshape(fmap.shape[0], -1).astype(jnp.float32)
    if code_dim:
      code = nn.Dense(code_dim, dtype=self.dtype, name="code")(code).astype(jnp.float32)
    recon = Decoder(widths, image.shape[-1], self.conv_impl, self.dtype, name="decoder")(
        fmap, image.shape[1:3], train)
    return {"features": code.astype(jnp.float32), "reconstruction": recon.astype(jnp.float32)}


BACKBONES.register("au_autoencoder", AUAutoencoder)


@HEADS.register("au_mlp")
class AUMLPHead(nn.Module):
  """The AU module's MLP: per ``hidden`` width Dense -> ReLU [-> dropout], then Dense(num_outputs) ->
  sigmoid -> ``au_intensity`` (K intensities in [0, 1]); paper says "MLP", we chose one hidden layer of
  256 by default."""

  num_outputs: int
  hidden: Sequence[int] = (256,)
  dropout_rate: float = 0.0
  output: str = "au_intensity"
  dtype: Any = None

  @nn.compact
  def __call__(self, outputs: Mapping[str, jax.Array], *, train: bool = False) -> Dict[str, jax.Array]:
    if not isinstance(self.num_outputs, (int, np.integer)) or self.num_outputs < 1:
      raise ValueError(f"au_mlp head num_outputs must be an int >= 1, got {self.num_outputs!r}")
    if not all(isinstance(h, (int, np.integer)) and h >= 1 for h in self.hidden):
      raise ValueError(f"au_mlp head hidden={self.hidden!r}; expected positive ints (may be empty)")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"au_mlp head dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    if "features" not in outputs:
      raise KeyError(f"A head needs the backbone output 'features'; got {sorted(outputs)}")
    x = outputs["features"]
    x = x.astype(self.dtype) if self.dtype is not None else x
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(int(h), dtype=self.dtype, name=f"hidden{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    y = nn.Dense(self.num_outputs, dtype=self.dtype, name="out")(x)
    return {self.output: jax.nn.sigmoid(y.astype(jnp.float32))}


@LOSSES.register("reconstruction")
def reconstruction_term(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
                        prediction: str = "reconstruction", target: str = "image") -> jax.Array:
  """mean_{b, h, w, c} (r - x)^2: the model output ``reconstruction`` against the batch field ``image``
  (preprocessed by the task before the loss runs, so the target is the model's own input)."""
  if prediction not in outputs:
    raise KeyError(f"loss term 'reconstruction' needs the model output {prediction!r} (backbone "
                   f"'au_autoencoder'); the model outputs are {sorted(outputs)}")
  if target not in batch:
    raise KeyError(f"loss term 'reconstruction' needs the batch field {target!r}; the batch fields are "
                   f"{sorted(batch)}")
  r, x = outputs[prediction], batch[target]
  if tuple(r.shape) != tuple(x.shape):
    raise ValueError(f"loss term 'reconstruction': the output {prediction!r} has shape {tuple(r.shape)}, the "
                     f"batch field {target!r} {tuple(x.shape)}; they must be equal")
  return jnp.mean(jnp.square(r.astype(jnp.float32) - x.astype(jnp.float32)))


# ----------------------------------------------------------------------------- pretrained weights


def _fresh_stats(params: Mapping[str, Any]) -> Dict[str, Any]:
  """BatchNorm statistics at their init values (mean 0, var 1) for every BN (a 'scale' leaf) of ``params``."""
  out = {}
  for k, v in params.items():
    if hasattr(v, "items"):
      if "scale" in v:
        shape = np.shape(v["scale"])
        out[k] = {"mean": np.zeros(shape, np.float32), "var": np.ones(shape, np.float32)}
      else:
        sub = _fresh_stats(v)
        if sub:
          out[k] = sub
  return out


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'au_autoencoder' -> ``convert.BackboneVariables`` (float32 NumPy).

  ``weights``: the ``{'params', 'batch_stats'}`` of a whole 'au_autoencoder' backbone (a stage-1 model
  written by ``fer_jax.pretrained.package``; every tensor replaced), or a timm / torchvision ResNet state
  dict or 'resnext' backbone variables (the encoder only; code and decoder keep ``params`` /
  ``batch_stats``, the fresh values).

  Raises:
    ValueError naming every missing, unexpected and mis-shaped tensor.
  """
  from fer_jax.models import convert
  stats = dict(batch_stats) if batch_stats is not None else _fresh_stats(params)
  ours = hasattr(weights, "keys") and "params" in weights and hasattr(weights["params"], "keys")
  if ours and "encoder" in weights["params"]:
    got = {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), dict(weights["params"])),
           "batch_stats": jax.tree.map(lambda a: np.asarray(a, np.float32), dict(weights.get("batch_stats", {})))}
    target = {"params": params, "batch_stats": _fresh_stats(params)}
    convert.check_tree_against(got, target, "au_autoencoder weights")
    return convert.BackboneVariables(params=got["params"], batch_stats=got["batch_stats"])
  encoder = resnext.load_pretrained(params["encoder"], weights)
  new_params = {k: jax.tree.map(lambda a: np.asarray(a, np.float32), v) for k, v in params.items()}
  new_params["encoder"] = encoder.params
  new_stats = {k: jax.tree.map(lambda a: np.asarray(a, np.float32), v) for k, v in stats.items()}
  new_stats["encoder"] = encoder.batch_stats
  return convert.BackboneVariables(params=new_params, batch_stats=new_stats)


PRETRAINED.register("au_autoencoder", load_pretrained)


# ----------------------------------------------------------------------------- CK+: the apex frame


@dataclasses.dataclass(frozen=True)
class LastFrameField(pipeline.Field):
  """An 'image' field read from the last frame of a clip record (T, H, W, C): only that frame is resized,
  augmented and batched."""

  def read(self, element: Dict[str, Any], aug: pipeline.AugmentConfig, rng) -> np.ndarray:
    if self.key not in element:
      raise KeyError(f"Record has no field {self.key!r}; it has {sorted(element)}")
    frames = np.asarray(element[self.key])
    if frames.ndim != 4:  # check_frames would read an (H, W, 1) image as H frames of (W, 1)
      raise ValueError(f"Record field {self.key!r} has shape {frames.shape}; expected a clip (T, H, W, C) whose "
                       "last frame is the apex")
    return super().read({self.key: pipeline.check_frames(frames, self.key, clip=True)[-1]}, aug, rng)


@functools.lru_cache(maxsize=None)
def _apex_task_class():
  # Imported here: the task modules import fer_jax.models, which imports this file.
  from fer_jax.train.tasks.action_units import ActionUnitTask

  class ActionUnitApexTask(ActionUnitTask):
    """'action_units' on clip records whose last frame is the expression's apex (CK+'s ``frames``,
    neutral -> peak, FACS-coded at the peak): ``dataset.image_key`` names the clip field."""

    name = "action_units_apex"

    def fields(self) -> Dict[str, pipeline.Field]:
      fields = dict(super().fields())
      fields["image"] = LastFrameField(fields["image"].key, "image")
      return fields

  return ActionUnitApexTask


def action_units_apex_task(config):
  """Task 'action_units_apex' (the AU module on CK+): the 'action_units' task, image = the apex frame."""
  return _apex_task_class()(config)


TASKS.register("action_units_apex", action_units_apex_task)
