"""The best checkpoint and early stopping: config.select_best and config.early_stop_patience.

config.select_best names one metric an evaluator reports, with its direction
('max:eval/accuracy', 'min:eval/loss'; a bare name is minimised when its last part holds
loss, mse or mae, else maximised: schema.parse_select_best). After each evaluation that
reports it, `Tracker.update` says whether it is strictly better than every earlier one
(a tie keeps the earlier step). The loop saves a checkpoint at each such step with its
value, and mmjax/checkpoint.py keeps the best saved step beside the latest ones.

The tracker's record (metric, direction, best step and value, evaluations since the best)
travels in every checkpoint's data state, so a resumed run compares against the same best
and continues the same patience count, and mmjax.export finds the best step there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from mmjax.config import UserError
from mmjax.config.schema import parse_select_best

RECORD = "best"  # the data-state key of the tracker's record


@dataclasses.dataclass
class Tracker:
    metric: str
    mode: str  # 'max' or 'min'
    patience: int = 0  # 0: never stop
    step: int | None = None  # the best evaluation's step, None before the first
    value: float | None = None
    since: int = 0  # evaluations after the best that did not improve on it

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Tracker | None":
        """The tracker config.select_best asks for; None when it is ''."""
        mode, metric, _ = parse_select_best(config.select_best)  # validate() checked the form
        return cls(metric, mode, int(config.early_stop_patience)) if metric else None

    def check_reported(self, reported: Mapping[str, Sequence[str]]) -> None:
        """UserError unless an evaluator ({name: its metric names}) reports the metric."""
        if any(self.metric in names for names in reported.values()):
            return
        known = sorted({n for names in reported.values() for n in names})
        raise UserError(f"config.select_best={self.metric!r}: no evaluator in config.evals reports it; "
                        f"they report {', '.join(known) if known else 'nothing (config.evals is empty)'}")

    def update(self, step: int, value: float) -> bool:
        """Counts the evaluation at `step`; True when it is the new best."""
        value = float(value)
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if better:
            self.step, self.value, self.since = int(step), value, 0
        else:
            self.since += 1  # NaN never improves
        return better

    @property
    def exhausted(self) -> bool:
        """Whether early stopping is due: `patience` evaluations without improvement."""
        return self.patience > 0 and self.since >= self.patience

    def stop_note(self) -> str:
        return (f"stopped early: {self.metric} has not improved on {self.value:.6g} (step {self.step}) for "
                f"{self.since} evaluations (config.early_stop_patience={self.patience})")

    # ---------------------------------------------------------------- checkpoint record
    def record(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "step": self.step, "value": self.value,
                "since": self.since}

    def resume(self, data_state: Mapping, log: Callable[[str], None]) -> None:
        """Continues from a checkpoint's record; one selecting another metric starts afresh."""
        record = data_state.get(RECORD)
        if not record:
            return
        if (record["metric"], record["mode"]) != (self.metric, self.mode):
            log(f"config.select_best is now {self.mode}:{self.metric} (the checkpoint tracked "
                f"{record['mode']}:{record['metric']}); the best is tracked afresh from here")
            return
        self.step, self.value, self.since = record["step"], record["value"], int(record["since"])


def best_step(data_state: Mapping) -> tuple[int, dict] | None:
    """(step, record) of the best evaluation a checkpoint's data state names, or None."""
    record = data_state.get(RECORD)
    return (int(record["step"]), dict(record)) if record and record.get("step") is not None else None
