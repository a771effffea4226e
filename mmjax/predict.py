"""Runs an export made by `python -m mmjax.export` on raw files. Needs only jax and numpy.

    python -m mmjax.predict --export=E [--image=a.png] [--audio=b.wav] [--text="..."] [--top_k=5]
    python -m mmjax.predict --export=E --manifest=FILE --out=preds.jsonl [--batch_size=64] [--skip_bad]

The first form prints the top-k classes with their probabilities for one example, given any
subset of the modalities the model has (absent ones are passed as absent, not zero-filled).
The second reads a manifest in the format of `python -m mmjax.data.build` (JSON Lines or CSV;
fields image, audio, text and an optional label) and writes one JSON line per row: the
predicted label, its probability and the top-k; with labels it also prints the accuracy.
A bad input stops with one line naming the file and the manifest line, or is skipped and
reported with --skip_bad.

This file is self-contained on purpose: it imports only jax, numpy and the Python standard
library (no mmjax, flax, orbax, grain, Pillow, scipy or msgpack), so it can be copied next
to an export and run where only `pip install jax flatbuffers` was done (jax.export's
deserializer needs flatbuffers). The raw decoding here (PNG via zlib, WAV via numpy, the
resize, the resampling and the byte tokenizer) reproduces the training data build exactly
(mmjax/data/decode.py; tests/test_predict.py checks that they agree). Pillow is used, when
installed, only for image formats other than PNG; sentencepiece only when the export
carries a SentencePiece tokenizer. jax itself is imported only to run the model, so the
decoding functions can be used without it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import struct
import sys
import tempfile
import zlib

import numpy as np

from mmjax.contract import MODALITIES, presence_key

FORMAT = "mmjax-export-v1"
SPEC_FILE = "export.json"
PARAMS_FILE = "params.safetensors"
FUNCTION_FILE = "predict.jax_exported"
TOKENIZER_FILE = "tokenizer.model"
FIELDS = (*MODALITIES, "label")


class PredictError(ValueError):
    """Bad input the user can fix; the command prints it as one line and exits 2."""


# ============================================================================ safetensors
# The safetensors layout: 8-byte little-endian header length, a JSON header
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
# then the raw little-endian bytes of every tensor. Written here so that neither the
# export nor the predictor needs the safetensors package; files load with it too.
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I32": "int32", "I64": "int64",
           "U8": "uint8", "BOOL": "bool"}


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes  # a dependency of jax; only needed for bfloat16 tensors

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Writes {name: array} (float32, bfloat16, ...) as a safetensors file."""
    codes = {v: k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
        if dtype not in codes:
            raise ValueError(f"safetensors: tensor {name!r} has unsupported dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": codes[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str) -> tuple[dict, dict]:
    """({name: numpy array}, metadata) from a safetensors file; PredictError if malformed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PredictError(f"cannot read {path}: {e.strerror}") from None
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size].decode("utf-8"))
        body = memoryview(data)[8 + size:]
        metadata = header.pop("__metadata__", {}) or {}
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            dtype = _numpy_dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(int(n) for n in info["shape"])
            if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"tensor {name!r} has bad data offsets")
            tensors[name] = np.frombuffer(body[begin:end], dtype).reshape(shape)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise PredictError(f"{path} is not a valid safetensors file ({e})") from None
    return tensors, metadata


# ============================================================================ images
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undoes PNG's per-scanline filters -> uint8 [height, stride]."""
    rows = np.frombuffer(raw, np.uint8)
    if rows.size != height * (stride + 1):
        raise ValueError(f"image data has {rows.size} bytes, expected {height * (stride + 1)}")
    rows = rows.reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            current = line.copy()
        elif kind == 1:  # Sub: a running sum per byte position within a pixel
            padded = np.zeros(-(-stride // bpp) * bpp, np.uint64)
            padded[:stride] = line
            current = (np.cumsum(padded.reshape(-1, bpp), axis=0).reshape(-1)[:stride] & 0xFF).astype(np.uint8)
        elif kind == 2:  # Up
            current = line + prior
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the one before it
            cur, up, src = bytearray(stride), prior.tobytes(), line.tobytes()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    cur[i] = (src[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur[i] = (src[i] + pred) & 0xFF
            current = np.frombuffer(bytes(cur), np.uint8)
        else:
            raise ValueError(f"unknown PNG filter type {kind} in row {y}")
        out[y] = current
        prior = current
    return out


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> RGB uint8 [H, W, 3], as Pillow's convert('RGB') gives it (alpha dropped,
    grey replicated, palette looked up; 16-bit colour keeps its high byte, 16-bit grey is
    clipped to 255 as Pillow does)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, header, palette, chunks = 8, None, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ValueError("truncated PNG file")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"PNG chunk {kind.decode('latin-1')!r} is corrupted (bad CRC)")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    if header is None or not chunks:
        raise ValueError("PNG file has no IHDR or no image data")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or width == 0 or height == 0:
        raise ValueError(f"unsupported PNG (colour type {colour}, bit depth {depth}, {width}x{height})")
    if interlace:
        raise ValueError("interlaced PNG is not supported; save it without interlacing")
    channels = _PNG_CHANNELS[colour]
    bits = channels * depth
    stride = (width * bits + 7) // 8
    try:
        raw = zlib.decompress(b"".join(chunks))
    except zlib.error as e:
        raise ValueError(f"PNG image data do not decompress ({e})") from None
    rows = _unfilter(raw, height, stride, max(1, bits // 8))
    if depth == 16 and colour == 0:  # Pillow reads it as 16-bit grey and clips it to 255
        samples = np.minimum(rows.view(">u2").reshape(height, width), 255).astype(np.uint8)
    elif depth == 16:
        samples = rows.reshape(height, width * channels, 2)[..., 0]  # big-endian: high byte first
    elif depth == 8:
        samples = rows.reshape(height, width * channels)
    else:  # 1, 2 or 4 bits: grey or palette indices, packed from the high bits
        samples = np.unpackbits(rows, axis=1).reshape(height, stride * 8 // depth, depth)
        samples = (samples * (1 << np.arange(depth - 1, -1, -1, dtype=np.uint8))).sum(-1, dtype=np.uint8)
        samples = samples[:, :width]
        if colour == 0:
            samples = (samples.astype(np.uint16) * (255 // ((1 << depth) - 1))).astype(np.uint8)
    pixels = samples.reshape(height, width, channels)
    if colour == 3:
        if palette is None:
            raise ValueError("palette PNG has no PLTE chunk")
        if int(pixels.max()) >= len(palette):
            raise ValueError("PNG pixel refers past the end of its palette")
        return palette[pixels[..., 0]]
    if colour in (0, 4):
        return np.repeat(pixels[..., :1], 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


def _decode_with_pillow(data: bytes, path: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"cannot decode image {path!r}: without Pillow only PNG is supported "
                         "(pip install pillow for JPEG and other formats)") from None
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            return np.asarray(picture.convert("RGB"), np.uint8)
    except Exception as e:  # Pillow raises many types for bad files
        raise ValueError(f"cannot decode image {path!r}: {e}") from None


def _resize_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's bilinear (antialiased) resampling weights in its 22-bit fixed point:
    per output pixel the first input pixel, the tap count and the integer weights."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, inverse = filterscale, 1.0 / filterscale
    taps = int(math.ceil(support)) * 2 + 1
    starts, counts = np.zeros(out_size, np.int64), np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, taps), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * inverse)) for x in range(xmax)]
        total = sum(w)
        w = [v / total if total else v for v in w]
        starts[xx], counts[xx] = xmin, xmax
        weights[xx, :xmax] = [int(v * (1 << 22) + (-0.5 if v < 0 else 0.5)) for v in w]
    return starts, counts, weights


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One pass of Pillow's two-pass resize along `axis` (0: rows, 1: columns), uint8 -> uint8."""
    image = np.moveaxis(image, axis, 0).astype(np.int64)
    starts, counts, weights = _resize_coefficients(image.shape[0], out_size)
    acc = np.full((out_size, *image.shape[1:]), 1 << 21, np.int64)
    for t in range(weights.shape[1]):
        idx = np.minimum(starts + t, image.shape[0] - 1)
        w = np.where(t < counts, weights[:, t], 0)
        acc += image[idx] * w.reshape(-1, *([1] * (image.ndim - 1)))
    out = np.clip(acc >> 22, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> [size, size, 3]: the centred square, resized as Pillow's
    BILINEAR resize does (columns first, then rows), so it matches the data build."""
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("image is empty (0 pixels)")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return _resample_axis(_resample_axis(square, size, 1), size, 0)


def _read_bytes(path: str, what: str) -> bytes:
    """A file's bytes; ValueError naming the file if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"{what} file {path!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror}") from None


def load_image(path: str, size: int) -> np.ndarray:
    """An image file -> RGB uint8 [size, size, 3]; ValueError naming the file if it cannot."""
    data = _read_bytes(path, "image")
    if data.startswith(_PNG_SIGNATURE):
        try:
            pixels = decode_png(data)
        except (ValueError, struct.error) as e:
            raise ValueError(f"cannot decode image {path!r}: {e}") from None
    else:
        pixels = _decode_with_pillow(data, path)
    try:
        return fit_image(pixels, size)
    except ValueError as e:
        raise ValueError(f"cannot decode image {path!r}: {e}") from None


# ============================================================================ audio
_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 1, 3, 0xFFFE


def decode_wav(data: bytes) -> tuple[int, np.ndarray]:
    """WAV bytes (RIFF; PCM 8/16/24/32-bit or float 32/64) -> (rate, mono float32 in [-1, 1]):
    integers scaled by 2^(bits-1) (8-bit is unsigned around 128), channels averaged."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if kind == b"fmt ":
            if len(body) < 16:
                raise ValueError("fmt chunk is too short")
            code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if code == _WAVE_EXTENSIBLE and len(body) >= 26:
                code = struct.unpack("<H", body[24:26])[0]
            fmt = (code, channels, rate, bits)
        elif kind == b"data":
            if len(body) < size:
                raise ValueError("Unexpected end of file.")
            samples = body
            break
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None or samples is None:
        raise ValueError("WAV file has no fmt or no data chunk")
    code, channels, rate, bits = fmt
    if channels < 1 or rate <= 0:
        raise ValueError(f"bad WAV header ({channels} channels, rate {rate})")
    width = bits // 8
    frame = width * channels
    if code not in (_WAVE_PCM, _WAVE_FLOAT) or bits % 8 or (code == _WAVE_PCM and width not in (1, 2, 3, 4)) \
            or (code == _WAVE_FLOAT and width not in (4, 8)):
        raise ValueError(f"unsupported WAV format (code {code}, {bits} bits); use PCM 8/16/24/32-bit or float")
    count = len(samples) // frame
    raw = np.frombuffer(samples[:count * frame], np.uint8).reshape(count, channels, width)
    if code == _WAVE_FLOAT:
        wave = raw.copy().view(f"<f{width}")[..., 0].astype(np.float64)
    elif width == 1:
        wave = (raw[..., 0].astype(np.float64) - 128.0) / 128.0
    else:  # little-endian signed integers, sign-extended through the top byte
        value = np.zeros((count, channels), np.int64)
        for i in range(width):
            value |= raw[..., i].astype(np.int64) << (8 * i)
        value -= (value >> (8 * width - 1)) << (8 * width)
        wave = value.astype(np.float64) / float(2 ** (8 * width - 1))
    wave = wave.mean(axis=1)
    if not np.all(np.isfinite(wave)):
        raise ValueError("audio has NaN or infinite samples")
    return rate, np.clip(wave, -1.0, 1.0).astype(np.float32)


def _kaiser_lowpass(up: int, down: int) -> tuple[np.ndarray, int]:
    """The FIR filter scipy.signal.resample_poly designs by default (Kaiser beta 5)."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    m = np.arange(2 * half_len + 1, dtype=np.float64) - half_len
    h = (1.0 / max_rate) * np.sinc(m / max_rate) * np.kaiser(2 * half_len + 1, 5.0)
    return h / np.sum(h) * up, half_len


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono waveform -> float32 at `to_rate`: polyphase FIR resampling with the output of
    scipy.signal.resample_poly(wave, up, down) (zero padding at both ends), clipped to [-1, 1]."""
    if from_rate <= 0:
        raise ValueError(f"bad sample rate {from_rate}")
    wave = np.asarray(wave, np.float64)
    if from_rate == to_rate or len(wave) == 0:
        return wave.astype(np.float32)
    g = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // g, int(from_rate) // g
    h, half_len = _kaiser_lowpass(up, down)
    n_in = len(wave)
    n_out = -(-n_in * up // down)
    # Output k of the upsampled-then-filtered signal sits at position t = k * down + delay of
    # the zero-upsampled stream; only every up-th input position holds a sample.
    t = np.arange(n_out, dtype=np.int64) * down + half_len
    taps = -(-len(h) // up)
    out = np.zeros(n_out, np.float64)
    for j in range(taps):
        n = t // up - j  # input sample index
        k = t - n * up  # filter tap index
        ok = (n >= 0) & (n < n_in) & (k < len(h))
        out += np.where(ok, wave[np.clip(n, 0, n_in - 1)] * h[np.minimum(k, len(h) - 1)], 0.0)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def load_wav(path: str, rate: int) -> np.ndarray:
    """A WAV file -> mono float32 at `rate`; ValueError naming the file if it cannot."""
    data = _read_bytes(path, "audio")
    try:
        file_rate, wave = decode_wav(data)
    except (ValueError, struct.error) as e:
        raise ValueError(f"cannot decode WAV {path!r}: {e}") from None
    if len(wave) == 0:
        raise ValueError(f"WAV {path!r} has no samples")
    return resample(wave, file_rate, rate)


# ============================================================================ text
TOKEN_OFFSET = 2  # 0 is padding and 1 reserved, as in mmjax/data/tokenizer.py


def tokenize(text: str, length: int, sentencepiece_model: str | None = None) -> np.ndarray:
    """Text -> int32 [length] ids (UTF-8 bytes + 2, or SentencePiece ids + 2), cut or 0-padded."""
    if sentencepiece_model:
        import sentencepiece  # only for exports that carry a SentencePiece tokenizer

        ids = np.asarray(_sentencepiece(sentencepiece_model, sentencepiece).encode(text), np.int32)
    else:
        ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    ids = ids[:length] + TOKEN_OFFSET
    out = np.zeros(length, np.int32)
    out[:len(ids)] = ids
    return out


_SP_CACHE: dict = {}


def _sentencepiece(path: str, module):
    if path not in _SP_CACHE:
        _SP_CACHE[path] = module.SentencePieceProcessor(model_file=path)
    return _SP_CACHE[path]


# ============================================================================ the predictor
def read_spec(export_dir: str) -> dict:
    """The export's export.json, checked; PredictError naming the folder if it is not one."""
    path = os.path.join(export_dir, SPEC_FILE)
    if not os.path.isfile(path):
        raise PredictError(f"--export={export_dir} is not an export (no {SPEC_FILE}); make one "
                           "with python -m mmjax.export --workdir=W --out=E")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("format") != FORMAT:
        raise PredictError(f"{path}: format {spec.get('format')!r}, this predictor reads {FORMAT!r}")
    return spec


class Predictor:
    """An export loaded for inference: raw inputs -> class probabilities.

    rows are dicts with any of 'image' (uint8 [H, W, 3] of any size, or a path), 'audio'
    (mono float32 at the export's rate, or a WAV path) and 'text' (str); missing ones are
    passed to the model as absent.
    """

    def __init__(self, export_dir: str, *, batch_size: int = 64):
        import jax
        from jax import export as jax_export

        self.directory = export_dir
        self.spec = read_spec(export_dir)
        self.modalities = tuple(self.spec["modalities"])
        self.class_names = list(self.spec["class_names"])
        self.batch_size = int(batch_size)
        pre = self.spec["preprocess"]
        self.image_size = pre.get("image", {}).get("size")
        self.audio_rate = pre.get("audio", {}).get("sample_rate")
        self.audio_samples = pre.get("audio", {}).get("samples")
        self.text_length = pre.get("text", {}).get("length")
        tokenizer = pre.get("text", {}).get("tokenizer", "bytes")
        self.sentencepiece = os.path.join(export_dir, tokenizer) if tokenizer != "bytes" else None
        params, _ = read_safetensors(os.path.join(export_dir, self.spec["params_file"]))
        with open(os.path.join(export_dir, self.spec["function_file"]), "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
        platform = jax.default_backend()
        if platform not in exported.platforms:
            raise PredictError(f"the export runs on {', '.join(exported.platforms)}, not on this "
                               f"machine's {platform}; export again from a newer mmjax")
        self.params = jax.device_put(params)
        self._call = jax.jit(exported.call)

    # ---------------------------------------------------------------- inputs
    def example(self, image=None, audio=None, text=None) -> dict:
        """Raw inputs (arrays, paths or str) -> the model's fields for one row."""
        given = {m: v for m, v in (("image", image), ("audio", audio), ("text", text)) if v is not None}
        unknown = [m for m in given if m not in self.modalities]
        if unknown:
            raise PredictError(f"the model has no {unknown[0]} input; it takes {', '.join(self.modalities)}")
        if not given:
            raise PredictError(f"no input given; the model takes any of {', '.join(self.modalities)}")
        row = {}
        if "image" in given:
            image = load_image(image, self.image_size) if isinstance(image, str) else fit_image(
                np.asarray(image, np.uint8), self.image_size)
            row["image"] = image
        if "audio" in given:
            wave = load_wav(audio, self.audio_rate) if isinstance(audio, str) else np.asarray(audio, np.float32)
            n = min(len(wave), self.audio_samples)
            row["audio"] = np.zeros(self.audio_samples, np.float32)
            row["audio"][:n] = wave[:n]
            row["audio_length"] = np.int32(n)
        if "text" in given:
            row["text"] = tokenize(text, self.text_length, self.sentencepiece)
        return row

    def _batch(self, rows: list[dict]) -> dict:
        """Rows -> one batch of batch_size (absent modalities flagged, padding rows absent)."""
        size = max(self.batch_size, len(rows))
        shapes = {name: (tuple(s["shape"][1:]), s["dtype"]) for name, s in self.spec["inputs"].items()}
        batch = {name: np.zeros((size, *shape), dtype) for name, (shape, dtype) in shapes.items()}
        for i, row in enumerate(rows):
            for m in self.modalities:
                if m in row:
                    batch[presence_key(m)][i] = True
            for key, value in row.items():
                batch[key][i] = value
        return batch

    def probabilities(self, rows: list[dict]) -> np.ndarray:
        """float32 [len(rows), num_classes] for rows made by `example`, in batches."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            result = self._call(self.params, self._batch(chunk))
            out.append(np.asarray(result["probabilities"])[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def top_k(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]


# ============================================================================ manifests
def _manifest_records(path: str) -> list[tuple[int, object]]:
    """(line, dict or problem str) per row of a JSON Lines or CSV manifest (build's format)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PredictError(f"cannot read manifest {path!r}: {e.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PredictError(f"manifest {path!r} is not UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    first = next((t for t in lines if t.strip()), "")
    records: list[tuple[int, object]] = []
    if path.lower().endswith((".jsonl", ".ndjson", ".json")) or first.lstrip().startswith("{"):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                records.append((number, "is empty (remove blank lines)"))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                records.append((number, f"is not valid JSON ({e.msg} at column {e.colno})"))
                continue
            records.append((number, obj if isinstance(obj, dict) else "must be a JSON object"))
        return records
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    unknown = [h for h in header if h not in FIELDS]
    if not header or unknown:
        raise PredictError(f"{path} line 1: a CSV manifest starts with a header of "
                           f"{', '.join(FIELDS)}" + (f" (unknown column {unknown[0]!r})" if unknown else ""))
    while True:
        number = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            records.append((number, f"is not valid CSV: {e}"))
            continue
        if len(cells) != len(header):
            records.append((number, f"has {len(cells)} fields but the header has {len(header)}"))
            continue
        row = {k: v for k, v in zip(header, cells) if v.strip() or k == "text"}
        label = row.get("label", "").strip()
        if "label" in row:
            row["label"] = int(label) if label.lstrip("-").isdigit() else label
        records.append((number, row))
    return records


def _check_row(obj: dict, base_dir: str, predictor: Predictor) -> tuple[dict, int | None]:
    """Manifest object -> (inputs for Predictor.example, true class id or None)."""
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    inputs = {}
    for m in MODALITIES:
        value = obj.get(m)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{m!r} must be a string, got {type(value).__name__}")
        inputs[m] = value if m == "text" else os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
    label = obj.get("label")
    if label is None or label == "":
        return inputs, None
    if isinstance(label, str) and label in predictor.class_names:
        return inputs, predictor.class_names.index(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(predictor.class_names):
        return inputs, label
    shown = ", ".join(predictor.class_names[:10]) + (", ..." if len(predictor.class_names) > 10 else "")
    raise ValueError(f"unknown label {label!r}: classes are {shown}")


def predict_manifest(predictor: Predictor, manifest: str, out: str, *, top_k: int = 5,
                     skip_bad: bool = False, log=print) -> dict:
    """Predicts every row of `manifest` into JSON Lines `out` (written atomically).

    Returns {'rows', 'labelled', 'correct', 'accuracy', 'skipped': [(line, problem)]}.
    """
    manifest = os.path.abspath(manifest)
    base_dir = os.path.dirname(manifest)
    skipped, results = [], []

    def bad(line: int, problem: str) -> None:
        message = f"{manifest} line {line}: {problem}"
        if not skip_bad:
            raise PredictError(message + " (--skip_bad skips bad rows)")
        skipped.append((line, problem))
        log(f"mmjax.predict: skipped {message}", file=sys.stderr)

    records = _manifest_records(manifest)
    pending: list[tuple[int, dict, int | None]] = []

    def flush() -> None:
        probs = predictor.probabilities([row for _, row, _ in pending])
        for (line, _, truth), p in zip(pending, probs):
            best = int(np.argmax(p))
            result = {"line": line, "label": predictor.class_names[best], "class_id": best,
                      "probability": float(p[best]),
                      "top_k": [{"label": n, "probability": q} for n, q in predictor.top_k(p, top_k)]}
            if truth is not None:
                result.update(true_label=predictor.class_names[truth], correct=best == truth)
            results.append(result)
        pending.clear()

    for line, obj in records:
        if isinstance(obj, str):
            bad(line, obj)
            continue
        try:
            inputs, truth = _check_row(obj, base_dir, predictor)
            row = predictor.example(**inputs)
        except ValueError as e:  # PredictError included
            bad(line, str(e))
            continue
        pending.append((line, row, truth))
        if len(pending) == predictor.batch_size:
            flush()
    if pending:
        flush()
    if not results:
        raise PredictError(f"{manifest}: no usable rows" + (f" ({len(skipped)} skipped)" if skipped else ""))
    directory = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".preds-", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for result in results:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    labelled = [r for r in results if "correct" in r]
    correct = sum(r["correct"] for r in labelled)
    summary = {"rows": len(results), "labelled": len(labelled), "correct": correct,
               "accuracy": correct / len(labelled) if labelled else None, "skipped": skipped}
    accuracy = f"; accuracy {summary['accuracy']:.4f} over {len(labelled)} labelled rows" if labelled else ""
    log(f"wrote {len(results)} predictions to {out}{accuracy}")
    if skipped:
        log(f"skipped {len(skipped)} bad row{'s' * (len(skipped) > 1)}; first: {manifest} line "
            f"{skipped[0][0]}: {skipped[0][1]}")
    return summary


# ============================================================================ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmjax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="folder written by python -m mmjax.export")
    p.add_argument("--image", help="an image file (PNG; other formats with Pillow installed)")
    p.add_argument("--audio", help="a WAV file (PCM 8/16/24/32-bit or float, any rate and channels)")
    p.add_argument("--text", help="a text string")
    p.add_argument("--manifest", help="JSON Lines or CSV manifest, as for python -m mmjax.data.build")
    p.add_argument("--out", help="predictions, one JSON line per manifest row")
    p.add_argument("--top_k", type=int, default=5, help="classes to report per example")
    p.add_argument("--batch_size", type=int, default=64, help="examples per model call")
    p.add_argument("--skip_bad", action="store_true", help="skip bad manifest rows and report them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        single = any(v is not None for v in (args.image, args.audio, args.text))
        if args.manifest and single:
            raise PredictError("give either --manifest or --image/--audio/--text, not both")
        if args.manifest and not args.out:
            raise PredictError("--manifest needs --out=preds.jsonl")
        if not args.manifest and not single:
            raise PredictError("nothing to predict: give --image/--audio/--text or --manifest")
        if args.top_k < 1 or args.batch_size < 1:
            raise PredictError("--top_k and --batch_size must be at least 1")
        predictor = Predictor(args.export, batch_size=args.batch_size)
        if args.manifest:
            predict_manifest(predictor, args.manifest, args.out, top_k=args.top_k,
                             skip_bad=args.skip_bad)
        else:
            row = predictor.example(image=args.image, audio=args.audio, text=args.text)
            probs = predictor.probabilities([row])[0]
            width = max(len(n) for n in predictor.class_names)
            for name, p in predictor.top_k(probs, args.top_k):
                print(f"{name:<{width}}  {p:.4f}")
    except ValueError as e:  # PredictError and decoding errors, which name the file
        print(f"mmjax.predict: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
