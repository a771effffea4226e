"""How long an asynchronous checkpoint save stalls training, against the device-to-host copy.

    python bench/checkpoint_stall.py --config=configs/bench.py [--config.key=value ...] [--steps=6] [--saves=3]

With the config's compiled train step on a fixed random batch it measures, in this order:
the median step time with no save; the time to copy the whole train state to host
memory (jax.device_get: the least any save must block for); for each of `saves` saves,
how long Checkpointer.save blocks the loop (it returns once the arrays are copied and
safe to donate) and the median time of the `steps` steps that run while the write goes
on in the background; and how long the write took to finish. The stall a save adds is
its blocking time plus the slowdown of the overlapped steps. It prints; it never asserts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.train_step import JaxVariant  # noqa: E402
from mmjax import checkpoint as ckpt_lib  # noqa: E402
from mmjax import config as config_lib  # noqa: E402


def main(argv: list[str]) -> int:
    spec, overrides, rest = config_lib.split_config_args(argv)
    opts = {"steps": "6", "saves": "3"}
    for arg in rest:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown flag {arg}; flags: --config=..., --config.KEY=..., --steps, --saves")
        opts[key] = value
    config = config_lib.load_config_file(spec or "configs/bench.py")
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    steps, saves = int(opts["steps"]), int(opts["saves"])

    v = JaxVariant("bench", config)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(v.state))
    v.run(2, record=False)
    v.run(steps)
    plain = float(np.median(v.times))

    copies = []
    for _ in range(3):
        start = time.perf_counter()
        jax.device_get(v.state)
        copies.append(time.perf_counter() - start)
    copy = min(copies)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = ckpt_lib.Checkpointer(f"{tmp}/checkpoints", max_to_keep=2, async_save=True)
        for i in range(saves):
            start = time.perf_counter()
            checkpointer.save(i + 1, v.state, {"next_batch": i + 1}, {"bench": True})
            blocked = time.perf_counter() - start
            v.times = []
            v.run(steps)  # overlaps the background write
            overlapped = float(np.median(v.times))
            start = time.perf_counter()
            checkpointer.wait()
            rows.append((blocked, overlapped, time.perf_counter() - start))
        checkpointer.close()

    print(f"train state: {state_bytes / 2**20:,.1f} MiB on {jax.device_count()} {jax.devices()[0].platform} device(s); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"step without a save: {1e3 * plain:,.1f} ms (median of {steps})")
    print(f"device-to-host copy of the state: {1e3 * copy:,.1f} ms (best of 3)")
    print("| save | save() blocks | median step during the write | write still running after the steps |")
    print("|---|---|---|---|")
    for i, (blocked, overlapped, tail) in enumerate(rows, 1):
        print(f"| {i} | {1e3 * blocked:,.1f} ms | {1e3 * overlapped:,.1f} ms | {1e3 * tail:,.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
