"""Model families. Importing this package registers every built-in model."""

from fer_jax.models import convnext  # noqa: F401
