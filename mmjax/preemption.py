"""SIGTERM (TPU/GCE preemption, SLURM, `kill`) and Ctrl-C: stop cleanly, wherever they land.

In the loop, SIGTERM makes the run save at the next step boundary and exit 75 (launch
scripts then start it again); Ctrl-C (SIGINT) does the same and exits 130. Before the loop
(parsing, restore, compile) nothing new is there to save: the signal raises `Interrupted`
at once, the teardown waits for Orbax, and the run exits 75 or 130 with one line. The
handlers are installed first thing by `mmjax.train`'s main (`handle_signals`).

`Interrupted` is a BaseException, like KeyboardInterrupt, so that the `except Exception`
of a restore (which turns library errors into "checkpoint damaged") cannot mistake it for
damage and move a good checkpoint aside.

Several processes use jax's preemption sync service for SIGTERM (started by
jax.distributed.initialize, which installs its own handler), which spreads the notice to
every host and names one step at which all of them stop, so their checkpoints agree.
Ctrl-C keeps Python's default there: one host cannot stop the others at the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
from jax.experimental import multihost_utils

# What launch scripts read as "preempted after saving a checkpoint: start me again".
RESUME_EXIT_CODE = 75
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C


def exit_code(signum: int) -> int:
    return INTERRUPT_EXIT_CODE if signum == signal.SIGINT else RESUME_EXIT_CODE


def _what(signum: int) -> str:
    return "interrupted (Ctrl-C)" if signum == signal.SIGINT else "preempted"


class Preempted(Exception):
    """Raised by the train loop after it saved the checkpoint a signal asked for."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        super().__init__(f"{_what(signum)}: saved a checkpoint at step {step}; run the same command to resume")
        self.step, self.signum = step, signum


class Interrupted(BaseException):
    """A signal before the loop: nothing new to save; raised from the signal handler."""

    def __init__(self, signum: int):
        super().__init__(f"{_what(signum)} before training started (nothing new to save); "
                         "run the same command to resume")
        self.signum = signum


class Signals:
    """What the handlers saw. Before `in_loop` a signal raises Interrupted; in the loop it
    is recorded and the loop stops at the next step boundary (`PreemptionWatcher`)."""

    def __init__(self):
        self.received: int | None = None
        self.in_loop = False

    def handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and (self.received == signal.SIGINT or jax.distributed.is_initialized()):
            raise KeyboardInterrupt  # a second Ctrl-C while stopping, or several hosts: Python's default
        self.received = signum
        if not self.in_loop:
            raise Interrupted(signum)


_active: Signals | None = None


@contextlib.contextmanager
def handle_signals():
    """Installs the SIGTERM/SIGINT handlers for the block (once: nested blocks share them);
    restores the previous handlers afterwards. Off the main thread, nothing is installed."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active or Signals()
        return
    signals = Signals()
    previous = {s: signal.signal(s, signals.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    _active = signals
    try:
        yield signals
    finally:
        _active = None
        for s, handler in previous.items():
            signal.signal(s, handler)


class PreemptionWatcher:
    """Answers, once per step, whether this step is where the run must save and stop."""

    def __init__(self, signals: Signals):
        self._signals = signals
        self._multi_host = jax.process_count() > 1

    def should_stop(self, step: int) -> bool:
        if self._multi_host:  # every host stops at the step the sync service names
            if multihost_utils.reached_preemption_sync_point(step):
                self._signals.received = signal.SIGTERM
                return True
            return False
        return self._signals.received is not None

    @property
    def signum(self) -> int:
        return self._signals.received or signal.SIGTERM
