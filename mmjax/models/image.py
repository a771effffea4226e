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

from mmjax.models import layers, pooling
from mmjax.models.layers import TransformerSpec


def normalise_pixels(images: jax.Array, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> jax.Array:
    """uint8 images -> float32: x / 127.5 - 1 by default, else (x / 255 - mean) / std per
    channel (the image processor of a pretrained checkpoint)."""
    x = images.astype(jnp.float32)
    if mean is None:
        return x / 127.5 - 1.0
    return (x / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class ViTEncoder(nn.Module):
    """Vision transformer: non-overlapping square patches -> Dense -> [class token] ->
    positions -> [LayerNorm] -> stack. The defaults are mmjax's own ViT; the options make
    it ViTModel (cls_token), CLIP's vision tower (cls_token, pre_norm, pooling='cls' +
    pool_norm) or SigLIP's (pooling='map').

    `pixels` (float [B, H, W, 3], already normalised) replaces batch['image'], e.g. to
    feed a processor's pixel_values; return_pooled=True also returns the pooled vector.
    """

    spec: TransformerSpec
    patch: int
    image_size: int
    cls_token: bool = False  # a learned token ahead of the patches ('cls', [D]); positions cover it too
    pre_norm: bool = False  # LayerNorm 'ln_pre' before the stack (CLIP)
    pixel_mean: tuple[float, ...] | None = None  # None: x / 127.5 - 1; else (x / 255 - mean) / std
    pixel_std: tuple[float, ...] | None = None
    pooling: str = "none"  # pooling.POOLS
    pool_dense: str = ""  # pooling.POOL_DENSE
    pool_norm: bool = False
    pool_features: int = 0

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
        spec = TransformerSpec.from_config(sub, config.model, "config.model.image", lora=True)
        mean, std = tuple(sub.pixel_mean), tuple(sub.pixel_std)
        if bool(mean) != bool(std) or (mean and (len(mean) != 3 or len(std) != 3 or min(std) <= 0)):
            raise ValueError(f"config.model.image.pixel_mean={mean} and pixel_std={std} must both be () "
                             "or both hold 3 values (std positive)")
        pool, pool_dense = str(sub.pooling), str(sub.pool_dense)
        pooling.check("config.model.image", pool, pool_dense)
        return cls(spec=spec, patch=patch, image_size=size, cls_token=bool(sub.cls_token),
                   pre_norm=bool(sub.pre_norm),
                   pixel_mean=tuple(float(v) for v in mean) or None, pixel_std=tuple(float(v) for v in std) or None,
                   pooling=pool, pool_dense=pool_dense, pool_norm=bool(sub.pool_norm),
                   pool_features=int(sub.pool_features))

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool, pixels: jax.Array | None = None,
                 return_pooled: bool = False):
        images = batch["image"] if pixels is None else pixels
        b, h, w, _ = images.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch {self.patch}")
        dtype = layers.compute_dtype(self.spec.dtype)
        if pixels is None:
            x = normalise_pixels(images, self.pixel_mean, self.pixel_std).astype(dtype)
        else:
            x = pixels.astype(dtype)
        x = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=self.patch, q=self.patch)
        x = layers.dense(self.spec.width, ("patch", "embed"), dtype=dtype, name="patch_embed")(x)
        positions = (self.image_size // self.patch) ** 2
        if self.cls_token:
            token = self.param("cls", layers.boxed(nn.initializers.zeros_init(), ("embed",)), (self.spec.width,),
                               jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(token.astype(dtype), (b, 1, self.spec.width)), x], axis=1)
            positions += 1
        x = layers.PositionEmbedding(positions, name="pos_embed")(x)
        if self.pre_norm:
            x = layers.layer_norm(dtype, "ln_pre", self.spec.ln_eps)(x)
        x = layers.TransformerStack(self.spec, final_norm=self.spec.final_norm, name="transformer")(x, None, train=train)
        mask = jnp.ones((b, x.shape[1]), dtype=bool)
        pooled = None if self.pooling == "none" else pooling.from_fields(self, self.spec)(x, mask)
        return (x, mask, pooled) if return_pooled else (x, mask)


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
