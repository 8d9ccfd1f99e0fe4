"""The evaluator contract and ``config.evals`` parsing."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping

import jax
import numpy as np

from fer_jax.registry import EVALUATORS

PredictFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]


class Evaluator:
  """One named evaluation: ``run`` streams a dataset, the other methods present the result.

  ``predict_fn(host_batch) -> host outputs`` is the task's jitted ``predict`` on the global batch.
  Subclasses implement ``run``, ``scalars``, ``to_json``, ``summary`` and optionally ``report`` /
  ``plots``.
  """

  def __init__(self, task, name: str, **options: Any):
    self.task, self.name = task, name
    if options:
      raise ValueError(f"config.evals.{name}: unknown option(s) {sorted(options)} for evaluator "
                       f"{type(self).__name__}")

  def run(self, predict_fn: PredictFn, dataset: Iterable[Dict[str, np.ndarray]]) -> Dict[str, Any]:
    raise NotImplementedError

  def scalars(self, result: Dict[str, Any]) -> Dict[str, float]:
    raise NotImplementedError

  def to_json(self, result: Dict[str, Any]) -> Dict[str, Any]:
    raise NotImplementedError

  def summary(self, result: Dict[str, Any]) -> str:
    raise NotImplementedError

  def report(self, result: Dict[str, Any]) -> str:
    return self.summary(result)

  def plots(self, result: Dict[str, Any], workdir: str, prefix: str, step: int) -> Dict[str, np.ndarray]:
    """Saves PNGs in ``workdir``; returns {tag: image (H, W, 3) uint8} for TensorBoard."""
    return {}

  def write(self, writer, workdir: str, prefix: str, step: int, result: Dict[str, Any],
            plot: bool) -> None:
    writer.write_scalars(step, {f"{prefix}/{k}": float(v) for k, v in self.scalars(result).items()})
    if plot and jax.process_index() == 0:
      images = self.plots(result, workdir, prefix, step)
      if images:
        writer.write_images(step, {f"{prefix}/{k}": v[None] for k, v in images.items()})


@dataclasses.dataclass
class EvalSpec:
  """One entry of ``config.evals``."""

  name: str
  type: str
  split: str
  every_steps: int = 0
  final: bool = True
  optional: bool = False  # a split the dataset may lack (e.g. FER2013's PrivateTest): skipped then
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


SPEC_FIELDS = ("type", "split", "every_steps", "final", "optional")


def parse_evals(evals_config: Mapping[str, Any]) -> List[EvalSpec]:
  specs = []
  for name, spec in dict(evals_config or {}).items():
    spec = dict(spec)
    for required in ("type", "split"):
      if not spec.get(required):
        raise ValueError(f"config.evals.{name} has no {required!r}; e.g. "
                         "evals.val = dict(type='classification', split='validation')")
    EVALUATORS.get(spec["type"])  # unknown type: KeyError listing the known ones
    options = {k: v for k, v in spec.items() if k not in SPEC_FIELDS}
    specs.append(EvalSpec(name=name, type=spec["type"], split=spec["split"],
                          every_steps=int(spec.get("every_steps", 0) or 0),
                          final=bool(spec.get("final", True)), optional=bool(spec.get("optional", False)),
                          options=options))
  return specs


def build_evaluators(task, evals_config: Mapping[str, Any]) -> List[tuple]:
  """[(EvalSpec, Evaluator)] for ``config.evals``."""
  return [(s, EVALUATORS.get(s.type)(task, s.name, **dict(s.options))) for s in parse_evals(evals_config)]


def png_path(workdir: str, stem: str, prefix: str) -> str:
  return os.path.join(workdir, f"{stem}_{prefix}.png")
