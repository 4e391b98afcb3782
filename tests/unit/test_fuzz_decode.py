"""Property: per-record decoding never raises, whatever bytes and headers a producer sends.

Every record comes back as an event or a BadEvent whose reason is in REASONS, one per record, in order.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.settings import LimitSettings
from stream_app.wire.codecs import (
    REASONS,
    BadEvent,
    FrameEvent,
    VectorEvent,
    decode_frame_records,
    decode_vector_records,
    encode_image,
)
from stream_app.wire.records import Record

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = LimitSettings(max_image_pixels=256 * 256, max_decoded_batch_bytes=1 << 20)
PNG = encode_image(np.zeros((16, 16), np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def png_like(draw) -> bytes:
    """PNG signature + a valid-CRC IHDR with arbitrary fields + random IDAT: deep into Pillow's decoder."""
    ihdr = struct.pack(
        ">IIBBBBB",
        draw(st.integers(0, 2**31 - 1)),
        draw(st.integers(0, 2**31 - 1)),
        draw(st.sampled_from([1, 2, 4, 8, 16, 3])),
        draw(st.sampled_from([0, 2, 3, 4, 6, 5])),
        0,
        0,
        draw(st.integers(0, 1)),
    )
    idat = draw(st.one_of(st.binary(max_size=64), st.builds(zlib.compress, st.binary(max_size=256))))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    png_like(),
    st.builds(lambda cut: PNG[:cut], st.integers(0, len(PNG))),
    st.builds(lambda b: b"\xff\xd8\xff" + b, st.binary(max_size=200)),  # JPEG magic + junk
    st.builds(lambda b: b"BM" + b, st.binary(max_size=200)),  # BMP magic + junk
)
header_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"file:///tmp/a%00b", b"file://", b"file:///", b"http://x/y", b"file:///etc/passwd",
                     b"file:///%2e%2e/x", b"file://[::1", b"nan", b"inf", b"-1e400", b"1970-01-01T00:00:00Z"]),
)  # fmt: skip
headers = st.dictionaries(st.sampled_from(["source", "ts", "uri", "content-type", "x"]), header_values, max_size=5)
keys = st.one_of(st.none(), st.binary(max_size=20))


def records(kind_values) -> st.SearchStrategy[list[Record]]:
    rec = st.builds(lambda k, v, h: Record("t", 0, 0, k, v, h), keys, kind_values, headers)
    return st.lists(rec, max_size=6)


def check(kind: str, batch: list[Record], claim_dirs=()) -> None:
    if kind == "vectors":
        out = decode_vector_records(batch, limits=LIMITS)
    else:
        out = decode_frame_records(batch, max_image_bytes=1 << 16, claim_check_dirs=claim_dirs, limits=LIMITS)
    assert len(out) == len(batch)
    for got in out:
        assert isinstance(got, VectorEvent | FrameEvent | BadEvent)
        if isinstance(got, BadEvent):
            assert got.reason in REASONS, got


@FUZZ
@given(records(values))
def test_frame_decoding_never_raises(batch):
    check("images", batch)


@FUZZ
@given(records(values))
def test_frame_decoding_with_claim_check_dirs_never_raises(tmp_path_factory, batch):
    check("images", batch, claim_dirs=[tmp_path_factory.getbasetemp()])


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
vector_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda body: __import__("orjson").dumps(body),
        st.fixed_dictionaries(
            {},
            optional={
                "source": json_values,
                "ts": json_values,
                "values": st.one_of(json_values, st.lists(json_scalars, max_size=6)),
                "seq": json_values,
            },
        ),
    ),
)


@FUZZ
@given(records(st.one_of(st.none(), vector_bodies)))
def test_vector_decoding_never_raises(batch):
    check("vectors", batch)
