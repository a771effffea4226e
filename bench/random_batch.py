"""Random batches in the pipeline's layout (BUILD.md, "The batch") for step benchmarks:
no data set to build, the same numbers for mmjax and the PyTorch baseline."""

from __future__ import annotations

import numpy as np

from mmjax import trainer


def random_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every field batch_shapes lists for the config, with padding in text and audio."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, dtype) in trainer.batch_shapes(config, batch_size).items():
        if key == "image":
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif key == "text":
            tokens = rng.integers(2, int(config.model.text.vocab_size), shape)
            lengths = rng.integers(shape[1] // 2, shape[1] + 1, shape[0])
            out[key] = np.where(np.arange(shape[1])[None, :] < lengths[:, None], tokens, 0).astype(dtype)
        elif key == "audio":
            out[key] = rng.uniform(-1.0, 1.0, shape).astype(dtype)
        elif key == "audio_length":
            out[key] = rng.integers(int(config.data.audio_samples) // 2, int(config.data.audio_samples) + 1, shape).astype(dtype)
        elif key == "label":
            out[key] = rng.integers(0, 10, shape).astype(dtype)
        else:
            out[key] = np.ones(shape, dtype)
    return out
