"""Raw media -> what a model is fed: the one definition shared by the data build and predict.

image: a PNG, JPEG, BMP, GIF, TIFF, WEBP or PPM file (IMAGE_FORMATS; turned upright by its
EXIF orientation; 16-bit and float pixels scaled to 8 bits, not clipped) or an array
[H, W(, C)] -> RGB uint8 [size, size, 3], as an ImageResize says: mmjax's own ('square':
the centred square, then Pillow's bilinear filter) or a checkpoint's image processor
('stretch' to size x size, or 'shortest_edge' then a centred crop, with its filter).
audio: a WAV file (PCM 8/16/24/32/64-bit or float 32/64, any channels; a header cut short, 0
channels, other bit depths or data shorter than the header declares are refused) or an array -> mono float32
in [-1, 1] at the target rate (channels averaged, scipy's polyphase resampling), and a
waveform -> the batch's fixed length plus its valid sample count.
text: token ids cut or padded (with the tokenizer's pad_id) to a length: mmjax's layout
(0 padding, 1 reserved, the tokenizer's own ids from 2) for UTF-8 bytes (default) or a
SentencePiece model; a checkpoint's own tokenizer ('hf:DIR': its tokenizer.json or
spiece.model) gives its real ids, special tokens and padding id.
Every failure raises ValueError with a short reason naming the file.

This module imports only numpy, Pillow, scipy and the contract (sentencepiece or
tokenizers only when such a tokenizer is used), so build worker processes start fast and
the predictor runs without the training stack.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import string
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
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


# How an image becomes size x size. 'square' (mmjax's own): the centred square, then resized.
# A checkpoint's image processor: 'stretch' (resized to size x size, aspect ignored: ViT and
# SigLIP) or 'shortest_edge' (the shorter side to size * edge_ratio keeping the aspect, the long
# side rounded down, then the centred size x size crop: CLIP), each with the processor's filter.
RESIZE_METHODS = ("square", "stretch", "shortest_edge")
# transformers' PILImageResampling numbers -> names (processor files store the number).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
CHECKPOINT_PREFIX = "hf:"  # a transformers save_pretrained folder, for its processor or tokenizer


@dataclasses.dataclass(frozen=True)
class ImageResize:
    """A resize policy (see RESIZE_METHODS); the default is mmjax's own."""

    method: str = "square"
    resample: str = "bilinear"
    edge_ratio: float = 1.0  # shortest_edge: the processor's shortest_edge / crop size

    def __post_init__(self):
        if self.method not in RESIZE_METHODS or self.resample not in RESAMPLE_NAMES.values():
            raise ValueError(f"image resize {self.to_json()} is not one of {RESIZE_METHODS} with a filter of "
                             f"{', '.join(RESAMPLE_NAMES.values())}")

    @classmethod
    def from_processor(cls, processor: dict) -> "ImageResize":
        """The policy of a transformers image processor (preprocessor_config.json)."""
        size = processor.get("size") or {}
        resample = RESAMPLE_NAMES[int(processor.get("resample", 3))]
        if "height" in size and "width" in size and not processor.get("do_center_crop", False):
            return cls("stretch", resample)
        if "shortest_edge" in size and processor.get("do_center_crop", False) and processor.get("crop_size"):
            crop = processor["crop_size"]
            return cls("shortest_edge", resample, float(size["shortest_edge"]) / float(crop["height"]))
        raise ValueError(f"image processor size {size} with do_center_crop={processor.get('do_center_crop')} "
                         "is not supported (height/width, or shortest_edge with a centre crop)")

    @classmethod
    def from_json(cls, value: dict | None) -> "ImageResize":
        """From a data set's or an export's spec ('resize'; absent: mmjax's own)."""
        return cls(**value) if value else cls()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def apply(self, picture: Image.Image, size: int) -> np.ndarray:
        """Pillow image -> RGB uint8 [size, size, 3]."""
        picture = to_rgb(picture)
        w, h = picture.size
        if w == 0 or h == 0:
            raise ValueError("image is empty (0 pixels)")
        resample = getattr(Image.Resampling, self.resample.upper())
        if self.method == "stretch":
            return np.asarray(picture.resize((size, size), resample), np.uint8)
        if self.method == "square":
            # Crop the centred square first, so the resize filter never reaches outside it.
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            picture = picture.crop((left, top, left + side, top + side))
            return np.asarray(picture.resize((size, size), resample), np.uint8)
        short = int(round(size * self.edge_ratio))
        long = int(short * max(w, h) / min(w, h))
        new_w, new_h = (short, long) if w <= h else (long, short)
        picture = picture.resize((new_w, new_h), resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return np.asarray(picture.crop((left, top, left + size, top + size)), np.uint8)


def checkpoint_folder(spec: str) -> str:
    """'hf:DIR' -> DIR, a local transformers folder (hub names resolve in training, not here)."""
    folder = spec[len(CHECKPOINT_PREFIX):] if spec.startswith(CHECKPOINT_PREFIX) else ""
    if not os.path.isdir(folder):
        raise ValueError(f"{spec!r} is not 'hf:DIR' with DIR a local transformers save_pretrained folder")
    return folder


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


# The files a checkpoint's preprocessing is read from (mmjax.export copies them).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def processor_file(folder: str) -> str | None:
    """The folder's image processor / feature extractor file, or None."""
    return next((os.path.join(folder, f) for f in PROCESSOR_FILES if os.path.isfile(os.path.join(folder, f))), None)


def read_processor(folder: str, part: str = "image_processor") -> dict:
    """preprocessor_config.json, or the `part` entry of processor_config.json ({} if neither)."""
    return _read_json(os.path.join(folder, PROCESSOR_FILES[0])) or \
        _read_json(os.path.join(folder, PROCESSOR_FILES[1])).get(part, {})


def processor_size(processor: dict) -> int:
    """The square size an image processor produces (its crop, else its resize)."""
    size = (processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")) or {}
    if "height" in size and "width" in size and int(size["height"]) == int(size["width"]):
        return int(size["height"])
    raise ValueError(f"image processor size {size} is not square")


def image_resize(spec: str) -> ImageResize:
    """config.data.image_processor / --image_from: '' (mmjax's own) or 'hf:DIR' (its processor)."""
    if not spec:
        return ImageResize()
    folder = checkpoint_folder(spec)
    processor = read_processor(folder)
    if not processor:
        raise ValueError(f"{spec}: no image processor ({' or '.join(PROCESSOR_FILES)})")
    return ImageResize.from_processor(processor)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Pixel values -> uint8: uint16 is 16-bit (0..65535), floats are 0..1 when none is above 1
    and 0..255 otherwise, other integers 0..255; out-of-range values are clipped."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float64)
    if image.size and not np.all(np.isfinite(values)):
        raise ValueError("image has NaN or infinite pixels")
    if image.dtype.kind == "u" and image.dtype.itemsize == 2:  # either byte order (Pillow's I;16B)
        values = values / 257.0  # 65535 -> 255
    elif image.dtype.kind == "f" and image.size and float(np.max(values)) <= 1.0:
        values = values * 255.0  # floats in 0..1
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# Pillow modes whose convert('RGB') clips values to 0..255 instead of scaling: a 16-bit PNG
# (I;16) comes out near-binary and a float TIFF (F, values in 0..1) black.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(picture: Image.Image) -> Image.Image:
    """A Pillow image of any mode -> RGB, 16-bit and float pixels scaled to 8 bits (to_uint8)."""
    if picture.mode in _WIDE_MODES:
        values = np.asarray(picture)
        if picture.mode == "I" and (values.size == 0 or int(values.max()) <= 65535):
            values = values.astype(np.uint16)  # 16-bit data Pillow widened to 32-bit ints
        picture = Image.fromarray(to_uint8(values))
    return picture.convert("RGB")


def resize_image(image: np.ndarray, size: int, resize: ImageResize = ImageResize()) -> np.ndarray:
    """Array [H, W], [H, W, 1|3|4] (uint8, uint16, or float in 0..1/0..255) -> uint8 [size, size, 3]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image [H, W] or [H, W, 1|3|4], got shape {list(image.shape)}")
    return resize.apply(Image.fromarray(to_uint8(image)), size)


def load_image(path: str, size: int, resize: ImageResize = ImageResize()) -> np.ndarray:
    """Decodes an image file -> uint8 [size, size, 3]; raises ValueError if it cannot."""
    return resize.apply(open_image(path), size)


def open_image(path: str) -> Image.Image:
    """Decodes an image file (one of IMAGE_FORMATS, at most MAX_PIXELS) into a loaded Pillow
    image turned upright as its EXIF orientation says (cameras store the sensor's rotation
    there); raises ValueError naming the file if it cannot."""
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
            try:
                return ImageOps.exif_transpose(picture)  # a copy, upright
            except (ValueError, KeyError, TypeError, struct.error) as e:
                raise ValueError(f"cannot decode image {path!r}: its EXIF orientation is unreadable ({e})") from None
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


# Sample formats read (fmt chunk tag -> bits per sample): PCM and IEEE float, as scipy decodes
# them. Other depths (12-bit, 20-bit in a wider container) scipy reads as their container
# with no check that the samples are left-justified, so they are refused instead.
WAV_BITS = {1: (8, 16, 24, 32, 64), 3: (32, 64)}
_WAV_EXTENSIBLE = 0xFFFE  # the real tag is the first 2 bytes of its sub-format GUID
_WAV_UNKNOWN_SIZE = 0xFFFFFFFF  # written by streaming encoders (and RF64): up to the end of the file


def check_wav_header(path: str) -> None:
    """Checks a WAV file's fmt and data chunks; raises ValueError saying what is wrong.

    By hand (struct) because scipy's reader does not: a header cut short raises struct.error,
    0 channels ZeroDivisionError, and data cut short is read up to the end with a warning.
    Files that are not RIFF/WAVE at all are left to scipy's own message."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
            return
        order = ">" if head[:4] == b"RIFX" else "<"
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                break
            kind, length = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            if kind == b"fmt ":
                body = f.read(length)
                if length < 16 or len(body) < 16:
                    raise ValueError(f"its header is cut short (fmt chunk of {len(body)} bytes, at least 16 needed)")
                tag, channels, rate, byte_rate, block_align, bits = struct.unpack(order + "HHIIHH", body[:16])
                if tag == _WAV_EXTENSIBLE and len(body) >= 26:
                    tag = struct.unpack(order + "H", body[24:26])[0]
                if channels == 0:
                    raise ValueError("its header says 0 channels")
                if rate == 0:
                    raise ValueError("its header says a sample rate of 0 Hz")
                if tag in WAV_BITS and bits not in WAV_BITS[tag]:
                    kind_name = "PCM" if tag == 1 else "float"
                    raise ValueError(f"{bits}-bit {kind_name} samples are not read (PCM "
                                     f"{'/'.join(map(str, WAV_BITS[1]))}-bit or float 32/64-bit); "
                                     "convert it, e.g. sox IN.wav -b 16 OUT.wav")
                if tag in WAV_BITS and block_align != channels * bits // 8:
                    raise ValueError(f"its header is inconsistent: {channels} channel{'s' * (channels > 1)} of "
                                     f"{bits} bits but {block_align} bytes per frame")
                fmt = tag
                if length & 1:
                    f.seek(1, 1)
            elif kind == b"data":
                if fmt is None:
                    raise ValueError("its samples come before the fmt header that describes them")
                available = size - f.tell()
                if head[:4] != b"RF64" and length != _WAV_UNKNOWN_SIZE and length > available:
                    raise ValueError(f"its data are cut short: the header declares {length:,} bytes of "
                                     f"samples, the file holds {available:,}")
                return
            else:
                f.seek(length + (length & 1), 1)
        if fmt is None:
            raise ValueError("its header is cut short (no fmt chunk)")
        raise ValueError("it has no data chunk (cut short?)")


def load_wav(path: str, rate: int) -> np.ndarray:
    """Decodes a WAV file -> mono float32 [n] at `rate`; raises ValueError if it cannot."""
    if not os.path.isfile(path):
        raise ValueError(f"audio file {path!r} does not exist")
    try:
        check_wav_header(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown extra chunks
            file_rate, data = wavfile.read(path)
    # scipy's reader raises these for malformed files (UnboundLocalError: no fmt chunk; struct.error
    # and ZeroDivisionError for headers check_wav_header does not reach).
    except (ValueError, OSError, EOFError, IndexError, TypeError, UnboundLocalError, struct.error,
            ZeroDivisionError) as e:
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
# config.data.tokenizer: 'bytes' (default, no files), a SentencePiece model file, or 'hf:DIR'
# (a checkpoint's own tokenizer). For the first two, ids 0 (PAD_ID) and 1 (RESERVED_ID:
# unknown / dropped token) are the contract's and the tokenizer's own ids start at OFFSET;
# a checkpoint's tokenizer gives its real ids and pads with its own pad token. `vocab_size`
# counts every id, so the text encoder needs config.model.text.vocab_size >= vocab_size.
RESERVED_ID = 1
OFFSET = 2


class ByteTokenizer:
    """UTF-8 bytes + 2: any text, no vocabulary file."""

    name = "bytes"
    vocab_size = 256 + OFFSET
    pad_id = PAD_ID
    eos_id = None
    offset = True  # mmjax's layout: ids 0 and 1 are the contract's (text dropout uses 1)

    def ids(self, text: str, length: int) -> list[int] | np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + OFFSET

    plain_ids = ids  # no special tokens to leave out

    def text_of(self, ids) -> str:
        """Token ids (the tokenizer's own, no specials) -> text; bytes that are not UTF-8 become U+FFFD."""
        data = np.asarray(ids, np.int64) - OFFSET
        return bytes(data[(data >= 0) & (data < 256)].astype(np.uint8)).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """SentencePiece pieces + 2. The model is loaded lazily in each process that uses it,
    so the tokenizer object itself is just a path (cheap to send to grain workers)."""

    pad_id = PAD_ID
    eos_id = None
    offset = True

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

    def ids(self, text: str, length: int) -> np.ndarray:
        return np.asarray(self._load().encode(text), np.int32) + OFFSET

    plain_ids = ids

    def text_of(self, ids) -> str:
        pieces = [int(i) - OFFSET for i in ids if OFFSET <= int(i) < self.vocab_size]
        return self._load().decode(pieces)


class CheckpointTokenizer:
    """A transformers folder's own tokenizer: tokenizer.json (the `tokenizers` package, with its
    special tokens and truncation that keeps them) or spiece.model (sentencepiece, the end token
    appended as SigLIP's tokenizer does); real ids, padded with the checkpoint's pad token.
    Loaded lazily in each process, like SentencePieceTokenizer."""

    offset = False

    def __init__(self, folder: str):
        self.folder = folder
        self.name = CHECKPOINT_PREFIX + folder
        self.config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        self.max_length = int(self.config.get("model_max_length", 0) or 0)
        if self.max_length > 1_000_000:  # transformers' "no limit" sentinel
            self.max_length = 0
        self._impl = None
        self.kind = "json" if os.path.isfile(os.path.join(folder, "tokenizer.json")) else "spm"
        if self.kind == "spm" and not os.path.isfile(os.path.join(folder, "spiece.model")):
            raise ValueError(f"{self.name}: neither tokenizer.json nor spiece.model (the checkpoint's tokenizer)")
        impl = self._load()
        if self.kind == "json":
            pad, eos = self.config.get("pad_token"), self.config.get("eos_token")
            self.pad_id = impl.token_to_id(pad) if pad else PAD_ID
            self.eos_id = impl.token_to_id(eos) if eos else None
            self.vocab_size = impl.get_vocab_size(with_added_tokens=True)
        else:
            self.pad_id = impl.piece_to_id(self.config.get("pad_token", "</s>"))
            self.eos_id = impl.piece_to_id(self.config.get("eos_token", "</s>"))
            self.vocab_size = impl.get_piece_size()
        if self.pad_id is None:
            raise ValueError(f"{self.name}: pad token {self.config.get('pad_token')!r} is not in its vocabulary")

    def _load(self):
        if self._impl is None:
            try:
                if self.kind == "json":
                    from tokenizers import Tokenizer  # only runs and exports with such a tokenizer need it

                    self._impl = Tokenizer.from_file(os.path.join(self.folder, "tokenizer.json"))
                    self._impl.no_padding()
                else:
                    import sentencepiece

                    self._impl = sentencepiece.SentencePieceProcessor(
                        model_file=os.path.join(self.folder, "spiece.model"))
            except (OSError, RuntimeError, ValueError) as e:  # tokenizers raises Exception subclasses
                raise ValueError(f"{self.name}: cannot load the tokenizer ({e})") from None
        return self._impl

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_impl"}

    def __setstate__(self, state):
        self.__dict__.update(state, _impl=None)

    def normalise(self, text: str) -> str:
        """SigLIP's tokenizer first lowercases (do_lower_case), drops punctuation and collapses spaces."""
        if self.config.get("tokenizer_class") == "SiglipTokenizer":
            if self.config.get("do_lower_case", True):
                text = text.lower()
            text = text.translate(str.maketrans("", "", string.punctuation))
            text = re.sub(r"\s+", " ", text).strip()
        return text

    def ids(self, text: str, length: int) -> list[int]:
        """At most `length` ids; a longer text is cut before its end tokens, which stay."""
        impl = self._load()
        if self.kind == "json":
            impl.enable_truncation(length)
            return impl.encode(text).ids
        return impl.encode(self.normalise(text))[: length - 1] + [self.eos_id]

    def plain_ids(self, text: str, length: int = 0) -> list[int]:
        """The text's ids without the special tokens `ids` adds (CLS/SEP, BOS/EOS)."""
        impl = self._load()
        if self.kind == "json":
            impl.no_truncation()
            return impl.encode(text, add_special_tokens=False).ids
        return impl.encode(self.normalise(text))

    def special_id(self, *keys: str) -> int | None:
        """The id of the first of tokenizer_config.json's `keys` (e.g. 'bos_token', 'cls_token') it names."""
        for key in keys:
            token = self.config.get(key)
            if isinstance(token, dict):  # a serialised AddedToken
                token = token.get("content")
            if token:
                found = self._load().token_to_id(token) if self.kind == "json" else self._load().piece_to_id(token)
                if found is not None:
                    return int(found)
        return None

    def text_of(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        impl = self._load()
        return impl.decode(ids, skip_special_tokens=True) if self.kind == "json" else impl.decode(ids)

    def encode(self, texts: list[str], length: int | None = None) -> np.ndarray:
        """int32 [B, length] (default: the tokenizer's model_max_length)."""
        return np.stack([tokenize(t, length or self.max_length, self) for t in texts])


def make_tokenizer(name: str = "bytes"):
    """'bytes', a path to a SentencePiece model file, or 'hf:DIR' -> a tokenizer."""
    if name in ("", "bytes"):
        return ByteTokenizer()
    if name.startswith(CHECKPOINT_PREFIX):
        return CheckpointTokenizer(checkpoint_folder(name))
    if not os.path.isfile(name):
        raise ValueError(f"config.data.tokenizer={name!r} is neither 'bytes' nor an existing "
                         "SentencePiece model file nor 'hf:DIR'")
    return SentencePieceTokenizer(name)


def tokenize(text: str, length: int, tokenizer=None) -> np.ndarray:
    """Token ids as int32 [length], truncated or padded with the tokenizer's pad_id."""
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a str, got {type(text).__name__}")
    tokenizer = tokenizer or ByteTokenizer()
    ids = np.asarray(tokenizer.ids(text, length), np.int32)[:length]
    tokens = np.full(length, tokenizer.pad_id, np.int32)
    tokens[: len(ids)] = ids
    return tokens


# ================================================================ target text (config.loss.task='generate')
# A decoder reads and writes its tokenizer's ids plus a begin and an end token. mmjax's own
# layouts (bytes, SentencePiece) have none, so they get the two ids after the vocabulary; a
# checkpoint's tokenizer uses its own (bos/cls, eos/sep), or the same two new ids if it lacks them.


@dataclasses.dataclass(frozen=True)
class TargetVocab:
    size: int  # every id the decoder's output layer needs
    bos_id: int
    eos_id: int
    pad_id: int


def target_vocab(tokenizer=None) -> TargetVocab:
    """The decoder vocabulary of `tokenizer` (default bytes: 260 ids, BOS 258, EOS 259)."""
    tokenizer = tokenizer or ByteTokenizer()
    size = int(tokenizer.vocab_size)
    bos = eos = None
    if not tokenizer.offset:
        bos = tokenizer.special_id("bos_token", "cls_token")
        eos = tokenizer.special_id("eos_token", "sep_token")
    if bos is None or eos is None or bos == eos:
        bos, eos, size = size, size + 1, size + 2
    return TargetVocab(size=size, bos_id=int(bos), eos_id=int(eos), pad_id=int(tokenizer.pad_id))


def encode_target(text: str, length: int, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """A target text -> (int32 [length] = [BOS, ids..., EOS, pad...], int32 real-id count).

    A text too long for `length` keeps its first length - 2 ids and still ends with EOS."""
    if not isinstance(text, str):
        raise ValueError(f"'target_text' must be a str, got {type(text).__name__}")
    if length < 2:
        raise ValueError(f"a target length of {length} leaves no room for the begin and end tokens; use >= 2")
    tokenizer = tokenizer or ByteTokenizer()
    vocab = target_vocab(tokenizer)
    ids = [int(i) for i in tokenizer.plain_ids(text, length)][: length - 2]
    tokens = np.full(length, vocab.pad_id, np.int32)
    tokens[: len(ids) + 2] = [vocab.bos_id, *ids, vocab.eos_id]
    return tokens, np.asarray(len(ids) + 2, np.int32)


def target_tokens_needed(text: str, tokenizer=None) -> int:
    """How long target_tokens must be to hold `text` uncut (its ids + BOS + EOS)."""
    tokenizer = tokenizer or ByteTokenizer()
    return len(tokenizer.plain_ids(text, len(text.encode("utf-8")) + 16)) + 2


def decode_target(ids, tokenizer=None) -> str:
    """Generated ids -> text: a leading BOS dropped, everything from the first EOS on cut."""
    tokenizer = tokenizer or ByteTokenizer()
    vocab = target_vocab(tokenizer)
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if ids and ids[0] == vocab.bos_id:
        ids = ids[1:]
    if vocab.eos_id in ids:
        ids = ids[: ids.index(vocab.eos_id)]
    return tokenizer.text_of([i for i in ids if i not in (vocab.bos_id, vocab.pad_id)])
