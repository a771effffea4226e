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

from mmjax import config as config_lib
from mmjax.models.layers import LORA_PARAMS
from mmjax.models.multimodal import ENCODERS
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


def read(spec: str, modality: str, *, scan: bool = True, image_size: int | None = None,
         shapes_only: bool = False) -> tuple[dict, dict, str]:
    """(values, params, local path) of `modality`'s tower in the checkpoint `spec`
    (shapes_only: hf folders are checked, not read; their params are zeros)."""
    if spec.startswith("hf:"):
        path = resolve_hf(spec[3:])
        values, params = hf.load(path, modality, scan=scan, image_size=image_size, shapes_only=shapes_only)
        return values, params, path
    if spec.startswith("bv:"):
        values, params = bigvision.load(spec[3:], modality, scan=scan)
        return values, params, spec[3:]
    raise ValueError(f"{spec!r}: a pretrained tower is 'hf:DIR' or 'bv:FILE.npz'")


def encoder_config(modality: str, values: dict, *, dtype: str = "float32", scan: bool = True) -> ml_collections.ConfigDict:
    """The smallest config an encoder's from_config reads: config.model (run-wide settings)
    with config.model.<modality> = the checkpoint's values, and config.data."""
    config = config_lib.defaults()
    config.model.update(dict(dtype=dtype, remat="none", scan=scan, dropout=0.0))
    config.model[modality].update(dict(values["model"], init_from="checkpoint"))
    tower = config.model[modality]
    config.data.update(dict(image_size=224, text_length=int(tower.max_positions if modality == "text" else 0) or 64,
                            audio_rate=16000, audio_samples=int(tower.chunk if modality == "audio" else 0) or 16000))
    config.data.update(values["data"])
    return config


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
        values, params, path = read(spec, modality)
        config = encoder_config(modality, values, dtype=dtype)
        kind = values["model"]["kind"]
        return cls(modality, values, params, path, spec[:2], ENCODERS[modality][kind].from_config(config))

    def __call__(self, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        fn = jax.jit(lambda p, b: self.encoder.apply({"params": p}, b, train=False, return_pooled=True))
        tokens, mask, pooled = fn(self.params, batch)
        return np.asarray(tokens, np.float32), np.asarray(mask), None if pooled is None else np.asarray(pooled, np.float32)


# ------------------------------------------------------------------ config.model.<modality>.init_from
def configure(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict | None = None) -> list[str]:
    """For every configured modality whose config.model.<m>.init_from names a checkpoint,
    writes the checkpoint's architecture into config.model.<m>; config.data is checked against
    the checkpoint (text length, audio rate), not changed. A key the user also set (it differs from `defaults`) to another value
    is a ValueError naming both values. Returns the modalities configured."""
    defaults = config_lib.defaults() if defaults is None else defaults
    done = []
    for modality in config.modalities:
        sub = config.model[modality]
        spec = str(sub.init_from)
        if not spec:
            continue
        values, _, path = read(spec, modality, scan=bool(config.model.scan), shapes_only=True)
        for key, value in values["model"].items():
            where = f"config.model.{modality}.{key}"
            if key not in sub:
                raise ValueError(f"{where}: the checkpoint {spec} sets this key, which the config lacks")
            current, default = sub[key], defaults.model[modality][key]
            if _same(current, value):
                continue
            if not _same(current, default):
                raise ValueError(f"{where}={current!r} but the checkpoint {spec} has {value!r}; drop the override "
                                 "(the architecture comes from the checkpoint)")
            sub[key] = value
        # config.data stays the data's (a different image size interpolates the positions;
        # Whisper pads or cuts every waveform to its chunk); only what cannot fit is an error.
        for key, value in values["data"].items():
            current = config.data[key]
            if key == "text_length":
                if current > value:
                    raise ValueError(f"config.data.text_length={current} is longer than the {value} positions of "
                                     f"{spec}; set --config.data.text_length={value} or less")
            elif key == "audio_rate":
                if current != value:
                    raise ValueError(f"config.data.audio_rate={current} but {spec} expects {value} Hz audio; set "
                                     f"--config.data.audio_rate={value}")
        if spec.startswith("hf:"):
            _use_checkpoint_preprocessing(config, defaults, modality, spec, path)
        done.append(modality)
    return done


# config.data keys that name a modality's preprocessing; an hf: tower supplies its own.
_PREPROCESSING = {"image": "image_processor", "text": "tokenizer"}


def _use_checkpoint_preprocessing(config, defaults, modality: str, spec: str, path: str) -> None:
    """config.data.image_processor / tokenizer left at their defaults become 'hf:<the folder>';
    another value the user set is a ValueError naming both (audio needs only the rate, checked above)."""
    key = _PREPROCESSING.get(modality)
    if key is None:
        return
    own, current = f"hf:{path}", str(config.data[key])
    if current == str(defaults.data[key]):
        config.data[key] = own
    elif os.path.abspath(current[3:]) != os.path.abspath(path) or not current.startswith("hf:"):
        raise ValueError(f"config.data.{key}={current!r} but the {modality} tower {spec} brings its own "
                         f"({own}); drop the override")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return tuple(a or ()) == tuple(b or ())
    return a == b


def _is_adapter(path) -> bool:
    last = path[-1]
    return isinstance(last, jax.tree_util.DictKey) and last.key in LORA_PARAMS


def load_params(state: Any, config: ml_collections.ConfigDict) -> Any:
    """state with each init_from tower's parameters (state.params[<modality>]) replaced by
    the checkpoint's, each placed with its leaf's own sharding (every device takes its shard
    of the host copy; nothing is gathered). The model's tower subtree and the checkpoint's
    must have the same names and shapes (ValueError naming the first that differs); LoRA
    adapters (lora_a / lora_b, not in any checkpoint) keep their init."""
    params = dict(state.params)
    for modality in config.modalities:
        spec = str(config.model[modality].init_from)
        if not spec:
            continue
        image_size = int(config.data.image_size) if modality == "image" else None
        _, loaded, _ = read(spec, modality, scan=bool(config.model.scan), image_size=image_size)
        ours = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(params[modality])
                if not _is_adapter(p)}
        theirs = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(loaded)}
        for name in sorted(set(ours) | set(theirs)):
            if name not in theirs or name not in ours:
                side = "the checkpoint" if name not in theirs else "this model"
                raise ValueError(f"{spec}: {modality} parameter {name} is not in {side}")
            if tuple(ours[name].shape) != tuple(theirs[name].shape):
                raise ValueError(f"{spec}: {modality} parameter {name} has shape {list(theirs[name].shape)} there but "
                                 f"{list(ours[name].shape)} in this model")

        def place(path, leaf):
            if _is_adapter(path):
                return leaf
            value = np.asarray(theirs[jax.tree_util.keystr(path)]).astype(leaf.dtype)
            return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])

        params[modality] = jax.tree_util.tree_map_with_path(place, params[modality])
    return state.replace(params=params)
