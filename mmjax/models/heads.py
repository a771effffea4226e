"""Output heads: task predictions from the fused vector, contrastive embeddings from
pooled per-modality features."""
from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers

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
    """Per-modality LayerNorm + Dense to a shared `dim`, L2-normalised, plus a learned
    log-temperature and (for kind='sigmoid') a learned bias.

    Returns {'embeddings': {modality: [B, dim] float32}, 'scale': scalar (the temperature,
    clipped to MAX_SCALE), 'bias': scalar (0 for softmax)}.
    """

    modalities: tuple[str, ...]
    dim: int
    kind: str = "sigmoid"

    @nn.compact
    def __call__(self, pooled: Mapping[str, jax.Array]) -> dict:
        embeddings = {}
        for name in self.modalities:
            x = layers.layer_norm(jnp.float32, f"{name}_ln")(pooled[name].astype(jnp.float32))
            x = layers.dense(self.dim, ("embed", None), dtype=jnp.float32, name=f"{name}_proj")(x)
            embeddings[name] = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
        scale0, bias0 = CONTRASTIVE_INIT[self.kind]
        log_scale = self.param("log_scale", layers.boxed(nn.initializers.constant(math.log(scale0)), ()), (), jnp.float32)
        bias = jnp.zeros((), jnp.float32)
        if bias0 is not None:
            bias = self.param("bias", layers.boxed(nn.initializers.constant(bias0), ()), (), jnp.float32)
        scale = jnp.minimum(jnp.exp(log_scale), MAX_SCALE)
        return {"embeddings": embeddings, "scale": scale, "bias": bias}
