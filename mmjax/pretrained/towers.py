"""One pretrained tower from a checkpoint spec, as a ready mmjax encoder:

    tower = Tower.load('hf:/models/whisper-tiny', 'audio')
    tokens, mask, pooled = tower(batch)        # float32, the encoder's own inputs

Specs: 'hf:DIR' (a transformers save_pretrained folder; a hub name ORG/NAME resolves
through huggingface_hub's local cache, or downloads where the machine is online and the
package is installed), 'bv:FILE.npz' (big_vision) and, for Tower only, an mmjax export folder
(its run's config builds the encoder; its export.json's preprocessing prepares the inputs).
Used by `python -m mmjax.embed`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from mmjax import config as config_lib
from mmjax import predict as predict_lib
from mmjax.models.layers import LORA_PARAMS
from mmjax.models.multimodal import ENCODERS, POOLED_KINDS
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

    pooled: bool = True  # the encoder takes return_pooled (POOLED_KINDS)

    @classmethod
    def load(cls, spec: str, modality: str, *, dtype: str = "float32") -> "Tower":
        """The tower of a checkpoint spec (hf: / bv:) or of an mmjax export folder."""
        if not spec.startswith(SOURCES) and os.path.isfile(os.path.join(spec, predict_lib.SPEC_FILE)):
            return cls.from_export(spec, modality, dtype=dtype)
        values, params, path = read(spec, modality)
        config = encoder_config(modality, values, dtype=dtype)
        kind = values["model"]["kind"]
        return cls(modality, values, params, path, spec[:2], ENCODERS[modality][kind].from_config(config))

    @classmethod
    def from_export(cls, directory: str, modality: str, *, dtype: str = "float32") -> "Tower":
        """The `modality` encoder of an export (python -m mmjax.export): its run's config
        (upgraded to today's schema) and its parameters under '<modality>/', as float32.
        values = {'model': config.model.<modality>, 'export': export.json}."""
        spec = predict_lib.read_spec(directory)
        if modality not in spec["modalities"]:
            raise ValueError(f"{directory}: the export has no {modality} encoder; it has {', '.join(spec['modalities'])}")
        config = config_lib.upgrade(spec["config"])
        config.model.update(dict(dtype=dtype, remat="none", dropout=0.0))
        tensors, _ = predict_lib.read_safetensors(os.path.join(directory, spec["params_file"]))
        params = traverse_util.unflatten_dict({name: np.asarray(value, np.float32) for name, value in tensors.items()
                                               if name.startswith(modality + "/")}, sep="/")[modality]
        sub = config.model[modality]
        values = {"model": sub.to_dict(), "export": spec}
        return cls(modality, values, params, directory, "export", ENCODERS[modality][sub.kind].from_config(config),
                   pooled=(modality, sub.kind) in POOLED_KINDS)

    def __call__(self, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(tokens [B, N, D], mask [B, N], pooled [B, F] or None where the tower has no pooling)."""
        if self.pooled:
            fn = jax.jit(lambda p, b: self.encoder.apply({"params": p}, b, train=False, return_pooled=True))
            tokens, mask, pooled = fn(self.params, batch)
        else:
            tokens, mask = jax.jit(lambda p, b: self.encoder.apply({"params": p}, b, train=False))(self.params, batch)
            pooled = None
        return np.asarray(tokens, np.float32), np.asarray(mask), None if pooled is None else np.asarray(pooled, np.float32)


# ------------------------------------------------------------------ config.model.<modality>.init_from
def configure(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict | None = None) -> list[str]:
    """For every configured modality whose config.model.<m>.init_from names a checkpoint,
    writes the checkpoint's architecture into config.model.<m>; config.data is checked against
    the checkpoint (text length, audio rate), not changed. A key the user also set (it differs from `defaults`) to another value
    is a ValueError naming both values. A two-tower checkpoint loaded into both towers of a
    contrastive run (head_spec) also sets config.loss's head keys. Returns what was configured
    (modalities, then 'contrastive')."""
    defaults = config_lib.defaults() if defaults is None else defaults
    done = []
    for modality in config.modalities:
        sub = config.model[modality]
        spec = str(sub.init_from)
        if not spec:
            continue
        values, _, path = read(spec, modality, scan=bool(config.model.scan), shapes_only=True)
        _take(sub, defaults.model[modality], f"config.model.{modality}", values["model"], spec)
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
    spec = head_spec(config)
    if spec:
        _take(config.loss, defaults.loss, "config.loss", head_values(read_head(spec)), spec)
        done.append("contrastive")
    return done


def _take(section: Any, defaults: Any, where: str, values: dict, spec: str) -> None:
    """Writes the checkpoint's `values` into a config section; a key the user also set (it
    differs from `defaults`) to another value is a ValueError naming both values."""
    for key, value in values.items():
        if key not in section:
            raise ValueError(f"{where}.{key}: the checkpoint {spec} sets this key, which the config lacks")
        current, default = section[key], defaults[key]
        if _same(current, value):
            continue
        if not _same(current, default):
            raise ValueError(f"{where}.{key}={current!r} but the checkpoint {spec} has {value!r}; drop the override "
                             "(the architecture comes from the checkpoint)")
        section[key] = value


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
    adapters (lora_a / lora_b, not in any checkpoint) keep their init. The contrastive head
    (state.params['contrastive']) is the checkpoint's too where head_spec names one."""
    params = dict(state.params)
    for modality in config.modalities:
        spec = str(config.model[modality].init_from)
        if not spec:
            continue
        image_size = int(config.data.image_size) if modality == "image" else None
        _, loaded, _ = read(spec, modality, scan=bool(config.model.scan), image_size=image_size)
        params[modality] = _replace(spec, modality, params[modality], loaded)
    spec = head_spec(config)
    if spec:
        params["contrastive"] = _replace(spec, "contrastive head", params["contrastive"],
                                         head_params(read_head(spec)))
    return state.replace(params=params)


def _replace(spec: str, what: str, ours_tree: Any, loaded: Any) -> Any:
    """ours_tree (sharded arrays) with every leaf but the LoRA adapters replaced by the same-named
    one of `loaded` (numpy), placed with its own sharding; ValueError for a name or shape that
    differs."""
    ours = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(ours_tree)
            if not _is_adapter(p)}
    theirs = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(loaded)}
    for name in sorted(set(ours) | set(theirs)):
        if name not in theirs or name not in ours:
            side = "the checkpoint" if name not in theirs else "this model"
            raise ValueError(f"{spec}: {what} parameter {name} is not in {side}")
        if tuple(ours[name].shape) != tuple(np.shape(theirs[name])):
            raise ValueError(f"{spec}: {what} parameter {name} has shape {list(np.shape(theirs[name]))} there but "
                             f"{list(ours[name].shape)} in this model")

    def place(path, leaf):
        if _is_adapter(path):
            return leaf
        value = np.asarray(theirs[jax.tree_util.keystr(path)]).astype(leaf.dtype)
        return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])

    return jax.tree_util.tree_map_with_path(place, ours_tree)


# ------------------------------------------------------------------ the contrastive head
def head_spec(config: ml_collections.ConfigDict) -> str:
    """The checkpoint whose contrastive head a run loads: config.model.image.init_from when the
    text tower names the same one and config.loss is a contrastive loss between image and
    text ('' otherwise: the head starts fresh)."""
    loss, model = config.loss, config.model
    if loss.contrastive == "none" or set(config_lib.contrastive_modalities(loss)) != {"image", "text"}:
        return ""
    if not {"image", "text"} <= set(config.modalities):
        return ""
    spec = str(model.image.init_from)
    return spec if spec and spec == str(model.text.init_from) else ""


def read_head(spec: str) -> dict:
    """hf.contrastive's dict (kind, image_proj, text_proj, log_scale, bias) of a CLIP / SigLIP
    folder or a big_vision SigLIP npz."""
    if spec.startswith("hf:"):
        return hf.contrastive(resolve_hf(spec[3:]))
    if spec.startswith("bv:"):
        return bigvision.contrastive(spec[3:])
    raise ValueError(f"{spec!r}: a pretrained tower is 'hf:DIR' or 'bv:FILE.npz'")


def head_values(head: dict) -> dict:
    """config.loss keys the checkpoint's head fixes: the loss kind it was trained with, the
    head style and (CLIP) the projection size."""
    values = {"contrastive": head["kind"], "contrastive_head": "clip" if head["image_proj"] is not None else "siglip"}
    if head["image_proj"] is not None:
        values["contrastive_dim"] = int(head["image_proj"].shape[1])
    return values


def head_params(head: dict) -> dict:
    """The ContrastiveHead's parameters (models/heads.py) from read_head's dict."""
    params = {"log_scale": np.float32(head["log_scale"])}
    if head["kind"] == "sigmoid":
        params["bias"] = np.float32(head["bias"])
    for m in ("image", "text"):
        if head[f"{m}_proj"] is not None:
            params[f"{m}_proj"] = {"kernel": np.asarray(head[f"{m}_proj"], np.float32)}
    return params
