"""Tests for mmjax/media.py: images, WAV audio and tokenizers, as the data build and the
predictor both use them (tests/test_predict.py checks that the two agree end to end)."""
import copy
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile
from scipy.signal import resample_poly

from mmjax import media


# ---------------------------------------------------------------- images
def test_resize_keeps_aspect_by_centre_crop():
    image = np.zeros((10, 30, 3), np.uint8)
    image[:, 10:20] = 255  # a white centre square
    np.testing.assert_array_equal(media.resize_image(image, 5), 255)
    grey = media.resize_image(np.full((4, 4), 0.5, np.float32), 2)
    assert grey.shape == (2, 2, 3) and (grey == 128).all()
    with pytest.raises(ValueError, match=r"expected an image \[H, W\] or \[H, W, 1\|3\|4\]"):
        media.resize_image(np.zeros((4, 4, 2), np.uint8), 2)


def test_image_files_are_read_by_content_not_by_name(tmp_path):
    """Pillow identifies images by content, so a JPEG named .png still decodes."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="JPEG")
    (tmp_path / "jpeg.png").write_bytes(buf.getvalue())
    assert media.load_image(str(tmp_path / "jpeg.png"), 4).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="image file .*nope.png' does not exist"):
        media.load_image(str(tmp_path / "nope.png"), 4)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but that holds almost no data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    """100 or 400 megapixels declared in 45 bytes: media's limit refuses the first, Pillow's
    own (twice as high, raised while reading the header) the second."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(side, side))
    with pytest.raises(ValueError, match=r"cannot decode image .*bomb"):
        media.load_image(str(path), 8)


# ---------------------------------------------------------------- audio
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32"])
def test_wav_is_mono_float_in_range_and_resampled_with_scipy(tmp_path, dtype):
    rng = np.random.default_rng(1)
    wave = rng.uniform(-0.9, 0.9, (2205, 2))  # stereo, 0.1 s at 22.05 kHz
    scale = {"uint8": 127, "int16": 2**15 - 1, "int32": 2**31 - 1, "float32": 1}[dtype]
    data = (wave * scale + (128 if dtype == "uint8" else 0)).astype(dtype)
    wavfile.write(tmp_path / "a.wav", 22050, data)
    got = media.load_wav(str(tmp_path / "a.wav"), 8000)
    mono = media.to_mono_float(data)
    np.testing.assert_allclose(mono, wave.mean(axis=1), atol=2 / scale if scale > 1 else 1e-7)
    expected = np.clip(resample_poly(mono.astype(np.float64), 160, 441), -1, 1).astype(np.float32)
    assert got.dtype == np.float32 and len(got) == 800
    np.testing.assert_array_equal(got, expected)


def test_bad_wavs_are_one_clear_error(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match="cannot decode WAV"):
        media.load_wav(str(tmp_path / "x.wav"), 8000)
    with pytest.raises(ValueError, match="audio has NaN"):
        media.to_mono_float(np.array([0.0, np.nan], np.float32))


def test_pad_audio():
    short = media.pad_audio(np.ones(5, np.float32), 8)
    np.testing.assert_array_equal(short[0], [1, 1, 1, 1, 1, 0, 0, 0])
    assert short[1] == 5 and short[1].dtype == np.int32
    wave, length = media.pad_audio(np.arange(10, dtype=np.float32), 4)
    np.testing.assert_array_equal(wave, [0, 1, 2, 3]) and length == 4
    with pytest.raises(ValueError, match=r"mono waveform \[n\]"):
        media.pad_audio(np.zeros((4, 2)), 8)


# ---------------------------------------------------------------- tokenizers
def test_byte_tokenizer_is_the_default_layout():
    np.testing.assert_array_equal(media.tokenize("hé", 4), [ord("h") + 2, 0xC3 + 2, 0xA9 + 2, 0])
    assert media.make_tokenizer("bytes").vocab_size == 258 == media.ByteTokenizer.vocab_size
    with pytest.raises(ValueError, match="'text' must be a str"):
        media.tokenize(b"bytes", 4)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece

    root = tmp_path_factory.mktemp("spm")
    words = ["what", "digit", "is", "drawn", "which", "note", "do", "you", "hear", "the", "a"]
    rng = np.random.default_rng(0)
    (root / "corpus.txt").write_text(
        "\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)) + "\n")
    sentencepiece.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"), model_prefix=str(root / "spm"), vocab_size=28,
        model_type="unigram", minloglevel=2)
    return str(root / "spm.model")


def test_sentencepiece_tokenizer(spm_model):
    tok = media.make_tokenizer(spm_model)
    assert tok.vocab_size == 30
    ids = media.tokenize("what digit is drawn", 12, tok)
    n = int((ids > 0).sum())
    assert 0 < n < len("what digit is drawn") and (ids[:n] >= 2).all() and (ids[n:] == 0).all()
    clone = copy.deepcopy(tok)  # workers get the path, not the loaded model
    np.testing.assert_array_equal(media.tokenize("which note", 12, clone),
                                  media.tokenize("which note", 12, tok))
    with pytest.raises(ValueError, match="neither 'bytes' nor an existing SentencePiece model"):
        media.make_tokenizer("/no/such.model")
