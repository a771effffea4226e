"""Decoding speed with the KV cache against re-running the whole model for every token.

    python bench/decode_speed.py [--config=configs/generate.py] [--batch_sizes=1,32] [--beam_size=1]
        [--repeats=15] [--config.key=value ...]

Builds the config's model (random parameters: the speed of a step does not depend on them),
decodes data.target_length - 1 tokens for a batch of synthetic inputs, both ways, through
mmjax.decoding.generate (jitted; the compile is timed apart and left out), and prints a
markdown table per batch size: generated tokens/s of a whole decode (the prefill, i.e. the
encoders and the prefix, included) and its speed-up; the time of one step after the first
token, from decodes of 1 and of all the tokens ((t_all - t_1) / (tokens - 1): the call's
fixed cost and the prefill cancel) and its speed-up; and the positions one uncached step
runs (prefix + targets + BOS) against the one a cached step runs. Every row decodes the full
length: a random model rarely emits EOS, and the loop stops early only when every row has.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, the fastest of `repeats` more: on a shared machine the
    minimum is the least disturbed by other processes)."""
    start = time.perf_counter()
    fn().block_until_ready()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn().block_until_ready()
        times.append(time.perf_counter() - start)
    return first, min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "generate.py"))
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--beam_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args, overrides = parser.parse_known_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from mmjax import config as config_lib
    from mmjax import decoding
    from mmjax.config.cli import split_config_args
    from mmjax.models.multimodal import build_model
    from mmjax.trainer.state import batch_shapes

    config = config_lib.load_config_file(args.config)
    config_lib.apply_overrides(config, split_config_args(overrides)[1])
    config.decode.beam_size = args.beam_size
    config_lib.validate(config)
    model = build_model(config, 1)
    settings = decoding.DecodeSettings.from_config(config)
    spec = {"tasks": ["generate"], "num_classes": 0}
    rng = np.random.default_rng(0)

    def make_batch(size):
        out = {}
        for key, (shape, dtype) in batch_shapes(config, size, spec=spec).items():
            out[key] = (rng.normal(0, 0.3, shape) if dtype == np.float32 else rng.integers(2, 200, shape)).astype(dtype)
        if "audio_length" in out:
            out["audio_length"][:] = config.data.audio_samples
        return {k: jnp.asarray(v) for k, v in out.items()}

    variables = jax.jit(lambda: model.init({"params": jax.random.key(0)}, make_batch(1)))()
    features = jax.eval_shape(lambda b: model.apply(variables, b, method=lambda m, b: m._features(b, False)[0]),
                              make_batch(1))
    prefix = 0 if model.decoder.cross else sum(x.shape[1] for x, _ in features.values())
    print(f"{config.decoder.kind} decoder, {settings.max_length} tokens per row, beam_size {settings.beam_size}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), prefix {prefix} positions")
    print("| batch | cached tokens/s | uncached tokens/s | speed-up | cached step (ms) | uncached step (ms) | "
          "step speed-up | positions per step, uncached : cached |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    n = settings.max_length
    for size in (int(s) for s in args.batch_sizes.split(",")):
        batch = make_batch(size)
        rates, steps = [], []
        for cache in (True, False):
            whole = dataclasses.replace(settings, cache=cache)
            one = dataclasses.replace(whole, max_length=1)
            _, t_all = timed(lambda: decoding.generate(model, variables, batch, whole), args.repeats)
            _, t_one = timed(lambda: decoding.generate(model, variables, batch, one), args.repeats)
            rates.append(size * n / t_all)
            steps.append(max(t_all - t_one, 1e-9) / max(n - 1, 1))
        print(f"| {size} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[0] / rates[1]:.1f}x | {steps[0] * 1e3:.3f} | "
              f"{steps[1] * 1e3:.3f} | {steps[1] / steps[0]:.0f}x | {prefix + n + 1} : 1 |")


if __name__ == "__main__":
    main()
