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
from collections.abc import Iterable, Sequence

import numpy as np

MAGIC = b"LWV1"
CONTENT_TYPE = "application/vnd.linewatch.vector"
MAX_VALUES = 1 << 20  # a wider vector is a producer bug, not a spectrum
_HEADER = struct.Struct("<4sHdqI")
Parsed = tuple[str, float, np.ndarray, int | None]  # source, ts, float32 values, seq
BATCH_MIN = 8  # values of one length parsed together from this many (fewer: one by one)
_HEADER_DTYPE = np.dtype([("magic", "S4"), ("name_len", "<u2"), ("ts", "<f8"), ("seq", "<i8"), ("n", "<u4")])  # packed
assert _HEADER_DTYPE.itemsize == _HEADER.size


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


def parse_vector_binary(value: bytes) -> Parsed:
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


def parse_vectors_binary(values: Sequence[bytes]) -> list[Parsed | BinaryVectorError]:
    """`parse_vector_binary` of each value, or the error it raises, batched: values of one length are checked with
    one header parse over all of them and their floats read as one matrix (the per-message cost of a micro-batch
    of sensor vectors was mostly struct, slicing and numpy calls). A value the batched checks doubt is parsed alone,
    so the single-message parser stays the definition, errors included."""
    out: list[Parsed | BinaryVectorError | None] = [None] * len(values)
    by_length: dict[int, list[int]] = {}
    for i, value in enumerate(values):
        by_length.setdefault(len(value), []).append(i)
    for length, rows in by_length.items():
        if length <= _HEADER.size or len(rows) < BATCH_MIN:  # a few of this length: numpy's setup costs more
            for i in rows:
                out[i] = _parsed_alone(values[i])
            continue
        raw = np.frombuffer(b"".join([values[i] for i in rows]), np.uint8).reshape(len(rows), length)
        head = np.ascontiguousarray(raw[:, : _HEADER.size]).view(_HEADER_DTYPE)[:, 0]
        name_len, n, ts = head["name_len"].astype(np.int64), head["n"].astype(np.int64), head["ts"]
        with np.errstate(invalid="ignore"):
            ok = (head["magic"] == MAGIC) & (name_len > 0) & (n > 0) & (n <= MAX_VALUES) & np.isfinite(ts) & (ts >= 0)
        ok &= _HEADER.size + name_len + 4 * n == length
        for k in np.flatnonzero(~ok).tolist():
            out[rows[k]] = _parsed_alone(values[rows[k]])
        good = np.flatnonzero(ok)
        for width in np.unique(name_len[good]).tolist():
            ks = good[name_len[good] == width]
            start = _HEADER.size + width
            matrix = raw[ks, start:].view("<f4")  # fancy indexing copied the rows: contiguous and aligned
            names, which = np.unique(raw[ks, _HEADER.size : start].view(f"V{width}")[:, 0], return_inverse=True)
            sources: list[str | None] = []
            for name in names.tolist():  # a batch holds few sources: each decoded once
                try:
                    sources.append(name.decode())
                except UnicodeDecodeError:
                    sources.append(None)
            seqs = head["seq"][ks].tolist()
            for k, t, seq, row, j in zip(ks.tolist(), ts[ks].tolist(), seqs, matrix, which.tolist(), strict=True):
                source = sources[j]  # None: not UTF-8, which the parser alone words
                parsed = (source, t, row, None if seq < 0 else seq) if source is not None else None
                out[rows[k]] = parsed or _parsed_alone(values[rows[k]])
    return out  # type: ignore[return-value]


def _parsed_alone(value: bytes) -> Parsed | BinaryVectorError:
    try:
        return parse_vector_binary(value)
    except BinaryVectorError as exc:
        return exc
