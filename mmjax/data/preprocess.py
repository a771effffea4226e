"""Per-example transforms: a stored example -> the fixed-shape fields of a batch row.

Only the configured modalities are produced (see the batch layout in the contract):
text -> int32 [text_length] token ids (byte-level by default: id = byte + 2, 0 = padding;
see tokenizer.py); audio -> float32 [audio_samples] zero-padded plus int32 audio_length;
image -> uint8 [H, W, 3], checked; label -> int32. `Preprocess` (eval, and training
without augmentation) is a grain Map and `TrainPreprocess` a grain MapWithIndex, so grain
can run them in worker processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import grain
import numpy as np

from mmjax.data import augment as augment_lib
from mmjax.data import codec
from mmjax.data.tokenizer import OFFSET as BYTE_OFFSET  # noqa: F401  (re-exported)
from mmjax.data.tokenizer import PAD_ID, RESERVED_ID, ByteTokenizer, make_tokenizer  # noqa: F401
from mmjax.data.tokenizer import tokenize as _tokenize

VOCAB_SIZE = ByteTokenizer.vocab_size


def tokenize(text: str, length: int, tokenizer=None) -> np.ndarray:
    """Token ids as int32 [length] (byte-level unless `tokenizer`), truncated or zero-padded."""
    return _tokenize(text, length, tokenizer)


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
                       num_classes: int | None = None, tokenizer=None) -> dict:
    """Stored example dict -> dict of fixed-shape numpy fields for `modalities` + label."""
    for key in (*modalities, "label"):
        if key not in example:
            raise ValueError(f"stored example has no {key!r} field (it has {sorted(example)})")
    out = {}
    if "image" in modalities:
        out["image"] = check_image(example["image"], image_size)
    if "text" in modalities:
        out["text"] = tokenize(example["text"], text_length, tokenizer)
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
                 text_length: int, num_classes: int | None = None, tokenizer=None):
        self.modalities = tuple(modalities)
        self.kwargs = dict(image_size=image_size, audio_samples=audio_samples,
                           text_length=text_length, num_classes=num_classes, tokenizer=tokenizer)

    @classmethod
    def from_config(cls, config, num_classes: int | None = None) -> "Preprocess":
        d = config.data
        tokenizer = make_tokenizer(d.get("tokenizer", "bytes")) if "text" in config.modalities else None
        return cls(config.modalities, image_size=d.image_size, audio_samples=d.audio_samples,
                   text_length=d.text_length, num_classes=num_classes, tokenizer=tokenizer)

    def map(self, element):
        example = element if isinstance(element, dict) else codec.decode(element)
        return preprocess_example(example, self.modalities, **self.kwargs)


def augment_seed(seed: int) -> int:
    """A 64-bit augmentation seed from config.seed, unrelated to the shuffle seed."""
    return int.from_bytes(hashlib.sha256(f"mmjax-augment:{seed}".encode()).digest()[:8], "little")


class TrainPreprocess(grain.transforms.MapWithIndex):
    """grain MapWithIndex: like `Preprocess`, plus augmentation drawn from a numpy Generator
    seeded with (seed, index). The pipeline applies it where `index` is the example's
    position in the global training stream, so the draws do not depend on hosts, workers
    or where a run resumed."""

    def __init__(self, preprocess: Preprocess, augment: augment_lib.Augment, *, seed: int,
                 audio_rate: int):
        self.preprocess = preprocess
        self.augment = augment
        self.seed = augment_seed(seed)
        self.audio_rate = audio_rate

    def map_with_index(self, index: int, element):
        example = element if isinstance(element, dict) else codec.decode(element)
        rng = np.random.default_rng([self.seed, int(index)])
        example = augment_lib.augment_example(example, rng, self.augment, audio_rate=self.audio_rate)
        out = self.preprocess.map(example)
        if "text" in out and self.augment.text_dropout:
            out["text"] = augment_lib.token_dropout(out["text"], rng, self.augment.text_dropout)
        return out
