"""transformers checkpoint folders -> (encoder config values, params in mmjax's layout).

    values, params = hf.load('/models/siglip-base-patch16-224', 'image', scan=True)

`values` is {'model': keys of config.model.<modality> (kind, width, depth, heads, mlp,
norm, ln_eps, activation, pooling, ...), 'data': keys of config.data the checkpoint
fixes (image_size, audio_rate, ...)}, read from the folder's config.json and its
processor files; `params` is the encoder's parameter tree (numpy float32), scanned
('layers', stacked) or looped ('layer_0', ...) as the model will be. Families:

    image  ViTModel ('vit'), CLIP vision ('clip', 'clip_vision_model'),
           SigLIP vision ('siglip', 'siglip_vision_model'; MAP head as pool 'map')
    text   BertModel ('bert'), CLIP text ('clip', 'clip_text_model'),
           SigLIP text ('siglip', 'siglip_text_model')
    audio  the Whisper encoder ('whisper')

Only config.json and model.safetensors (or a sharded model.safetensors.index.json) are
read, through the `safetensors` package: no torch, no transformers, no pickle. An
unknown architecture, a missing tensor or a tensor whose shape does not fit the config
is one ValueError naming the checkpoint and the tensor. Biases a checkpoint lacks where
mmjax has one (CLIP's patch embedding, Whisper's key projection) load as zeros, which
gives the same outputs (a key bias adds a constant to every score of a query's softmax).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from mmjax import media
from mmjax.contract import MODALITIES
from mmjax.pretrained import preprocess

ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}


class Checkpoint:
    """A transformers folder: its config.json, processor files and tensors (numpy)."""

    def __init__(self, path: str, shapes_only: bool = False):
        self.path = path
        self.shapes_only = shapes_only  # take() checks names and shapes but reads no data (zeros)
        self.config = self._json("config.json", required=True)
        self.files = self._tensor_files()
        self._shapes: dict[str, tuple[int, ...]] = {}  # from the files' headers; data is read in take()
        self._where: dict[str, str] = {}
        for file in self.files:
            with safe_open(file) as f:
                for name in f.keys():
                    self._shapes[name], self._where[name] = tuple(f.get_slice(name).get_shape()), file

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        """Every tensor, read (for tests and tools; the loaders read only what they take)."""
        return {name: self._read(name) for name in self._shapes}

    def _read(self, name: str) -> np.ndarray:
        with safe_open(self._where[name]) as f:
            return f.get_tensor(name)

    def _json(self, name: str, required: bool = False) -> dict:
        file = os.path.join(self.path, name)
        if not os.path.isfile(file):
            if required:
                raise ValueError(f"{self.path}: no {name} (not a transformers save_pretrained folder)")
            return {}
        with open(file) as f:
            return json.load(f)

    def _tensor_files(self) -> list[str]:
        single = os.path.join(self.path, "model.safetensors")
        if os.path.isfile(single):
            return [single]
        index = self._json("model.safetensors.index.json")
        if not index:
            raise ValueError(f"{self.path}: no model.safetensors (nor model.safetensors.index.json); "
                             "save the model with safe_serialization")
        return [os.path.join(self.path, file) for file in sorted(set(index["weight_map"].values()))]

    def image_processor(self) -> dict:
        """preprocessor_config.json, or the image_processor entry of processor_config.json."""
        return media.read_processor(self.path)

    def has(self, name: str) -> bool:
        return name in self._shapes

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32, checked against the shape the config implies."""
        if name not in self._shapes:
            raise ValueError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        if self._shapes[name] != tuple(shape):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {list(self._shapes[name])} but its config.json "
                             f"implies {list(shape)}")
        if self.shapes_only:
            return np.zeros(shape, np.float32)
        return np.asarray(self._read(name), np.float32)

    def prefix(self, *candidates: str, probe: str) -> str:
        """The first candidate prefix under which tensor `probe` exists (model heads add one)."""
        for p in candidates:
            if p + probe in self._shapes:
                return p
        raise ValueError(f"{self.path}: tensor {candidates[0] + probe!r} is missing from the checkpoint")


# ------------------------------------------------------------------------------ pieces
def linear(ck: Checkpoint, name: str, d_in: int, d_out: int, bias: str = "required") -> dict:
    """A torch Linear [out, in] -> {'kernel': [in, out], 'bias': [out]}; bias 'zeros' when the
    checkpoint may lack it (loaded as zeros then)."""
    kernel = ck.take(name + ".weight", (d_out, d_in)).T
    if bias == "zeros" and not ck.has(name + ".bias"):
        return {"kernel": kernel, "bias": np.zeros((d_out,), np.float32)}
    return {"kernel": kernel, "bias": ck.take(name + ".bias", (d_out,))}


def norm(ck: Checkpoint, name: str, width: int) -> dict:
    return {"scale": ck.take(name + ".weight", (width,)), "bias": ck.take(name + ".bias", (width,))}


def heads_in(layer: dict, width: int, heads: int) -> dict:
    """A Dense [D, D] as mmjax's q/k/v projection: kernel [D, N, H], bias [N, H]."""
    return {"kernel": layer["kernel"].reshape(width, heads, width // heads),
            "bias": layer["bias"].reshape(heads, width // heads)}


def heads_out(layer: dict, width: int, heads: int) -> dict:
    return {"kernel": layer["kernel"].reshape(heads, width // heads, width), "bias": layer["bias"]}


def attention(ck: Checkpoint, prefix: str, names: dict, width: int, heads: int) -> dict:
    """{'query', 'key', 'value', 'out'} from the four projections named in `names`."""
    out = {}
    for role in ("query", "key", "value"):
        bias = "zeros" if role == "key" else "required"
        out[role] = heads_in(linear(ck, prefix + names[role], width, width, bias), width, heads)
    out["out"] = heads_out(linear(ck, prefix + names["out"], width, width), width, heads)
    return out


def block(ck: Checkpoint, prefix: str, names: dict, width: int, heads: int, mlp: int) -> dict:
    """One mmjax TransformerBlock's parameters from the layer at `prefix`."""
    return {
        "ln_attn": norm(ck, prefix + names["ln_attn"], width),
        "attn": attention(ck, prefix, names, width, heads),
        "ln_mlp": norm(ck, prefix + names["ln_mlp"], width),
        "mlp": {"fc1": linear(ck, prefix + names["fc1"], width, mlp), "fc2": linear(ck, prefix + names["fc2"], mlp, width)},
    }


def stack(blocks: list[dict], scan: bool) -> dict:
    """Per-layer trees -> {'layers': leaves stacked on a leading axis} or {'layer_i': tree}."""
    if not scan:
        return {f"layer_{i}": b for i, b in enumerate(blocks)}

    def stacked(*leaves):
        if isinstance(leaves[0], dict):
            return {k: stacked(*(leaf[k] for leaf in leaves)) for k in leaves[0]}
        return np.stack(leaves)

    return {"layers": stacked(*blocks)}


def conv_patches(weight: np.ndarray) -> np.ndarray:
    """A patch Conv2d weight [D, C, P, P] -> mmjax's patch_embed kernel [(P P C), D]
    (patches are flattened row, column, channel)."""
    d, c, p, q = weight.shape
    return weight.transpose(2, 3, 1, 0).reshape(p * q * c, d)


def interpolate_positions(table: np.ndarray, grid: int, new_grid: int, extra: int) -> np.ndarray:
    """A position table [extra + grid^2, D] for a new_grid x new_grid patch grid: the
    `extra` leading rows (class token) kept, the grid resized bicubically."""
    if grid == new_grid:
        return table
    import jax

    head, body = table[:extra], table[extra:].reshape(grid, grid, -1)
    resized = jax.image.resize(body, (new_grid, new_grid, body.shape[-1]), "bicubic")
    return np.concatenate([head, np.asarray(resized, np.float32).reshape(new_grid * new_grid, -1)])


def activation(ck: Checkpoint, name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"{ck.path}: activation {name!r} in config.json is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dims(cfg: dict) -> tuple[int, int, int, int]:
    return (int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"]),
            int(cfg["intermediate_size"]))


def sub_config(ck: Checkpoint, key: str) -> dict:
    """config.json's text_config / vision_config for a two-tower model, else the whole file."""
    return ck.config[key] if ck.config.get("model_type") in ("clip", "siglip") else ck.config


CLIP_NAMES = dict(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", out="self_attn.out_proj",
                  ln_attn="layer_norm1", ln_mlp="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2")


# ------------------------------------------------------------------------------ image
def _pixels(ck: Checkpoint, size: int) -> tuple[dict, dict]:
    proc = ck.image_processor()
    model = {}
    if proc.get("do_normalize", bool(proc)):
        model = {"pixel_mean": tuple(float(v) for v in proc.get("image_mean", (0.5, 0.5, 0.5))),
                 "pixel_std": tuple(float(v) for v in proc.get("image_std", (0.5, 0.5, 0.5)))}
    return model, {"image_size": size}


def image_vit(ck: Checkpoint, scan: bool, image_size: int | None) -> tuple[dict, dict]:
    cfg = ck.config
    width, depth, heads, mlp = dims(cfg)
    patch, size = int(cfg["patch_size"]), int(cfg["image_size"])
    p = ck.prefix("", "vit.", probe="embeddings.cls_token")
    grid = size // patch
    names = dict(query="attention.attention.query", key="attention.attention.key", value="attention.attention.value",
                 out="attention.output.dense", ln_attn="layernorm_before", ln_mlp="layernorm_after",
                 fc1="intermediate.dense", fc2="output.dense")
    new_size = image_size or size
    params = {
        "patch_embed": {"kernel": conv_patches(ck.take(p + "embeddings.patch_embeddings.projection.weight",
                                                       (width, int(cfg.get("num_channels", 3)), patch, patch))),
                        "bias": ck.take(p + "embeddings.patch_embeddings.projection.bias", (width,))},
        "cls": ck.take(p + "embeddings.cls_token", (1, 1, width)).reshape(width),
        "pos_embed": {"embedding": interpolate_positions(
            ck.take(p + "embeddings.position_embeddings", (1, grid * grid + 1, width))[0], grid, new_size // patch, 1)},
        "transformer": {**stack([block(ck, f"{p}encoder.layer.{i}.", names, width, heads, mlp) for i in range(depth)],
                                 scan),
                        "ln_final": norm(ck, p + "layernorm", width)},
    }
    model = dict(kind="vit", width=width, depth=depth, heads=heads, mlp=mlp, patch=patch, norm="pre",
                 ln_eps=float(cfg.get("layer_norm_eps", 1e-12)), activation=activation(ck, cfg.get("hidden_act", "gelu")),
                 attn_bias=True, final_norm=True, cls_token=True, pre_norm=False, pooling="cls", pool_dense="",
                 pool_norm=False, pool_features=0)
    if ck.has(p + "pooler.dense.weight"):
        out = int(cfg.get("pooler_output_size") or width)
        params["pool"] = {"dense": linear(ck, p + "pooler.dense", width, out)}
        if cfg.get("pooler_act", "tanh") != "tanh":
            raise ValueError(f"{ck.path}: pooler_act {cfg['pooler_act']!r} is not supported (only 'tanh')")
        model.update(pool_dense="tanh", pool_features=out)
    extra_model, data = _pixels(ck, new_size)
    return {"model": {**model, **extra_model}, "data": data}, params


def image_clip_siglip(ck: Checkpoint, scan: bool, image_size: int | None) -> tuple[dict, dict]:
    siglip = ck.config.get("model_type", "").startswith("siglip")
    cfg = sub_config(ck, "vision_config")
    width, depth, heads, mlp = dims(cfg)
    patch, size = int(cfg["patch_size"]), int(cfg["image_size"])
    grid, new_size = size // patch, image_size or size
    p = ck.prefix("vision_model.", "", probe="embeddings.patch_embedding.weight")
    conv = p + "embeddings.patch_embedding"
    extra = 0 if siglip else 1
    params = {
        "patch_embed": {"kernel": conv_patches(ck.take(conv + ".weight", (width, int(cfg.get("num_channels", 3)), patch,
                                                                           patch))),
                        "bias": ck.take(conv + ".bias", (width,)) if ck.has(conv + ".bias")
                        else np.zeros((width,), np.float32)},
        "pos_embed": {"embedding": interpolate_positions(
            ck.take(p + "embeddings.position_embedding.weight", (grid * grid + extra, width)), grid, new_size // patch,
            extra)},
    }
    layers = stack([block(ck, f"{p}encoder.layers.{i}.", CLIP_NAMES, width, heads, mlp) for i in range(depth)], scan)
    eps = float(cfg.get("layer_norm_eps", 1e-6 if siglip else 1e-5))
    model = dict(kind="vit", width=width, depth=depth, heads=heads, mlp=mlp, patch=patch, norm="pre", ln_eps=eps,
                 activation=activation(ck, cfg.get("hidden_act", "gelu_pytorch_tanh" if siglip else "quick_gelu")),
                 attn_bias=True, pool_dense="", pool_features=0)
    if siglip:
        params["transformer"] = {**layers, "ln_final": norm(ck, p + "post_layernorm", width)}
        model.update(final_norm=True, cls_token=False, pre_norm=False, pooling="none", pool_norm=False)
        if cfg.get("vision_use_head", True):
            h = p + "head."
            in_w = ck.take(h + "attention.in_proj_weight", (3 * width, width))
            in_b = ck.take(h + "attention.in_proj_bias", (3 * width,))
            attn = {role: heads_in({"kernel": in_w[i * width:(i + 1) * width].T, "bias": in_b[i * width:(i + 1) * width]},
                                   width, heads) for i, role in enumerate(("query", "key", "value"))}
            attn["out"] = heads_out(linear(ck, h + "attention.out_proj", width, width), width, heads)
            params["pool"] = {"probe": ck.take(h + "probe", (1, 1, width)), "attn": attn, "ln": norm(ck, h + "layernorm", width),
                              "mlp": {"fc1": linear(ck, h + "mlp.fc1", width, mlp), "fc2": linear(ck, h + "mlp.fc2", mlp, width)}}
            model.update(pooling="map")
    else:
        params["cls"] = ck.take(p + "embeddings.class_embedding", (width,))
        params["ln_pre"] = norm(ck, p + "pre_layrnorm", width)
        params["transformer"] = layers
        params["pool"] = {"norm": norm(ck, p + "post_layernorm", width)}
        model.update(final_norm=False, cls_token=True, pre_norm=True, pooling="cls", pool_norm=True)
    extra_model, data = _pixels(ck, new_size)
    return {"model": {**model, **extra_model}, "data": data}, params


# ------------------------------------------------------------------------------ text
def text_bert(ck: Checkpoint, scan: bool) -> tuple[dict, dict]:
    cfg = ck.config
    width, depth, heads, mlp = dims(cfg)
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{ck.path}: position_embedding_type {cfg['position_embedding_type']!r} is not supported")
    vocab, positions, types = int(cfg["vocab_size"]), int(cfg["max_position_embeddings"]), int(cfg.get("type_vocab_size", 2))
    p = ck.prefix("", "bert.", probe="embeddings.word_embeddings.weight")
    e = p + "embeddings."
    names = dict(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                 out="attention.output.dense", ln_attn="attention.output.LayerNorm", ln_mlp="output.LayerNorm",
                 fc1="intermediate.dense", fc2="output.dense")
    params = {
        "token_embed": {"embedding": ck.take(e + "word_embeddings.weight", (vocab, width))},
        "pos_embed": {"embedding": ck.take(e + "position_embeddings.weight", (positions, width))},
        "ln_embed": norm(ck, e + "LayerNorm", width),
        "transformer": stack([block(ck, f"{p}encoder.layer.{i}.", names, width, heads, mlp) for i in range(depth)], scan),
    }
    if types:
        params["type_embed"] = {"embedding": ck.take(e + "token_type_embeddings.weight", (types, width))}
    model = dict(kind="transformer", width=width, depth=depth, heads=heads, mlp=mlp, vocab_size=vocab,
                 max_positions=positions, type_vocab=types, embed_norm=True, norm="post",
                 ln_eps=float(cfg.get("layer_norm_eps", 1e-12)), activation=activation(ck, cfg.get("hidden_act", "gelu")),
                 attn_bias=True, causal=False, final_norm=False, pad_id=int(cfg.get("pad_token_id") or 0), mask="pad",
                 eos_id=-1, pooling="cls", pool_dense="", pool_norm=False, pool_features=0)
    if ck.has(p + "pooler.dense.weight"):
        params["pool"] = {"dense": linear(ck, p + "pooler.dense", width, width)}
        model.update(pool_dense="tanh")
    return {"model": model, "data": {"text_length": positions}}, params


def text_clip_siglip(ck: Checkpoint, scan: bool) -> tuple[dict, dict]:
    siglip = ck.config.get("model_type", "").startswith("siglip")
    cfg = sub_config(ck, "text_config")
    width, depth, heads, mlp = dims(cfg)
    vocab, positions = int(cfg["vocab_size"]), int(cfg["max_position_embeddings"])
    p = ck.prefix("text_model.", "", probe="embeddings.token_embedding.weight")
    eos = cfg.get("eos_token_id")
    # CLIP configs from before transformers PR 24773 say eos_token_id=2 and pool at the
    # largest id, which is the end token (the vocabulary's last): the same position.
    eos_id = vocab - 1 if eos is None or (not siglip and int(eos) == 2) else int(eos)
    mask = "eos"
    if not 0 <= eos_id < vocab:  # a default left in the config (SigLIP's 49407): the tokenizer's own
        eos_id = _tokenizer_eos(ck.path)
        if eos_id is None or not 0 <= eos_id < vocab:
            eos_id, mask = (-1, "none") if siglip else (vocab - 1, "eos")
    params = {
        "token_embed": {"embedding": ck.take(p + "embeddings.token_embedding.weight", (vocab, width))},
        "pos_embed": {"embedding": ck.take(p + "embeddings.position_embedding.weight", (positions, width))},
        "transformer": {**stack([block(ck, f"{p}encoder.layers.{i}.", CLIP_NAMES, width, heads, mlp)
                                 for i in range(depth)], scan),
                        "ln_final": norm(ck, p + "final_layer_norm", width)},
    }
    eps = float(cfg.get("layer_norm_eps", 1e-6 if siglip else 1e-5))
    model = dict(kind="transformer", width=width, depth=depth, heads=heads, mlp=mlp, vocab_size=vocab,
                 max_positions=positions, type_vocab=0, embed_norm=False, norm="pre", ln_eps=eps,
                 activation=activation(ck, cfg.get("hidden_act", "gelu_pytorch_tanh" if siglip else "quick_gelu")),
                 attn_bias=True, causal=not siglip, final_norm=True, pad_id=int(cfg.get("pad_token_id") or 0),
                 mask=mask, eos_id=eos_id, pool_norm=False)
    if siglip:
        out = int(cfg.get("projection_size") or width)
        params["pool"] = {"dense": linear(ck, p + "head", width, out)}
        model.update(pooling="last", pool_dense="linear", pool_features=out)
    else:
        model.update(pooling="index", pool_dense="", pool_features=0)
    return {"model": model, "data": {"text_length": positions}}, params


def _tokenizer_eos(path: str) -> int | None:
    """The end token's id by the folder's tokenizer, or None without a usable one."""
    try:
        tokenizer = preprocess.Tokenizer(path)
    except (ValueError, OSError, ImportError):
        return None
    return tokenizer.eos_id


# ------------------------------------------------------------------------------ audio
def audio_whisper(ck: Checkpoint, scan: bool) -> tuple[dict, dict]:
    cfg = ck.config
    width, depth, heads, mlp = (int(cfg["d_model"]), int(cfg["encoder_layers"]), int(cfg["encoder_attention_heads"]),
                                int(cfg["encoder_ffn_dim"]))
    mels, positions = int(cfg["num_mel_bins"]), int(cfg["max_source_positions"])
    proc = ck._json("preprocessor_config.json")
    p = ck.prefix("encoder.", "model.encoder.", "", probe="conv1.weight")
    names = dict(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", out="self_attn.out_proj",
                 ln_attn="self_attn_layer_norm", ln_mlp="final_layer_norm", fc1="fc1", fc2="fc2")
    conv = lambda name, c_in: {"kernel": ck.take(p + name + ".weight", (width, c_in, 3)).transpose(2, 1, 0),  # noqa: E731
                               "bias": ck.take(p + name + ".bias", (width,))}
    params = {
        "conv1": conv("conv1", mels),
        "conv2": conv("conv2", width),
        "pos_embed": ck.take(p + "embed_positions.weight", (positions, width)),
        "transformer": {**stack([block(ck, f"{p}layers.{i}.", names, width, heads, mlp) for i in range(depth)], scan),
                        "ln_final": norm(ck, p + "layer_norm", width)},
    }
    hop, n_fft = int(proc.get("hop_length", 160)), int(proc.get("n_fft", 400))
    chunk = int(proc.get("n_samples") or 2 * positions * hop)
    model = dict(kind="whisper", width=width, depth=depth, heads=heads, mlp=mlp, n_mels=mels, window=n_fft, hop=hop,
                 chunk=chunk, max_positions=positions, norm="pre", ln_eps=1e-5,
                 activation=activation(ck, cfg.get("activation_function", "gelu")), attn_bias=True, final_norm=True)
    data = {"audio_rate": int(proc.get("sampling_rate", 16000)), "audio_samples": chunk}
    return {"model": model, "data": data}, params


# (modality, config.json model_type) -> converter
FAMILIES: dict[tuple[str, str], Callable[..., tuple[dict, dict]]] = {
    ("image", "vit"): image_vit,
    ("image", "clip"): image_clip_siglip,
    ("image", "clip_vision_model"): image_clip_siglip,
    ("image", "siglip"): image_clip_siglip,
    ("image", "siglip_vision_model"): image_clip_siglip,
    ("text", "bert"): text_bert,
    ("text", "clip"): text_clip_siglip,
    ("text", "clip_text_model"): text_clip_siglip,
    ("text", "siglip"): text_clip_siglip,
    ("text", "siglip_text_model"): text_clip_siglip,
    ("audio", "whisper"): audio_whisper,
}


def safe_open(file: str):
    from safetensors import safe_open as open_file

    return open_file(file, framework="numpy")


def load(path: str, modality: str, *, scan: bool = True, image_size: int | None = None,
         shapes_only: bool = False) -> tuple[dict, dict]:
    """(values, params) of the `modality` tower of the transformers folder at `path` (module
    docstring). image_size other than the checkpoint's interpolates the position table;
    shapes_only checks every tensor's name and shape but reads none (params are zeros)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {list(MODALITIES)}")
    ck = Checkpoint(path, shapes_only=shapes_only)
    kind = str(ck.config.get("model_type", ""))
    convert = FAMILIES.get((modality, kind))
    if convert is None:
        known = sorted(k for m, k in FAMILIES if m == modality)
        raise ValueError(f"{path}: architecture model_type={kind!r} has no {modality} tower mmjax can load "
                         f"(known: {', '.join(known)})")
    try:
        if modality == "image":
            return convert(ck, scan, image_size)
        return convert(ck, scan)
    except KeyError as e:
        raise ValueError(f"{path}: config.json lacks {e.args[0]!r}") from None


def contrastive(path: str) -> dict:
    """The pieces of a CLIP or SigLIP checkpoint above its two towers' pooled outputs:
    {'kind': 'softmax' | 'sigmoid', 'image_proj' / 'text_proj': kernel [D, P] or None
    (SigLIP's towers end in their own heads), 'log_scale': float, 'bias': float}. The
    logits are scale * <image, text> of the L2-normalised projections, plus bias."""
    ck = Checkpoint(path)
    kind = str(ck.config.get("model_type", ""))
    if kind not in ("clip", "siglip"):
        raise ValueError(f"{path}: architecture model_type={kind!r} is not a contrastive two-tower model "
                         "(known: clip, siglip)")
    out = {"kind": "softmax" if kind == "clip" else "sigmoid", "image_proj": None, "text_proj": None, "bias": 0.0}
    if kind == "clip":
        dim = int(ck.config.get("projection_dim", 512))
        for tower, key, name in (("image", "vision_config", "visual_projection"), ("text", "text_config", "text_projection")):
            width = int(ck.config[key]["hidden_size"])
            out[f"{tower}_proj"] = ck.take(name + ".weight", (dim, width)).T
        out["log_scale"] = float(ck.take("logit_scale", ()))
    else:
        out["log_scale"] = float(ck.take("logit_scale", (1,))[0])
        out["bias"] = float(ck.take("logit_bias", (1,))[0])
    return out


def apply_values(sub: Any, values: dict) -> None:
    """Writes values['model'] into a config section (config.model.<modality>), for tests and
    tools that build an encoder from a checkpoint without the rest of a run's config."""
    for key, value in values["model"].items():
        sub[key] = value
