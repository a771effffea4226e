"""SIGTERM (TPU/GCE preemption, SLURM, `kill`) -> checkpoint at the next step boundary, exit 75.

A single process watches for SIGTERM itself. Several processes use jax's preemption sync
service (started by jax.distributed.initialize), which spreads the notice to every host
and names one step at which all of them stop, so their checkpoints agree.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

# What launch scripts read as "preempted after saving a checkpoint: start me again".
RESUME_EXIT_CODE = 75


class Preempted(Exception):
    """Raised by the train loop after it saved the checkpoint a preemption asked for."""

    def __init__(self, step: int):
        super().__init__(f"preempted: saved a checkpoint at step {step}; run the same command to resume")
        self.step = step


class PreemptionWatcher:
    """Answers, once per step, whether this step is where the run must save and stop."""

    def __init__(self):
        self._requested = threading.Event()
        self._multi_host = jax.process_count() > 1
        if not self._multi_host and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: self._requested.set())

    def should_stop(self, step: int) -> bool:
        if self._multi_host:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()
