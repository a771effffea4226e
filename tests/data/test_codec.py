"""Tests for mmjax/data/codec.py: msgpack round trips and clear errors."""

import msgpack
import numpy as np
import pytest

from mmjax.data import codec


def test_round_trip_keeps_values_dtypes_and_shapes():
    example = {
        "image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "audio": np.linspace(-1, 1, 7, dtype=np.float32),
        "big_endian": np.arange(4, dtype=">i4"),
        "scalar_array": np.asarray(3.5, np.float64),
        "empty": np.zeros((0, 5), np.int16),
        "mask": np.array([True, False]),
        "text": "héllo",
        "blob": b"\x00\x01",
        "label": 7,
        "score": 0.25,
        "flag": True,
    }
    back = codec.decode(codec.encode(example))
    assert set(back) == set(example)
    for key, value in example.items():
        if isinstance(value, np.ndarray):
            assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
            np.testing.assert_array_equal(back[key], value)
        else:
            assert back[key] == value and type(back[key]) is type(value), key


def test_numpy_scalars_and_non_contiguous_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # not contiguous
    back = codec.decode(codec.encode({"a": arr, "n": np.int64(4), "f": np.float32(0.5)}))
    np.testing.assert_array_equal(back["a"], arr)
    assert back["n"] == 4 and isinstance(back["n"], int)
    assert back["f"] == 0.5 and isinstance(back["f"], float)


def test_decoded_arrays_are_read_only_views():
    back = codec.decode(codec.encode({"a": np.zeros(3, np.float32)}))
    assert not back["a"].flags.writeable


@pytest.mark.parametrize(
    "example, match",
    [
        ([1, 2], "expects a dict"),
        ({1: 2}, "keys must be str"),
        ({"x": [1, 2]}, "type list"),
        ({"x": np.array(["a"], dtype=object)}, "numeric or bool"),
        ({"x": np.array(["ab"])}, "numeric or bool"),
        ({"x": None}, "type NoneType"),
    ],
)
def test_encode_rejects_unsupported_input(example, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(example)


def _nd(**overrides):
    base = {"__ndarray__": 1, "dtype": "<f4", "shape": [2], "data": b"\x00" * 8}
    base.update(overrides)
    return msgpack.packb({"x": base}, use_bin_type=True)


@pytest.mark.parametrize(
    "data, match",
    [
        ("text", "expects bytes"),
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb({"x": [1]}), "unsupported type list"),
        (_nd(data=b"\x00" * 7), "7 data bytes"),
        (_nd(dtype="|O"), "not allowed"),
        (_nd(dtype="nonsense"), "bad dtype"),
        (_nd(shape=[-1]), "bad shape"),
        (msgpack.packb({"x": {"__ndarray__": 1, "dtype": "<f4"}}), "array map has keys"),
    ],
)
def test_decode_rejects_invalid_records(data, match):
    with pytest.raises(ValueError, match=match):
        codec.decode(data)
