"""Text encoders: int32 tokens [B, L] (padded with pad_id, 0 for mmjax's tokenizers) ->
(tokens [B, N, D], mask [B, N]). The returned mask marks the real tokens (what the fusion
and mmjax.embed keep), even where attention sees the padding (mask='none', SigLIP).

'transformer': token + position embeddings -> transformer (N = L). 'lstm': token
embeddings -> an LSTM that skips padding; it returns its final state as one token
(N = 1, like Keras' LSTM) or, with config.model.text.return_sequences, every state (N = L).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.contract import PAD_ID
from mmjax.models import layers, pooling
from mmjax.models.layers import TransformerSpec

# config.model.text.mask: which tokens are real (attended to, and valid for the fusion).
#   'pad'  every id but pad_id (the contract: 0 is padding; BERT's [PAD]);
#   'eos'  up to and including the first eos_id (CLIP and SigLIP pad with their end token);
#   'none' every position (SigLIP as trained: no attention mask).
# (choices: config/schema.py TEXT_MASKS)


def first_index(tokens: jax.Array, token_id: int) -> jax.Array:
    """Position of the first `token_id` in each row of tokens [B, L]; L - 1 where there is none."""
    hit = tokens == token_id
    return jnp.where(jnp.any(hit, axis=1), jnp.argmax(hit, axis=1), tokens.shape[1] - 1)


class TextTransformer(nn.Module):
    """Token + position embeddings -> transformer stack; padding is masked in attention.

    The defaults are mmjax's byte-level encoder. The options make it BERT (type_vocab,
    embed_norm, spec.norm='post', pooling='cls' + pool_dense='tanh'), CLIP's text tower
    (spec.causal, mask='eos', pooling='index' at the first eos_id) or SigLIP's (pooling='last' +
    pool_dense='linear'). return_pooled=True also returns the pooled vector.
    """

    spec: TransformerSpec
    vocab_size: int
    max_length: int
    lookup: str = "one_hot"  # TokenEmbedding's: 'one_hot' | 'gather'
    type_vocab: int = 0  # > 0: token-type embeddings ('type_embed'; batch['text_type'], default type 0)
    embed_norm: bool = False  # LayerNorm 'ln_embed' on the summed embeddings (BERT)
    pad_id: int = PAD_ID
    mask: str = "pad"  # MASKS
    eos_id: int = -1  # the end token for mask='eos' and pooling='index'
    pooling: str = "none"  # pooling.POOLS; 'index' pools the first eos_id
    pool_dense: str = ""
    pool_norm: bool = False
    pool_features: int = 0

    @classmethod
    def from_config(cls, config: Any) -> "TextTransformer":
        """Builds the encoder from config.model.text, config.model and config.data."""
        sub = config.model.text
        vocab, length = _check_vocab(config), int(config.data.text_length)
        positions = int(sub.max_positions) or length
        if positions < length:
            raise ValueError(f"config.model.text.max_positions={positions} is less than "
                             f"config.data.text_length={length}")
        spec = TransformerSpec.from_config(sub, config.model, "config.model.text", lora=True)
        mask, eos_id, pool = str(sub.mask), int(sub.eos_id), str(sub.pooling)
        pooling.check("config.model.text", pool, str(sub.pool_dense))
        if (mask == "eos" or pool == "index") and not 0 <= eos_id < vocab:
            raise ValueError(f"config.model.text.eos_id={eos_id} must be a token id below vocab_size={vocab} "
                             f"for mask={mask!r}, pooling={pool!r}")
        return cls(spec=spec, vocab_size=vocab, max_length=positions, lookup=str(sub.lookup),
                   type_vocab=int(sub.type_vocab), embed_norm=bool(sub.embed_norm),
                   pad_id=int(sub.pad_id), mask=mask, eos_id=eos_id, pooling=pool,
                   pool_dense=str(sub.pool_dense), pool_norm=bool(sub.pool_norm),
                   pool_features=int(sub.pool_features))

    def token_mask(self, tokens: jax.Array) -> jax.Array:
        """bool [B, L]: the tokens attention sees, by self.mask."""
        if self.mask == "none":
            return jnp.ones(tokens.shape, bool)
        return self.real_tokens(tokens)

    def real_tokens(self, tokens: jax.Array) -> jax.Array:
        """bool [B, L]: the text's own tokens, padding excluded: up to and including the first
        eos_id where the tokenizer pads with its end token (mask='eos', or 'none' with an eos_id),
        else every id but pad_id."""
        if self.mask == "eos" or (self.mask == "none" and self.eos_id >= 0):
            return jnp.arange(tokens.shape[1])[None, :] <= first_index(tokens, self.eos_id)[:, None]
        return tokens != self.pad_id

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool, return_pooled: bool = False):
        tokens = batch["text"]
        mask = self.token_mask(tokens)
        dtype = layers.compute_dtype(self.spec.dtype)
        x = layers.TokenEmbedding(self.vocab_size, self.spec.width, dtype, self.lookup, name="token_embed")(tokens)
        x = layers.PositionEmbedding(self.max_length, name="pos_embed")(x)
        if self.type_vocab:
            types = batch.get("text_type", jnp.zeros_like(tokens))
            x = x + layers.TokenEmbedding(self.type_vocab, self.spec.width, dtype, "gather", name="type_embed")(types)
        if self.embed_norm:
            x = layers.layer_norm(dtype, "ln_embed", self.spec.ln_eps)(x)
        x = layers.TransformerStack(self.spec, final_norm=self.spec.final_norm, name="transformer")(x, mask, train=train)
        pooled = None
        if self.pooling != "none":
            index = first_index(tokens, self.eos_id) if self.pooling == "index" else None
            pooled = pooling.from_fields(self, self.spec)(x, mask, index)
        real = mask if self.mask != "none" else self.real_tokens(tokens)
        return (x, real, pooled) if return_pooled else (x, real)


def _check_vocab(config: Any) -> int:
    vocab = int(config.model.text.vocab_size)
    if vocab <= 0:
        raise ValueError(f"config.model.text.vocab_size={vocab} must be positive")
    pretrained = bool(config.model.text.init_from)  # the checkpoint's own vocabulary
    if vocab < 258 and not pretrained:  # byte-level tokens: 256 bytes + padding + reserved
        raise ValueError(f"config.model.text.vocab_size={vocab} must be at least 258")
    return vocab


def _recurrent_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Orthogonal [units, 4 * units] (as Keras), reshaped to [units, 4, units]."""
    flat = nn.initializers.orthogonal()(key, (shape[0], shape[1] * shape[2]), dtype)
    return flat.reshape(shape)


def _forget_bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Zeros, except 1 for the forget gate (Keras' unit_forget_bias)."""
    del key
    return jnp.zeros(shape, dtype).at[1].set(1.0)


class LSTM(nn.Module):
    """An LSTM over x [B, L, D] that holds its state through masked (padding) steps.

    Gates are ordered (input, forget, cell, output). Parameters match Keras' LSTM:
    input kernel [D, 4, U], recurrent kernel [U, 4, U], bias [4, U], so the count is
    4 * (U * (D + U) + U). The input projection of all steps is one matmul; only the
    recurrence runs under lax.scan. Returns (states [B, L, U], final state [B, U]); the
    final state is the one after the last valid token (zeros if there is none).
    """

    units: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        units, width = self.units, x.shape[-1]
        in_init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        w_in = self.param("input_kernel", layers.boxed(in_init, ("embed", None, "mlp")), (width, 4, units), jnp.float32)
        # The recurrent input dim stays replicated: sharding it would add a collective per step.
        w_rec = self.param("recurrent_kernel", layers.boxed(_recurrent_init, (None, None, "mlp")), (units, 4, units), jnp.float32)
        bias = self.param("bias", layers.boxed(_forget_bias_init, (None, "mlp")), (4, units), jnp.float32)
        gates_in = jnp.einsum("bld,dgu->lbgu", x.astype(self.dtype), w_in.astype(self.dtype)) + bias.astype(self.dtype)
        w_rec = w_rec.astype(self.dtype)

        def step(carry, inputs):
            h, c = carry
            g_in, valid = inputs
            z = g_in + jnp.einsum("bu,ugv->bgv", h, w_rec)
            i, f, g, o = (z[:, k] for k in range(4))
            c_new = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
            h_new = nn.sigmoid(o) * jnp.tanh(c_new)
            valid = valid[:, None]
            h, c = jnp.where(valid, h_new, h), jnp.where(valid, c_new, c)
            return (h, c), h

        zeros = jnp.zeros((x.shape[0], units), self.dtype)
        (h, _), states = jax.lax.scan(step, (zeros, zeros), (gates_in, mask.T))
        return jnp.swapaxes(states, 0, 1), h


class TextLSTM(nn.Module):
    """Token embeddings (config.model.text.width) -> LSTM(width), padding skipped."""

    width: int
    vocab_size: int
    return_sequences: bool = False
    dtype: str = "float32"
    pad_id: int = PAD_ID

    @classmethod
    def from_config(cls, config: Any) -> "TextLSTM":
        """Builds the encoder from config.model.text (width, vocab_size, return_sequences)."""
        sub = config.model.text
        return cls(
            width=int(sub.width),
            vocab_size=_check_vocab(config),
            return_sequences=bool(sub.return_sequences),
            dtype=str(config.model.dtype),
            pad_id=int(sub.pad_id),
        )

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> tuple[jax.Array, jax.Array]:
        tokens = batch["text"]
        mask = tokens != self.pad_id
        dtype = layers.compute_dtype(self.dtype)
        x = layers.TokenEmbedding(self.vocab_size, self.width, dtype, name="token_embed")(tokens)
        states, final = LSTM(self.width, dtype, name="lstm")(x, mask)
        if self.return_sequences:
            return layers.constrain(states, layers.BLC), mask
        return final[:, None, :], jnp.any(mask, axis=1, keepdims=True)


TEXT_ENCODERS = {"transformer": TextTransformer, "lstm": TextLSTM}
