"""The machine's matmul peak: the denominator of train/mfu on a CPU.

    python bench/peak_flops.py [--sizes=256,512,1024,2048] [--dtypes=float32,bfloat16] [--repeats=5]

Times a jitted n x n x n matmul on the first device for each size and dtype (best of
`repeats` runs) and prints GFLOP/s, then the number mmjax/hardware.py uses for MFU (the
table peak on TPU/GPU; on a CPU the cached measurement, taken on first use and raised
here if this run measures higher: run it on a quiet machine). numpy's
matmul (its BLAS) is shown for comparison on the host. It prints; it never asserts.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import hardware  # noqa: E402


def numpy_flops(size: int, repeats: int) -> float:
    a = np.ones((size, size), np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2.0 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    opts = {"sizes": "256,512,1024,2048", "dtypes": "float32,bfloat16", "repeats": "5"}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown flag {arg}; flags: {', '.join('--' + k for k in opts)}")
        opts[key] = value
    sizes = [int(s) for s in opts["sizes"].split(",")]
    dtypes, repeats = opts["dtypes"].split(","), int(opts["repeats"])
    device = jax.local_devices()[0]
    print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| matmul | " + " | ".join(f"{n}^3" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in dtypes:
        rates = [hardware.measure_matmul_flops(n, jnp.dtype(name), repeats, device) for n in sizes]
        print(f"| jax {name} | " + " | ".join(f"{r / 1e9:,.0f} GFLOP/s" for r in rates) + " |")
    if device.platform == "cpu":
        rates = [numpy_flops(n, repeats) for n in sizes]
        print("| numpy float32 | " + " | ".join(f"{r / 1e9:,.0f} GFLOP/s" for r in rates) + " |")
        peak = hardware.cpu_host_peak(refresh=True)  # measured again; the cache keeps the best
        print(f"mmjax's CPU peak for train/mfu (cached, whole host): {peak / 1e9:,.0f} GFLOP/s")
    else:
        for name in ("bfloat16", "float32"):
            peak = hardware.table_peak(device.device_kind, name)
            print(f"table peak {name}: " + ("unknown" if peak is None else f"{peak / 1e12:,.0f} TFLOP/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
