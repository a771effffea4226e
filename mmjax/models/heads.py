"""Output heads: task predictions from the fused vector, contrastive embeddings from
pooled per-modality features."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers, pooling

# Initial (temperature, bias) of the contrastive logits, as in SigLIP (sigmoid) and CLIP
# (softmax). Softmax over a row is unchanged by a constant bias, so only sigmoid learns one.
CONTRASTIVE_INIT = {"sigmoid": (10.0, -10.0), "softmax": (1.0 / 0.07, None)}
MAX_SCALE = 100.0  # the temperature is clipped here, as in CLIP


class ClassificationHead(nn.Module):
    """[LayerNorm +] Dense ('embed', 'classes'), computed in float32 -> outputs [B, C].

    The same head serves every task: class logits (softmax or per-class sigmoid) or
    regression values; `norm=False` is the bare Dense of the seed model.
    """

    num_classes: int
    norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.norm:
            x = layers.layer_norm(jnp.float32, "ln")(x)
        return layers.dense(self.num_classes, ("embed", "classes"), dtype=jnp.float32, name="out")(x)


@dataclasses.dataclass(frozen=True)
class HeadStyle:
    """What a ContrastiveHead does with each modality's vector (config.loss.contrastive_head)."""

    pool: str  # 'mean': the masked mean of the encoder's tokens; 'tower': the tower's own pooled output
    norm: bool  # LayerNorm before the projection
    proj: str  # 'dense' (with bias), 'linear' (no bias) or '' (the vector itself is the embedding)
    max_scale: float | None  # the temperature's cap (None: none, as transformers computes it)


# 'mmjax': this stack's own head. 'clip' / 'siglip': exactly a loaded checkpoint's (CLIP's
# visual/text_projection without bias; SigLIP's towers end in their own heads).
HEAD_STYLES = {"mmjax": HeadStyle("mean", True, "dense", MAX_SCALE), "clip": HeadStyle("tower", False, "linear", None),
               "siglip": HeadStyle("tower", False, "", None)}


class UnimodalHeads(nn.Module):
    """One ClassificationHead per modality (config.fusion.aux_weight > 0), each on that
    modality's pooled encoder output: {modality: [B, D_m]} -> {modality: [B, C]}.
    Parameters: '<modality>' -> {'ln', 'out'}."""

    modalities: tuple[str, ...]
    num_classes: int
    norm: bool = True

    @nn.compact
    def __call__(self, pooled: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {m: ClassificationHead(self.num_classes, norm=self.norm, name=m)(pooled[m]) for m in self.modalities}


class ContrastiveHead(nn.Module):
    """Per modality: [LayerNorm +] projection to a shared `dim` (style), L2-normalised; plus
    a learned log-temperature and (for kind='sigmoid') a learned bias.

    Returns {'embeddings': {modality: [B, dim] float32}, 'scale': scalar (the temperature,
    clipped to the style's max_scale), 'bias': scalar (0 for softmax)}. Parameters:
    '<m>_ln' and '<m>_proj' (as the style has them), 'log_scale', 'bias' (sigmoid).
    """

    modalities: tuple[str, ...]
    dim: int
    kind: str = "sigmoid"
    style: str = "mmjax"  # HEAD_STYLES
    pool: str = "mean"  # style 'mmjax': 'mean' or 'map' (contract.CONTRASTIVE_POOLS)
    heads: int = 4  # pool='map': the probe's attention heads

    @nn.compact
    def __call__(self, pooled: Mapping[str, Any]) -> dict:
        """pooled: {modality: [B, D]}, or for pool='map' {modality: (tokens [B, N, D], mask [B, N])}."""
        style = HEAD_STYLES[self.style]
        embeddings = {}
        for name in self.modalities:
            x = pooled[name]
            if self.pool == "map":  # a learned probe per head can pick out one place of the sequence
                tokens, mask = x
                x = pooling.Pool("map", heads=self.heads, mlp=2 * tokens.shape[-1], dtype=tokens.dtype,
                                 name=f"{name}_map")(tokens, mask)
            x = x.astype(jnp.float32)
            if style.norm:
                x = layers.layer_norm(jnp.float32, f"{name}_ln")(x)
            if style.proj:
                x = layers.dense(self.dim, ("embed", None), dtype=jnp.float32, use_bias=style.proj == "dense",
                                 name=f"{name}_proj")(x)
            embeddings[name] = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
        scale0, bias0 = CONTRASTIVE_INIT[self.kind]
        log_scale = self.param("log_scale", layers.boxed(nn.initializers.constant(math.log(scale0)), ()), (), jnp.float32)
        bias = jnp.zeros((), jnp.float32)
        if bias0 is not None:
            bias = self.param("bias", layers.boxed(nn.initializers.constant(bias0), ()), (), jnp.float32)
        scale = jnp.exp(log_scale)
        if style.max_scale is not None:
            scale = jnp.minimum(scale, style.max_scale)
        return {"embeddings": embeddings, "scale": scale, "bias": bias}
