"""Model families. Importing this package registers every built-in model."""

from fer_jax.models import convnext  # noqa: F401
from fer_jax.models import inception_resnet  # noqa: F401
from fer_jax.models import emonext  # noqa: F401
from fer_jax.models import resnet  # noqa: F401
from fer_jax.models import efficientnet  # noqa: F401
from fer_jax.models import resnext  # noqa: F401
from fer_jax.models import iresnet  # noqa: F401
from fer_jax.models import mobilenetv3  # noqa: F401
from fer_jax.models import au_autoencoder  # noqa: F401
from fer_jax.models import landmark_lstm  # noqa: F401
from fer_jax.models import emotic_baseline  # noqa: F401
from fer_jax.models import selinet  # noqa: F401
