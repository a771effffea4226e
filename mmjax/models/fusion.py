"""Fusion cores: {modality: (tokens [B, N, D_m], mask [B, N])} -> pooled [B, D].

Every core is a Module with `from_config(config)` and
`__call__(features, *, train) -> [B, width]`, where `features` holds only the
configured modalities; cores iterate over it in the canonical MODALITIES order so the
parameter tree and token order never depend on dict order.

A modality that is absent for an example arrives with an all-False mask (see
models/missing.py); every core ignores its tokens:
  'concat'     late fusion: pool each modality (masked mean, or flatten), concatenate,
               then fusion.depth Dense(fusion.mlp) + GELU layers (0: plain concatenation);
               an absent modality's slot is zeros;
  'joint'      early fusion: one transformer over [CLS; all tokens]; absent tokens masked;
  'bottleneck' MBT: a transformer stack per modality; from layer fusion.fusion_layer on,
               each attends over its tokens plus fusion.num_bottlenecks shared tokens whose
               updates are averaged over the modalities present; the output is the mean of
               the present modalities' CLS tokens (fusion_layer == depth: late fusion);
  'cross'      Perceiver-style: fusion.num_latents learned latents cross-attend to all
               (unmasked) tokens, then a transformer over the latents; their mean is the output.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.contract import MODALITIES
from mmjax.models import layers
from mmjax.models.layers import TransformerSpec


Features = Mapping[str, tuple[jax.Array, jax.Array]]


def ordered(features: Features) -> list[tuple[int, str, jax.Array, jax.Array]]:
    """(canonical index, name, tokens, mask) in MODALITIES order; rejects unknown names."""
    unknown = sorted(set(features) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; expected a subset of {list(MODALITIES)}")
    return [(i, m, *features[m]) for i, m in enumerate(MODALITIES) if m in features]


def _to_width(x: jax.Array, width: int, dtype, name: str) -> jax.Array:
    """Casts to the compute dtype and projects to `width` if the encoder's differs."""
    x = x.astype(dtype)
    if x.shape[-1] != width:
        # Input dim left unnamed: 'embed' may appear only once per parameter.
        x = layers.dense(width, (None, "embed"), dtype=dtype, name=name)(x)
    return x


def _vector(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple) -> jax.Array:
    """A learned float32 parameter initialised N(0, 0.02)."""
    init = layers.boxed(nn.initializers.normal(stddev=0.02), names)
    return module.param(name, init, shape, jnp.float32)


class JointFusion(nn.Module):
    """Early fusion: one transformer over [CLS; image; text; audio] tokens.

    Each modality's tokens are projected to the fusion width if needed and tagged with
    a learned modality embedding (unless config.fusion.modality_embed is False); padding
    masks are concatenated; the output is the CLS token, final-LayerNormed unless
    config.fusion.final_norm is False.
    """

    spec: TransformerSpec
    modality_embed: bool = True  # False: tokens enter untagged (position embeddings only)

    @classmethod
    def from_config(cls, config: Any) -> "JointFusion":
        """Builds the core from config.fusion and config.model."""
        return cls(spec=TransformerSpec.from_config(config.fusion, config.model, "config.fusion"),
                   modality_embed=bool(config.fusion.modality_embed))

    @nn.compact
    def __call__(self, features: Features, *, train: bool) -> jax.Array:
        width, dtype = self.spec.width, layers.compute_dtype(self.spec.dtype)
        items = ordered(features)
        if not items:
            raise ValueError("JointFusion needs at least one modality")
        if self.modality_embed:
            modality_embed = _vector(self, "modality_embed", (len(MODALITIES), width), ("modality", "embed"))
        cls_token = _vector(self, "cls", (width,), ("embed",))
        batch = items[0][2].shape[0]
        tokens = [jnp.broadcast_to(cls_token.astype(dtype), (batch, 1, width))]
        masks = [jnp.ones((batch, 1), dtype=bool)]
        for index, name, x, mask in items:
            x = _to_width(x, width, dtype, f"{name}_proj")
            tokens.append(x + modality_embed[index].astype(dtype) if self.modality_embed else x)
            masks.append(mask.astype(bool))
        x = jnp.concatenate(tokens, axis=1)
        x = layers.TransformerStack(self.spec, final_norm=self.spec.final_norm, name="transformer")(
            x, jnp.concatenate(masks, axis=1), train=train
        )
        return x[:, 0]


class ConcatFusion(nn.Module):
    """Late fusion: pool each modality, concatenate, then `depth` Dense + GELU layers.

    pool='mean' is the masked mean of a modality's tokens; pool='flatten' concatenates
    its tokens (padding zeroed), like Keras' Flatten, so the output size depends on the
    token counts. With depth 0 the output is the concatenation itself.
    """

    pool: str
    depth: int
    hidden: int
    dropout: float = 0.0
    dtype: str = "float32"

    @classmethod
    def from_config(cls, config: Any) -> "ConcatFusion":
        """Builds the core from config.fusion (pool 'mean' | 'flatten', depth, mlp) and
        config.model (the schema checked them)."""
        f = config.fusion
        pool, depth, hidden = str(f.pool), int(f.depth), int(f.mlp)
        return cls(pool=pool, depth=depth, hidden=hidden, dropout=float(config.model.dropout), dtype=str(config.model.dtype))

    @nn.compact
    def __call__(self, features: Features, *, train: bool) -> jax.Array:
        dtype = layers.compute_dtype(self.dtype)
        parts = []
        for _, _, x, mask in ordered(features):
            if self.pool == "mean":
                parts.append(layers.masked_mean(x, mask).astype(dtype))
            else:
                x = jnp.where(mask[..., None], x, 0).astype(dtype)
                parts.append(x.reshape(x.shape[0], -1))
        if not parts:
            raise ValueError("ConcatFusion needs at least one modality")
        h = jnp.concatenate(parts, axis=-1)
        for i in range(self.depth):
            h = layers.dense(self.hidden, (None, "mlp"), dtype=dtype, name=f"dense_{i}")(h)
            h = layers.constrain(nn.gelu(h), ("act_batch", "act_mlp"))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return h


class BottleneckLayer(nn.Module):
    """One MBT fusion layer: per modality, a TransformerBlock over [its tokens;
    bottleneck tokens]; the new bottleneck is the mean of the present modalities'
    updates (rows with none present keep the old one)."""

    spec: TransformerSpec
    names: tuple[str, ...]
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, masks, present):
        """carry: (tuple of [B, N_m, D] per modality, bottleneck [B, K, D]);
        masks: tuple of [B, N_m] bool; present: [B, M] bool."""
        streams, bottleneck = carry
        batch, k = bottleneck.shape[:2]
        new_streams, updates = [], []
        for name, x, mask in zip(self.names, streams, masks):
            n = x.shape[1]
            key_mask = jnp.concatenate([mask, jnp.ones((batch, k), bool)], axis=1)
            y, _ = layers.TransformerBlock(self.spec, self.deterministic, name=name)(
                jnp.concatenate([x, bottleneck], axis=1), layers.attention_mask(key_mask)
            )
            new_streams.append(y[:, :n])
            updates.append(y[:, n:])
        weights = present.astype(bottleneck.dtype)
        total = jnp.einsum("bm,mbkd->bkd", weights, jnp.stack(updates))
        count = jnp.sum(weights, axis=1)[:, None, None]
        mean = total / jnp.maximum(count, 1)
        bottleneck = layers.constrain(jnp.where(count > 0, mean, bottleneck), layers.BLC)
        return (tuple(new_streams), bottleneck), None


class _FusionStack(nn.Module):
    """`depth` BottleneckLayers, scanned/rematerialised as spec says."""

    spec: TransformerSpec
    names: tuple[str, ...]
    depth: int

    @nn.compact
    def __call__(self, carry, masks, present, *, train: bool):
        return layers.repeat_layers(
            BottleneckLayer, self.spec, self.depth, carry, masks, present, train=train, names=self.names
        )


class BottleneckFusion(nn.Module):
    """Multimodal bottleneck transformer (MBT) as a fusion core.

    Each modality gets a CLS token and its own stack of `spec.depth` layers. Layers
    before `fusion_layer` see only their modality; from `fusion_layer` on, each also
    attends to `num_bottlenecks` shared tokens, the only path between modalities. The
    output is the mean of the present modalities' final-LayerNormed CLS tokens; with
    fusion_layer == depth no bottleneck exists and this is late fusion.
    """

    spec: TransformerSpec
    fusion_layer: int
    num_bottlenecks: int

    @classmethod
    def from_config(cls, config: Any) -> "BottleneckFusion":
        """Builds the core from config.fusion (width, depth, heads, mlp, fusion_layer,
        num_bottlenecks) and config.model."""
        spec = TransformerSpec.from_config(config.fusion, config.model, "config.fusion")
        fusion_layer, k = int(config.fusion.fusion_layer), int(config.fusion.num_bottlenecks)
        if not 0 <= fusion_layer <= spec.depth:
            raise ValueError(
                f"config.fusion.fusion_layer={fusion_layer} must be in [0, config.fusion.depth={spec.depth}]"
            )
        return cls(spec=spec, fusion_layer=fusion_layer, num_bottlenecks=k)

    @nn.compact
    def __call__(self, features: Features, *, train: bool) -> jax.Array:
        width, dtype = self.spec.width, layers.compute_dtype(self.spec.dtype)
        items = ordered(features)
        if not items:
            raise ValueError("BottleneckFusion needs at least one modality")
        names = tuple(name for _, name, _, _ in items)
        batch = items[0][2].shape[0]
        streams, masks = [], []
        for _, name, x, mask in items:
            cls_token = _vector(self, f"{name}_cls", (width,), ("embed",)).astype(dtype)
            x = _to_width(x, width, dtype, f"{name}_proj")
            streams.append(jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, width)), x], axis=1))
            masks.append(jnp.concatenate([jnp.ones((batch, 1), bool), mask.astype(bool)], axis=1))
        # A modality counts as present if any of its tokens is valid.
        present = jnp.stack([jnp.any(m[:, 1:], axis=1) for m in masks], axis=1)
        if self.fusion_layer > 0:
            early = dataclasses.replace(self.spec, depth=self.fusion_layer)
            streams = [
                layers.TransformerStack(early, final_norm=False, name=f"{name}_layers")(x, m, train=train)
                for name, x, m in zip(names, streams, masks)
            ]
        if self.fusion_layer < self.spec.depth:
            tokens = _vector(self, "bottleneck", (self.num_bottlenecks, width), ("length", "embed"))
            bottleneck = jnp.broadcast_to(tokens.astype(dtype), (batch, self.num_bottlenecks, width))
            fusion = _FusionStack(self.spec, names, self.spec.depth - self.fusion_layer, name="fusion_layers")
            streams, _ = fusion((tuple(streams), bottleneck), tuple(masks), present, train=train)
        cls_out = jnp.stack(
            [layers.layer_norm(dtype, f"{name}_ln")(x[:, 0]).astype(jnp.float32) for name, x in zip(names, streams)],
            axis=1,
        )  # [B, M, D]
        weights = present.astype(jnp.float32)[..., None]
        pooled = jnp.sum(cls_out * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return pooled.astype(dtype)


class CrossFusion(nn.Module):
    """Perceiver-style: `num_latents` learned latents cross-attend once to every
    modality's tokens (projected to the fusion width, tagged with a modality embedding,
    padding and absent modalities masked), then a transformer stack of `spec.depth`
    layers runs over the latents; the output is their mean."""

    spec: TransformerSpec
    num_latents: int

    @classmethod
    def from_config(cls, config: Any) -> "CrossFusion":
        """Builds the core from config.fusion (width, depth, heads, mlp, num_latents)."""
        spec = TransformerSpec.from_config(config.fusion, config.model, "config.fusion")
        k = int(config.fusion.num_latents)
        return cls(spec=spec, num_latents=k)

    @nn.compact
    def __call__(self, features: Features, *, train: bool) -> jax.Array:
        width, dtype = self.spec.width, layers.compute_dtype(self.spec.dtype)
        items = ordered(features)
        if not items:
            raise ValueError("CrossFusion needs at least one modality")
        modality_embed = _vector(self, "modality_embed", (len(MODALITIES), width), ("modality", "embed"))
        tokens, masks = [], []
        for index, name, x, mask in items:
            tokens.append(_to_width(x, width, dtype, f"{name}_proj") + modality_embed[index].astype(dtype))
            masks.append(mask.astype(bool))
        batch = tokens[0].shape[0]
        latents = _vector(self, "latents", (self.num_latents, width), ("length", "embed"))
        x = jnp.broadcast_to(latents.astype(dtype), (batch, self.num_latents, width))
        x = layers.CrossAttentionBlock(self.spec, deterministic=not train, name="cross")(
            x, jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)
        )
        x = layers.TransformerStack(self.spec, final_norm=True, name="transformer")(x, None, train=train)
        return jnp.mean(x.astype(jnp.float32), axis=1).astype(dtype)


FUSIONS = {
    "concat": ConcatFusion,
    "joint": JointFusion,
    "bottleneck": BottleneckFusion,
    "cross": CrossFusion,
}
