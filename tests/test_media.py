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


# ---------------------------------------------------------------- damaged WAVs (issue 15)
def _good_wav_bytes(tmp_path) -> bytes:
    wavfile.write(tmp_path / "good.wav", 8000, (np.sin(np.arange(1000) / 5) * 10000).astype(np.int16))
    return (tmp_path / "good.wav").read_bytes()


# name -> (the damaged bytes of a 1000-sample int16 mono WAV with a 44-byte header, what the message says)
DAMAGED_WAVS = {
    "header cut short": (lambda b: b[:20], "its header is cut short"),
    "no fmt chunk": (lambda b: b[:12], "its header is cut short"),
    "0 channels": (lambda b: b[:22] + struct.pack("<H", 0) + b[24:], "its header says 0 channels"),
    "0 Hz": (lambda b: b[:24] + struct.pack("<I", 0) + b[28:], "sample rate of 0 Hz"),
    "12-bit header": (lambda b: b[:34] + struct.pack("<H", 12) + b[36:], "12-bit PCM samples are not read"),
    "data cut short": (lambda b: b[:1000], "its data are cut short: the header declares 2,000 bytes"),
    "header only": (lambda b: b[:44], "the file holds 0"),
    "inconsistent frame": (lambda b: b[:32] + struct.pack("<H", 4) + b[34:], "its header is inconsistent"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_WAVS))
def test_a_damaged_wav_is_one_line_naming_the_file(tmp_path, case):
    """Each was a struct.error / ZeroDivisionError traceback, or silently accepted, before."""
    damage, expected = DAMAGED_WAVS[case]
    path = tmp_path / "bad.wav"
    path.write_bytes(damage(_good_wav_bytes(tmp_path)))
    with pytest.raises(ValueError) as info:
        media.load_wav(str(path), 8000)
    message = str(info.value)
    assert message.startswith(f"cannot decode WAV {str(path)!r}: ") and expected in message, message
    assert "\n" not in message


def test_wav_header_check_keeps_what_scipy_reads(tmp_path):
    """Float, 24-bit, extensible (3 channels), odd-sized extra chunks and a streaming size stay readable."""
    wave = np.sin(np.arange(300) / 7).astype(np.float32)
    wavfile.write(tmp_path / "f.wav", 8000, wave)
    np.testing.assert_allclose(media.load_wav(str(tmp_path / "f.wav"), 8000), wave, atol=1e-7)
    wavfile.write(tmp_path / "c3.wav", 8000, np.stack([wave] * 3, 1))  # scipy writes WAVE_FORMAT_EXTENSIBLE
    np.testing.assert_allclose(media.load_wav(str(tmp_path / "c3.wav"), 8000), wave, atol=1e-6)
    good = _good_wav_bytes(tmp_path)
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\0"  # an odd chunk, padded to even
    (tmp_path / "x.wav").write_bytes(good[:36] + extra + good[36:])
    assert len(media.load_wav(str(tmp_path / "x.wav"), 8000)) == 1000
    (tmp_path / "s.wav").write_bytes(good[:40] + struct.pack("<I", 0xFFFFFFFF) + good[44:])
    assert len(media.load_wav(str(tmp_path / "s.wav"), 8000)) == 1000


# ---------------------------------------------------------------- 16-bit, float and rotated images (issue 15)
def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = media.load_image(str(tmp_path / "g16.png"), 64, media.ImageResize("stretch", "nearest"))
    np.testing.assert_array_equal(got[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert len(np.unique(got)) > 200  # was 0..255 clipped: nearly all 255
    np.testing.assert_array_equal(media.resize_image(ramp, 64, media.ImageResize("stretch", "nearest")), got)


def test_a_float_tiff_is_scaled_not_black(tmp_path):
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "f.tiff")
    got = media.load_image(str(tmp_path / "f.tiff"), 32, media.ImageResize("stretch", "nearest"))
    np.testing.assert_array_equal(got[..., 1], np.rint(values * 255).astype(np.uint8))
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tiff")
    with pytest.raises(ValueError, match="NaN or infinite"):
        media.load_image(str(tmp_path / "nan.tiff"), 4)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    """Orientation 6 (rotate 90 clockwise to view): a 20x10 landscape file is a 10x20 portrait."""
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"r.{fmt.lower()}"
    Image.fromarray(pixels).save(path, format=fmt, exif=exif, quality=100)
    upright = media.open_image(str(path))
    assert upright.size == (10, 20)  # width 10, height 20
    rows = np.asarray(upright.convert("L"), np.float64)
    assert rows[:10].mean() > 200 and rows[10:].mean() < 50  # the white half is now on top
