"""Decoding speed with the KV cache against re-running the model for every token.

    python bench/decode_speed.py [--config=configs/generate.py] [--batch_sizes=1,32] [--beam_size=1]
        [--repeats=5] [--config.key=value ...]

Builds the config's model (random parameters: the speed of a step does not depend on them),
decodes data.target_length - 1 tokens (T) for a batch of synthetic inputs three ways, through
mmjax.decoding.generate (jitted; the compile is left out), each way in turn per
round (--repeats rounds: a warm-up call, then 5 timed back to back), so the machine's load
moves them alike; times are medians:

  KV cache           the encoders and the prefix once (the prefill), then one position per token;
  no cache           the whole model for every token: the encoders, and the decoder over the
                     prefix and every target slot (decoding.DecodeSettings(cache=False,
                     reencode=True)), as a generate loop without a cache runs it;
  no cache, encoders once
                     the decoder over the prefix and every target slot for every token, the
                     encoders computed once (cache=False: XLA hoists them out of the loop).

and prints a markdown table per batch size: generated tokens/s of the whole decode, its time,
the time of one step after the first token (from decodes of 1 and of all T tokens:
(t_T - t_1) / (T - 1), so the call's fixed cost and the prefill cancel) and the KV cache's
speed-up over each path. Without a cache a decode runs the model T times; with it, once plus
T - 1 one-position steps: T is the speed-up the sequence length suggests as a step's cost goes
to 0, and (T + 1) / 2 the one that counts target positions alone (a causal decoder's
1 + 2 + ... + T against T). Every row decodes the full length: a random model rarely emits
EOS, and the loop stops early only when every row has.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def interleaved(fns: dict, rounds: int, calls: int = 5) -> dict:
    """{name: median seconds} of the calls fns names. Each round runs every function in turn:
    one call to warm it after the others ran, then `calls` timed back to back (as an eval loop
    decodes batch after batch), so a shared machine's load moves every function alike. The
    result is the median of all timed calls; the first call of all compiles."""
    for fn in fns.values():
        fn().block_until_ready()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn().block_until_ready()
            for _ in range(calls):
                start = time.perf_counter()
                fn().block_until_ready()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "generate.py"))
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--beam_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    args, overrides = parser.parse_known_args(argv)

    import jax
    import jax.numpy as jnp

    from mmjax import config as config_lib
    from mmjax import decoding, hardware
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
    n = settings.max_length
    print(f"CPU: {hardware.cpu_summary()}; jax {jax.__version__}")
    print(f"{config.decoder.kind} decoder, T = {n} tokens per row, beam_size {settings.beam_size}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), prefix {prefix} positions; "
          f"the sequence length suggests {n}x (T) and {(n + 1) / 2:.0f}x ((T + 1) / 2)")
    paths = {"KV cache": dict(cache=True), "no cache": dict(cache=False, reencode=True),
             "no cache, encoders once": dict(cache=False)}
    print("| batch | path | tokens/s | ms per decode | ms per step after the first | KV cache's speed-up |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in (int(s) for s in args.batch_sizes.split(",")):
        batch = make_batch(size)
        fns = {}
        for name, how in paths.items():
            for tokens in (n, 1):
                how_many = dataclasses.replace(settings, max_length=tokens, **how)
                fns[name, tokens] = lambda how_many=how_many: decoding.generate(model, variables, batch, how_many)
        t = interleaved(fns, args.repeats)
        cached = t["KV cache", n]
        for name in paths:
            step = max(t[name, n] - t[name, 1], 0.0) / max(n - 1, 1)
            print(f"| {size} | {name} | {size * n / t[name, n]:,.0f} | {t[name, n] * 1e3:.2f} | {step * 1e3:.3f} | "
                  f"{t[name, n] / cached:.1f}x |")


if __name__ == "__main__":
    main()
