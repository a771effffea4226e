"""Text decoders after the encoders (config.loss.task='generate'), with an explicit KV cache.

    decoder = DECODERS[config.decoder.kind].from_config(config)
    logits = decoder(features, tokens, train=True)                # teacher forcing, [B, T, V]
    logits, cache = decoder(features, tokens, train=False, cache=decoder.empty_cache(...))
    logits, cache = decoder(None, next_token[:, None], train=False, cache=cache)

`features` is the encoders' {modality: (tokens [B, N, D_m], mask [B, N])} (fusion.Features);
each modality's tokens are projected to the decoder width and tagged with a learned
modality embedding; their masks say which are real (an absent modality's are all False).

  'prefix'  prefix-LM (PaliGemma-style): one causal stack over [modality tokens; target
            tokens]; the prefix attends to all of itself (full attention), each target
            position to the whole prefix and the targets up to itself.
  'cross'   a causal stack over the target tokens whose every block also cross-attends to
            the modality tokens (Whisper / CapPa-style).

Decoding. `empty_cache(features, batch, max_length)` describes the cache; the first call
with it (features given: the prefill) writes the prefix (prefix kind) or the
cross-attention keys and values (cross kind) and the given target tokens; every later call
(features None) appends its tokens. A step reads and writes the cache at `cache.length`, so
each new token costs O(cache length), not a re-run of the sequence. Teacher forcing and
decoding share every parameter. Decoding runs the layers as a Python loop (spec.scan False),
each with its own cache arrays: mmjax.decoding unstacks a scanned decoder's parameters once
(unstack_layers), outside its token loop.

Logits cover `vocab_size` rounded up to VOCAB_MULTIPLE (so 'vocab' divides over 'tensor');
the padding ids get -inf and are never predicted. Parameters and activations carry the
logical names of layers.py ('vocab' and 'heads' split over 'tensor').
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from mmjax.contract import MODALITIES
from mmjax.models import layers
from mmjax.models.fusion import Features, ordered
from mmjax.models.layers import BLC, TransformerSpec

VOCAB_MULTIPLE = 128  # logits' vocabulary padded to this, so any 'tensor' size up to 128 divides it
HEADS_ACT = ("act_batch", "act_length", "act_heads", "act_kv")


class KVCache(struct.PyTreeNode):
    """Keys and values, one array [B * N, S, H] per layer (tuples k, v: rows and heads
    flattened, heads-major); key_mask [B, S] (which cache slots hold real tokens); length:
    target tokens written so far (int32 scalar). Cross kind: memory_k / memory_v, per layer
    [B * N, M, H] (the modality tokens' projections, written by the prefill) and memory_mask
    [B, M]. prefix: the slots before the first target (prefix kind: the modality tokens;
    cross kind: 0).

    The layout lets the attention read the buffer the step wrote, with no copy: one array per
    layer, since slicing a layer out of an [L, ...] stack copies it, and one batch axis,
    since at batch 1 XLA drops a size-1 axis before a matmul and copies the cache to do so."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    key_mask: jax.Array
    length: jax.Array
    memory_k: tuple[jax.Array, ...] | None = None
    memory_v: tuple[jax.Array, ...] | None = None
    memory_mask: jax.Array | None = None
    prefix: int = struct.field(pytree_node=False, default=0)

    def take(self, rows: jax.Array) -> "KVCache":
        """The cache of batch rows `rows` (beam search reorders its beams with it)."""
        size = self.key_mask.shape[0]

        def rows_of(a):  # [B * N, ...] or [B, ...] -> the rows' [len(rows) * N, ...] or [len(rows), ...]
            return jnp.take(a.reshape(size, -1, *a.shape[1:]), rows, axis=0).reshape(-1, *a.shape[1:])

        def pick(x):
            return None if x is None else jax.tree.map(rows_of, x)
        return self.replace(k=pick(self.k), v=pick(self.v), key_mask=pick(self.key_mask),
                            memory_k=pick(self.memory_k), memory_v=pick(self.memory_v),
                            memory_mask=pick(self.memory_mask))


def _attend(q, k, v, mask, kind: str):
    if kind == "einsum":
        return layers.einsum_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def heads_major(x):
    """[B, T, N, H] -> [B * N, T, H], the cache's layout."""
    size, length, heads, dim = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(size * heads, length, dim)


def _attend_cached(q, k, v, mask):
    """q [B, n, N, H] over a cache k, v [B * N, S, H] with mask [B, 1, n, S] -> [B, n, N, H]."""
    size, n, heads, dim = q.shape
    mask = jnp.broadcast_to(mask, (size, heads, n, mask.shape[-1])).reshape(size * heads, n, -1)
    out = layers.heads_major_attention(heads_major(q), k, v, mask)
    return jnp.swapaxes(out.reshape(size, heads, n, dim), 1, 2)


def _write(slots, value, at, fresh: bool):
    """A layer's cache slots [B * N, S, H] with value [B * N, n, H] written from slot `at`;
    fresh (the prefill, which writes from slot 0): value padded to S slots, so the cache is
    written once rather than zeroed and then updated."""
    value = value.astype(slots.dtype)
    if fresh:
        return jnp.pad(value, ((0, 0), (0, slots.shape[1] - value.shape[1]), (0, 0)))
    return jax.lax.dynamic_update_slice(slots, value, (0, at, 0))


def _replace_layer(arrays: tuple, layer: int, value) -> tuple:
    """The per-layer tuple `arrays` with layer `layer`'s array replaced by `value`."""
    return arrays[:layer] + (value,) + arrays[layer + 1:]


class DecoderBlock(nn.Module):
    """Pre-LN: x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), memory)] + MLP(LN(x)).

    Carries (x, cache): cache None (teacher forcing) or the KV cache's per-layer arrays
    {k, v[, memory_k, memory_v]: tuples over layers}, of which this block (index `layer`, a
    Python int: decoding runs the layers as a loop) writes its own at slot `write`, in place.
    Broadcast args: mask [B, 1, n, S] of the self-attention, write (cache slot of x's first
    token), memory [B, M, D] or None (then memory_k/v come from the cache), memory_mask [B, M].
    """

    spec: TransformerSpec
    cross: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, layer, mask, write, memory, memory_mask):
        x, cache = carry
        spec, dtype = self.spec, layers.compute_dtype(self.spec.dtype)
        heads, head_dim = spec.heads, spec.width // spec.heads
        drop = nn.Dropout(spec.dropout, deterministic=self.deterministic)

        def proj(name):
            return layers.dense((heads, head_dim), ("embed", "heads", "kv"), dtype=dtype, name=name)

        def out(name):
            return layers.dense(spec.width, ("heads", "kv", "embed"), n_in=2, dtype=dtype, name=name)

        x = layers.constrain(x.astype(dtype), BLC)
        h = layers.layer_norm(dtype, "ln_attn", spec.ln_eps)(x)
        q, k, v = (layers.constrain(proj(n)(h), HEADS_ACT) for n in ("query", "key", "value"))
        if cache is None:  # teacher forcing
            a = _attend(q, k, v, mask, spec.attention)
        else:  # decoding: this step's keys join the cached ones, [B * N, S, H]
            fresh = memory is not None  # the prefill
            cache = dict(cache)
            for name, value in (("k", k), ("v", v)):
                written = _write(cache[name][layer], heads_major(value), write, fresh)
                cache[name] = _replace_layer(cache[name], layer, written)
            a = _attend_cached(q, cache["k"][layer].astype(dtype), cache["v"][layer].astype(dtype), mask)
        x = x + drop(out("out")(layers.constrain(a, HEADS_ACT)))
        if self.cross:
            h = layers.layer_norm(dtype, "ln_cross", spec.ln_eps)(x)
            cq = layers.constrain(proj("cross_query")(h), HEADS_ACT)
            cross_mask = layers.attention_mask(memory_mask)
            if memory is not None:
                mk = layers.constrain(proj("cross_key")(memory), HEADS_ACT)
                mv = layers.constrain(proj("cross_value")(memory), HEADS_ACT)
            if cache is None:
                a = _attend(cq, mk, mv, cross_mask, spec.attention)
            else:
                if memory is not None:  # the prefill writes the memory's keys and values
                    for name, value in (("memory_k", mk), ("memory_v", mv)):
                        written = heads_major(value).astype(cache[name][layer].dtype)
                        cache[name] = _replace_layer(cache[name], layer, written)
                a = _attend_cached(cq, cache["memory_k"][layer].astype(dtype),
                                   cache["memory_v"][layer].astype(dtype), cross_mask)
            has_memory = jnp.any(memory_mask, axis=-1)[:, None, None]  # no real token: no update (CrossAttentionBlock)
            x = x + drop(out("cross_out")(layers.constrain(a, HEADS_ACT))) * has_memory.astype(dtype)
        h = layers.layer_norm(dtype, "ln_mlp", spec.ln_eps)(x)
        x = x + drop(layers.MLP(spec.mlp, spec.dropout, self.deterministic, dtype, spec.activation, name="mlp")(h))
        return (layers.constrain(x, BLC), cache), None


def _stack(spec: TransformerSpec, cross: bool, train: bool):
    """`spec.depth` DecoderBlocks as fn((x, cache), mask, write, memory, memory_mask) ->
    (x, cache): one nn.scan named 'layers' under spec.scan, else a loop of 'layer_<i>'
    (the form decoding runs: unstack_layers maps one's parameters onto the other);
    rematerialised as spec.remat says."""
    block = DecoderBlock
    if spec.remat != "none":
        block = nn.remat(block, policy=layers.REMAT_POLICY[spec.remat], prevent_cse=not spec.scan)
    if spec.scan:
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                          length=spec.depth, unroll=spec.depth if spec.unroll else 1,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        stack = scanned(spec, cross, deterministic=not train, name="layers")
        return lambda carry, *args: stack(carry, jnp.arange(spec.depth), *args)[0]
    blocks = [block(spec, cross, deterministic=not train, name=f"layer_{i}") for i in range(spec.depth)]

    def loop(carry, *args):
        for i, b in enumerate(blocks):
            carry, _ = b(carry, i, *args)
        return carry
    return loop


def unstack_layers(params: dict, depth: int) -> dict:
    """A scanned decoder's parameters ('layers', stacked on axis 0) as the loop's 'layer_<i>'."""
    stacked = params["layers"]
    out = {k: v for k, v in params.items() if k != "layers"}
    out.update({f"layer_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(depth)})
    return out


@dataclasses.dataclass(frozen=True)
class _DecoderKeys:
    """config.decoder's stack keys in the shape TransformerSpec.from_config reads (the
    decoder's blocks are always pre-LN GELU blocks with biases)."""

    width: int
    depth: int
    heads: int
    mlp: int
    final_norm: bool = True
    norm: str = "pre"
    ln_eps: float = layers.DEFAULT_LN_EPS
    activation: str = "gelu_tanh"
    attn_bias: bool = True
    causal: bool = True


class Decoder(nn.Module):
    """Both kinds (see the module docstring); `cross` picks the form."""

    spec: TransformerSpec
    vocab_size: int  # media.target_vocab(tokenizer).size
    max_length: int  # target positions (config.data.target_length)
    cross: bool = False
    bos_id: int = 0  # the target vocabulary's special ids (media.TargetVocab), for decoding
    eos_id: int = 1
    pad_id: int = 0

    @classmethod
    def from_config(cls, config: Any, vocab: Any) -> "Decoder":
        """From config.decoder, config.model (dtype, remat, scan, attention) and
        config.data.target_length; `vocab` is media.target_vocab(the run's tokenizer)."""
        d = config.decoder
        sub = _DecoderKeys(d.width, d.depth, d.heads, d.mlp)
        spec = dataclasses.replace(TransformerSpec.from_config(sub, config.model, "config.decoder"),
                                   dropout=float(d.dropout))
        return cls(spec=spec, vocab_size=int(vocab.size), max_length=int(config.data.target_length),
                   cross=d.kind == "cross", bos_id=int(vocab.bos_id), eos_id=int(vocab.eos_id),
                   pad_id=int(vocab.pad_id))

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def empty_cache(self, features: Features, batch: int, max_length: int) -> KVCache:
        """A zero cache for `batch` rows and `max_length` target tokens (BOS included) after
        the modality tokens of `features` (used for their shapes only)."""
        spec, dtype = self.spec, layers.compute_dtype(self.spec.dtype)
        memory = sum(x.shape[1] for _, _, x, _ in ordered(features))
        prefix = 0 if self.cross else memory
        slots = prefix + max_length

        def per_layer(length):  # the prefill overwrites all of it, so XLA never materialises these zeros
            return tuple(jnp.zeros((batch * spec.heads, length, spec.width // spec.heads), dtype)
                         for _ in range(spec.depth))

        kv = per_layer(slots)
        extra = {}
        if self.cross:
            mem = per_layer(memory)
            extra = dict(memory_k=mem, memory_v=mem, memory_mask=jnp.zeros((batch, memory), bool))
        return KVCache(k=kv, v=kv, key_mask=jnp.zeros((batch, slots), bool), length=jnp.zeros((), jnp.int32),
                       prefix=prefix, **extra)

    def _memory(self, features: Features, dtype) -> tuple[jax.Array, jax.Array]:
        """The modality tokens at the decoder width, modality-tagged: [B, M, D], mask [B, M]."""
        width = self.spec.width
        table = self.param("modality_embed", layers.boxed(nn.initializers.normal(0.02), ("modality", "embed")),
                           (len(MODALITIES), width), jnp.float32)
        tokens, masks = [], []
        for index, name, x, mask in ordered(features):
            x = layers.dense(width, (None, "embed"), dtype=dtype, name=f"{name}_proj")(x.astype(dtype))
            tokens.append(x + table[index].astype(dtype))
            masks.append(mask.astype(bool))
        return layers.constrain(jnp.concatenate(tokens, axis=1), BLC), jnp.concatenate(masks, axis=1)

    @nn.compact
    def __call__(self, features: Features | None, tokens: jax.Array, *, train: bool, cache: KVCache | None = None):
        """tokens [B, n] int32 -> logits [B, n, padded_vocab] float32 (position i predicts token
        i + 1); with a cache also the updated cache. features None: a decoding step."""
        spec, dtype = self.spec, layers.compute_dtype(self.spec.dtype)
        n = tokens.shape[1]
        start = jnp.zeros((), jnp.int32) if cache is None else cache.length  # target position of tokens[:, 0]
        if n > self.max_length:
            raise ValueError(f"{n} target tokens but the decoder has {self.max_length} positions "
                             "(config.data.target_length)")
        x = layers.TokenEmbedding(self.padded_vocab, spec.width, dtype, name="embed")(tokens)
        positions = self.param("positions", layers.boxed(nn.initializers.normal(0.02), ("length", "embed")),
                               (self.max_length, spec.width), jnp.float32)
        x = x + jax.lax.dynamic_slice_in_dim(positions, start, n).astype(dtype)[None]
        memory = memory_mask = None
        if features is not None:
            memory, memory_mask = self._memory(features, dtype)
        elif cache is None or (self.cross and cache.memory_mask is None):
            raise ValueError("a decoder call without features needs the cache a prefill wrote")
        if cache is not None and spec.scan:
            raise ValueError("decoding with a KV cache runs the decoder's layers as a loop: decode through "
                             "mmjax.decoding (decoding.looped_for_decoding unstacks a scanned decoder)")
        real = jnp.ones(tokens.shape, bool)  # target tokens count as real; the loss masks padding
        prefix = 0
        if not self.cross and memory is not None:  # prefix-LM: the modality tokens go first
            x, real = jnp.concatenate([memory, x], axis=1), jnp.concatenate([memory_mask, real], axis=1)
            prefix = memory.shape[1]
        if cache is None:
            key_mask, write, slots = real, 0, x.shape[1]
            query_pos = jnp.arange(slots)
            prefix_len = prefix
        else:
            write = cache.prefix + start - prefix  # the prefill writes the prefix at slot 0
            key_mask = jax.lax.dynamic_update_slice(cache.key_mask, real, (0, write))
            slots, prefix_len = cache.key_mask.shape[1], cache.prefix
            query_pos = write + jnp.arange(x.shape[1])
            if self.cross and memory is None:
                memory_mask = cache.memory_mask
        key_pos = jnp.arange(slots)
        # Query at slot q reads key s if s is real and s is in the prefix or s <= q.
        allowed = (key_pos[None, :] < prefix_len) | (key_pos[None, :] <= query_pos[:, None])
        mask = key_mask[:, None, None, :] & allowed[None, None]
        mask = mask | ~jnp.any(mask, axis=-1, keepdims=True)  # all-padding rows: finite, never read
        arrays = None
        if cache is not None:
            arrays = {"k": cache.k, "v": cache.v}
            if self.cross:
                arrays.update(memory_k=cache.memory_k, memory_v=cache.memory_v)
        x, arrays = _stack(spec, self.cross, train)((x, arrays), mask, write, memory, memory_mask)
        x = layers.layer_norm(dtype, "ln_final", spec.ln_eps)(x[:, prefix:])
        logits = layers.dense(self.padded_vocab, ("embed", "vocab"), dtype=jnp.float32, name="logits")(
            x.astype(jnp.float32))
        logits = jnp.where(jnp.arange(self.padded_vocab) < self.vocab_size, logits, -jnp.inf)
        logits = layers.constrain(logits, ("act_batch", "act_length", None))
        if cache is None:
            return logits
        new = cache.replace(k=arrays["k"], v=arrays["v"], key_mask=key_mask, length=start + n)
        if self.cross and memory is not None:
            new = new.replace(memory_k=arrays["memory_k"], memory_v=arrays["memory_v"], memory_mask=memory_mask)
        return logits, new


DECODERS = {"prefix": Decoder, "cross": Decoder}  # config.decoder.kind -> class (the kind sets `cross`)
