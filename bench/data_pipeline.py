"""Input pipeline throughput per worker count, next to the training step's consumption rate.

    python bench/data_pipeline.py --config=configs/base.py [--config.key=value ...]
        [--workers=0,1,2] [--batches=50] [--steps=20]

For the configured training data (config.data.train: 'synthetic', a built directory or
'tfds:NAME', with its augmentation switches), it times `pipeline.train_batches` for each
worker count: examples/s after the first batch (start-up shown apart). Then it compiles
the training step of the same config on this machine's devices and times it on one
batch, so the two rates can be compared: the pipeline keeps up when its rate is above
the step's. It prints a table and never asserts; timings depend on what else the machine
runs, so the load average during the run is printed too.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench.flags import parse_flags  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import sharding, trainer  # noqa: E402
from mmjax.data import pipeline, sources  # noqa: E402
from mmjax.models.multimodal import build_model  # noqa: E402


def _args(argv):
    spec, overrides, rest = config_lib.split_config_args(argv)
    opts = parse_flags(rest, {"workers": "0,1,2", "batches": "50", "steps": "20"})
    config = config_lib.load_config_file(spec or "configs/base.py")
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    return config, [int(w) for w in opts["workers"].split(",")], int(opts["batches"]), int(opts["steps"])


def time_pipeline(source, config, workers: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, examples/s over the next `batches` batches)."""
    config.data.workers = workers
    start = time.perf_counter()
    it = pipeline.train_batches(source, config, global_batch=config.batch_size)
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * config.batch_size / (time.perf_counter() - start)
    it.close()
    return first, rate


def time_train_step(source, config, steps: int) -> tuple[float, float]:
    """(compile seconds, examples/s) of the jitted training step of `config` on one batch."""
    mesh = sharding.make_mesh(config.mesh)
    model = build_model(config, source.num_classes)
    tx, schedule = trainer.make_optimizer(config)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    abstract, shardings, init_fn = trainer.sharded_state_shapes(
        model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    start = time.perf_counter()
    step = trainer.compile_train_step(model, tx, schedule, dropout_rng, config, mesh, abstract, shardings)
    compile_seconds = time.perf_counter() - start
    state = init_fn(init_rng)
    config.data.workers = 0
    it = pipeline.train_batches(source, config, global_batch=config.batch_size)
    batch = sharding.host_batch_to_global(next(it), mesh)
    it.close()
    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return compile_seconds, steps * config.batch_size / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    config, worker_counts, batches, steps = _args(argv)
    train_source = sources.open_source(config.data.train, "train", config.data)
    config.modalities = sources.choose_modalities(config.modalities, train_source.spec)
    augment = {k: v for k, v in config.data.augment.items() if v}
    print(f"data: {config.data.train} ({train_source.num_examples} examples; "
          f"{', '.join(config.modalities)}) | batch {config.batch_size} | augment: "
          f"{augment or 'off'} | {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>8} | {'first batch (s)':>15} | {'pipeline examples/s':>19}")
    for workers in worker_counts:
        first, rate = time_pipeline(train_source, config, workers, batches)
        print(f"{workers:>8} | {first:>15.2f} | {rate:>19,.0f}", flush=True)
    if steps <= 0:  # --steps=0: the pipeline only
        return
    compile_seconds, rate = time_train_step(train_source, config, steps)
    devices = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    print(f"train step on {devices}: {rate:,.0f} examples/s (compiled in {compile_seconds:.1f} s)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")


if __name__ == "__main__":
    main(sys.argv[1:])
