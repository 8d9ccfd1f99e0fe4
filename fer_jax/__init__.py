"""fer_jax: facial emotion recognition in JAX / Flax Linen."""

from fer_jax.registry import get_model, list_models, register

__version__ = "0.1.0"
__all__ = ["get_model", "list_models", "register", "__version__"]
