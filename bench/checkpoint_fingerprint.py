"""Cost of the checkpoint fingerprints (mmjax/checkpoint.py) on a config's train state.

    python bench/checkpoint_fingerprint.py [--config=configs/base.py] [--config.key=value ...]

Builds the config's sharded train state on this machine's devices (10 classes) and times
`checkpoint.fingerprints`: the first call (compile + run) and the best of five later
calls, next to a whole save of the state. Prints a table and never asserts; the load
average is printed too, since these machines are shared.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax

from mmjax import checkpoint as ckpt_lib
from mmjax import config as config_lib
from mmjax import sharding, trainer
from mmjax.models.multimodal import build_model


def main(argv: list[str]) -> None:
    spec, overrides, _ = config_lib.split_config_args(argv)
    config = config_lib.load_config_file(spec or "configs/base.py")
    config_lib.apply_overrides(config, overrides)
    mesh = sharding.make_mesh(config.mesh)
    model = build_model(config, 10)
    tx, _ = trainer.make_optimizer(config)
    _, _, init_fn = trainer.sharded_state_shapes(model, tx, trainer.batch_shapes(config, config.batch_size), mesh)
    state = jax.block_until_ready(init_fn(jax.random.key(0)))
    leaves = jax.tree.leaves(state)

    start = time.perf_counter()
    ckpt_lib.fingerprints(state)
    first = time.perf_counter() - start
    later = []
    for _ in range(5):
        start = time.perf_counter()
        ckpt_lib.fingerprints(state)
        later.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = ckpt_lib.Checkpointer(tmp, max_to_keep=1, async_save=False)
        start = time.perf_counter()
        checkpointer.save(1, state, {"next_batch": 0}, {})
        checkpointer.close()
        save = time.perf_counter() - start

    print("| arrays | values | fingerprints, first call | later calls (best of 5) | whole synchronous save |")
    print("|---|---|---|---|---|")
    print(f"| {len(leaves)} | {sum(x.size for x in leaves):,} | {first:.2f} s | {1000 * min(later):.1f} ms | {save:.2f} s |")
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
