"""Faults: counting non-finite training steps, and injecting crashes for tests.

Non-finite steps. The train step skips an update whose loss, gradient or update is not
finite (it keeps the old parameters and optimizer state, and still advances the step).
`BadSteps` counts consecutive skipped steps; at `config.max_bad_steps` in a row it writes
WORKDIR/bad_steps.json (the steps, their global batch numbers, the example indices of
those batches, and their loss and gradient norm) and the run stops with one line.

Fault injection. MMJAX_FAULT_INJECT makes a run kill itself with SIGKILL, or send itself
SIGTERM/SIGINT, at a chosen point, so tests can check that a crash or a signal loses
nothing (tests/test_resume.py, tests/test_preemption.py). It is read
here only, once per run (`Injection.from_env()`), and does nothing when unset. Comma-separated entries:

    kill_after_step=N    after step N has run and its metrics are logged, before step N's
                         eval or checkpoint (earlier checkpoints are complete by then)
    kill_during_save=N   while step N's checkpoint is being saved: every file written,
                         the save not yet committed (the rename from the temporary folder)
    sigterm_during_restore=N  SIGTERM while checkpoint N is restored (after its metadata
                         was read and checked, before its arrays are read)
    sigterm_during_compile=N  SIGTERM when the steps of a run starting at step N (0: a
                         fresh run) begin to compile
    sigint_after_step=N  SIGINT (Ctrl-C) at the point of kill_after_step=N
A signal is delivered to the main thread when os.kill returns, so these are as
deterministic as the kills.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable, Mapping

import jax
import orbax.checkpoint as ocp

from mmjax.config import UserError

FAULT_ENV = "MMJAX_FAULT_INJECT"
BAD_STEPS_FILE = "bad_steps.json"
_POINTS = ("kill_after_step", "kill_during_save", "sigterm_during_restore", "sigterm_during_compile",
           "sigint_after_step")


# --------------------------------------------------------------------------- injection
def injected() -> dict[str, int]:
    """{point: step} from MMJAX_FAULT_INJECT ('' or unset -> {})."""
    text = os.environ.get(FAULT_ENV, "").strip()
    points = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, value = entry.partition("=")
        if name not in _POINTS or not value.strip().isdigit():
            raise UserError(f"{FAULT_ENV}={text!r}: entries are " + ", ".join(f"{p}=STEP" for p in _POINTS))
        points[name] = int(value)
    return points


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class Injection:
    """The faults MMJAX_FAULT_INJECT asks for, read once when a run starts (none when unset)."""

    points: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Injection":
        return cls(injected())

    def kill_after_step(self, step: int, settle: Callable[[], None] = lambda: None) -> None:
        """Called by the loop after each step; kills the process at the injected step, after
        `settle()` (the loop waits there for checkpoints in flight, so which ones survive is
        known rather than a race)."""
        if self.points.get("kill_after_step") == step:
            settle()
            _die()

    def signal_at(self, point: str, step: int) -> None:
        """Sends this process the point's signal (sigterm_* or sigint_*) at the injected step."""
        if self.points.get(point) == step:
            os.kill(os.getpid(), signal.SIGINT if point.startswith("sigint") else signal.SIGTERM)

    def checkpoint_temporary_path_class(self):
        """Orbax's temporary-path class for the checkpoint manager: None (Orbax's default)
        unless kill_during_save is injected; then one that dies instead of committing that step."""
        step = self.points.get("kill_during_save")
        if step is None:
            return None

        class DieBeforeCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
            async def finalize(self, *args, **kwargs):
                if self.get_final().name == str(step):  # the step folder, not an item inside it
                    _die()
                return await super().finalize(*args, **kwargs)

        return DieBeforeCommit


# --------------------------------------------------------------------------- non-finite steps
class TooManyBadSteps(UserError):
    """config.max_bad_steps consecutive steps had a non-finite loss, gradient or update."""


class BadSteps:
    """Counts consecutive skipped (non-finite) steps; stops the run at `max_bad_steps`.

    `example_indices(batch)` maps a global batch number to the indices of its examples in
    the training data set (for the diagnostic).
    """

    def __init__(self, max_bad_steps: int, workdir: str, example_indices: Callable[[int], list[int]]):
        self.max_bad_steps = max_bad_steps
        self.workdir = workdir
        self._example_indices = example_indices
        self._run: list[dict] = []  # the current run of consecutive bad steps
        self.total = 0

    def update(self, step: int, batch: int, metrics: Mapping[str, float]) -> TooManyBadSteps | None:
        """Records step `step` (1-based, trained on global batch `batch`); returns the error
        to raise once max_bad_steps in a row were skipped (after writing the diagnostic)."""
        if not float(metrics.get("train/skipped_steps", 0.0)):
            self._run = []
            return None
        self.total += 1
        self._run.append({
            "step": int(step),
            "batch": int(batch),
            "loss": float(metrics.get("train/loss", float("nan"))),
            "grad_norm": float(metrics.get("train/grad_norm", float("nan"))),
        })
        if len(self._run) < self.max_bad_steps:
            return None
        path = os.path.join(self.workdir, BAD_STEPS_FILE)
        if jax.process_index() == 0:
            self._write(path)
        steps = [r["step"] for r in self._run]
        return TooManyBadSteps(
            f"{len(steps)} consecutive steps ({steps[0]}..{steps[-1]}) had a non-finite loss or gradient "
            f"and were skipped (config.max_bad_steps={self.max_bad_steps}); their batches and a "
            f"diagnostic are in {path}. Lower --config.optim.lr or check those examples"
        )

    def _write(self, path: str) -> None:
        report = {
            "max_bad_steps": self.max_bad_steps,
            "skipped_in_this_run": self.total,
            "steps": [{**r, "example_indices": [int(i) for i in self._example_indices(r["batch"])]}
                      for r in self._run],
            "note": "example_indices are positions in the training data set (config.data.train); "
                    "loss and grad_norm are as the train step computed them (NaN/Infinity: not finite)",
        }
        os.makedirs(self.workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)
