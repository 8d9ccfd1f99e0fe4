"""TFDS builders of fer_jax; importing this package registers every dataset below."""

from tfds_builders import aff_wild  # noqa: F401
from tfds_builders import affectnet  # noqa: F401
from tfds_builders import afew_va  # noqa: F401
from tfds_builders import ckplus  # noqa: F401
from tfds_builders import emotic  # noqa: F401
from tfds_builders import fer2013  # noqa: F401
from tfds_builders import synthetic_expressions  # noqa: F401
