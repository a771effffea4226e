"""Peak matmul rate per device, the denominator of MFU.

Accelerators come from a table of vendor peaks (dense, no sparsity) by device_kind and
compute dtype. TPUs run float32 matmuls at default precision as bfloat16 passes, so their
float32 peak is the bfloat16 one; NVIDIA GPUs run them as TF32. A CPU has no table
entry: its peak is measured once with a large float32 matmul through XLA, cached in
$MMJAX_CACHE (default ~/.cache/mmjax) per CPU model, core count and jaxlib version, and
shared by the host's CPU devices (fake devices split one set of cores).
config.peak_tflops > 0 overrides all of this.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from mmjax.models.layers import resolve_dtype_name

# device_kind substring (lower case, first match wins) -> (bfloat16, float32) dense peak in TFLOP/s.
PEAK_TFLOPS = (
    ("v6 lite", (918.0, 918.0)),  # TPU v6e (Trillium)
    ("v6e", (918.0, 918.0)),
    ("v5 lite", (197.0, 197.0)),  # TPU v5e
    ("v5e", (197.0, 197.0)),
    ("v5p", (459.0, 459.0)),
    ("tpu v5", (459.0, 459.0)),  # v5p reports "TPU v5"
    ("tpu v4", (275.0, 275.0)),
    ("h200", (989.0, 494.0)),  # float32 as TF32
    ("h100", (989.0, 494.0)),
    ("a100", (312.0, 156.0)),
)


@dataclasses.dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s of one device
    source: str  # where the number comes from, for logs and bench tables


def table_peak(device_kind: str, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of one device of this kind from the table, or None if unknown."""
    kind = device_kind.lower()
    for key, (bf16, f32) in PEAK_TFLOPS:
        if key in kind:
            return 1e12 * (bf16 if dtype == "bfloat16" else f32)
    return None


def measure_matmul_flops(size: int = 1024, dtype=jnp.float32, repeats: int = 5, device=None) -> float:
    """Best FLOP/s of a jitted size x size x size matmul over `repeats` runs."""
    device = device or jax.local_devices()[0]
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The /proc/cpuinfo flags that decide how fast XLA:CPU's kernels can be: vector width and the
# bf16 / int8 dot-product and matrix (AMX) units.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo 'flags', or 'Features' on ARM); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_summary() -> str:
    """'<model name>; <its SPEED_FLAGS>' (e.g. 'AMD EPYC; avx2 fma avx512f ... avx512_bf16'): what
    a CPU speed figure must be quoted with, since the same code runs at different ratios elsewhere."""
    flags = cpu_flags()
    have = [f for f in SPEED_FLAGS if f in flags]
    return f"{_cpu_name()}; {' '.join(have) or 'none of ' + ' '.join(SPEED_FLAGS[:4])}; {os.cpu_count()} CPUs"


def _cache_path(cache_dir: str = "") -> str:
    root = cache_dir or os.environ.get("MMJAX_CACHE") or os.path.expanduser("~/.cache/mmjax")
    return os.path.join(root, "peak_flops.json")


def cpu_host_peak(cache_dir: str = "", *, refresh: bool = False) -> float:
    """The host's float32 matmul FLOP/s through XLA (all its cores), measured once and
    cached; refresh=True measures again and keeps the better number (a busy machine
    measures low)."""
    key = f"{_cpu_name()} | {os.cpu_count()} cpus | jaxlib {jax.__version__}"
    path = _cache_path(cache_dir)
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    if key in cached and not refresh:
        return float(cached[key])
    peak = max([measure_matmul_flops(n) for n in (512, 1024)] + [float(cached.get(key, 0.0))])
    cached[key] = peak
    try:  # written whole or not at all
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cached, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets the number, just not cached
    return peak


def peak_flops_per_device(config, device=None) -> Peak:
    """Peak FLOP/s of one device for the config's compute dtype (config.model.dtype)."""
    override = float(config.peak_tflops)
    if override > 0:
        return Peak(override * 1e12, "config.peak_tflops")
    device = device or jax.local_devices()[0]
    dtype = resolve_dtype_name(str(config.model.dtype))
    if device.platform == "cpu":
        cpus = sum(d.platform == "cpu" for d in jax.local_devices())
        cache_dir = str(config.data.cache_dir)
        return Peak(cpu_host_peak(cache_dir) / cpus, f"measured float32 matmul, host shared by {cpus} devices")
    peak = table_peak(device.device_kind, dtype)
    if peak is None:
        return Peak(float("nan"), f"unknown device kind {device.device_kind!r}: set config.peak_tflops")
    return Peak(peak, f"{device.device_kind} {dtype} table peak")
