"""The raw inputs of the parity tests, written at test time instead of committed as data:
a 40x56 RGB PNG (not the models' size: the processors resize it), a 1.25 s 16 kHz WAV of two
tones and noise, and a few strings. The bytes are the same on every run (numpy's seeded
generator, PNG and WAV writers without timestamps); make_fixtures.py feeds the same files to
transformers, so the references it stores are of exactly these inputs.

    paths = inputs.write(directory)      # {'image': .../image.png, 'audio': ..., 'texts': ...}
"""
from __future__ import annotations

import json
import os

import numpy as np
import scipy.io.wavfile
from PIL import Image

TEXTS = ("a photo of a cat", "a dog", "two birds on a wire")
AUDIO_RATE = 16000
FILES = {"image": "image.png", "audio": "audio.wav", "texts": "texts.json"}


def write(directory: str) -> dict[str, str]:
    """Writes the three files into `directory` (created if needed); returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, file) for name, file in FILES.items()}
    rng = np.random.default_rng(0)  # the image noise first, then the audio noise
    y, x = np.mgrid[0:40, 0:56]
    image = np.stack([x * 4, y * 6, (x + y) * 3], -1) + rng.integers(0, 40, (40, 56, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(paths["image"])
    t = np.arange(int(1.25 * AUDIO_RATE)) / AUDIO_RATE
    wave = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t) + 0.05 * rng.standard_normal(t.size)
    scipy.io.wavfile.write(paths["audio"], AUDIO_RATE, (wave * 32767).astype(np.int16))
    with open(paths["texts"], "w") as f:
        json.dump(list(TEXTS), f)
    return paths
