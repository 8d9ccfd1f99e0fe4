"""Registered tasks (``config.task``). Importing this package registers the built-in ones."""

from fer_jax.train.tasks import action_units  # noqa: F401
from fer_jax.train.tasks import affect  # noqa: F401
from fer_jax.train.tasks import classification  # noqa: F401
from fer_jax.train.tasks import emotic  # noqa: F401
from fer_jax.train.tasks import landmark_sequence  # noqa: F401
from fer_jax.train.tasks.base import Task  # noqa: F401
