"""Tests for the image, text and audio encoders: shapes, dtypes, padding invariance."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.models import audio as audio_lib
from mmjax.models.audio import AudioTransformer
from mmjax.models.image import ViTEncoder
from mmjax.models.text import TextTransformer

B = 2


def tiny_config(dtype: str = "float32") -> ml_collections.ConfigDict:
    """The contract's keys at test size."""
    block = dict(width=16, depth=1, heads=2, mlp=32)
    return ml_collections.ConfigDict(
        dict(
            modalities=("image", "text", "audio"),
            seed=0,
            data=dict(image_size=8, audio_rate=8000, audio_samples=1024, text_length=16),
            model=dict(
                dtype=dtype,
                remat="none",
                scan=False,
                dropout=0.0,
                image=dict(kind="vit", patch=4, **block),
                text=dict(kind="transformer", vocab_size=384, **block),
                audio=dict(
                    kind="transformer", n_mels=16, window=128, hop=64,
                    patch_time=2, patch_freq=8, **block,
                ),
            ),
            fusion=dict(kind="joint", **block),
        )
    )


def pooled(tokens, mask):
    """Masked mean over valid tokens, in float32."""
    m = mask[..., None].astype(jnp.float32)
    return jnp.sum(tokens.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def batch_for(config, audio_samples=None, text_length=None, seed=0):
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    samples = audio_samples or config.data.audio_samples
    length = text_length or config.data.text_length
    text = np.zeros((B, length), np.int32)
    text[0, :5] = rng.integers(2, 258, 5)
    text[1, :3] = rng.integers(2, 258, 3)
    audio = np.zeros((B, samples), np.float32)
    audio[:, :700] = rng.uniform(-1, 1, (B, 700))
    return dict(
        image=jnp.asarray(rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8)),
        text=jnp.asarray(text),
        audio=jnp.asarray(audio),
        audio_length=jnp.array([700, 300], jnp.int32),
    )


ENCODERS = [("image", ViTEncoder, 4), ("text", TextTransformer, 16), ("audio", AudioTransformer, 8 * 2)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name,cls,tokens", ENCODERS)
def test_shapes_and_dtypes(name, cls, tokens, dtype):
    config = tiny_config(dtype)
    encoder = cls.from_config(config)
    batch = batch_for(config)
    params = encoder.init(jax.random.key(0), batch, train=False)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    x, mask = jax.jit(lambda p, b: encoder.apply(p, b, train=False))(params, batch)
    # audio: 1024 samples / hop 64 = 16 frames -> 8 time patches x 2 freq patches.
    assert x.shape == (B, tokens, 16) and x.dtype == jnp.dtype(dtype)
    assert mask.shape == (B, tokens) and mask.dtype == bool
    assert bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))


def test_text_mask_and_padding_invariance():
    """Same valid tokens followed by different amounts of padding: same valid outputs."""
    config = tiny_config()
    encoder = TextTransformer.from_config(config)
    short, long = batch_for(config, text_length=8), batch_for(config, text_length=16)
    np.testing.assert_array_equal(short["text"], long["text"][:, :8])
    params = encoder.init(jax.random.key(0), long, train=False)
    x_short, m_short = encoder.apply(params, short, train=False)
    x_long, m_long = encoder.apply(params, long, train=False)
    np.testing.assert_array_equal(m_short.sum(1), [5, 3])
    np.testing.assert_array_equal(m_long.sum(1), [5, 3])
    np.testing.assert_allclose(x_short[0, :5], x_long[0, :5], atol=1e-5)
    np.testing.assert_allclose(pooled(x_short, m_short), pooled(x_long, m_long), atol=1e-5)


def test_audio_padding_invariance():
    """Zero padding of any length, or garbage beyond audio_length, never changes valid
    outputs (lengths 700 and 300 are not multiples of the hop)."""
    config = tiny_config()
    encoder = AudioTransformer.from_config(config)
    short = batch_for(config, audio_samples=704)  # just past the valid samples
    long = batch_for(config, audio_samples=1024)
    garbage = dict(long, audio=long["audio"].at[0, 700:].set(0.9).at[1, 300:].set(-0.7))
    params = encoder.init(jax.random.key(0), long, train=False)
    apply = jax.jit(lambda b: encoder.apply(params, b, train=False))
    results = [apply(b) for b in (short, long, garbage)]
    # 700 samples: frames starting at 0..640 -> 11 frames -> 6 time patches (x2 freq);
    # 300 samples: 5 frames -> 3 time patches.
    for _, mask in results:
        np.testing.assert_array_equal(mask.sum(1), [12, 6])
    reference = pooled(*results[1])
    for x, mask in (results[0], results[2]):
        np.testing.assert_allclose(pooled(x, mask), reference, atol=1e-5)
    assert not np.allclose(reference[0], reference[1])


def test_audio_empty_input_is_finite():
    config = tiny_config()
    encoder = AudioTransformer.from_config(config)
    batch = dict(batch_for(config), audio_length=jnp.zeros((B,), jnp.int32))
    params = encoder.init(jax.random.key(0), batch, train=False)
    x, mask = encoder.apply(params, batch, train=False)
    assert not bool(jnp.any(mask)) and bool(jnp.all(jnp.isfinite(x)))


def test_mel_filterbank_and_tone():
    fb = audio_lib.mel_filterbank(8000, 128, 16)
    assert fb.shape == (65, 16) and fb.dtype == np.float32
    assert np.all(fb.max(axis=0) > 0.5) and np.all(fb <= 1.0) and np.all(fb >= 0.0)
    # A 1 kHz tone lights up the band whose centre is nearest 1 kHz.
    centres = audio_lib.mel_to_hz(np.linspace(0, audio_lib.hz_to_mel(4000.0), 18))[1:-1]
    tone = np.sin(2 * np.pi * 1000 * np.arange(1024) / 8000).astype(np.float32)
    mel = audio_lib.log_mel(
        jnp.asarray(tone[None]), jnp.array([1024]),
        sample_rate=8000, n_mels=16, window=128, hop=64, frames=8,
    )
    assert int(jnp.argmax(mel[0, 3])) == int(np.argmin(np.abs(centres - 1000)))
    assert float(mel.max()) < 2.0 and float(mel.min()) > -2.0  # normalised range


def test_params_carry_logical_names():
    config = tiny_config()
    batch = batch_for(config)
    for _, cls, _ in ENCODERS:
        variables = jax.eval_shape(lambda: cls.from_config(config).init(jax.random.key(0), batch, train=False))
        specs = nn.get_partition_spec(variables)
        shapes = jax.tree_util.tree_leaves(nn.unbox(variables))
        spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
        assert len(spec_leaves) == len(shapes)
        for s, shape in zip(spec_leaves, shapes):
            assert isinstance(s, jax.sharding.PartitionSpec) and len(s) == len(shape.shape)
            assert any(name is not None for name in s)


def test_config_errors():
    config = tiny_config()
    config.model.audio.patch_freq = 5
    with pytest.raises(ValueError, match=r"config.model.audio.n_mels=16 must be a multiple"):
        AudioTransformer.from_config(config)
    config.data.image_size = 10
    with pytest.raises(ValueError, match=r"config.data.image_size=10 must be a multiple"):
        ViTEncoder.from_config(config)
