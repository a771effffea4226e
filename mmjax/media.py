"""Raw media -> what a model is fed: the one definition shared by the data build and predict.

image: a PNG, JPEG, BMP, GIF, TIFF, WEBP or PPM file (IMAGE_FORMATS) or an array
[H, W(, C)] -> RGB uint8 [size, size, 3]: the shorter side is resized to `size` (Pillow's
bilinear filter) after cutting out the centred square, so the aspect ratio is kept.
audio: a WAV file (PCM 8/16/24/32-bit or float, any channels) or an array -> mono float32
in [-1, 1] at the target rate (channels averaged, scipy's polyphase resampling), and a
waveform -> the batch's fixed length plus its valid sample count.
text: token ids with the contract's layout (0 padding, 1 reserved, the tokenizer's own ids
from 2), cut or padded to a length: UTF-8 bytes by default, or a SentencePiece model.
Every failure raises ValueError with a short reason naming the file.

This module imports only numpy, Pillow, scipy and the contract (sentencepiece only when a
SentencePiece model is used), so build worker processes start fast and the predictor runs
without the training stack.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.io import wavfile

from mmjax.contract import PAD_ID

# ================================================================ images
# The picture formats Pillow may decode. Left open, Pillow also reads formats such as EPS,
# which it renders by running Ghostscript on the file: a path must only ever be read as
# pixel data.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Pictures larger than this are refused before decoding: a small compressed file can
# declare a huge canvas (a decompression bomb). Pillow's own warning limit (~9,459^2).
MAX_PIXELS = 89_478_485


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Array [H, W], [H, W, 1|3|4] (uint8 or float in 0..1/0..255) -> uint8 [size, size, 3]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image [H, W] or [H, W, 1|3|4], got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        if image.dtype.kind == "f" and image.size and float(np.max(image)) <= 1.0:
            image = image * 255.0  # floats in 0..1
        image = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return _fit(Image.fromarray(image), size)


def _fit(picture: Image.Image, size: int) -> np.ndarray:
    """Pillow image -> RGB uint8 [size, size, 3]: shorter side to `size`, centre crop."""
    picture = picture.convert("RGB")
    w, h = picture.size
    if w == 0 or h == 0:
        raise ValueError("image is empty (0 pixels)")
    # Crop the centred square first, so the resize filter never reaches outside it.
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = picture.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def load_image(path: str, size: int) -> np.ndarray:
    """Decodes an image file -> uint8 [size, size, 3]; raises ValueError if it cannot."""
    return _fit(open_image(path), size)


def open_image(path: str) -> Image.Image:
    """Decodes an image file (one of IMAGE_FORMATS, at most MAX_PIXELS) into a loaded Pillow
    image; raises ValueError naming the file if it cannot."""
    try:
        with warnings.catch_warnings():  # Pillow warns over MAX_PIXELS; we refuse instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path, formats=IMAGE_FORMATS)
        with picture:
            w, h = picture.size  # from the header: nothing is decoded yet
            if w * h > MAX_PIXELS:
                raise ValueError(f"cannot decode image {path!r}: {w}x{h} is over {MAX_PIXELS:,} "
                                 "pixels (a decompression bomb?); shrink it first")
            picture.load()  # decode now: a truncated file fails here, not later
            return picture.copy()
    except FileNotFoundError:
        raise ValueError(f"image file {path!r} does not exist") from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot decode image {path!r}: not one of the formats read "
                         f"({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path!r}: {e}") from None


# ================================================================ audio
def to_mono_float(data: np.ndarray) -> np.ndarray:
    """WAV sample array [n] or [n, channels] of any PCM/float dtype -> float32 [n] in [-1, 1]."""
    data = np.asarray(data)
    if data.ndim not in (1, 2):
        raise ValueError(f"expected audio [n] or [n, channels], got shape {list(data.shape)}")
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        wave = (data.astype(np.float64) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        wave = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    elif data.dtype.kind == "f":
        wave = data.astype(np.float64)
    else:
        raise ValueError(f"unsupported audio sample type {data.dtype}")
    if wave.ndim == 2:  # channels are averaged after scaling
        wave = wave.mean(axis=1)
    if not np.all(np.isfinite(wave)):
        raise ValueError("audio has NaN or infinite samples")
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float waveform at `from_rate` -> float32 at `to_rate` (polyphase, anti-aliased)."""
    if from_rate <= 0:
        raise ValueError(f"bad sample rate {from_rate}")
    if from_rate == to_rate or len(wave) == 0:
        return np.asarray(wave, np.float32)
    from scipy.signal import resample_poly  # here: scipy.signal takes ~1 s to import (scipy.stats)

    g = math.gcd(int(from_rate), int(to_rate))
    out = resample_poly(np.asarray(wave, np.float64), int(to_rate) // g, int(from_rate) // g)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def load_wav(path: str, rate: int) -> np.ndarray:
    """Decodes a WAV file -> mono float32 [n] at `rate`; raises ValueError if it cannot."""
    if not os.path.isfile(path):
        raise ValueError(f"audio file {path!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown extra chunks
            file_rate, data = wavfile.read(path)
    # scipy's reader raises these for malformed files (UnboundLocalError: no fmt chunk).
    except (ValueError, OSError, EOFError, IndexError, TypeError, UnboundLocalError) as e:
        raise ValueError(f"cannot decode WAV {path!r}: {e}") from None
    try:
        wave = to_mono_float(data)
    except ValueError as e:
        raise ValueError(f"cannot decode WAV {path!r}: {e}") from None
    if len(wave) == 0:
        raise ValueError(f"WAV {path!r} has no samples")
    return resample(wave, int(file_rate), rate)


def pad_audio(wave: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [samples] zero-padded/truncated waveform, int32 number of valid samples)."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"'audio' must be a mono waveform [n], got shape {wave.shape}")
    n = min(len(wave), samples)
    out = np.zeros(samples, np.float32)
    out[:n] = wave[:n]
    return out, np.asarray(n, np.int32)


# ================================================================ text
# config.data.tokenizer: 'bytes' (default, no files) or a SentencePiece model file. Ids 0
# (PAD_ID) and 1 (RESERVED_ID: unknown / dropped token) are the contract's; the
# tokenizer's own ids start at OFFSET, and `vocab_size` counts the two, so the text encoder
# needs config.model.text.vocab_size >= vocab_size.
RESERVED_ID = 1
OFFSET = 2


class ByteTokenizer:
    """UTF-8 bytes + 2: any text, no vocabulary file."""

    name = "bytes"
    vocab_size = 256 + OFFSET

    def ids(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + OFFSET


class SentencePieceTokenizer:
    """SentencePiece pieces + 2. The model is loaded lazily in each process that uses it,
    so the tokenizer object itself is just a path (cheap to send to grain workers)."""

    def __init__(self, path: str):
        self.name = path
        self._processor = None
        self.vocab_size = self._load().get_piece_size() + OFFSET

    def _load(self):
        if self._processor is None:
            import sentencepiece  # optional: only runs and exports that use SentencePiece need it

            try:
                self._processor = sentencepiece.SentencePieceProcessor(model_file=self.name)
            except (OSError, RuntimeError) as e:
                raise ValueError(
                    f"config.data.tokenizer={self.name!r}: cannot load the SentencePiece model "
                    f"({e}); use 'bytes' or a .model file written by sentencepiece") from None
        return self._processor

    def __getstate__(self):
        return {"name": self.name, "vocab_size": self.vocab_size}

    def __setstate__(self, state):
        self.name, self.vocab_size, self._processor = state["name"], state["vocab_size"], None

    def ids(self, text: str) -> np.ndarray:
        return np.asarray(self._load().encode(text), np.int32) + OFFSET


def make_tokenizer(name: str = "bytes"):
    """'bytes' or a path to a SentencePiece model file -> a tokenizer."""
    if name in ("", "bytes"):
        return ByteTokenizer()
    if not os.path.isfile(name):
        raise ValueError(f"config.data.tokenizer={name!r} is neither 'bytes' nor an existing "
                         "SentencePiece model file")
    return SentencePieceTokenizer(name)


def tokenize(text: str, length: int, tokenizer=None) -> np.ndarray:
    """Token ids as int32 [length], truncated or padded with PAD_ID."""
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a str, got {type(text).__name__}")
    ids = (tokenizer or ByteTokenizer()).ids(text)[:length]
    tokens = np.full(length, PAD_ID, np.int32)
    tokens[: len(ids)] = ids
    return tokens
