"""Issue 12, item 2: the raw files of inputs.py (a PNG, strings, a WAV) through the
checkpoint's own preprocessing (mmjax/pretrained/preprocess.py: its image processor's
resize/crop, its tokenizer; the model's pixel mean/std and Whisper's on-device log-mel)
give the same model inputs and last hidden states as transformers' processor + model."""
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io.wavfile

from inputs import TEXTS
from mmjax.pretrained import hf, preprocess
from parity import AUDIO_TOL, IMAGE_TOL, TEXT_TOL, build, close, fixture, raw_inputs, reference


@pytest.mark.parametrize("family,prefix", [("vit", ""), ("clip", "vision_"), ("siglip", "vision_")])
def test_image_file(family, prefix, tmp_path_factory):
    values, params = hf.load(fixture(family), "image")
    png = raw_inputs(tmp_path_factory)["image"]
    image = preprocess.load_image(png, hf.Checkpoint(fixture(family)).image_processor())
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    ref = reference(family)
    encoder = build("image", values)
    tokens, _ = encoder.apply({"params": params}, {"image": jnp.asarray(image[None])}, train=False)
    close(tokens, ref[prefix + "last_hidden_state"], IMAGE_TOL)


@pytest.mark.parametrize("family,prefix", [("bert", ""), ("clip", "text_"), ("siglip", "text_")])
def test_text_strings(family, prefix):
    ref = reference(family)
    ids = preprocess.Tokenizer(fixture(family)).encode(list(TEXTS), ref["input_ids"].shape[1])
    np.testing.assert_array_equal(ids, ref["input_ids"])
    values, params = hf.load(fixture(family), "text")
    encoder = build("text", values, text_length=ids.shape[1])
    tokens, _ = encoder.apply({"params": params}, {"text": jnp.asarray(ids)}, train=False)
    close(tokens, ref[prefix + "last_hidden_state"], TEXT_TOL)


def test_siglip_tokenizer_normalises_like_siglip():
    tokenizer = preprocess.Tokenizer(fixture("siglip"))
    np.testing.assert_array_equal(tokenizer.encode(["A  Dog!"]), tokenizer.encode(["a dog"]))


def test_whisper_wav(tmp_path_factory):
    rate, pcm = scipy.io.wavfile.read(raw_inputs(tmp_path_factory)["audio"])
    values, params = hf.load(fixture("whisper"), "audio")
    assert rate == values["data"]["audio_rate"]
    wave = jnp.asarray(pcm.astype(np.float32) / 32768.0)[None]
    ref = reference("whisper")
    encoder = build("audio", values)
    # Whisper's front end on device gives the feature extractor's input_features.
    close(encoder.log_mel(wave, jnp.array([wave.shape[1]])), ref["input_features"].transpose(0, 2, 1), AUDIO_TOL)
    # A batch padded beyond the chunk (the rest masked by audio_length) gives the same tokens.
    padded = jnp.pad(wave, ((0, 0), (0, 40000 - wave.shape[1])))
    tokens, mask = encoder.apply({"params": params}, {"audio": padded, "audio_length": jnp.array([wave.shape[1]])},
                                 train=False)
    close(tokens, ref["last_hidden_state"], AUDIO_TOL)
    assert int(mask.sum()) == -(-wave.shape[1] // 320)  # tokens that start inside the real samples
