"""Reading and writing the stored judging states: JSON objects and compact float32 arrays, no I/O.

The threshold and incident states travel through Redis as orjson bytes; these helpers are what they share,
so every state reports a malformed value the same way (a ValueError naming what was expected).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson


def json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """The JSON object in `data`, or ValueError naming `what` was expected.

    >>> json_object(b'{"a": 1}', "thing")
    {'a': 1}
    >>> json_object(b"[1]", "thing")
    Traceback (most recent call last):
    ValueError: not a serialised thing: expected a JSON object, got list
    """
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a serialised {what}: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"not a serialised {what}: expected a JSON object, got {type(d).__name__}")
    return d


def frozen(a: Any, dtype: Any = np.float32) -> np.ndarray:
    """A private read-only copy (freezing it never freezes the caller's array)."""
    a = np.array(a, dtype=dtype)
    a.setflags(write=False)
    return a


def b64(a: np.ndarray) -> str:
    """Base64 of the little-endian float32 bytes (8 KB for 2000 values, and exact for float32 state)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def unb64(s: str) -> np.ndarray:
    """Inverse of `b64`, as a frozen float32 array.

    >>> unb64(b64(np.array([1.5, -2.0]))).tolist()
    [1.5, -2.0]
    """
    return frozen(np.frombuffer(base64.b64decode(s), dtype="<f4"))


def b64_bits(flags: np.ndarray) -> str:
    """Base64 of packed booleans (one bit each)."""
    return base64.b64encode(np.packbits(np.asarray(flags, bool)).tobytes()).decode("ascii")


def unb64_bits(s: str, size: int) -> np.ndarray:
    """Inverse of `b64_bits` for `size` flags, as a frozen bool array.

    >>> unb64_bits(b64_bits(np.array([True, False, True])), 3).tolist()
    [True, False, True]
    """
    bits = np.unpackbits(np.frombuffer(base64.b64decode(s), dtype=np.uint8))
    if bits.size < size:
        raise ValueError(f"expected {size} flags, got {bits.size}")
    return frozen(bits[:size], dtype=bool)
