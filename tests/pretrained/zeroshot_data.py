"""The zero-shot parity data (numpy only, shared by test_zeroshot.py and make_zeroshot.py):
24 seeded 32x32 RGB images at the fixture models' size (given to the processors without
resizing), their labels, three class names the tiny tokenizers spell, and two prompts."""
from __future__ import annotations

import numpy as np

CLASSES = ("two", "birds", "cat")  # words of the fixture vocabularies; both models predict all three
PROMPTS = ("a photo of a {}", "the {}")  # letters only: the tiny CLIP vocabulary has no punctuation
NUM_IMAGES = 24
TEXT_LENGTH = 16  # the fixtures' model_max_length and max_position_embeddings


def images() -> np.ndarray:
    """uint8 [24, 32, 32, 3]: smooth colour gradients plus noise, a different mix per image."""
    rng = np.random.default_rng(13)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(NUM_IMAGES):
        w = rng.normal(size=(3, 3))
        base = w[:, 0] * x[..., None] + w[:, 1] * y[..., None] + w[:, 2] * (x * y)[..., None]
        pixels = 127.5 + 90 * np.tanh(base) + rng.normal(0, 20, (32, 32, 3))
        out.append(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return np.stack(out)


def labels() -> np.ndarray:
    return np.arange(NUM_IMAGES) % len(CLASSES)
