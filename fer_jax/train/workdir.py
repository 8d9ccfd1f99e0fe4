"""The work dir's own bookkeeping: a lock against two runs in one dir, the saved config, metrics merging.

* ``<workdir>/.fer_jax.lock``: JSON {host, pid, pid_start, start_time, argv}, created atomically
  (``O_CREAT | O_EXCL``) by process 0 of a training run and removed when it ends (normally, by an
  exception, or on preemption). A lock left by a dead process on this host (or by a pid that now
  belongs to another process) is replaced with a warning; a live one, or one from another host,
  refuses the start with :class:`WorkdirLockedError` naming its owner.
* ``<workdir>/config.json``: the resolved config the checkpoints were made with; a resume compares it
  with the current config (:func:`config_changes`).
* ``metrics.json`` after a resume keeps the earlier runs' train loss log and run list
  (:func:`merge_previous_metrics`).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple

from absl import logging

LOCK_NAME = ".fer_jax.lock"
CONFIG_NAME = "config.json"


class WorkdirLockedError(RuntimeError):
  """Another run holds the work dir."""


def _proc_start_ticks(pid: int) -> Optional[int]:
  """The process start time (clock ticks since boot, /proc/<pid>/stat field 22); None if unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(stat[stat.rindex(")") + 2:].split()[19])
  except (ValueError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


_HELD: set = set()  # lock paths held by this process


def _describe(info: Dict[str, Any]) -> str:
  argv = " ".join(map(str, info.get("argv") or []))
  return (f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('start_time')}"
          + (f", command: {argv}" if argv else ""))


def _stale_reason(info: Dict[str, Any]) -> Optional[str]:
  """Why a lock on this host no longer belongs to a live run (None if its run may still be alive)."""
  pid = info.get("pid")
  if not isinstance(pid, int):
    return "it names no process"
  if pid == os.getpid():
    return None if _lock_key(info) in _HELD else "it names this process, which does not hold it"
  if not _pid_alive(pid):
    return f"process {pid} is no longer running"
  start = _proc_start_ticks(pid)
  if start is not None and info.get("pid_start") is not None and start != info["pid_start"]:
    return f"pid {pid} now belongs to another process"
  return None


def _lock_key(info: Dict[str, Any]) -> Tuple:
  return (info.get("host"), info.get("pid"), info.get("pid_start"), info.get("start_time"))


class WorkdirLock:
  """``with WorkdirLock(workdir):`` -- refuses (WorkdirLockedError) when another run holds ``workdir``."""

  def __init__(self, workdir: str, argv: Optional[List[str]] = None):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.argv = list(sys.argv if argv is None else argv)
    self.info: Optional[Dict[str, Any]] = None

  def acquire(self) -> "WorkdirLock":
    info = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _proc_start_ticks(os.getpid()),
            "start_time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": self.argv}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._handle_existing()
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(info, f)
      self.info = info
      _HELD.add(_lock_key(info))
      return self
    raise WorkdirLockedError(f"Could not take the lock {self.path} (it keeps reappearing).")

  def _handle_existing(self) -> None:
    try:
      with open(self.path) as f:
        info = json.load(f)
      if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    except FileNotFoundError:
      return  # released meanwhile: try again
    except (OSError, ValueError) as e:
      # A half-written lock (the owner died between create and write) or garbage.
      logging.warning("Replacing the unreadable work dir lock %s (%s).", self.path, e)
      self._remove()
      return
    workdir = os.path.dirname(self.path)
    if info.get("host") != socket.gethostname():
      raise WorkdirLockedError(
          f"The work dir {workdir} is in use by another run ({_describe(info)}). That run is on "
          f"another host, so this one cannot check whether it is still running. Wait for it to end or "
          f"use another --workdir; if it is no longer running, delete {self.path} and rerun.")
    reason = _stale_reason(info)
    if reason is None:
      raise WorkdirLockedError(
          f"The work dir {workdir} is in use by another run ({_describe(info)}). Wait for it to end "
          f"(or stop it), or use another --workdir.")
    logging.warning("Replacing the stale work dir lock %s of %s: %s.", self.path, _describe(info), reason)
    self._remove()

  def _remove(self) -> None:
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def release(self) -> None:
    if self.info is None:
      return
    try:
      with open(self.path) as f:
        current = json.load(f)
    except (OSError, ValueError):
      current = None
    if current is not None and _lock_key(current) == _lock_key(self.info):
      self._remove()  # only our own lock: never one a later run took over
    _HELD.discard(_lock_key(self.info))
    self.info = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# ----------------------------------------------------------------------------------------------------
# The saved config.
# ----------------------------------------------------------------------------------------------------

# Fields that cannot change the layout of the saved state (changing them on a resume is only logged).
LAYOUT_SAFE = ("log_every_steps", "evals", "num_train_steps", "num_epochs", "train_time_limit_minutes",
               "checkpoint", "input.num_threads", "input.prefetch", "input.eval_batch_size",
               "dataset.data_dir", "dataset.manual_dir")


def config_to_dict(config) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(d, dict) and d:
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def config_changes(old: Dict[str, Any], new: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
  """[(dotted path, old value, new value)] for every field that differs (missing = '<absent>')."""
  fo, fn = _flatten(old), _flatten(new)
  missing = "<absent>"
  return [(k, fo.get(k, missing), fn.get(k, missing)) for k in sorted(set(fo) | set(fn))
          if fo.get(k, missing) != fn.get(k, missing)]


def format_changes(changes: List[Tuple[str, Any, Any]]) -> str:
  return ", ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in changes)


def is_layout_safe(path: str) -> bool:
  return any(path == p or path.startswith(p + ".") for p in LAYOUT_SAFE)


def read_saved_config(workdir: str) -> Optional[Dict[str, Any]]:
  try:
    with open(os.path.join(workdir, CONFIG_NAME)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_config(workdir: str, config) -> None:
  path = os.path.join(workdir, CONFIG_NAME)
  tmp = path + f".tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# metrics.json across runs.
# ----------------------------------------------------------------------------------------------------

def read_metrics(workdir: str) -> Dict[str, Any]:
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      old = json.load(f)
    return old if isinstance(old, dict) else {}
  except (OSError, ValueError):
    return {}


def merge_previous_metrics(previous: Dict[str, Any], start_step: int, loss_log, run: Dict[str, Any]):
  """(train_loss_log, runs): the earlier runs' loss entries up to ``start_step`` plus this run's (by step),
  and the earlier runs' list plus ``run``."""
  merged = {}
  if start_step > 0:
    for entry in previous.get("train_loss_log") or []:
      try:
        s, v = int(entry[0]), float(entry[1])
      except (TypeError, ValueError, IndexError):
        continue
      if s <= start_step:
        merged[s] = v
  for s, v in loss_log:
    merged[int(s)] = v
  runs = list(previous.get("runs") or []) if start_step > 0 else []
  runs.append(run)
  return [[s, merged[s]] for s in sorted(merged)], runs
