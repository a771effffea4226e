"""mmjax/decoding.py: greedy, beam search and sampling, cached against uncached, beam
search against exhaustive search, one compile per shape, export with a symbolic batch."""
import dataclasses
import itertools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "models"))
from test_decoder import B, T, generate_config, init, make_batch  # noqa: E402

from mmjax import decoding, media  # noqa: E402
from mmjax.models.multimodal import build_model  # noqa: E402

PAD, EOS = 0, 1


# ---------------------------------------------------------------- a toy Markov "model"
def markov(seed=0, vocab=4):
    """Log-probs of the next token given the last one: [vocab, vocab] (row = last token)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.log(rng.dirichlet(np.full(vocab, 0.5), vocab)), jnp.float32)


def run_toy(table, settings, first=2):
    start = jnp.full((1,), first, jnp.int32)
    step = lambda tokens, last: (table[tokens], tokens)  # noqa: E731
    return decoding.search(table[start], start, step, settings, eos_id=EOS, pad_id=PAD,
                           reorder=lambda last, rows: last[rows])[0]


def score(table, ids, first=2):
    """Summed log-prob of a decoded row (nothing after its EOS counts)."""
    total, last = 0.0, first
    for t in ids:
        total += float(table[last, t])
        if t == EOS:
            break
        last = t
    return total


def exhaustive(table, length, first=2):
    vocab = table.shape[0]
    best = max((seq for seq in itertools.product(range(vocab), repeat=length)),
               key=lambda seq: score(table, seq, first))
    return score(table, best, first)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_exhaustive_search(seed):
    table, length = markov(seed), 3
    ids = run_toy(table, decoding.DecodeSettings(max_length=length, beam_size=4 ** (length - 1)))
    assert score(table, np.asarray(ids)) == pytest.approx(exhaustive(table, length), abs=1e-5)
    after = list(np.asarray(ids))
    if EOS in after:  # pad after the end
        assert all(t == PAD for t in after[after.index(EOS) + 1:])


def test_beam_beats_greedy_on_a_constructed_case():
    # After 2: 3 (p .6) or 2 (p .4); after 3 every token is equally likely (.25). Two tokens
    # deep, greedy takes 3 then anything (.15); the best is 2 then 3 (.24).
    tiny = 1e-6
    p = np.full((4, 4), 0.25)
    p[2] = [tiny, tiny, 0.4, 0.6 - 2 * tiny]
    table = jnp.log(jnp.asarray(p, jnp.float32))
    greedy = np.asarray(run_toy(table, decoding.DecodeSettings(max_length=2)))
    beam = np.asarray(run_toy(table, decoding.DecodeSettings(max_length=2, beam_size=2)))
    assert greedy[0] == 3 and list(beam) == [2, 3]
    assert score(table, beam) > score(table, greedy) + 0.4
    assert score(table, beam) == pytest.approx(exhaustive(table, 2), abs=1e-5)


def test_beam_of_one_is_greedy():
    table = markov(3)
    settings = decoding.DecodeSettings(max_length=5)
    greedy = run_toy(table, settings)
    one_beam = decoding.beam_search(table[jnp.array([2])], jnp.array([2]), lambda tk, last: (table[tk], tk),
                                    dataclasses.replace(settings, beam_size=1), eos_id=EOS, pad_id=PAD,
                                    reorder=lambda last, rows: last[rows])[0]
    np.testing.assert_array_equal(greedy, one_beam)


def test_sampling_keeps_to_top_k_and_its_seed():
    logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4]] * 2000))
    settings = decoding.DecodeSettings(max_length=1, temperature=1.0, top_k=2)
    draws = np.asarray(decoding.choose(logits, settings, jax.random.key(0)))
    assert set(draws) == {2, 3} and abs(np.mean(draws == 3) - 4 / 7) < 0.05
    np.testing.assert_array_equal(draws, decoding.choose(logits, settings, jax.random.key(0)))
    top1 = decoding.choose(logits, dataclasses.replace(settings, top_k=1), jax.random.key(1))
    np.testing.assert_array_equal(top1, decoding.choose(logits, decoding.DecodeSettings(1), None))


# ---------------------------------------------------------------- the model
@pytest.fixture(scope="module", params=["prefix", "cross"])
def trained_like(request):
    config = generate_config(request.param)
    model = build_model(config, 1)
    batch = make_batch(config)
    return model, init(model, batch), batch


@pytest.mark.parametrize("beam_size", [1, 3])
def test_cached_decoding_equals_uncached(trained_like, beam_size):
    model, variables, batch = trained_like
    settings = decoding.DecodeSettings(max_length=T - 1, beam_size=beam_size)
    cached = decoding.generate(model, variables, batch, settings)
    uncached = decoding.generate(model, variables, batch, dataclasses.replace(settings, cache=False))
    assert cached.shape == (B, T - 1) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(cached, uncached)
    if beam_size == 1:  # the reference that re-runs the encoders every token too
        reencoded = dataclasses.replace(settings, cache=False, reencode=True)
        np.testing.assert_array_equal(cached, decoding.generate(model, variables, batch, reencoded))
    vocab = media.target_vocab()
    rows = np.asarray(cached)
    for row in rows:  # pad after an EOS; no special id inside
        if vocab.eos_id in row:
            assert all(t == vocab.pad_id for t in row[list(row).index(vocab.eos_id) + 1:])
        assert vocab.bos_id not in row and max(row) < vocab.size


def test_generate_compiles_once_per_shape(trained_like):
    model, variables, batch = trained_like
    settings = decoding.DecodeSettings(max_length=4)
    first = decoding.generate(model, variables, batch, settings)
    jitted = decoding._JITTED[(id(model), settings)][1]
    again = decoding.generate(model, variables, {k: v + 0 for k, v in batch.items()}, settings)
    np.testing.assert_array_equal(first, again)
    assert jitted._cache_size() == 1
    half = {k: v[:2] for k, v in batch.items()}
    np.testing.assert_array_equal(decoding.generate(model, variables, half, settings), first[:2])
    assert jitted._cache_size() == 2


def test_decode_fn_exports_with_a_symbolic_batch(trained_like):
    model, variables, batch = trained_like
    variables = nn.unbox(variables)  # what a checkpoint holds: plain arrays
    settings = decoding.DecodeSettings(max_length=4, beam_size=2)
    inputs = {k: v for k, v in batch.items() if not k.startswith("target")}
    b, = jax.export.symbolic_shape("b")
    exported = jax.export.export(jax.jit(decoding.decode_fn(model, settings)))(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables["params"]),
        {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype) for k, v in inputs.items()})
    restored = jax.export.deserialize(exported.serialize())
    want = decoding.generate(model, variables, inputs, settings)
    np.testing.assert_array_equal(restored.call(variables["params"], inputs), want)
    np.testing.assert_array_equal(restored.call(variables["params"], {k: v[:1] for k, v in inputs.items()}), want[:1])


def test_decode_length_beyond_the_decoder_is_one_line(trained_like):
    model, _, _ = trained_like
    with pytest.raises(ValueError, match=r"config.decode.max_length=10 must be in 1..9"):
        decoding.decode_fn(model, decoding.DecodeSettings(max_length=T))
