"""SIGTERM / SIGINT during training: finish the step, save, exit 0 (on one host as on many).

:class:`StopSignals` (a context manager used by ``train_and_evaluate``) replaces the SIGTERM and SIGINT
handlers with one that only records the signal; the training loop asks :meth:`StopSignals.agreed` at every
step boundary, saves a checkpoint (``force=True``), waits for it and returns. A second signal while that
happens ends the process at once (default action of that signal: exit 143 for SIGTERM, 130 for SIGINT).
The previous handlers are restored on exit.

Multi-process runs: every process's flag is combined each step (``process_allgather``) with Orbax's
preemption sync point (``manager.reached_preemption``), so all processes stop at the same step. Where a
non-Python SIGTERM handler is installed (JAX's preemption notifier after ``jax.distributed.initialize``),
SIGTERM is left to it and reaches the loop through ``reached_preemption``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Dict, Optional

import jax
import numpy as np
from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  def __init__(self):
    self.received: Optional[int] = None
    self._previous: Dict[int, object] = {}

  def _handler(self, signum, frame):
    if self.received is not None:
      # Second signal: the user means it. Default action (terminates with that signal).
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      os._exit(128 + signum)  # not reached unless the default action is ignored
    self.received = signum
    logging.warning("Received %s: saving a checkpoint at the end of this step, then stopping "
                    "(send it again to stop at once, without saving).", signal.Signals(signum).name)

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("train_and_evaluate runs outside the main thread: SIGTERM/SIGINT will not save.")
      return self
    for sig in SIGNALS:
      current = signal.getsignal(sig)
      if current is None and jax.process_count() > 1:
        continue  # a handler installed outside Python (JAX's preemption notifier): keep it
      self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    self._previous.clear()

  def agreed(self, step: int, manager) -> bool:
    """True on every process when any process got a signal (or Orbax reached a preemption sync point)."""
    local = self.received is not None
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return bool(np.any(flags)) or bool(manager.reached_preemption(step))


def preempted_message(step: int, checkpoint_dir: str) -> str:
  return (f"Preempted at step {step}: saved checkpoint {os.path.join(str(checkpoint_dir), str(step))}; "
          "rerun the same command to resume.")
