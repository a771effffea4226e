"""Steady-state speed of the training step, per option set, next to PyTorch eager.

    python bench/train_step.py --config=configs/bench.py
    python bench/train_step.py --config=configs/bench.py \
        --variants="default;model.dtype=bfloat16;model.remat=full;model.scan=true;batch_size=64"
    flags: --steps=10 (timed steps per round) --warmup=2 --rounds=3 --torch=auto|off
           --threads=0 (all cores) | 1 (one thread each for XLA and torch: see limit_threads)
           --train_steps=0 | N: also time the training command itself (below)

Each variant is the config plus comma-separated `key=value` overrides (any config key;
'default' is none). Every variant's step is compiled ahead of time on this machine's
devices (compile time measured), then the variants and the PyTorch eager baseline of
configs/bench.py (bench/torch_baseline.py; skipped when torch is not installed or the
config is not the reference model) run in interleaved rounds - jax, torch, jax, torch -
so a noisy, shared machine slows them alike. Each step is timed to block_until_ready on
one fixed random batch already on the devices. The table shows examples/s and ms/step
(medians over all timed steps, spread = 10th-90th percentile), achieved GFLOP/s and MFU
from the analytic FLOPs (mmjax/flops.py) against the device peak (mmjax/hardware.py),
compile time and peak memory (device memory_stats; on CPU the process's peak RSS, which
only grows). "CPU s/step" is the process's CPU time per step (all threads): on a shared
machine it moves less than wall time. The last line says how many CPUs other processes
kept busy while timing. The first line names the CPU model and its vector / matrix flags
(mmjax.hardware.cpu_summary): a speed ratio holds for one CPU model.

--train_steps=N then runs the training command itself on the first variant's config
(`python -m mmjax.train --config=... --config.total_steps=N`, in a fresh process on the
synthetic task) between the timing rounds, and prints the median train/examples_per_sec of
its metrics.jsonl (the windows after the first, which holds the warm-up) beside the
fixed-batch step and the PyTorch eager baseline, with a warning when the command and the
fixed-batch step differ by more than 5%: the two must never disagree unnoticed. It prints;
it never asserts a timing.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.flags import parse_flags  # noqa: E402
from bench.random_batch import random_batch  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import flops, hardware, sharding, trainer  # noqa: E402
from mmjax.models.multimodal import build_model, count_params  # noqa: E402

FLAGS = {"variants": "default", "steps": "10", "warmup": "2", "rounds": "3", "torch": "auto", "threads": "0",
         "train_steps": "0"}
AGREE = 0.05  # the training command and the fixed-batch step should agree this closely


def limit_threads(threads: int) -> None:
    """One intra-op thread for XLA:CPU and torch (threads=1): on a machine other jobs keep
    busy, single-threaded CPU time compares the two stacks' work without their thread
    pools fighting over cores. Must run before JAX starts its CPU backend."""
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    elif threads > 1:
        raise SystemExit("--threads takes 0 (all cores) or 1")


def parse(argv: list[str]):
    spec, overrides, rest = config_lib.split_config_args(argv)
    opts = parse_flags(rest, FLAGS)
    spec = spec or "configs/bench.py"
    variants = []
    for text in opts["variants"].split(";"):
        text = text.strip()
        extra = {} if text in ("", "default") else dict(kv.split("=", 1) for kv in text.split(","))
        config = config_lib.load_config_file(spec)
        config_lib.apply_overrides(config, {**overrides, **extra})
        config_lib.validate(config)
        variants.append((text or "default", config, {**overrides, **extra}))
    return spec, variants, opts


class TrainCommand:
    """The training command on a variant's config, timed by its own metrics.jsonl."""

    def __init__(self, spec: str, overrides: dict, steps: int, log_every: int):
        self.spec, self.overrides, self.steps, self.log_every = spec, overrides, steps, log_every
        self.rates: list[float] = []

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="mmjax-bench-train-") as workdir:
            args = [sys.executable, "-m", "mmjax.train", f"--config={self.spec}", f"--workdir={workdir}",
                    *(f"--config.{k}={v}" for k, v in self.overrides.items()),
                    f"--config.total_steps={self.steps}", f"--config.log_every={self.log_every}",
                    f"--config.eval_every={self.steps}", f"--config.checkpoint_every={self.steps}",
                    f"--config.optim.warmup_steps={min(self.log_every, self.steps - 1)}", "--config.compile_cache=off"]
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the training command failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        self.rates += [r["train/examples_per_sec"] for r in rows if "train/examples_per_sec" in r][1:]


class JaxVariant:
    """One compiled train step with its state and a fixed batch on the devices."""

    def __init__(self, name: str, config):
        self.name, self.config, self.times, self.cpu = name, config, [], []
        mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch_size(config.batch_size, mesh)
        model = build_model(config, 10)
        tx, schedule = trainer.make_optimizer(config)
        init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
        abstract, shardings, init_fn = trainer.sharded_state_shapes(
            model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
        start = time.perf_counter()
        self.step = trainer.compile_train_step(model, tx, schedule, dropout_rng, config, mesh, abstract, shardings)
        self.compile_seconds = time.perf_counter() - start
        self.params = count_params(abstract.params)
        self.state = init_fn(init_rng)
        self.batch = sharding.host_batch_to_global(random_batch(config, config.batch_size), mesh)
        self.flops = flops.train_flops_per_example(config) * config.batch_size

    def run(self, steps: int, record: bool = True) -> None:
        for _ in range(steps):
            start, cpu = time.perf_counter(), _cpu_seconds()
            self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready(metrics)
            if record:
                self.times.append(time.perf_counter() - start)
                self.cpu.append(_cpu_seconds() - cpu)


class TorchVariant:
    def __init__(self, config, threads: int | None = None):
        from bench import torch_baseline  # imports torch

        self.name, self.times, self.cpu = f"pytorch {torch_baseline.torch.__version__} eager", [], []
        self.step = torch_baseline.TorchStep(random_batch(config, config.batch_size), threads=threads)
        self.params = self.step.num_params()
        self.threads = torch_baseline.torch.get_num_threads()

    def run(self, steps: int, record: bool = True) -> None:
        for _ in range(steps):
            start, cpu = time.perf_counter(), _cpu_seconds()
            self.step()
            if record:
                self.times.append(time.perf_counter() - start)
                self.cpu.append(_cpu_seconds() - cpu)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    t = os.times()
    return t.user + t.system


def _machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (from /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def peak_memory() -> str:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**20:,.0f} MiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.0f} MiB RSS"


def main(argv: list[str]) -> int:
    spec, variants, opts = parse(argv)
    limit_threads(int(opts["threads"]))
    steps, warmup, rounds = int(opts["steps"]), int(opts["warmup"]), int(opts["rounds"])
    peak = hardware.peak_flops_per_device(variants[0][1])
    devices = jax.devices()
    print(f"CPU: {hardware.cpu_summary()}", flush=True)
    print(f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), peak "
          f"{peak.flops / 1e9:,.0f} GFLOP/s per device ({peak.source}); jax {jax.__version__}", flush=True)

    runs: list = []
    for name, config, _ in variants:
        v = JaxVariant(name, config)
        v.memory = peak_memory()
        runs.append(v)
        print(f"compiled {name}: {v.compile_seconds:.1f} s, {v.params:,} parameters, "
              f"{v.flops / config.batch_size / 1e9:.2f} GFLOPs/example", flush=True)
    reference = variants[0][1]
    want_torch = opts["torch"] != "off"
    torch_run = None
    if want_torch and not torch_available():
        print("torch is not installed: no PyTorch column (pip install -e '.[bench]')", flush=True)
    elif want_torch and not _is_reference_model(reference):
        print("the config is not configs/bench.py's model: no PyTorch column", flush=True)
    elif want_torch:
        torch_run = TorchVariant(reference, threads=int(opts["threads"]) or None)
        torch_run.compile_seconds, torch_run.memory = 0.0, "-"
        torch_run.flops = runs[0].flops * 1.0
        print(f"{torch_run.name}: {torch_run.params:,} parameters, {torch_run.threads} threads", flush=True)

    everyone = runs + ([torch_run] if torch_run else [])
    train_steps = int(opts["train_steps"])
    command = None
    if train_steps:
        _, first, first_overrides = variants[0]
        command = TrainCommand(spec, first_overrides, train_steps, max(1, min(int(first.log_every), train_steps // 3)))
    for v in everyone:
        v.run(warmup, record=False)
    load_start, busy, own, wall = os.getloadavg()[0], _machine_busy_seconds(), _cpu_seconds(), time.perf_counter()
    for r in range(rounds):  # interleaved: each round runs every variant once
        for v in everyone:
            v.run(steps)
        if command and r == (rounds - 1) // 2:  # in the middle, so drift on a shared machine hits both
            print(f"training command: {train_steps} steps ...", flush=True)
            aside = time.perf_counter(), _machine_busy_seconds()
            command.run()
            # The command's own process is not "other processes": its time is left out of the count.
            wall += time.perf_counter() - aside[0]
            busy += _machine_busy_seconds() - aside[1]
        print(f"round {r + 1}/{rounds} done", flush=True)
    load_end = os.getloadavg()[0]
    wall = time.perf_counter() - wall
    others = max(0.0, (_machine_busy_seconds() - busy) - (_cpu_seconds() - own)) / wall

    print()
    header = ("variant", "batch", "examples/s", "ms/step", "spread (p10-p90)", "CPU s/step", "GFLOP/s", "MFU",
              "compile", "peak memory")
    rows = []
    for v in everyone:
        t = np.asarray(v.times)
        batch = getattr(v, "config", reference).batch_size
        median = float(np.median(t))
        rows.append((v.name, str(batch), f"{batch / median:,.1f}", f"{1e3 * median:,.1f}",
                     f"{1e3 * np.percentile(t, 10):,.0f}-{1e3 * np.percentile(t, 90):,.0f} ms",
                     f"{np.median(v.cpu):.2f}",
                     f"{v.flops / median / 1e9:,.0f}", f"{v.flops / median / (peak.flops * len(devices)):.1%}",
                     f"{v.compile_seconds:.1f} s" if v is not torch_run else "-", v.memory))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    torch_rate = reference.batch_size / float(np.median(torch_run.times)) if torch_run else None
    if torch_run:
        for v in runs:
            ratio = (v.config.batch_size / float(np.median(v.times))) / torch_rate
            print(f"{v.name}: {ratio:.2f}x PyTorch eager examples/s")
    if command:
        print(command_line(command, runs[0].config.batch_size / float(np.median(runs[0].times)), torch_rate))
    print(f"{rounds} rounds x {steps} steps each, interleaved; load average {load_start:.1f} -> {load_end:.1f}; "
          f"other processes used {others:.1f} of the {os.cpu_count()} CPUs while timing")
    return 0


def command_line(command: TrainCommand, step_rate: float, torch_rate: float | None) -> str:
    """The training command's figure next to the fixed-batch step's (and torch's)."""
    if not command.rates:
        return f"training command: too few log windows in {command.steps} steps to time it; raise --train_steps"
    rate = float(np.median(command.rates))
    gap = rate / step_rate - 1.0
    text = (f"training command (python -m mmjax.train, metrics.jsonl, median of {len(command.rates)} windows): "
            f"{rate:,.1f} examples/s; fixed-batch step {step_rate:,.1f} ({gap:+.1%})")
    if torch_rate:
        text += f"; {rate / torch_rate:.2f}x PyTorch eager"
    if abs(gap) > AGREE:
        text += f"\nWARNING: the training command and the fixed-batch step differ by more than {AGREE:.0%}"
    return text


def _is_reference_model(config) -> bool:
    """True when the config builds configs/bench.py's model (the one torch_baseline.py writes)."""
    ref = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "configs", "bench.py"))
    def model_keys(c):
        return (c.model.to_dict(), c.fusion.to_dict(), tuple(c.modalities),
                {k: c.data[k] for k in ("image_size", "audio_rate", "audio_samples", "text_length")})
    strip = lambda d: {k: v for k, v in d[0].items() if k not in ("dtype", "remat", "scan", "unroll", "attention")}  # noqa: E731
    a, b = model_keys(config), model_keys(ref)
    return (strip(a), *a[1:]) == (strip(b), *b[1:]) and config.model.dtype == "float32"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
