"""big_vision checkpoints (`bv:PATH.npz`: a ViT or a SigLIP two-tower model) -> (encoder
config values, params in mmjax's layout), like hf.load.

big_vision saves a flat npz whose keys are '/'-joined Flax paths:

    img/embedding/{kernel [P, P, C, D], bias}    img/pos_embedding [1, N, D]    img/cls [1, 1, D]
    img/Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,
        value,out}, LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}}    img/Transformer/encoder_norm
    img/MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}
    txt/Embed_0/embedding [V, D]    txt/pos_embedding [1, L, D]
    txt/Encoder_0/encoderblock_N/...    txt/Encoder_0/encoder_norm    txt/head/{kernel, bias}

(a scanned model has one 'encoderblock' with a leading layer axis instead). The npz holds
no config: width, depth, heads, MLP and patch size come from the shapes; big_vision's
fixed choices are pre-LN, LayerNorm epsilon 1e-6, tanh-approximated GELU, pixels in
[-1, 1] (mmjax's default normalisation) and, for SigLIP's text tower, no attention mask
and the last position pooled. big_vision adds no position embedding to the class token,
so its row of mmjax's position table is zero. No real big_vision file is available
offline: the tests write such an npz from a transformers fixture with the inverse naming.
"""
from __future__ import annotations

import re

import numpy as np

from mmjax.pretrained.hf import stack

TOWERS = {"image": "img/", "text": "txt/"}


class Npz:
    """The arrays of a big_vision npz (a leading 'params/' is dropped), read without pickle."""

    def __init__(self, path: str):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as f:
                self.arrays = {k.removeprefix("params/"): np.asarray(f[k], np.float32) for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable big_vision .npz ({e})") from None

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self.arrays:
            raise ValueError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        value = self.arrays[name]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {list(value.shape)} but the model's other "
                             f"tensors imply {list(shape)}")
        return value

    def has(self, name: str) -> bool:
        return name in self.arrays


def _norm(ck: Npz, name: str, width: int, lead: tuple[int, ...] = ()) -> dict:
    return {"scale": ck.take(name + "/scale", lead + (width,)), "bias": ck.take(name + "/bias", lead + (width,))}


def _dense(ck: Npz, name: str, d_in: tuple[int, ...], d_out: tuple[int, ...], lead: tuple[int, ...] = ()) -> dict:
    return {"kernel": ck.take(name + "/kernel", lead + d_in + d_out), "bias": ck.take(name + "/bias", lead + d_out)}


def _attention(ck: Npz, name: str, width: int, heads: int, lead: tuple[int, ...] = ()) -> dict:
    h = width // heads
    out = {r: _dense(ck, f"{name}/{r}", (width,), (heads, h), lead) for r in ("query", "key", "value")}
    out["out"] = _dense(ck, f"{name}/out", (heads, h), (width,), lead)
    return out


def _block(ck: Npz, name: str, width: int, heads: int, mlp: int, lead: tuple[int, ...] = ()) -> dict:
    return {"ln_attn": _norm(ck, name + "/LayerNorm_0", width, lead),
            "attn": _attention(ck, name + "/MultiHeadDotProductAttention_0", width, heads, lead),
            "ln_mlp": _norm(ck, name + "/LayerNorm_1", width, lead),
            "mlp": {"fc1": _dense(ck, name + "/MlpBlock_0/Dense_0", (width,), (mlp,), lead),
                    "fc2": _dense(ck, name + "/MlpBlock_0/Dense_1", (mlp,), (width,), lead)}}


def _stack(ck: Npz, encoder: str, width: int, scan: bool) -> tuple[dict, int, int, int]:
    """(blocks in mmjax's layout, depth, heads, mlp) of the encoder at `encoder` ('img/Transformer')."""
    scanned = f"{encoder}/encoderblock/MultiHeadDotProductAttention_0/query/kernel"
    if ck.has(scanned):
        depth, _, heads, _ = ck.arrays[scanned].shape
        mlp = ck.take(f"{encoder}/encoderblock/MlpBlock_0/Dense_0/kernel").shape[-1]
        tree = _block(ck, f"{encoder}/encoderblock", width, heads, mlp, (depth,))
        if scan:
            return {"layers": tree}, depth, heads, mlp
        unstacked = [_index(tree, i) for i in range(depth)]
        return stack(unstacked, False), depth, heads, mlp
    pattern = re.compile(re.escape(encoder) + r"/encoderblock_(\d+)/")
    depth = 1 + max((int(m.group(1)) for k in ck.arrays if (m := pattern.match(k))), default=-1)
    if depth == 0:
        raise ValueError(f"{ck.path}: tensor {encoder + '/encoderblock_0/...'!r} is missing from the checkpoint")
    heads = ck.take(f"{encoder}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel").shape[1]
    mlp = ck.take(f"{encoder}/encoderblock_0/MlpBlock_0/Dense_0/kernel").shape[-1]
    blocks = [_block(ck, f"{encoder}/encoderblock_{i}", width, heads, mlp) for i in range(depth)]
    return stack(blocks, scan), depth, heads, mlp


def _index(tree, i):
    return {k: _index(v, i) for k, v in tree.items()} if isinstance(tree, dict) else tree[i]


def image_tower(ck: Npz, scan: bool) -> tuple[dict, dict]:
    kernel = ck.take("img/embedding/kernel")
    if kernel.ndim != 4:
        raise ValueError(f"{ck.path}: tensor 'img/embedding/kernel' has shape {list(kernel.shape)}, not [P, P, C, D]")
    patch, _, channels, width = kernel.shape
    pos = ck.take("img/pos_embedding")
    grid = int(round(np.sqrt(pos.shape[1])))
    if pos.ndim != 3 or grid * grid != pos.shape[1] or pos.shape[2] != width:
        raise ValueError(f"{ck.path}: tensor 'img/pos_embedding' has shape {list(pos.shape)}, not [1, G*G, {width}]")
    blocks, depth, heads, mlp = _stack(ck, "img/Transformer", width, scan)
    params = {"patch_embed": {"kernel": kernel.reshape(patch * patch * channels, width),
                              "bias": ck.take("img/embedding/bias", (width,))},
              "transformer": {**blocks, "ln_final": _norm(ck, "img/Transformer/encoder_norm", width)}}
    cls_token = ck.has("img/cls")
    table = pos[0]
    if cls_token:
        params["cls"] = ck.take("img/cls", (1, 1, width)).reshape(width)
        table = np.concatenate([np.zeros((1, width), np.float32), table])
    params["pos_embed"] = {"embedding": table}
    pooling = "cls" if cls_token else "mean"
    if ck.has("img/MAPHead_0/probe"):
        h = "img/MAPHead_0"
        head_mlp = ck.take(h + "/MlpBlock_0/Dense_0/kernel").shape[-1]
        if head_mlp != mlp:
            raise ValueError(f"{ck.path}: tensor '{h}/MlpBlock_0/Dense_0/kernel' is {head_mlp} wide, the blocks' MLP {mlp}")
        params["pool"] = {"probe": ck.take(h + "/probe", (1, 1, width)),
                          "attn": _attention(ck, h + "/MultiHeadDotProductAttention_0", width, heads),
                          "ln": _norm(ck, h + "/LayerNorm_0", width),
                          "mlp": {"fc1": _dense(ck, h + "/MlpBlock_0/Dense_0", (width,), (mlp,)),
                                  "fc2": _dense(ck, h + "/MlpBlock_0/Dense_1", (mlp,), (width,))}}
        pooling = "map"
    model = dict(kind="vit", width=width, depth=depth, heads=heads, mlp=mlp, patch=patch, norm="pre", ln_eps=1e-6,
                 activation="gelu_tanh", attn_bias=True, final_norm=True, cls_token=cls_token, pre_norm=False,
                 pooling=pooling, pool_dense="", pool_norm=False, pool_features=0, pixel_mean=(), pixel_std=())
    return {"model": model, "data": {"image_size": grid * patch}}, params


def text_tower(ck: Npz, scan: bool) -> tuple[dict, dict]:
    table = ck.take("txt/Embed_0/embedding")
    vocab, width = table.shape
    pos = ck.take("txt/pos_embedding")
    positions = pos.shape[1]
    blocks, depth, heads, mlp = _stack(ck, "txt/Encoder_0", width, scan)
    params = {"token_embed": {"embedding": table}, "pos_embed": {"embedding": pos.reshape(positions, width)},
              "transformer": {**blocks, "ln_final": _norm(ck, "txt/Encoder_0/encoder_norm", width)}}
    model = dict(kind="transformer", width=width, depth=depth, heads=heads, mlp=mlp, vocab_size=vocab,
                 max_positions=positions, type_vocab=0, embed_norm=False, norm="pre", ln_eps=1e-6,
                 activation="gelu_tanh", attn_bias=True, causal=False, final_norm=True, pad_id=0, mask="none",
                 eos_id=-1, pooling="last", pool_dense="", pool_norm=False, pool_features=0)
    if ck.has("txt/head/kernel"):
        out = ck.take("txt/head/kernel").shape[-1]
        params["pool"] = {"dense": _dense(ck, "txt/head", (width,), (out,))}
        model.update(pool_dense="linear", pool_features=out)
    return {"model": model, "data": {"text_length": positions}}, params


def load(path: str, modality: str, *, scan: bool = True) -> tuple[dict, dict]:
    """(values, params) of the image ('img/') or text ('txt/') tower of a big_vision npz."""
    if modality not in TOWERS:
        raise ValueError(f"{path}: big_vision checkpoints hold image and text towers, not {modality!r}")
    ck = Npz(path)
    if not any(k.startswith(TOWERS[modality]) for k in ck.arrays):
        raise ValueError(f"{path}: no {TOWERS[modality]}* tensors, so no {modality} tower in this checkpoint")
    return (image_tower if modality == "image" else text_tower)(ck, scan)


def contrastive(path: str) -> dict:
    """A big_vision SigLIP's logit scale 't' (a log) and bias 'b', as hf.contrastive gives them
    (its towers end in their own heads: no projections)."""
    ck = Npz(path)
    if not all(any(k.startswith(p) for k in ck.arrays) for p in TOWERS.values()):
        raise ValueError(f"{path}: not a big_vision two-tower checkpoint (it needs img/ and txt/ tensors)")
    return {"kind": "sigmoid", "image_proj": None, "text_proj": None,
            "log_scale": float(ck.take("t", (1,))[0]), "bias": float(ck.take("b", (1,))[0])}
