"""Fusion cores: {modality: (tokens [B, N, D_m], mask [B, N])} -> pooled [B, D].

Every core is a Module with `from_config(config)` and
`__call__(features, *, train) -> [B, width]`, where `features` holds only the
configured modalities; cores iterate over it in the canonical MODALITIES order so the
parameter tree and token order never depend on dict order.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import TransformerSpec

# Canonical modality order; modality embeddings are indexed by position in it, so a
# model trained on a subset keeps compatible parameter shapes.
MODALITIES = ("image", "text", "audio")

Features = Mapping[str, tuple[jax.Array, jax.Array]]


def ordered(features: Features) -> list[tuple[int, str, jax.Array, jax.Array]]:
    """(canonical index, name, tokens, mask) in MODALITIES order; rejects unknown names."""
    unknown = sorted(set(features) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected a subset of {list(MODALITIES)}")
    return [(i, m, *features[m]) for i, m in enumerate(MODALITIES) if m in features]


class JointFusion(nn.Module):
    """Early fusion: one transformer over [CLS; image; text; audio] tokens.

    Each modality's tokens are projected to the fusion width if needed and tagged with
    a learned modality embedding; padding masks are concatenated; the output is the
    final-LayerNormed CLS token.
    """

    spec: TransformerSpec

    @classmethod
    def from_config(cls, config: Any) -> "JointFusion":
        """Builds the core from config.fusion and config.model."""
        return cls(spec=TransformerSpec.from_config(config.fusion, config.model, "config.fusion"))

    @nn.compact
    def __call__(self, features: Features, *, train: bool) -> jax.Array:
        width, dtype = self.spec.width, layers.compute_dtype(self.spec.dtype)
        items = ordered(features)
        if not items:
            raise ValueError("JointFusion needs at least one modality")
        modality_embed = self.param(
            "modality_embed",
            layers.boxed(nn.initializers.normal(stddev=0.02), ("modality", "embed")),
            (len(MODALITIES), width),
            jnp.float32,
        )
        cls_token = self.param(
            "cls", layers.boxed(nn.initializers.normal(stddev=0.02), ("embed",)), (width,), jnp.float32
        )
        batch = items[0][2].shape[0]
        tokens = [jnp.broadcast_to(cls_token.astype(dtype), (batch, 1, width))]
        masks = [jnp.ones((batch, 1), dtype=bool)]
        for index, name, x, mask in items:
            x = x.astype(dtype)
            if x.shape[-1] != width:
                # Input dim left unnamed: 'embed' may appear only once per parameter.
                x = layers.dense(width, (None, "embed"), dtype=dtype, name=f"{name}_proj")(x)
            tokens.append(x + modality_embed[index].astype(dtype))
            masks.append(mask.astype(bool))
        x = jnp.concatenate(tokens, axis=1)
        x = layers.TransformerStack(self.spec, final_norm=True, name="transformer")(
            x, jnp.concatenate(masks, axis=1), train=train
        )
        return x[:, 0]


FUSIONS = {"joint": JointFusion}
