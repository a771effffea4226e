"""Image encoders: uint8 images [B, H, W, 3] -> (tokens [B, N, D], mask [B, N]).

'vit': patches -> transformer. 'cnn': Conv2D/ReLU/MaxPool stages; every pooled pixel
is a token of config.model.image.channels[-1] features.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.layers import TransformerSpec


class ViTEncoder(nn.Module):
    """Vision transformer: non-overlapping square patches -> Dense -> positions -> stack."""

    spec: TransformerSpec
    patch: int
    image_size: int

    @classmethod
    def from_config(cls, config: Any) -> "ViTEncoder":
        """Builds the encoder from config.model.image, config.model and config.data."""
        sub = config.model.image
        patch, size = int(sub.patch), int(config.data.image_size)
        if patch <= 0 or size % patch:
            raise ValueError(
                f"config.data.image_size={size} must be a multiple of "
                f"config.model.image.patch={patch}"
            )
        spec = TransformerSpec.from_config(sub, config.model, "config.model.image")
        return cls(spec=spec, patch=patch, image_size=size)

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[jax.Array, jax.Array]:
        images = batch["image"]
        b, h, w, _ = images.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch {self.patch}")
        dtype = layers.compute_dtype(self.spec.dtype)
        x = (images.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)
        x = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=self.patch, q=self.patch)
        x = layers.dense(self.spec.width, ("patch", "embed"), dtype=dtype, name="patch_embed")(x)
        x = layers.PositionEmbedding((self.image_size // self.patch) ** 2, name="pos_embed")(x)
        x = layers.TransformerStack(self.spec, final_norm=self.spec.final_norm, name="transformer")(x, None, train=train)
        return x, jnp.ones((b, x.shape[1]), dtype=bool)


class ImageCNN(nn.Module):
    """Conv2D(c, kernel, 'VALID', ReLU) -> MaxPool(pool) for each c in `channels`; the
    pooled feature map [B, H', W', C] becomes H' * W' tokens (row-major), all valid."""

    channels: tuple[int, ...]
    kernel: int
    pool: int
    dtype: str = "float32"

    @classmethod
    def from_config(cls, config: Any) -> "ImageCNN":
        """Builds the encoder from config.model.image (channels, kernel, pool) and config.data
        (the schema checked each key; this checks that the image fits the stages)."""
        sub = config.model.image
        channels = tuple(int(c) for c in sub.channels)
        kernel, pool = int(sub.kernel), int(sub.pool)
        size = int(config.data.image_size)
        if layers.conv_output_size(size, kernel, pool, len(channels)) < 1:
            raise ValueError(
                f"config.data.image_size={size} is too small for {len(channels)} conv stages "
                f"(config.model.image.channels={channels}, kernel={kernel}, pool={pool})"
            )
        return cls(channels=channels, kernel=kernel, pool=pool, dtype=str(config.model.dtype))

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[jax.Array, jax.Array]:
        dtype = layers.compute_dtype(self.dtype)
        x = (batch["image"].astype(jnp.float32) / 127.5 - 1.0).astype(dtype)
        for i, features in enumerate(self.channels):
            x = layers.ConvStage(features, self.kernel, self.pool, dtype, name=f"conv_{i}")(x)
        x = einops.rearrange(x, "b h w c -> b (h w) c")
        return layers.constrain(x, layers.BLC), jnp.ones(x.shape[:2], dtype=bool)


IMAGE_ENCODERS = {"vit": ViTEncoder, "cnn": ImageCNN}
