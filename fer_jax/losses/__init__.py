"""Training losses (pure JAX functions returning scalars; differentiable in predictions)."""

from fer_jax.losses.affect import (
    affect_regression_loss,
    batch_ccc,
    ccc_loss,
    emotic_dynamic_weights,
    emotic_weighted_l2_loss,
    mse_loss,
)

__all__ = [
    "affect_regression_loss",
    "batch_ccc",
    "ccc_loss",
    "emotic_dynamic_weights",
    "emotic_weighted_l2_loss",
    "mse_loss",
]
