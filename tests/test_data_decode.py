"""Safe field decoders: .npy without np.load's header evaluation, pickles refused."""

from __future__ import annotations

import io

import numpy as np
import pytest

from data_pipeline.decode import decode_field
from data_pipeline.errors import UnsafeEncodingError


@pytest.mark.parametrize("array", [
    np.arange(513, dtype=np.int32), np.zeros((3, 4), np.float16),
    np.asfortranarray(np.arange(12).reshape(3, 4)), np.array(5, np.int64), np.zeros(0, np.uint8),
    np.arange(6, dtype=">u2").reshape(2, 3), np.array([True, False]),
])
def test_npy_round_trip(array):
    buf = io.BytesIO()
    np.save(buf, array)
    got = decode_field("tokens.npy", buf.getvalue())
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)


def test_object_npy_and_pickles_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_field("npy", buf.getvalue())
    for enc in ("pyd", "x.pickle", "pkl"):
        with pytest.raises(UnsafeEncodingError):
            decode_field(enc, b"\x80\x04K\x01.")


def test_text_and_scalars():
    assert decode_field("cls", b" 7\n") == 7
    assert decode_field("json", b'{"a": [1]}') == {"a": [1]}
    assert decode_field("txt", "héllo".encode()) == "héllo"
    assert decode_field("int", np.int64(-3).tobytes()) == -3
    assert decode_field("float32", np.float32(1.5).tobytes()) == 1.5
    with pytest.raises(ValueError, match="unknown encoding"):
        decode_field("weird", b"")
