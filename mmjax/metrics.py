"""Metric writers: a progress line on stdout, WORKDIR/metrics.jsonl and TensorBoard events.

Metric names are stable ('train/loss', 'train/accuracy', 'train/examples_per_sec',
'train/gflops_per_sec', 'train/mfu', 'train/data_wait_fraction', 'eval/loss',
'eval/accuracy', ...): users and other tools parse metrics.jsonl. A note (why a run
stopped early) is a row {"step": N, "note": "..."} with no metrics. Only process 0
writes; the other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np


class JsonlWriter:
    """One JSON object per line: {"step": N, "name": value, ...}, flushed every write.

    `resume_step=S` first drops the rows of steps after S (and a line cut short by a
    crash): a run resumed from the checkpoint at S logs those steps again, and the file
    then holds each step once, as if the run had never stopped.
    """

    def __init__(self, path: str, resume_step: int | None = None):
        if resume_step is not None and os.path.exists(path):
            _drop_rows_after(path, resume_step)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def note(self, step: int, text: str) -> None:
        self._file.write(json.dumps({"step": int(step), "note": text}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _drop_rows_after(path: str, step: int) -> None:
    """Rewrites `path` without rows whose step is past `step` (atomically: temp + rename)."""
    kept, dropped = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
                keep = line.endswith("\n") and int(row["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped = True
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)


class TensorBoardWriter:
    """Scalar event files readable by `tensorboard --logdir` (tensorboardX, no TensorFlow)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it

        self._writer = SummaryWriter(logdir=logdir)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, float(value), int(step))
        self._writer.flush()

    def note(self, step: int, text: str) -> None:
        self._writer.add_text("note", text, int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressWriter:
    """The human-readable line: step, loss, accuracy, examples/s and ETA; eval results."""

    def __init__(self, total_steps: int, stream=sys.stdout):
        self._total = total_steps
        self._stream = stream

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if "train/loss" in metrics:
            rate = metrics.get("train/steps_per_sec", 0.0)
            eta = _duration((self._total - step) / rate) if rate > 0 else "?"
            acc = f"acc {metrics['train/accuracy']:.3f} | " if "train/accuracy" in metrics else ""
            line = (
                f"step {step:>6}/{self._total} | loss {metrics['train/loss']:.4f} | {acc}"
                f"{metrics.get('train/examples_per_sec', 0.0):,.0f} ex/s | ETA {eta}"
            )
            print(line, file=self._stream, flush=True)
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            parts = " | ".join(f"{k} {v:.4f}" for k, v in sorted(evals.items()))
            print(f"eval @ step {step} | {parts}", file=self._stream, flush=True)

    def note(self, step: int, text: str) -> None:
        print(f"step {step}: {text}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


class MetricWriters:
    """Fans one write out to several writers."""

    def __init__(self, writers: Sequence = ()):
        self._writers = list(writers)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for w in self._writers:
            w.write(step, metrics)

    def note(self, step: int, text: str) -> None:
        """A line of text for the record at `step` (not a metric)."""
        for w in self._writers:
            w.note(step, text)

    def close(self) -> None:
        for w in self._writers:
            w.close()


def create_writers(workdir: str, total_steps: int, *, is_primary: bool,
                   resume_step: int | None = None) -> MetricWriters:
    if not is_primary:
        return MetricWriters()
    os.makedirs(workdir, exist_ok=True)
    return MetricWriters(
        [
            ProgressWriter(total_steps),
            JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step),
            TensorBoardWriter(os.path.join(workdir, "tensorboard")),
        ]
    )


class MeanAccumulator:
    """Averages per-step scalars over a logging window, plus the window's throughput.

    Names in SUMMED are counts and are summed over the window instead.
    """

    SUMMED = frozenset({"train/skipped_steps"})

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._start = time.perf_counter()
        self._excluded = 0.0
        self._data_wait = 0.0

    def data_wait(self, seconds: float) -> None:
        """Time the loop spent blocked waiting for the next batch."""
        self._data_wait += seconds

    def exclude(self, seconds: float) -> None:
        """Leaves time spent outside training steps (evals, saves) out of the throughput."""
        self._excluded += seconds

    def add(self, metrics: Mapping[str, np.ndarray]) -> None:
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1

    def summary(self, batch_size: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._start - self._excluded, 1e-9)
        out = {k: v if k in self.SUMMED else v / max(self._count, 1) for k, v in self._sums.items()}
        out["train/steps_per_sec"] = self._count / elapsed
        out["train/examples_per_sec"] = self._count * batch_size / elapsed
        out["train/data_wait_fraction"] = min(self._data_wait / elapsed, 1.0)
        return out


def flops_metrics(examples_per_sec: float, flops_per_example: float, peak_flops: float) -> dict[str, float]:
    """Achieved GFLOP/s (analytic model FLOPs, mmjax/flops.py) and MFU against `peak_flops`,
    the summed peak of all devices (NaN when the peak is unknown)."""
    achieved = examples_per_sec * flops_per_example
    return {"train/gflops_per_sec": achieved / 1e9, "train/mfu": achieved / peak_flops if peak_flops > 0 else float("nan")}
