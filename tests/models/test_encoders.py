"""Tests for the image, text and audio encoders: shapes, dtypes, padding invariance."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import contract
from mmjax.models import audio as audio_lib
from mmjax.models.audio import AudioTransformer
from mmjax.models.image import ViTEncoder
from mmjax.models.text import TextTransformer

B = 2


def tiny_config(dtype: str = "float32") -> ml_collections.ConfigDict:
    """The default config at test size."""
    block = dict(width=16, depth=1, heads=2, mlp=32)
    config = config_lib.defaults()
    config.update(
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
    return config


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
    variables = encoder.init(jax.random.key(0), batch_for(config, audio_samples=1024), train=False)
    # 700 samples: frames starting at 0..640 -> 11 frames -> 6 time patches (x2 freq);
    # 300 samples: 5 frames -> 3 time patches.
    reference = check_audio_padding_invariance(config, encoder, variables, valid_tokens=[12, 6])
    assert not np.allclose(reference[0], reference[1])


def check_audio_padding_invariance(config, encoder, variables, valid_tokens):
    """Audio of lengths 700 and 300 padded to 704 or 1024 samples, or followed by garbage:
    the valid token counts are `valid_tokens` and the pooled valid outputs agree. Returns
    them (from the 1024-sample batch)."""
    short = batch_for(config, audio_samples=704)  # just past the valid samples
    long = batch_for(config, audio_samples=1024)
    garbage = dict(long, audio=long["audio"].at[0, 700:].set(0.9).at[1, 300:].set(-0.7))
    apply = jax.jit(lambda b: encoder.apply(variables, b, train=False))
    results = [apply(b) for b in (short, long, garbage)]
    for _, mask in results:
        np.testing.assert_array_equal(mask.sum(1), valid_tokens)
    reference = pooled(*results[1])
    for x, mask in (results[0], results[2]):
        np.testing.assert_allclose(pooled(x, mask), reference, atol=1e-5)
    return reference


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
    centres = contract.mel_to_hz(np.linspace(0, contract.hz_to_mel(4000.0), 18))[1:-1]
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


# ---------------------------------------------------------------- cnn and lstm encoders
from mmjax.models.audio import AudioCNN  # noqa: E402
from mmjax.models.image import ImageCNN  # noqa: E402
from mmjax.models.text import TextLSTM  # noqa: E402

from random_init import random_variables  # noqa: E402


def conv_config(dtype="float32", return_sequences=False):
    config = tiny_config(dtype)
    cnn = dict(kind="cnn", channels=(4,), kernel=3, pool=2)
    config.model.image.update(cnn)
    config.model.audio.update(cnn)
    config.model.text.update(dict(kind="lstm", return_sequences=return_sequences))
    return config


# (class, return_sequences, tokens, features): image 8x8 -> conv 6 -> pool 3 -> 9 tokens;
# audio 1024 / hop 64 = 16 frames x 16 mels -> 14 -> 7 per axis -> 49 tokens.
CONV_ENCODERS = [
    (ImageCNN, False, 9, 4),
    (TextLSTM, False, 1, 16),
    (TextLSTM, True, 16, 16),
    (AudioCNN, False, 49, 4),
]


@pytest.mark.parametrize("cls,sequences,tokens,features", CONV_ENCODERS)
def test_cnn_and_lstm_shapes_and_names(cls, sequences, tokens, features):
    config = conv_config("bfloat16" if cls is AudioCNN else "float32", sequences)
    encoder = cls.from_config(config)
    batch = batch_for(config)
    variables = random_variables(encoder, batch, train=False)
    x, mask = jax.jit(lambda v, b: encoder.apply(v, b, train=False))(variables, batch)
    assert x.shape == (B, tokens, features) and mask.shape == (B, tokens) and mask.dtype == bool
    assert x.dtype == jnp.dtype(config.model.dtype) and bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
    specs = jax.tree.leaves(nn.get_partition_spec(variables), is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert specs and all(any(n is not None for n in s) for s in specs)


def _numpy_lstm(x, w_in, w_rec, bias):
    """Keras' LSTM recurrence (gates i, f, c, o) over x [T, D]; returns the last h."""
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = c = np.zeros(w_rec.shape[0])
    for x_t in x:
        z = np.einsum("d,dgu->gu", x_t, w_in) + np.einsum("u,ugv->gv", h, w_rec) + bias
        c = sigmoid(z[1]) * c + sigmoid(z[0]) * np.tanh(z[2])
        h = sigmoid(z[3]) * np.tanh(c)
    return h


def test_lstm_skips_padding_and_matches_the_keras_recurrence():
    config = conv_config(return_sequences=True)
    encoder = TextLSTM.from_config(config)
    short, long = batch_for(config, text_length=8), batch_for(config, text_length=16)
    variables = random_variables(encoder, long, train=False)
    states_long, mask = encoder.apply(variables, long, train=False)
    states_short, _ = encoder.apply(variables, short, train=False)
    np.testing.assert_allclose(states_short[:, :3], states_long[:, :3], atol=1e-6)
    final = TextLSTM.from_config(conv_config()).apply(variables, long, train=False)[0][:, 0]
    p = nn.unbox(variables)["params"]
    embedded = np.asarray(p["token_embed"]["embedding"])[np.asarray(long["text"])]
    lstm = {k: np.asarray(v, np.float64) for k, v in p["lstm"].items()}
    for row, valid in enumerate((5, 3)):
        expected = _numpy_lstm(embedded[row, :valid], lstm["input_kernel"], lstm["recurrent_kernel"], lstm["bias"])
        np.testing.assert_allclose(final[row], expected, atol=1e-5)
        np.testing.assert_allclose(states_long[row, valid - 1], expected, atol=1e-5)
    # An all-padding text has no valid token: zero state, masked.
    empty = dict(long, text=jnp.zeros_like(long["text"]))
    x, mask = TextLSTM.from_config(conv_config()).apply(variables, empty, train=False)
    assert not bool(jnp.any(mask)) and not bool(jnp.any(x))


def test_audio_cnn_padding_invariance():
    """A token is valid while the last frame it sees starts before audio_length; valid
    outputs do not depend on the padding after it."""
    config = conv_config()
    encoder = AudioCNN.from_config(config)
    variables = random_variables(encoder, batch_for(config, audio_samples=1024), train=False)
    # time step t sees frames up to 2t + 3: valid while (2t + 3) * 64 < length -> 4 and 1 steps, x 7 bands.
    check_audio_padding_invariance(config, encoder, variables, valid_tokens=[28, 7])


def test_cnn_config_errors():
    config = conv_config()
    config.model.image.channels = (4, 4)
    with pytest.raises(ValueError, match=r"config.data.image_size=8 is too small for 2 conv stages"):
        ImageCNN.from_config(config)
    config.model.audio.channels = (4, 4, 4)
    with pytest.raises(ValueError, match=r"too small for config.model.audio.channels=\(4, 4, 4\)"):
        AudioCNN.from_config(config)


# ---------------------------------------------------------------- audio front end (issue 17)
def front_end_config(kind="transformer", **audio):
    config = conv_config() if kind == "cnn" else tiny_config()
    config.model.audio.update(audio)
    return config


@pytest.mark.parametrize("normalize", ["utterance", "utterance_bins"])
def test_audio_stem_and_normalisation_padding_invariance(normalize):
    """The conv stem with per-utterance normalisation: a token is valid if its first frame
    starts before audio_length, and valid outputs ignore what follows."""
    config = front_end_config(stem=2, normalize=normalize)
    encoder = AudioTransformer.from_config(config)
    assert encoder.max_patches() == 4  # 16 frames / 2**2
    variables = encoder.init(jax.random.key(0), batch_for(config, audio_samples=1024), train=False)
    # tokens start at frames 0, 4, 8, 12: 700 samples -> frames 0, 4, 8 (8 * 64 < 700); 300 -> 0, 4.
    reference = check_audio_padding_invariance(config, encoder, variables, valid_tokens=[3, 2])
    assert not np.allclose(reference[0], reference[1])


@pytest.mark.parametrize("options", [dict(stem_norm=True), dict(stem_deltas=True)])
def test_audio_stem_norm_and_deltas_padding_invariance(options):
    """The stem's LayerNorm and the delta channels keep valid tokens blind to padding, and
    each changes the output (the deltas double the first convolution's input channels)."""
    config = front_end_config(stem=2, normalize="utterance_bins", **options)
    encoder = AudioTransformer.from_config(config)
    variables = encoder.init(jax.random.key(0), batch_for(config, audio_samples=1024), train=False)
    kernel = variables["params"]["stem_0"]["kernel"]
    kernel = getattr(kernel, "value", kernel)
    assert kernel.shape[1] == config.model.audio.n_mels * (2 if options.get("stem_deltas") else 1)
    check_audio_padding_invariance(config, encoder, variables, valid_tokens=[3, 2])
    mel = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
    d = np.asarray(audio_lib.deltas(mel))
    np.testing.assert_allclose(d[:, 1:-1], (mel[:, 2:] - mel[:, :-2]) / 2, atol=1e-6)
    np.testing.assert_allclose(d[:, 0], mel[:, 1] / 2, atol=1e-6)


def test_audio_cnn_normalisation_padding_invariance():
    config = front_end_config("cnn", normalize="utterance")
    encoder = AudioCNN.from_config(config)
    variables = random_variables(encoder, batch_for(config, audio_samples=1024), train=False)
    check_audio_padding_invariance(config, encoder, variables, valid_tokens=[28, 7])


def test_utterance_normalisation_statistics_and_gain():
    """'utterance': zero mean per bin and unit variance over the valid cells; a gain (a
    constant shift of the log-mel) changes nothing; invalid frames are 0."""
    rng = np.random.default_rng(0)
    mel = jnp.asarray(rng.normal(size=(2, 10, 4)), jnp.float32)
    valid = jnp.arange(10)[None, :] < jnp.array([[7], [3]])
    for mode in ("utterance", "utterance_bins"):
        out = np.asarray(audio_lib.normalise(mel, valid, mode))
        shifted = np.asarray(audio_lib.normalise(mel + 3.0, valid, mode))
        np.testing.assert_allclose(out, shifted, atol=1e-5)
        for b, n in enumerate((7, 3)):
            np.testing.assert_allclose(out[b, :n].mean(0), 0.0, atol=1e-5)
            std = out[b, :n].std(0) if mode == "utterance_bins" else out[b, :n].std()
            np.testing.assert_allclose(std, 1.0, rtol=0.02)  # NORM_EPS floors the variance
            assert not out[b, n:].any()
    np.testing.assert_array_equal(audio_lib.normalise(mel, valid, "fixed"), mel)


def test_spec_augment_masks_only_in_training_and_only_valid_frames():
    config = front_end_config(stem=2, normalize="utterance", spec_time_masks=2, spec_time_width=0.3,
                              spec_freq_masks=2, spec_freq_width=0.3)
    plain = AudioTransformer.from_config(front_end_config(stem=2, normalize="utterance"))
    encoder = AudioTransformer.from_config(config)
    batch = batch_for(config, audio_samples=1024)
    variables = encoder.init(jax.random.key(0), batch, train=False)
    np.testing.assert_array_equal(encoder.apply(variables, batch, train=False)[0],
                                  plain.apply(variables, batch, train=False)[0])
    mel = jnp.ones((64, 16, 16))
    valid_frames = jnp.full((64,), 10)
    out = np.asarray(audio_lib.spec_augment(jax.random.key(1), mel, valid_frames, time_masks=2,
                                            time_width=0.3, freq_masks=2, freq_width=0.3))
    time_masked = (out == 0).all(axis=2)  # [B, T]: whole frames set to 0
    freq_masked = (out == 0).all(axis=1)  # [B, M]: whole bins set to 0
    assert time_masked[:, :10].any() and not time_masked[:, 10:].any()
    assert time_masked.sum(1).max() <= 2 * 3 and freq_masked.sum(1).max() <= 2 * 4
    assert freq_masked.any() and 0.0 < (out == 0).mean() < 0.5
    train_out = encoder.apply(variables, batch, train=True, rngs={"dropout": jax.random.key(2)})[0]
    assert not np.allclose(train_out, plain.apply(variables, batch, train=False)[0])


def test_front_end_config_errors():
    for key, value, message in (("normalize", "global", "normalize: 'global' is not one of"),
                                ("spec_time_width", 1.5, "spec_time_width: must be in \\[0, 1\\]"),
                                ("stem", 7, "stem: must be in 0..4")):
        config = config_lib.defaults()
        config.model.audio[key] = value
        with pytest.raises(config_lib.UserError, match=f"config.model.audio.{message}"):
            config_lib.validate(config)
