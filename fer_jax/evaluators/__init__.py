"""Evaluators, apart from tasks and the trainer (big_vision's ``config.evals``).

``config.evals = {name: dict(type=<registered evaluator>, split=..., every_steps=N, final=True,
**options)}``: the trainer runs each on its split every ``every_steps`` (0: only at the end, when
``final``) and writes what it returns (metrics.json, TensorBoard, PNGs). Each evaluator streams the
task's ``predict`` outputs through ONE metric implementation, the clu ``Metric`` classes of
``fer_jax.metrics``. Importing this package registers the built-in evaluators.
"""

from fer_jax.evaluators import action_units  # noqa: F401
from fer_jax.evaluators import affect  # noqa: F401
from fer_jax.evaluators import binary  # noqa: F401
from fer_jax.evaluators import classification  # noqa: F401
from fer_jax.evaluators import emotic  # noqa: F401
from fer_jax.evaluators import multilabel  # noqa: F401
from fer_jax.evaluators.base import Evaluator, build_evaluators  # noqa: F401
