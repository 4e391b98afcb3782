"""Codecs: what the worker accepts, and the dead-letter reason for what it does not."""

from __future__ import annotations

import io

import numpy as np
import pytest

from stream_app.settings import LimitSettings
from stream_app.wire.codecs import (
    BadEvent,
    decode_frame,
    decode_frame_records,
    decode_vector,
    decode_vectors,
    encode_image,
    encode_vector,
    frame_headers,
    headers_dict,
)
from stream_app.wire.records import Record


def reason_of(fn, *args, **kwargs) -> str:
    with pytest.raises(BadEvent) as info:
        fn(*args, **kwargs)
    return info.value.reason


def test_vector_round_trip_keeps_source_ts_values_and_seq():
    ev = decode_vector(encode_vector("l1/m1", np.array([1.5, -2.0], np.float32), ts=12.5, seq=7))
    assert (ev.source, ev.ts, ev.seq) == ("l1/m1", 12.5, 7)
    assert ev.values.dtype == np.float32 and ev.values.tolist() == [1.5, -2.0]


def test_iso_timestamps_are_accepted():
    ev = decode_vector(b'{"source": "a", "ts": "2026-01-01T00:00:00+00:00", "values": [1]}')
    assert ev.ts == 1767225600.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed_json"),
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "bad_schema"),
        (b'{"values": [1.0]}', "bad_schema"),
        (b'{"source": "a", "values": []}', "bad_schema"),
        (b'{"source": "a", "values": ["x"]}', "bad_schema"),
        (b'{"source": "a", "values": [[1], [2]]}', "bad_schema"),
        (b'{"source": "a", "values": [1e39]}', "non_finite"),
        (b'{"source": "a", "ts": "yesterday", "values": [1]}', "bad_schema"),
    ],
)
def test_bad_vectors_name_their_reason(payload, reason):
    assert reason_of(decode_vector, payload) == reason


def test_a_batch_decodes_like_its_messages_one_by_one():
    """Mixed widths and bad rows in one batch: each message gets exactly what it would alone, in order."""
    batch = [
        encode_vector("a", [1.0, 2.0], ts=1.0, seq=1),
        b'{"source": "b", "values": [1, NaN]}',
        encode_vector("c", [3.0, 4.0, 5.0], ts=2.0),
        b'{"source": "d", "values": [1e39, 1.0]}',
        b'{"source": "e", "values": [true, 1.0]}',
        encode_vector("f", [6.0, 7.0], ts=3.0),
    ]
    decoded = decode_vectors(batch)
    assert len(decoded) == len(batch)
    for message, got in zip(batch, decoded, strict=True):
        try:
            alone = decode_vector(message)
        except BadEvent as exc:
            assert isinstance(got, BadEvent) and got.reason == exc.reason
        else:
            assert (got.source, got.ts, got.seq, got.values.tolist()) == (
                alone.source, alone.ts, alone.seq, alone.values.tolist()
            )  # fmt: skip
    assert [getattr(d, "reason", None) for d in decoded] == [
        None,
        "malformed_json",
        None,
        "non_finite",
        "bad_schema",
        None,
    ]


def test_frame_round_trip_gray_and_rgb():
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 255, (32, 40), np.uint8), rng.integers(0, 255, (16, 16, 3), np.uint8)):
        hdrs = headers_dict(frame_headers("cam-1", ts=3.0, extra={"truth": "normal"}))
        ev = decode_frame(encode_image(image), hdrs, max_bytes=1 << 20)
        assert ev.source == "cam-1" and ev.ts == 3.0 and hdrs["truth"] == b"normal"
        np.testing.assert_array_equal(ev.image, image)


def test_bad_frames_name_their_reason(tmp_path):
    hdrs = headers_dict(frame_headers("cam-1"))
    png = encode_image(np.zeros((32, 32), np.uint8))
    assert reason_of(decode_frame, b"not an image", hdrs, 1 << 20) == "undecodable_image"
    assert reason_of(decode_frame, b"", hdrs, 1 << 20) == "undecodable_image"
    assert reason_of(decode_frame, png, hdrs, 10) == "oversized_image"
    assert reason_of(decode_frame, png, {}, 1 << 20) == "bad_schema"
    outside = headers_dict(frame_headers("cam-1", uri=f"file://{tmp_path}/x.png"))
    assert reason_of(decode_frame, None, outside, 1 << 20, claim_check_dirs=[]) == "claim_check_unreadable"


def test_claim_check_frames_are_read_from_allowed_dirs(tmp_path):
    image = np.full((24, 24), 7, np.uint8)
    (tmp_path / "big.png").write_bytes(encode_image(image))
    hdrs = headers_dict(frame_headers("cam-2", uri=f"file://{tmp_path}/big.png"))
    np.testing.assert_array_equal(decode_frame(None, hdrs, 1 << 20, claim_check_dirs=[tmp_path]).image, image)
    missing = headers_dict(frame_headers("cam-2", uri=f"file://{tmp_path}/gone.png"))
    assert reason_of(decode_frame, None, missing, 1 << 20, claim_check_dirs=[tmp_path]) == "claim_check_unreadable"


# ------------------------------------------------------------------ hostile frames: one record, one dead letter


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's calling card)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(b"IEND", b"")
    )


def consumed(value: bytes | None, headers: list | None = None, key: bytes | None = b"cam-1") -> Record:
    return Record("camera.frames", 0, 7, key, value, headers_dict(headers or frame_headers("cam-1")))


def test_a_png_claiming_20000x20000_pixels_is_a_dead_letter_not_an_exception():
    bomb = png_claiming(20000, 20000)
    assert len(bomb) < 100
    (got,) = decode_frame_records([consumed(bomb)], max_image_bytes=1 << 20)
    assert isinstance(got, BadEvent) and got.reason == "image_too_large"
    assert "400000000 pixels" in got.message


def test_a_claim_check_uri_with_a_null_byte_is_a_dead_letter_even_without_claim_check_dirs():
    headers = frame_headers("cam-1", uri="file:///tmp/a%00b")
    (got,) = decode_frame_records([consumed(b"", headers)], max_image_bytes=1 << 20)
    assert isinstance(got, BadEvent) and got.reason == "bad_header"


def test_an_8192_square_black_png_is_refused_from_its_header_before_decoding():
    """196 KB on the wire, 64 MiB decoded: over the default pixel cap, so never decoded."""
    png = encode_image(np.zeros((8192, 8192), np.uint8))
    assert len(png) < 300_000
    assert reason_of(decode_frame, png, headers_dict(frame_headers("cam-1")), 1 << 20) == "image_too_large"


def test_the_pixel_cap_is_a_setting():
    png = encode_image(np.zeros((64, 64), np.uint8))
    limits = LimitSettings(max_image_pixels=64 * 63)
    (got,) = decode_frame_records([consumed(png)], 1 << 20, limits=limits)
    assert isinstance(got, BadEvent) and got.reason == "image_too_large"
    (ok,) = decode_frame_records([consumed(png)], 1 << 20, limits=LimitSettings(max_image_pixels=64 * 64))
    assert ok.image.shape == (64, 64)


def test_records_past_the_decoded_bytes_budget_are_dead_letters_and_the_rest_decode():
    png = encode_image(np.zeros((64, 64, 3), np.uint8))  # 12 KiB decoded each
    limits = LimitSettings(max_image_pixels=64 * 64, max_decoded_batch_bytes=2 * 64 * 64 * 3 + 100)
    got = decode_frame_records([consumed(png)] * 4, 1 << 20, limits=limits)
    assert [getattr(g, "reason", None) for g in got] == [None, None, "decode_budget_exceeded", "decode_budget_exceeded"]


def test_formats_outside_the_contract_are_undecodable():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="TIFF")
    (got,) = decode_frame_records([consumed(buf.getvalue())], 1 << 20)
    assert isinstance(got, BadEvent) and got.reason == "undecodable_image"


def test_a_record_that_breaks_decoding_in_an_unexpected_way_is_an_internal_error_dead_letter():
    class Weird:  # a value no client would produce: the decoder must still not raise
        topic, partition, offset, key, headers = "camera.frames", 0, 1, b"k", {"source": b"cam"}

        @property
        def value(self):
            raise RuntimeError("boom")

    (got,) = decode_frame_records([Weird()], 1 << 20)
    assert isinstance(got, BadEvent) and got.reason == "internal_error" and "RuntimeError" in got.message


@pytest.mark.parametrize("ts", [b'{"a": 1}', b"[1]", b"true"])
def test_a_ts_of_the_wrong_json_type_is_bad_schema(ts):
    assert reason_of(decode_vector, b'{"source": "a", "values": [1], "ts": ' + ts + b"}") == "bad_schema"


def test_overlong_source_ids_are_refused():
    long = "x" * 257
    assert reason_of(decode_vector, encode_vector(long, [1.0])) == "bad_schema"
    (got,) = decode_frame_records([consumed(encode_image(np.zeros((8, 8), np.uint8)), frame_headers(long))], 1 << 20)
    assert isinstance(got, BadEvent) and got.reason == "bad_header"


def test_a_fifo_in_a_claim_check_folder_is_refused_without_blocking(tmp_path):
    """A FIFO has size 0, passed the size check, and reading it blocked the worker's event loop for good."""
    import os
    import threading

    os.mkfifo(tmp_path / "pipe.png")
    headers = headers_dict(frame_headers("cam-2", uri=f"file://{tmp_path}/pipe.png"))
    result: list = []
    reader = threading.Thread(
        target=lambda: result.append(reason_of(decode_frame, None, headers, 1 << 20, claim_check_dirs=[tmp_path])),
        daemon=True,
    )
    reader.start()
    reader.join(5.0)
    if reader.is_alive():  # unblock the stuck read so the test process can end
        with open(tmp_path / "pipe.png", "wb"):
            pass
    assert result == ["claim_check_unreadable"]


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding():
    """A small progressive JPEG repeating one scan thousands of times passes the pixel checks, and libjpeg walks
    the whole image once per scan: minutes of the worker's event loop for one message."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), np.uint8)).save(
        buf, format="JPEG", progressive=True
    )
    data = buf.getvalue()
    sos = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    scan = data[sos[-2] : sos[-1]]
    crafted = data[: sos[-1]] + scan * 2000 + data[sos[-1] :]
    (got,) = decode_frame_records([consumed(crafted)], max_image_bytes=1 << 24)
    assert isinstance(got, BadEvent) and got.reason == "undecodable_image" and "scans" in got.message
    assert decode_frame(data, headers_dict(frame_headers("cam-1")), 1 << 20).image.shape == (256, 256)


def test_a_16_bit_grey_image_is_scaled_to_8_bits_not_clipped():
    """Pillow's convert("L") clips 16-bit values at 255: a normal 16-bit picture reached the scorer almost all
    white. Scaled like camera buffers: the top 8 bits."""
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    image = decode_frame(buf.getvalue(), headers_dict(frame_headers("cam-1")), 1 << 20).image
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    np.testing.assert_array_equal(image, (ramp >> 8).astype(np.uint8))
