"""Helpers for parity tests and benchmarks against the PyTorch originals (optional torch / timm)."""

from __future__ import annotations

import importlib
import sys
import types
import textwrap
from typing import Any, Tuple

# Prepended to a ``python -c`` program: ``import tensorflow`` then raises ModuleNotFoundError exactly as
# if it were not installed (``importlib.util.find_spec('tensorflow')`` returns None, as etils and flax
# expect; a meta-path finder that raises, or ``sys.modules['tensorflow'] = None``, would break them).
HIDE_TENSORFLOW = textwrap.dedent("""\
    import importlib.machinery
    import sys

    class _HideTensorFlow(importlib.machinery.PathFinder):
      @classmethod
      def find_spec(cls, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
          return None
        return super().find_spec(name, path, target)

    sys.meta_path[:] = [_HideTensorFlow if f is importlib.machinery.PathFinder else f
                        for f in sys.meta_path]
    """)


def import_timm() -> Tuple[Any, Any]:
  """Returns ``(torch, timm)``; raises ``ImportError`` saying why when they cannot be used.

  timm imports torchvision. The only torchvision wheel in the package registry for torch 2.13.0 is a
  CUDA build whose compiled ops (nms, roi_align, ...) cannot load beside CPU torch, and importing it
  fails while registering fake / autograd kernels for those ops. ConvNeXt (and every model we
  compare with) uses none of them, so on that failure the two registration modules are replaced by
  empty ones and the import retried. The replacement is process-wide.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"torch is not installed ({e}); run `make install-reference`") from e
  try:
    import timm  # pylint: disable=import-outside-toplevel
    return torch, timm
  except ModuleNotFoundError as e:
    raise ImportError(f"timm cannot import ({e}); run `make install-reference`") from e
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
  for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules[name] = types.ModuleType(name)
  for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")
               and m not in ("torchvision._meta_registrations", "torchvision._autograd_registrations")]:
    del sys.modules[name]
  try:
    return torch, importlib.import_module("timm")
  except Exception as e:  # pylint: disable=broad-except
    raise ImportError(f"timm cannot import even with torchvision's op registrations stubbed: {e!r}") from e


RTOL64 = 1e-9  # float64 parity: relative to the largest reference magnitude (rounding is ~1e-16)
U32 = 2.0 ** -24  # float32 unit roundoff: |fl32(a) - a| <= U32 |a|


def random_variables(shapes: Any, seed: int = 0) -> Any:
  """Random variables of a model's shapes (``jax.eval_shape`` of its init: no init compile), so that every
  term of a forward pass is exercised: kernels N(0, 1 / fan_in), BatchNorm variances and scales U[0.5, 1.5],
  means and biases N(0, 0.3^2). Leaves are named by the last key of their path."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = path[-1].key
    if name in ("var", "scale"):
      value = rng.uniform(0.5, 1.5, a.shape)
    elif name in ("mean", "bias"):
      value = rng.normal(0, 0.3, a.shape)
    else:
      value = rng.normal(0, 1 / np.sqrt(np.prod(a.shape[:-1])), a.shape)
    return jnp.asarray(value, a.dtype)

  return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def to_float64(tree: Any) -> Any:
  """Every leaf of ``tree`` as a float64 NumPy array (weights for float64 parity runs)."""
  import jax
  import numpy as np
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def assert_within(got: Any, want: Any, tol: Any, what: str = "") -> float:
  """|got - want| <= tol elementwise (``tol`` broadcast; a bound derived from the computation);
  returns the max abs difference."""
  import numpy as np
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  err = np.abs(got - want)
  excess, scale = (err - tol).max(), np.abs(want).max()
  assert np.all(err <= tol), (f"{what}: max abs diff {err.max():.3g}, exceeds its bound by up to "
                              f"{excess:.3g} (reference max {scale:.3g})")
  return float(err.max())


def fast_depthwise64(model: Any, torch: Any) -> Any:
  """Swaps the forward of every depthwise Conv2d (stride 1, zero padding) in a float64 torch model
  for the same sum written as kernel-tap shifts: torch's CPU float64 depthwise conv is very slow
  (~50 s for ConvNeXt-T at 224 px). Same weights, same math, another float64 summation order;
  each swapped conv is checked against torch's own on a small input. Returns the model."""
  import functools
  F = torch.nn.functional

  def shifted(conv, x):
    kh, kw = conv.kernel_size
    ph, pw = conv.padding
    h, w = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    y = 0.0 if conv.bias is None else conv.bias.view(1, -1, 1, 1)
    for i in range(kh):
      for j in range(kw):
        y = y + conv.weight[:, 0, i, j].view(1, -1, 1, 1) * xp[:, :, i:i + h, j:j + w]
    return y

  for conv in model.modules():
    if (isinstance(conv, torch.nn.Conv2d) and conv.groups > 1
        and conv.groups == conv.in_channels == conv.out_channels):
      assert conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
      assert conv.weight.dtype == torch.float64
      probe = torch.randn(1, conv.in_channels, 9, 11, dtype=torch.float64)
      with torch.no_grad():
        assert torch.allclose(shifted(conv, probe), conv(probe), rtol=0, atol=1e-12)
      conv.forward = functools.partial(shifted, conv)
  return model


def umeyama_reference(src: Any, dst: Any) -> Any:
  """Umeyama (1991) least-squares similarity (Eqs. 38-42) via SVD in NumPy float64: the (2, 3) matrix
  mapping ``src`` points onto ``dst`` (the reference the face-alignment code is tested against)."""
  import numpy as np
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  u, sig, vt = np.linalg.svd(d.T @ s / len(src))
  fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
  r = u @ fix @ vt
  c = np.trace(np.diag(sig) @ fix) / (s ** 2).sum(1).mean()
  return np.concatenate([c * r, (mu_d - c * r @ mu_s)[:, None]], 1)


def timm_to_official_convnext(sd: Any, prefix: str = "") -> dict:
  """A timm ConvNeXt state dict renamed to facebookresearch/ConvNeXt naming (Linear MLP weights),
  written independently of the converter under test; ``prefix`` e.g. 'module.' (DataParallel)."""
  import re
  import numpy as np
  out = {}
  for k, v in sd.items():
    v = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
    k2 = (k.replace("stem.0", "downsample_layers.0.0").replace("stem.1", "downsample_layers.0.1")
          .replace("head.norm", "norm").replace("head.fc", "head").replace("conv_dw", "dwconv")
          .replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2").replace(".blocks.", "."))
    k2 = re.sub(r"stages\.(\d)\.downsample\.(\d)", r"downsample_layers.\1.\2", k2)
    if "pwconv" in k2 and v.ndim == 4:
      v = v[:, :, 0, 0]
    out[prefix + k2] = v
  return out


def randomise_torch_batchnorm(model: Any, torch: Any, seed: int = 0) -> Any:
  """Sets every ``BatchNorm2d``'s affine and running statistics away from the identity (in place; returns
  ``model``): eval-mode BatchNorm at its defaults would hide layout bugs in a parity test."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
  return model
