"""The training step under XLA:CPU option sets, each in its own process, in interleaved rounds.

    python bench/xla_flags.py --config=configs/bench.py --rounds=2 --steps=5 \
        --sets="default;--xla_cpu_use_onednn=true;--xla_cpu_prefer_vector_width=512"

XLA reads XLA_FLAGS once, when its CPU backend starts, so every option set needs a fresh
process: each round runs bench/train_step.py (--torch=off, one round of --steps timed steps
after one warm-up step) once per set, one after the other, so a shared machine's load moves
every set alike. A set is 'default' (the flags mmjax starts with) or space-separated XLA
flags added to them. The table gives each set's median examples/s over its rounds, its ratio
to 'default', and the spread of its rounds; a set XLA rejects (an unknown flag, a value it
cannot parse) shows the error instead. It prints; it never asserts a timing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.flags import parse_flags  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import hardware  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SETS = ";".join([
    "default",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
])
FLAGS = {"sets": DEFAULT_SETS, "rounds": "2", "steps": "5"}
_ROW = re.compile(r"^\| default\s+\| (\d+)\s+\| ([\d,.]+)\s+\|")


def run_set(flags: str, spec: str, overrides: dict, steps: int) -> tuple[float | None, str]:
    """(examples/s, '') of one bench/train_step.py process with `flags` added to XLA_FLAGS,
    or (None, its error's last line)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    if flags != "default":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    args = [sys.executable, os.path.join(ROOT, "bench", "train_step.py"), f"--config={spec}",
            *(f"--config.{k}={v}" for k, v in overrides.items()),
            "--torch=off", f"--steps={steps}", "--warmup=1", "--rounds=1"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        m = _ROW.match(line)
        if m:
            return float(m.group(2).replace(",", "")), ""
    lines = [x for x in (done.stderr or done.stdout).strip().splitlines() if x.strip()]
    return None, (lines[-1] if lines else f"exit status {done.returncode}")[:200]


def main(argv: list[str]) -> int:
    spec, overrides, rest = config_lib.split_config_args(argv)
    opts = parse_flags(rest, FLAGS)
    spec = spec or "configs/bench.py"
    sets = [s.strip() for s in opts["sets"].split(";") if s.strip()]
    rounds, steps = int(opts["rounds"]), int(opts["steps"])
    print(f"CPU: {hardware.cpu_summary()}; XLA_FLAGS at start: {os.environ.get('XLA_FLAGS', '') or '(none)'}",
          flush=True)
    rates: dict[str, list[float]] = {s: [] for s in sets}
    errors: dict[str, str] = {}
    for r in range(rounds):
        for flags in sets:
            if flags in errors:
                continue
            rate, error = run_set(flags, spec, overrides, steps)
            if rate is None:
                errors[flags] = error
            else:
                rates[flags].append(rate)
        print(f"round {r + 1}/{rounds} done", flush=True)
    base = float(np.median(rates["default"])) if rates.get("default") else None
    print("\n| XLA flags | examples/s (median) | vs default | rounds (min-max) |")
    print("|---|---|---|---|")
    for flags in sets:
        if flags in errors:
            print(f"| `{flags}` | - | - | rejected: {errors[flags]} |")
            continue
        median = float(np.median(rates[flags]))
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"| `{flags}` | {median:,.1f} | {ratio} | {min(rates[flags]):,.1f}-{max(rates[flags]):,.1f} |")
    print(f"\n{rounds} rounds x {steps} timed steps per set, interleaved; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
