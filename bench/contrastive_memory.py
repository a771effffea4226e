"""Per-device memory and time of the contrastive loss + its gradient: ring-chunked vs dense.

    python bench/contrastive_memory.py [--batches=256,1024,4096] [--dim=128] [--devices=8] [--repeats=5]
                                       [--modes=chunked,dense]

On `devices` fake CPU devices (one data axis), for each loss kind (sigmoid, softmax), global
batch and mode it compiles jit(value_and_grad(loss)) of one pair's loss w.r.t. the two
embedding matrices [B, dim] (split over the devices), the temperature and the bias, and
reports the compiled program's temp bytes per device (memory_analysis: what the loss
and its gradient need beyond their inputs and outputs), the growth of that figure from
the previous batch size (x4 per step: linear, x16: quadratic), and the median wall time
of `repeats` calls. 'chunked' is mmjax/contrastive.py's ring (contrastive_chunked='yes');
'dense' is the B x B logits (contrastive_chunked='no'), partitioned by XLA. Embeddings
only, no model, so 4096 fits a laptop. It prints a table; it never asserts.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags(argv: list[str]) -> dict[str, str]:
    opts = {"batches": "256,1024,4096", "dim": "128", "devices": "8", "repeats": "5", "modes": "chunked,dense"}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown flag {arg}; flags: {', '.join('--' + k for k in opts)}")
        opts[key] = value
    return opts


def main(argv: list[str]) -> int:
    opts = _flags(argv)
    devices = int(opts["devices"])
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    import jax  # noqa: PLC0415 - after the device count is set
    jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415

    from mmjax import contrastive, sharding  # noqa: PLC0415

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    dim, repeats = int(opts["dim"]), int(opts["repeats"])
    rows, whole = NamedSharding(mesh, P(sharding.BATCH_AXES)), NamedSharding(mesh, P())
    print(f"{devices} CPU devices, dim {dim}; temp = compiled temp bytes per device of loss + gradient")
    print(f"{'loss':8s} {'batch':>6s} {'mode':8s} {'temp MiB/dev':>13s} {'growth':>7s} {'ms/call':>9s}")
    for kind in ("sigmoid", "softmax"):
        for mode, chunked in (m for m in (("chunked", "yes"), ("dense", "no")) if m[0] in opts["modes"].split(",")):
            previous = None
            for batch in (int(b) for b in opts["batches"].split(",")):
                def loss(a, b, scale, bias, kind=kind, chunked=chunked):
                    sums = contrastive.pair_sums(a, b, scale, bias, jnp.ones(a.shape[0]), kind, chunked)
                    return sums["loss"] / sums["count"]

                emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
                scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=whole)
                with jax.set_mesh(mesh):
                    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
                    compiled = step.lower(emb, emb, scalar, scalar).compile()
                temp = compiled.memory_analysis().temp_size_in_bytes
                rng = np.random.default_rng(0)
                a = rng.normal(size=(batch, dim)).astype(np.float32)
                a /= np.linalg.norm(a, axis=1, keepdims=True)
                args = (jax.device_put(a, rows), jax.device_put(np.roll(a, 1, axis=1), rows),
                        jax.device_put(np.float32(10.0), whole), jax.device_put(np.float32(-10.0), whole))
                jax.block_until_ready(compiled(*args))
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(compiled(*args))
                    times.append(time.perf_counter() - start)
                growth = f"x{temp / previous:.1f}" if previous else ""
                previous = temp
                print(f"{kind:8s} {batch:6d} {mode:8s} {temp / 2**20:13.2f} {growth:>7s} "
                      f"{1e3 * float(np.median(times)):9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
