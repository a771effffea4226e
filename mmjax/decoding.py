"""Decoding the 'generate' model: greedy, beam search and sampling on the decoder's KV cache.

    settings = DecodeSettings.from_config(config)           # config.decode
    ids = generate(model, variables, batch, settings)       # int32 [B, settings.max_length]
    fn = decode_fn(model, settings)                         # pure fn(params, batch) -> ids

`ids` are the generated tokens after BOS: the EOS that ends a sequence is kept and every
position after it is the pad id (media.decode_target turns a row into text). `generate`
jits `decode_fn` once per (model, settings) and so compiles once per batch shape;
`decode_fn` is what an export serialises (jax.export, a symbolic batch size: every other
shape is fixed by the settings and the data sizes).

  beam_size 1, temperature 0   greedy: the argmax each step;
  beam_size 1, temperature > 0 sampling from softmax(logits / temperature), over the top_k
                               most likely tokens when top_k > 0 (draws from settings.seed);
  beam_size k > 1              beam search: the k best prefixes by summed log-probability;
                               a beam that ended continues with pad at no cost, and the
                               result is the beam with the best sum / length**length_penalty.

Every step reads and extends the KV cache (models/decoder.py), so a token costs one
position of the decoder; cache=False instead re-runs the model for every token: the
teacher-forced decoder over the whole sequence (prefix and targets), the encoders computed
once (XLA hoists them out of the loop: their inputs do not change) or, with reencode=True,
every token as well, as a generate loop without a cache does. These are the references the
cached path is tested and timed against (bench/decode_speed.py). The loops run the decoder
on every token but the last, which is picked after them: a lax.cond around the step would
make XLA copy the cache every token. The cached path runs the decoder's layers as a loop,
its parameters unstacked once before the token loop (looped_for_decoding).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.contract import TARGET_TOKENS
from mmjax.models.decoder import unstack_layers

NEG_INF = -1e30  # scores of impossible beams: finite, so sums stay ordered and never NaN


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How to decode (config.decode); max_length counts generated tokens, EOS included."""

    max_length: int
    beam_size: int = 1
    temperature: float = 0.0
    top_k: int = 0
    length_penalty: float = 0.0
    seed: int = 0
    cache: bool = True  # False: re-run the model for every token (the uncached reference)
    reencode: bool = False  # with cache=False: the encoders too, every token (else XLA computes them once)

    @classmethod
    def from_config(cls, config: Any) -> "DecodeSettings":
        d = config.decode
        return cls(max_length=int(d.max_length) or int(config.data.target_length) - 1, beam_size=int(d.beam_size),
                   temperature=float(d.temperature), top_k=int(d.top_k), length_penalty=float(d.length_penalty),
                   seed=int(d.seed))


# ---------------------------------------------------------------------------- token choice
def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
    """Logits outside each row's k largest set to NEG_INF (k <= 0: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def choose(logits: jax.Array, settings: DecodeSettings, rng: jax.Array) -> jax.Array:
    """The next token [B] of logits [B, V]: argmax, or a draw at settings.temperature."""
    if settings.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = top_k_logits(logits.astype(jnp.float32) / settings.temperature, settings.top_k)
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------- search loops
StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]  # (tokens [N], state) -> (logits [N, V], state)


def sample_loop(first_logits: jax.Array, state: Any, step: StepFn, settings: DecodeSettings, *,
                eos_id: int, pad_id: int) -> jax.Array:
    """Greedy or sampled decoding: ids [B, max_length]; stops early once every row ended."""
    size, length = first_logits.shape[0], settings.max_length
    rng = jax.random.key(settings.seed)

    def pick(carry):  # the token at position t
        t, logits, state, ids, done = carry
        token = jnp.where(done, pad_id, choose(logits, settings, jax.random.fold_in(rng, t)))
        return t + 1, logits, state, ids.at[:, t].set(token), done | (token == eos_id)

    def body(carry):  # pick, then run the decoder on the token
        t, _, state, ids, done = carry = pick(carry)
        logits, state = step(ids[:, t - 1], state)
        return t, logits, state, ids, done

    def more(carry):
        t, _, _, _, done = carry
        return (t < length - 1) & ~jnp.all(done)

    ids = jnp.full((size, length), pad_id, jnp.int32)
    carry = (jnp.zeros((), jnp.int32), first_logits, state, ids, jnp.zeros((size,), bool))
    carry = jax.lax.while_loop(more, body, carry)
    # The last position needs no decoder step; rows that all ended earlier stay pad.
    return jax.lax.select(carry[0] == length - 1, pick(carry)[3], carry[3])


def beam_search(first_logits: jax.Array, state: Any, step: StepFn, settings: DecodeSettings, *,
                eos_id: int, pad_id: int, reorder: Callable[[Any, jax.Array], Any]) -> jax.Array:
    """Beam search over settings.beam_size beams: ids [B, max_length] of each row's best.

    `state` is the decoder state of the B rows after the prefill; `reorder(state, rows)`
    picks rows of a state of B * K (beam-major within each example)."""
    size, vocab = first_logits.shape
    k, length = settings.beam_size, settings.max_length
    rows = jnp.repeat(jnp.arange(size), k)
    state = reorder(state, rows)
    logits = jnp.repeat(first_logits, k, axis=0)
    scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (size, 1))  # one live beam at first
    ids = jnp.full((size, k, length), pad_id, jnp.int32)
    done = jnp.zeros((size, k), bool)
    lengths = jnp.zeros((size, k), jnp.int32)
    ended = jnp.full((vocab,), NEG_INF, jnp.float32).at[pad_id].set(0.0)  # an ended beam: pad, at no cost

    def extend(t, carry):  # the k best beams after position t, and their tokens
        logits, state, scores, ids, done, lengths = carry
        logp = jax.nn.log_softmax(jnp.maximum(logits.astype(jnp.float32), NEG_INF), axis=-1).reshape(size, k, vocab)
        logp = jnp.where(done[..., None], ended, jnp.maximum(logp, NEG_INF))
        total = (scores[..., None] + logp).reshape(size, k * vocab)
        scores, flat = jax.lax.top_k(total, k)
        beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        pick = lambda x: jnp.take_along_axis(x, beam, axis=1)  # noqa: E731
        ids = jnp.take_along_axis(ids, beam[..., None], axis=1).at[:, :, t].set(token)
        was_done = pick(done)
        done = was_done | (token == eos_id)
        lengths = pick(lengths) + (~was_done).astype(jnp.int32)
        state = reorder(state, (jnp.arange(size)[:, None] * k + beam).reshape(-1))
        return (logits, state, scores, ids, done, lengths), token

    def advance(t, carry):  # extend the beams, then run the decoder on their tokens
        (logits, state, *rest), token = extend(t, carry)
        logits, state = step(token.reshape(-1), state)
        return (logits, state, *rest)

    carry = jax.lax.fori_loop(0, length - 1, advance, (logits, state, scores, ids, done, lengths))
    _, _, scores, ids, done, lengths = extend(length - 1, carry)[0]  # the last token needs no step
    if settings.length_penalty:
        scores = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** settings.length_penalty
    best = jnp.argmax(scores, axis=1)
    return jnp.take_along_axis(ids, best[:, None, None], axis=1)[:, 0]


def search(first_logits, state, step: StepFn, settings: DecodeSettings, *, eos_id: int, pad_id: int,
           reorder) -> jax.Array:
    """The search settings asks for, over a step function (greedy, sampling or beams)."""
    if settings.beam_size > 1:
        return beam_search(first_logits, state, step, settings, eos_id=eos_id, pad_id=pad_id, reorder=reorder)
    return sample_loop(first_logits, state, step, settings, eos_id=eos_id, pad_id=pad_id)


# ---------------------------------------------------------------------------- the model
def looped_for_decoding(model: Any, params: Mapping[str, Any]) -> tuple[Any, dict]:
    """(model, params) with the decoder's layers as a loop, the form its KV cache needs.

    A scanned decoder slices each layer's parameters out of the stack inside the stack's
    loop, so a token loop around it would slice them again every token; unstacking them once
    here keeps that out of the token loop. Rematerialisation only matters for gradients, so
    the looped form goes without it."""
    decoder = model.decoder
    params = dict(nn.unbox(params))
    if not decoder.spec.scan:
        return model, params
    spec = dataclasses.replace(decoder.spec, scan=False, remat="none")
    params["decoder"] = unstack_layers(dict(params["decoder"]), spec.depth)
    return model.clone(decoder=decoder.clone(spec=spec)), params


def decode_fn(model: Any, settings: DecodeSettings) -> Callable[[Any, Mapping[str, jax.Array]], jax.Array]:
    """A pure fn(params, batch) -> ids int32 [B, max_length] (batch: the model's input keys;
    target_tokens, if there, are ignored). jit it, or jax.export it with a symbolic batch."""
    decoder = model.decoder
    if decoder is None:
        raise ValueError("decoding needs a model with a decoder (config.loss.task='generate')")
    if not 1 <= settings.max_length <= decoder.max_length - 1:
        raise ValueError(f"config.decode.max_length={settings.max_length} must be in 1..{decoder.max_length - 1} "
                         "(config.data.target_length - 1: BOS takes the first position)")
    ids = {"eos_id": decoder.eos_id, "pad_id": decoder.pad_id}

    def cached(params, batch):
        looped, params = looped_for_decoding(model, params)
        variables = {"params": params}
        first, cache = looped.apply(variables, batch, settings.max_length, method=looped.prefill)

        def step(tokens, cache):
            return looped.apply(variables, tokens, cache, method=looped.decode_step)

        return search(first, cache, step, settings, reorder=lambda c, rows: c.take(rows), **ids)

    def uncached(params, batch):
        # The state is the tokens so far after BOS, [N, max_length + 1]; each step runs the model on them all.
        size = jax.tree.leaves(batch)[0].shape[0]
        inputs = {k: v for k, v in batch.items() if k != TARGET_TOKENS}

        def rows_of(x, n):  # the batch's rows for n = B * beams tokens rows (beam-major per example)
            return x if n == size else jax.tree.map(lambda a: jnp.repeat(a, n // size, axis=0), x)

        def run(state):
            tokens, t = state
            rows = rows_of(inputs, tokens.shape[0])
            if settings.reencode:  # tie the inputs to this token's state, so XLA cannot hoist the encoders
                rows, tokens = jax.lax.optimization_barrier((rows, tokens))
            logits = model.apply({"params": params}, {**rows, TARGET_TOKENS: tokens})
            return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

        def step(token, state):
            tokens, t = state
            tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, t + 1, axis=1)
            return run((tokens, t + 1)), (tokens, t + 1)

        tokens = jnp.full((size, settings.max_length + 1), decoder.pad_id, jnp.int32).at[:, 0].set(decoder.bos_id)
        state = (tokens, jnp.zeros((), jnp.int32))
        return search(run(state), state, step, settings, reorder=lambda s, rows: (s[0][rows], s[1]), **ids)

    return cached if settings.cache else uncached


_JITTED: dict = {}


def generate(model: Any, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
             settings: DecodeSettings) -> jax.Array:
    """ids int32 [B, settings.max_length] for `batch` (see the module docstring); the jitted
    function is kept per (model, settings), so each batch shape compiles once."""
    key = (id(model), settings)
    if key not in _JITTED or _JITTED[key][0] is not model:
        _JITTED[key] = (model, jax.jit(decode_fn(model, settings)))
    return _JITTED[key][1](variables["params"], dict(batch))
