"""Per-example transforms: a stored example -> the fixed-shape fields of a batch row.

Only the configured modalities are produced (see the batch layout in the contract):
text -> int32 [text_length] token ids (byte-level by default: id = byte + 2, 0 = padding;
see mmjax/media.py); audio -> float32 [audio_samples] zero-padded plus int32 audio_length;
image -> uint8 [H, W, 3], checked; the task's targets (targets.py: label int32, multi-hot
label float32 [C] or target float32 [T]); bool present_<m> for modalities the data set
marks optional (zeros where absent). `Preprocess` (eval, and training
without augmentation) is a grain Map and `TrainPreprocess` a grain MapWithIndex, so grain
can run them in worker processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import grain
import numpy as np

from mmjax.contract import presence_key
from mmjax.data import augment as augment_lib
from mmjax.data import codec, targets
from mmjax.data.sources import optional_modalities
from mmjax.media import make_tokenizer, pad_audio, tokenize


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
                       num_classes: int | None = None, tokenizer=None,
                       task: str = "classification", target_fields: dict | None = None,
                       optional: Sequence[str] = ()) -> dict:
    """Stored example dict -> dict of fixed-shape numpy fields for `modalities` + targets.

    The target fields are `target_fields` (targets.batch_fields; default: an int label).
    A modality in `optional` may be missing from the example: its fields are then zeros
    (audio_length 0) and present_<modality> is False; every optional modality gets that
    flag, True where the example has it.
    """
    for key in modalities:
        if key not in example and key not in optional:
            raise ValueError(f"stored example has no {key!r} field (it has {sorted(example)})")
    if target_fields is None:
        target_fields = targets.batch_fields(None, task)
    out = {}
    if "image" in modalities:
        out["image"] = (check_image(example["image"], image_size) if "image" in example
                        else np.zeros((image_size, image_size, 3), np.uint8))
    if "text" in modalities:
        out["text"] = (tokenize(example["text"], text_length, tokenizer) if "text" in example
                       else np.zeros(text_length, np.int32))
    if "audio" in modalities:
        out["audio"], out["audio_length"] = pad_audio(example.get("audio", np.zeros(0, np.float32)),
                                                      audio_samples)
    for m in modalities:
        if m in optional:
            out[presence_key(m)] = np.asarray(m in example, np.bool_)
    out.update(targets.example_targets(example, target_fields, task, num_classes, tokenizer))
    return out


class Preprocess(grain.transforms.Map):
    """grain Map: encoded record (bytes) or example dict -> batch-row dict."""

    def __init__(self, modalities: Sequence[str], *, image_size: int, audio_samples: int,
                 text_length: int, num_classes: int | None = None, tokenizer=None,
                 task: str = "classification", target_fields: dict | None = None,
                 optional: Sequence[str] = ()):
        self.modalities = tuple(modalities)
        self.kwargs = dict(image_size=image_size, audio_samples=audio_samples,
                           text_length=text_length, num_classes=num_classes, tokenizer=tokenizer,
                           task=task, target_fields=target_fields, optional=tuple(optional))

    @classmethod
    def from_config(cls, config, num_classes: int | None = None, spec: dict | None = None) -> "Preprocess":
        """For config.modalities and config.loss.task; `spec` (the data set's) gives the
        target shapes and which modalities may be absent (None: classification, none)."""
        d = config.data
        task = targets.task_of(config)
        # The text's tokenizer also tokenizes a 'generate' target (contract.STORED_FIELD).
        tokenizer = make_tokenizer(d.tokenizer) if "text" in config.modalities or task == "generate" else None
        return cls(config.modalities, image_size=d.image_size, audio_samples=d.audio_samples,
                   text_length=d.text_length, num_classes=num_classes, tokenizer=tokenizer,
                   task=task, target_fields=targets.batch_fields(spec, task, d.target_length),
                   optional=[m for m in optional_modalities(spec) if m in config.modalities])

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
