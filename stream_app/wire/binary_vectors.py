"""A compact binary encoding of one sensor vector, accepted beside JSON on the vectors topic.

Layout (little-endian): magic `LWV1` | u16 source length | f64 ts (epoch s) | i64 seq (-1: none) |
u32 n values | source UTF-8 | n x float32. About 4 bytes a value instead of ~10 in JSON, and decoded with one
`np.frombuffer` instead of a JSON parse. Producers mark it with the header
`content-type: application/vnd.linewatch.vector` (the magic alone decides: JSON never starts with it).

>>> value = encode_vector_binary("line-1/press-2", [1.5, -2.0], ts=1700000000.25, seq=7)
>>> source, ts, values, seq = parse_vector_binary(value)
>>> source, ts, values.tolist(), seq
('line-1/press-2', 1700000000.25, [1.5, -2.0], 7)
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable

import numpy as np

MAGIC = b"LWV1"
CONTENT_TYPE = "application/vnd.linewatch.vector"
MAX_VALUES = 1 << 20  # a wider vector is a producer bug, not a spectrum
_HEADER = struct.Struct("<4sHdqI")


class BinaryVectorError(ValueError):
    """The bytes start like a binary vector but do not hold one; the message says what is wrong."""


def is_binary_vector(value: bytes) -> bool:
    return value[:4] == MAGIC


def encode_vector_binary(
    source: str, values: Iterable[float], ts: float | None = None, seq: int | None = None
) -> bytes:
    """One vector as bytes in the layout above (values as float32)."""
    name = source.encode()
    if not name or len(name) > 0xFFFF:
        raise ValueError(f"expected a source of 1..65535 UTF-8 bytes, got {len(name)}")
    data = np.ascontiguousarray(np.asarray(list(values) if not isinstance(values, np.ndarray) else values), "<f4")
    if data.ndim != 1 or not 0 < data.size <= MAX_VALUES:
        raise ValueError(f"expected 1..{MAX_VALUES} values in one flat vector, got shape {data.shape}")
    header = _HEADER.pack(MAGIC, len(name), time.time() if ts is None else float(ts), -1 if seq is None else seq,
                          data.size)  # fmt: skip
    return header + name + data.tobytes()


def parse_vector_binary(value: bytes) -> tuple[str, float, np.ndarray, int | None]:
    """(source, ts, float32 values, seq) from one binary vector; BinaryVectorError when the bytes disagree."""
    if len(value) < _HEADER.size:
        raise BinaryVectorError(f"binary vector header needs {_HEADER.size} bytes, got {len(value)}")
    magic, name_len, ts, seq, n = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise BinaryVectorError(f"expected magic {MAGIC!r}, got {magic!r}")
    expected = _HEADER.size + name_len + 4 * n
    if not 0 < n <= MAX_VALUES or name_len == 0 or len(value) != expected:
        raise BinaryVectorError(
            f"binary vector of {n} values and a {name_len}-byte source needs {expected} bytes, got {len(value)}"
        )
    try:
        source = value[_HEADER.size : _HEADER.size + name_len].decode()
    except UnicodeDecodeError as exc:
        raise BinaryVectorError(f"source is not UTF-8 ({exc})") from None
    if not math.isfinite(ts) or ts < 0:
        raise BinaryVectorError(f"expected ts in epoch seconds, got {ts}")
    values = np.frombuffer(value, dtype="<f4", count=n, offset=_HEADER.size + name_len)
    return source, ts, values, None if seq < 0 else seq
