"""Stored example <-> bytes, with msgpack and no pickle.

An example is a flat dict from str keys to str, bytes, int, float, bool or a numpy array.
Arrays are written as a map `{"__ndarray__": 1, "dtype": "<f4", "shape": [..], "data":
raw bytes}`; the dtype string carries the byte order, so shards read back the same on any
machine. Decoded arrays are read-only views of the record bytes (copy them to write).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_ND_MARK = "__ndarray__"
_ND_KEYS = frozenset({_ND_MARK, "dtype", "shape", "data"})
_SCALARS = (str, bytes, int, float, bool)
_ARRAY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, no strings


def _encode_value(key: str, value: Any) -> Any:
    """Returns the msgpack-ready form of one example value."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise ValueError(
                f"example[{key!r}]: arrays must have a numeric or bool dtype, got {value.dtype}"
            )
        # tobytes() writes C order even for non-contiguous views.
        return {_ND_MARK: 1, "dtype": value.dtype.str, "shape": list(value.shape),
                "data": value.tobytes(order="C")}
    if isinstance(value, np.generic):  # numpy scalars are stored as plain Python ones
        return _encode_value(key, value.item())
    if isinstance(value, _SCALARS):
        return value
    raise ValueError(
        f"example[{key!r}] has type {type(value).__name__}; the codec stores only str, bytes, "
        "int, float, bool and numpy arrays"
    )


def encode(example: dict) -> bytes:
    """Serialises one example dict to bytes."""
    if not isinstance(example, dict):
        raise ValueError(f"encode() expects a dict, got {type(example).__name__}")
    out = {}
    for key, value in example.items():
        if not isinstance(key, str):
            raise ValueError(f"example keys must be str, got {key!r}")
        out[key] = _encode_value(key, value)
    return msgpack.packb(out, use_bin_type=True)


def _decode_array(key: str, obj: dict) -> np.ndarray:
    """Rebuilds an ndarray from its stored map after checking that the map is consistent."""
    if set(obj) != _ND_KEYS:
        raise ValueError(
            f"record field {key!r}: array map has keys {sorted(obj)}, expected {sorted(_ND_KEYS)}"
        )
    try:
        dtype = np.dtype(obj["dtype"])
    except TypeError as e:
        raise ValueError(f"record field {key!r}: bad dtype {obj['dtype']!r}") from e
    if dtype.kind not in _ARRAY_KINDS:
        raise ValueError(f"record field {key!r}: dtype {dtype} is not allowed")
    shape, data = obj["shape"], obj["data"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"record field {key!r}: bad shape {shape!r}")
    if not isinstance(data, bytes):
        raise ValueError(f"record field {key!r}: array data must be bytes")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"record field {key!r}: {len(data)} data bytes for shape {shape} of {dtype} "
            f"(expected {expected})"
        )
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))


def decode(data: bytes) -> dict:
    """Parses bytes written by `encode` back into an example dict."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"decode() expects bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise ValueError(f"record is not valid msgpack: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a msgpack map, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"record keys must be str, got {key!r}")
        if isinstance(value, dict) and _ND_MARK in value:
            out[key] = _decode_array(key, value)
        elif isinstance(value, _SCALARS):
            out[key] = value
        else:
            raise ValueError(
                f"record field {key!r} has unsupported type {type(value).__name__}"
            )
    return out
