"""Per-example transforms: a stored example -> the fixed-shape fields of a batch row.

Only the configured modalities are produced (see the batch layout in the contract):
text -> int32 [text_length] byte tokens (id = byte + 2, 0 = padding); audio -> float32
[audio_samples] zero-padded plus int32 audio_length; image -> uint8 [H, W, 3], checked;
label -> int32. `Preprocess` is a grain Map, so grain can run it in worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from mmjax.data import codec

PAD_ID = 0
RESERVED_ID = 1  # unknown / end of sequence
BYTE_OFFSET = 2  # token id = UTF-8 byte + 2
VOCAB_SIZE = 256 + BYTE_OFFSET


def tokenize(text: str, length: int) -> np.ndarray:
    """UTF-8 bytes + 2 as int32 [length], truncated or zero-padded."""
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a str, got {type(text).__name__}")
    raw = np.frombuffer(text.encode("utf-8")[:length], np.uint8)
    tokens = np.zeros(length, np.int32)
    tokens[: len(raw)] = raw.astype(np.int32) + BYTE_OFFSET
    return tokens


def pad_audio(wave: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [samples] zero-padded/truncated waveform, int32 number of valid samples)."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"'audio' must be a mono waveform [n], got shape {wave.shape}")
    n = min(len(wave), samples)
    out = np.zeros(samples, np.float32)
    out[:n] = wave[:n]
    return out, np.asarray(n, np.int32)


def check_image(image: np.ndarray, size: int) -> np.ndarray:
    """Returns the image if it is uint8 [size, size, 3], else raises ValueError."""
    image = np.asarray(image)
    if image.shape != (size, size, 3) or image.dtype != np.uint8:
        raise ValueError(
            f"'image' must be uint8 [{size}, {size}, 3] (data.image_size={size}), got "
            f"{image.dtype} {list(image.shape)}"
        )
    return image


def preprocess_example(example: dict, modalities: Sequence[str], *, image_size: int,
                       audio_samples: int, text_length: int,
                       num_classes: int | None = None) -> dict:
    """Stored example dict -> dict of fixed-shape numpy fields for `modalities` + label."""
    for key in (*modalities, "label"):
        if key not in example:
            raise ValueError(f"stored example has no {key!r} field (it has {sorted(example)})")
    out = {}
    if "image" in modalities:
        out["image"] = check_image(example["image"], image_size)
    if "text" in modalities:
        out["text"] = tokenize(example["text"], text_length)
    if "audio" in modalities:
        out["audio"], out["audio_length"] = pad_audio(example["audio"], audio_samples)
    label = example["label"]
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"'label' must be an int, got {label!r}")
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"'label' {label} is outside 0..{(num_classes or 1) - 1}")
    out["label"] = np.asarray(label, np.int32)
    return out


class Preprocess(grain.transforms.Map):
    """grain Map: encoded record (bytes) or example dict -> batch-row dict."""

    def __init__(self, modalities: Sequence[str], *, image_size: int, audio_samples: int,
                 text_length: int, num_classes: int | None = None):
        self.modalities = tuple(modalities)
        self.kwargs = dict(image_size=image_size, audio_samples=audio_samples,
                           text_length=text_length, num_classes=num_classes)

    @classmethod
    def from_config(cls, config, num_classes: int | None = None) -> "Preprocess":
        d = config.data
        return cls(config.modalities, image_size=d.image_size, audio_samples=d.audio_samples,
                   text_length=d.text_length, num_classes=num_classes)

    def map(self, element):
        example = element if isinstance(element, dict) else codec.decode(element)
        return preprocess_example(example, self.modalities, **self.kwargs)
