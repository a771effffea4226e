"""Text encoders: int32 tokens [B, L] (0 = padding) -> (tokens [B, L, D], mask [B, L])."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from mmjax.models import layers
from mmjax.models.layers import TransformerSpec

PAD_ID = 0  # the contract's padding token


class TextTransformer(nn.Module):
    """Token + position embeddings -> transformer stack; padding is masked in attention."""

    spec: TransformerSpec
    vocab_size: int
    max_length: int

    @classmethod
    def from_config(cls, config: Any) -> "TextTransformer":
        """Builds the encoder from config.model.text, config.model and config.data."""
        sub = config.model.text
        vocab, length = int(sub.vocab_size), int(config.data.text_length)
        if vocab < 258:  # byte-level tokens: 256 bytes + padding + reserved
            raise ValueError(f"config.model.text.vocab_size={vocab} must be at least 258")
        if length <= 0:
            raise ValueError(f"config.data.text_length={length} must be positive")
        spec = TransformerSpec.from_config(sub, config.model, "config.model.text")
        return cls(spec=spec, vocab_size=vocab, max_length=length)

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[jax.Array, jax.Array]:
        tokens = batch["text"]
        mask = tokens != PAD_ID
        dtype = layers.compute_dtype(self.spec.dtype)
        x = layers.TokenEmbedding(self.vocab_size, self.spec.width, dtype, name="token_embed")(tokens)
        x = layers.PositionEmbedding(self.max_length, name="pos_embed")(x)
        x = layers.TransformerStack(self.spec, name="transformer")(x, mask, train=train)
        return x, mask


TEXT_ENCODERS = {"transformer": TextTransformer}
