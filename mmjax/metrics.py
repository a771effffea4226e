"""Metric writers: a progress line on stdout, WORKDIR/metrics.jsonl, TensorBoard events and,
when config.wandb.project is set, Weights & Biases; and the profiler window.

Metric names are stable ('train/loss', 'train/accuracy', 'train/examples_per_sec',
'train/gflops_per_sec', 'train/mfu', 'train/data_wait_fraction', 'eval/loss',
'eval/accuracy', ...): users and other tools parse metrics.jsonl. A note (why a run
stopped early) is a row {"step": N, "note": "..."} with no metrics. Only process 0
writes; the other processes get a writer that does nothing. On several hosts, lines
printed by a host start with '[host i/n] ' (`host_prefix`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mmjax.config import UserError


def host_prefix() -> str:
    """'[host 1/4] ' on a run of several processes, '' otherwise (also before jax.distributed
    is initialised, so that asking never starts a backend too early)."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return ""
    return f"[host {jax.process_index()}/{jax.process_count()}] "


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

    def __init__(self, total_steps: int, stream=None, prefix: str = ""):
        self._total = total_steps
        self._stream = stream
        self._prefix = prefix

    def _print(self, line: str) -> None:
        print(self._prefix + line, file=self._stream or sys.stdout, flush=True)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if "train/loss" in metrics:
            rate = metrics.get("train/steps_per_sec", 0.0)
            eta = _duration((self._total - step) / rate) if rate > 0 else "?"
            acc = f"acc {metrics['train/accuracy']:.3f} | " if "train/accuracy" in metrics else ""
            line = (
                f"step {step:>6}/{self._total} | loss {metrics['train/loss']:.4f} | {acc}"
                f"{metrics.get('train/examples_per_sec', 0.0):,.0f} ex/s | ETA {eta}"
            )
            self._print(line)
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            parts = " | ".join(f"{k} {v:.4f}" for k, v in sorted(evals.items()))
            self._print(f"eval @ step {step} | {parts}")

    def note(self, step: int, text: str) -> None:
        self._print(f"step {step}: {text}")

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


class WandbWriter:
    """Scalars and notes to a Weights & Biases run (config.wandb). wandb is imported only
    here, when a project is set. The run id is kept in WORKDIR/wandb_run_id, so a resumed
    run goes on in the same W&B run (W&B ignores the steps logged again after a rewind)."""

    ID_FILE = "wandb_run_id"

    def __init__(self, workdir: str, settings: Mapping, config: Mapping | None = None):
        try:
            import wandb  # noqa: PLC0415 - optional: the 'wandb' extra
        except ImportError:
            raise UserError("config.wandb.project is set but wandb is not installed: pip install 'mmjax[wandb]'") from None
        id_path = os.path.join(workdir, self.ID_FILE)
        if os.path.exists(id_path):
            run_id = open(id_path, encoding="utf-8").read().strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            with open(id_path, "w", encoding="utf-8") as f:
                f.write(run_id)
        self._run = wandb.init(
            project=settings["project"], entity=settings["entity"] or None,
            name=settings["name"] or os.path.basename(os.path.abspath(workdir)), mode=settings["mode"],
            dir=workdir, config=dict(config or {}), id=run_id, resume="allow")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def note(self, step: int, text: str) -> None:
        self._run.summary["note"] = f"step {step}: {text}"

    def close(self) -> None:
        self._run.finish()


def create_writers(workdir: str, total_steps: int, *, is_primary: bool, resume_step: int | None = None,
                   wandb: Mapping | None = None, config: Mapping | None = None, prefix: str = "") -> MetricWriters:
    """Process 0's writers (progress, metrics.jsonl, TensorBoard, W&B if wandb['project'])."""
    if not is_primary:
        return MetricWriters()
    os.makedirs(workdir, exist_ok=True)
    writers = [
        ProgressWriter(total_steps, prefix=prefix),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step),
        TensorBoardWriter(os.path.join(workdir, "tensorboard")),
    ]
    if wandb and wandb["project"]:
        writers.append(WandbWriter(workdir, wandb, config))
    return MetricWriters(writers)


class Profiler:
    """config.profile_steps=(start, stop): a jax.profiler trace of the steps after step
    `start` up to step `stop` (1-based, as logged; 0-based indices start..stop-1) in
    `logdir` (TensorBoard's profile plugin reads it: `tensorboard --logdir WORKDIR/profile`).
    A context manager: a run that ends inside the window still writes its trace."""

    def __init__(self, window: Sequence[int], logdir: str):
        self._start, self._stop = tuple(window) if window else (-1, -1)
        self._logdir = logdir
        self._tracing = False

    def before_step(self, step: int, state) -> None:
        """Called before step `step` (0-based) runs; starts or stops the trace at the window's ends."""
        if step == self._start and not self._tracing:
            jax.profiler.start_trace(self._logdir)
            self._tracing = True
        elif step == self._stop and self._tracing:
            self._end(state)

    def _end(self, state=None) -> None:
        if state is not None:
            jax.block_until_ready(state)  # the traced steps' device work, not just their dispatch
        jax.profiler.stop_trace()
        self._tracing = False

    def __enter__(self) -> "Profiler":
        return self

    def __exit__(self, *exc) -> None:
        if self._tracing:
            self._end()


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
