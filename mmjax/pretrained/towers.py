"""One pretrained tower from a checkpoint spec, as a ready mmjax encoder:

    tower = Tower.load('hf:/models/whisper-tiny', 'audio')
    tokens, mask, pooled = tower(batch)        # float32, the encoder's own inputs

Specs: 'hf:DIR' (a transformers save_pretrained folder; a hub name ORG/NAME resolves
through huggingface_hub's local cache, or downloads where the machine is online and the
package is installed) and 'bv:FILE.npz' (big_vision). Used by `python -m mmjax.embed`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from mmjax.pretrained import bigvision, hf

SOURCES = ("hf:", "bv:")


def resolve_hf(name: str) -> str:
    """A local folder as is; a hub name ORG/NAME through huggingface_hub (cache first)."""
    if os.path.isdir(name):
        return name
    if name.count("/") != 1 or name.startswith(("/", ".")):
        raise ValueError(f"hf:{name}: no such folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"hf:{name}: no such folder, and huggingface_hub (for hub names) is not installed") from None
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached: try the network
        try:
            return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
        except Exception as e:
            raise ValueError(f"hf:{name}: not in the local cache and not downloadable ({type(e).__name__})") from None


def read(spec: str, modality: str, *, scan: bool = True, image_size: int | None = None) -> tuple[dict, dict, str]:
    """(values, params, local path) of `modality`'s tower in the checkpoint `spec`."""
    if spec.startswith("hf:"):
        path = resolve_hf(spec[3:])
        values, params = hf.load(path, modality, scan=scan, image_size=image_size)
        return values, params, path
    if spec.startswith("bv:"):
        values, params = bigvision.load(spec[3:], modality, scan=scan)
        return values, params, spec[3:]
    raise ValueError(f"{spec!r}: a pretrained tower is 'hf:DIR' or 'bv:FILE.npz'")


def encoder_config(modality: str, values: dict, *, dtype: str = "float32", scan: bool = True) -> ml_collections.ConfigDict:
    """The smallest config an encoder's from_config reads: config.model (run-wide settings)
    with config.model.<modality> = the checkpoint's values, and config.data."""
    model = dict(dtype=dtype, remat="none", scan=scan, unroll="auto", attention="auto", dropout=0.0)
    sub = dict(values["model"], init_from="checkpoint")
    data = dict(image_size=224, text_length=int(values["model"].get("max_positions", 0) or 64), audio_rate=16000,
                audio_samples=int(values["model"].get("chunk", 0) or 16000), tokenizer="bytes")
    data.update(values["data"])
    return ml_collections.ConfigDict({"model": {**model, modality: sub}, "data": data})


@dataclasses.dataclass
class Tower:
    modality: str
    values: dict
    params: dict
    path: str
    source: str
    encoder: Any

    @classmethod
    def load(cls, spec: str, modality: str, *, dtype: str = "float32") -> "Tower":
        from mmjax.models.multimodal import ENCODERS

        values, params, path = read(spec, modality)
        config = encoder_config(modality, values, dtype=dtype)
        kind = values["model"]["kind"]
        return cls(modality, values, params, path, spec[:2], ENCODERS[modality][kind].from_config(config))

    def __call__(self, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        fn = jax.jit(lambda p, b: self.encoder.apply({"params": p}, b, train=False, return_pooled=True))
        tokens, mask, pooled = fn(self.params, batch)
        return np.asarray(tokens, np.float32), np.asarray(mask), None if pooled is None else np.asarray(pooled, np.float32)
