"""Raw media -> the stored form of an example's fields (used by the build and by TFDS).

image: a PNG, JPEG, BMP, GIF, TIFF, WEBP or PPM picture (IMAGE_FORMATS) or an array
[H, W(, C)] -> RGB uint8 [size, size, 3]: the shorter side is resized to `size` and the
centre cropped, so the aspect ratio is kept. audio: a WAV file (PCM 8/16/24/32-bit or
float) or an array -> mono float32 in [-1, 1] at the target rate (channels averaged,
polyphase resampling).
Every failure raises ValueError with a short reason; callers add the file or line.

This module imports only numpy, Pillow and scipy, so build worker processes start fast.
"""

from __future__ import annotations

import math
import os

import numpy as np


# ---------------------------------------------------------------- images
def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Array [H, W], [H, W, 1|3|4] (uint8 or float in 0..1/0..255) -> uint8 [size, size, 3]."""
    from PIL import Image

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


def _fit(picture, size: int) -> np.ndarray:
    """Pillow image -> RGB uint8 [size, size, 3]: shorter side to `size`, centre crop."""
    from PIL import Image

    picture = picture.convert("RGB")
    w, h = picture.size
    if w == 0 or h == 0:
        raise ValueError("image is empty (0 pixels)")
    # Crop the centred square first, so the resize filter never reaches outside it.
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = picture.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


# The picture formats Pillow may decode. Left open, Pillow also reads formats such as EPS,
# which it renders by running Ghostscript on the file: a manifest path must only ever be
# read as pixel data.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def load_image(path: str, size: int) -> np.ndarray:
    """Decodes an image file -> uint8 [size, size, 3]; raises ValueError if it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as picture:
            picture.load()  # decode now: a truncated file fails here, not later
            return _fit(picture, size)
    except FileNotFoundError:
        raise ValueError(f"image file {path!r} does not exist") from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot decode image {path!r}: not one of the formats read "
                         f"({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path!r}: {e}") from None


# ---------------------------------------------------------------- audio
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
    from scipy.signal import resample_poly

    g = math.gcd(int(from_rate), int(to_rate))
    out = resample_poly(np.asarray(wave, np.float64), int(to_rate) // g, int(from_rate) // g)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def load_wav(path: str, rate: int) -> np.ndarray:
    """Decodes a WAV file -> mono float32 [n] at `rate`; raises ValueError if it cannot."""
    import warnings

    from scipy.io import wavfile

    if not os.path.isfile(path):
        raise ValueError(f"audio file {path!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown extra chunks
            file_rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError, IndexError, TypeError) as e:
        raise ValueError(f"cannot decode WAV {path!r}: {e}") from None
    try:
        wave = to_mono_float(data)
    except ValueError as e:
        raise ValueError(f"cannot decode WAV {path!r}: {e}") from None
    if len(wave) == 0:
        raise ValueError(f"WAV {path!r} has no samples")
    return resample(wave, int(file_rate), rate)
