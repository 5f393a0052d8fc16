"""Decoding raw fields (WebDataset extensions or MDS column encodings) into Python/NumPy values.

Only safe decoders exist: pickle-based encodings (MDS `pkl`, WebDataset `pyd`/`pickle`) are refused
with an error rather than executed, and `.npy` is loaded with allow_pickle=False.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.errors import UnsafeEncodingError

IMAGE_EXTS = {"png", "jpg", "jpeg", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif"}
UNSAFE = {"pkl", "pickle", "pyd", "pth", "pt"}
_SCALARS = {n: np.dtype(n) for n in ("uint8", "uint16", "uint32", "uint64", "int8", "int16",
                                     "int32", "int64", "float16", "float32", "float64")}
_MDS_VALUE_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16",
                     32: "uint32", 33: "int32", 34: "float32", 64: "uint64", 65: "int64",
                     66: "float64"}


def _ndarray(spec: str, data: bytes) -> np.ndarray:
    """MDS `ndarray[:dtype[:shape]]`: static parts in the spec, dynamic ones in the data."""
    args = spec.split(":")[1:]
    pos = 0
    if args and args[0]:
        dtype = args[0]
    else:
        dtype, pos = _MDS_VALUE_DTYPES[data[0]], 1
    if len(args) > 1:
        shape = tuple(int(x) for x in args[1].split(","))
    else:
        byte = data[pos]
        ndim, width = byte >> 2, 2 ** (byte % 4)
        shape = tuple(np.frombuffer(data[pos + 1:pos + 1 + ndim * width], f"<u{width}").tolist())
        pos += 1 + ndim * width
    return np.frombuffer(data[pos:], dtype).reshape(shape)


_NPY_HEADER = re.compile(
    r"""^\{'descr':\s*'([<>|=]?[a-zA-Z]\d*)',\s*'fortran_order':\s*(True|False),\s*"""
    r"""'shape':\s*\(([\d,\s]*)\),?\s*\}""")


_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], str, int] | None] = {}


def _npy_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], str, int] | None:
    """(dtype, shape, order, data offset) of a plain numeric .npy, or None. Cached by header
    bytes: the samples of a dataset share a handful of headers."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        return None
    start, size = (10, int.from_bytes(data[8:10], "little")) if data[6] == 1 else (
        12, int.from_bytes(data[8:12], "little"))
    header = data[start:start + size]
    if header in _npy_headers:
        return _npy_headers[header]
    match = _NPY_HEADER.match(header.decode("latin1"))
    parsed = None
    if match and np.dtype(match.group(1)).kind in "biuf":
        shape = tuple(int(x) for x in match.group(3).replace(" ", "").split(",") if x)
        parsed = (np.dtype(match.group(1)), shape, "F" if match.group(2) == "True" else "C",
                  start + size)
    if len(_npy_headers) < 256:
        _npy_headers[header] = parsed
    return parsed


def _npy(data: bytes) -> np.ndarray:
    """A .npy array without np.load's per-call header evaluation (which compiles Python code
    and cost more than the rest of a token sample). Unusual headers go through np.load."""
    parsed = _npy_header(data)
    if parsed is None:
        return np.load(io.BytesIO(data), allow_pickle=False)
    dtype, shape, order, offset = parsed
    count = int(np.prod(shape)) if shape else 1
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape, order=order)


def _pil(data: bytes) -> Image.Image:
    """MDS `pil`: [width u32][height u32][mode length u32][mode][raw pixels]."""
    width, height, mode_len = np.frombuffer(data[:12], np.uint32).tolist()
    mode = data[12:12 + mode_len].decode()
    return Image.frombytes(mode, (width, height), data[12 + mode_len:])


def is_image_encoding(encoding: str) -> bool:
    """An encoded image file (WebDataset extension or MDS jpeg/png/... column)."""
    enc = encoding.lower()
    return enc.split(":")[0] in IMAGE_EXTS or enc.rsplit(".", 1)[-1] in IMAGE_EXTS


def open_image(data: bytes) -> Image.Image:
    """An encoded image opened but not decoded yet: its size is known from the header, and a
    JPEG can still be told to decode at reduced scale (`Image.draft`)."""
    return Image.open(io.BytesIO(data))


def decode_field(encoding: str, data: bytes) -> Any:
    """Decode one field. `encoding` is an MDS encoding or a WebDataset extension (e.g. `cls`,
    `tokens.npy`: the last dotted part decides)."""
    enc = encoding.lower()
    base = enc.split(":")[0]
    last = enc.rsplit(".", 1)[-1] if base == enc else base
    if last in UNSAFE or base in UNSAFE:
        raise UnsafeEncodingError(
            f"field encoded as {encoding!r} needs unpickling, which can run arbitrary code;"
            " refusing. Re-encode it (npy, json, ndarray, png...)"
        )
    if base == "ndarray":
        return _ndarray(enc, data)
    if base == "pil":
        return _pil(data)
    if last in IMAGE_EXTS or base == "jpeg_array":
        image = open_image(data)
        image.load()
        return image
    if last == "npy":
        return _npy(data)
    if base == "int":
        return int(np.frombuffer(data, np.int64)[0])
    if base in _SCALARS:
        return np.frombuffer(data, _SCALARS[base])[0].item()
    if last in ("cls", "cls2", "index", "label", "target", "id", "str_int"):
        return int(data.decode().strip())
    if base == "str_float":
        return float(data.decode())
    if last == "json":
        return json.loads(data)
    if last in ("txt", "text", "str", "str_decimal"):
        return data.decode()
    if base == "bytes":
        return data
    raise ValueError(f"unknown encoding {encoding!r}")
