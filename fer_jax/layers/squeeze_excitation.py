"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, arXiv 1709.01507).

z = GAP(x) (eq. 2), s = sigmoid(W2 relu(W1 z)) (eq. 3), y = x * s (eq. 4), on NHWC inputs. W1: C ->
C // reduction and W2: C // reduction -> C have no biases (as in EmoNeXt's official code); params
``fc1``, ``fc2``, kernels truncated-normal std 0.02 (ConvNeXt's init).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

trunc_normal_init = nn.initializers.truncated_normal(stddev=0.02)


class SqueezeExcitation(nn.Module):
  """Hu et al. 2018: z = GAP(x) (eq. 2), s = sigmoid(W2 relu(W1 z)) (eq. 3), x * s (eq. 4).

  W1: C -> C // reduction, W2: C // reduction -> C, both without bias (params ``fc1``, ``fc2``).
  """

  reduction: int = 16
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if int(self.reduction) < 1:
      raise ValueError(f"se_reduction must be >= 1, got {self.reduction!r}")
    hidden = c // int(self.reduction)
    if hidden < 1:
      raise ValueError(f"SE with {c} channels and reduction {self.reduction} has no hidden units "
                       f"(C // reduction = 0); use se_reduction <= {c}")
    z = jnp.mean(x, axis=(1, 2))
    s = nn.Dense(hidden, use_bias=False, dtype=self.dtype, kernel_init=trunc_normal_init,
                 name="fc1")(z)
    s = nn.Dense(c, use_bias=False, dtype=self.dtype, kernel_init=trunc_normal_init,
                 name="fc2")(nn.relu(s))
    return x * nn.sigmoid(s)[:, None, None, :].astype(x.dtype)
