"""Pooling an encoder's tokens [B, N, D] into one vector per example, as pretrained
towers define it: the first (CLS) token, the token at a given position (CLIP text: the
first end-of-text token), the last position (SigLIP text), the masked mean, or 'map'
(SigLIP vision: a learned probe attends over the tokens, then LayerNorm + MLP with a
residual). Optionally followed by a LayerNorm on the pooled vector (CLIP vision's
post-LN) and a Dense layer, with tanh (BERT's and ViT's pooler) or without (SigLIP
text's head).

Parameter names: 'probe', 'attn', 'ln', 'mlp' (map); 'norm' (pool_norm); 'dense'.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers

POOLS = ("none", "cls", "index", "last", "mean", "map")
POOL_DENSE = ("", "tanh", "linear")  # '' = no Dense after pooling


def check(where: str, kind: str, dense: str) -> None:
    """ValueError naming `where` (e.g. config.model.image) for an unknown pool or dense."""
    if kind not in POOLS:
        raise ValueError(f"{where}.pooling={kind!r} is not one of {list(POOLS)}")
    if dense not in POOL_DENSE:
        raise ValueError(f"{where}.pool_dense={dense!r} is not one of {list(POOL_DENSE)}")


class Pool(nn.Module):
    """tokens [B, N, D] + mask [B, N] (+ index [B] for kind='index') -> [B, F]."""

    kind: str
    dense: str = ""
    norm: bool = False  # LayerNorm on the pooled vector, before the Dense
    features: int = 0  # the Dense's output width; 0 = D
    heads: int = 1  # kind='map': attention heads of the probe
    mlp: int = 0  # kind='map': hidden width of its MLP
    ln_eps: float = layers.DEFAULT_LN_EPS
    activation: str = "gelu_tanh"
    dtype: Any = jnp.float32
    attention: str = "dpa"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, index: jax.Array | None = None) -> jax.Array:
        b, _, width = x.shape
        if self.kind == "cls":
            pooled = x[:, 0]
        elif self.kind == "last":
            pooled = x[:, -1]
        elif self.kind == "index":
            pooled = jnp.take_along_axis(x, index[:, None, None].astype(jnp.int32), axis=1)[:, 0]
        elif self.kind == "mean":
            pooled = layers.masked_mean(x, mask)
        elif self.kind == "map":
            probe = self.param("probe", layers.boxed(nn.initializers.xavier_uniform(), (None, None, "embed")),
                               (1, 1, width), jnp.float32)
            q = jnp.broadcast_to(probe.astype(x.dtype), (b, 1, width))
            attn = layers.MultiHeadAttention(self.heads, dtype=self.dtype, kind=self.attention, name="attn")
            h = attn(q, x, layers.attention_mask(mask, jnp.ones((b, 1), bool)))
            y = layers.layer_norm(self.dtype, "ln", self.ln_eps)(h)
            h = h + layers.MLP(self.mlp or 4 * width, dtype=self.dtype, activation=self.activation, name="mlp")(y)
            pooled = h[:, 0]
        else:
            raise ValueError(f"pool {self.kind!r} is not one of {list(POOLS[1:])}")
        if self.norm:
            pooled = layers.layer_norm(self.dtype, "norm", self.ln_eps)(pooled)
        if self.dense:
            pooled = layers.dense(self.features or width, ("embed", None), dtype=self.dtype, name="dense")(pooled)
            if self.dense == "tanh":
                pooled = jnp.tanh(pooled)
        return pooled


def from_fields(module: Any, spec: layers.TransformerSpec, name: str = "pool") -> Pool:
    """The Pool an encoder's pooling/pool_dense/pool_norm/pool_features fields ask for, with its
    stack's heads, MLP width, epsilon and activation (for 'map')."""
    return Pool(module.pooling, module.pool_dense, module.pool_norm, module.pool_features, spec.heads, spec.mlp,
                spec.ln_eps, spec.activation, layers.compute_dtype(spec.dtype), spec.attention, name=name)
