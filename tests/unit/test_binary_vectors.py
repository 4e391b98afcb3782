"""The binary vector encoding decodes like its JSON twin, and broken binary input is a dead letter."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.wire.binary_vectors import (
    BinaryVectorError,
    encode_vector_binary,
    parse_vector_binary,
    parse_vectors_binary,
)
from stream_app.wire.codecs import BadEvent, VectorEvent, decode_vectors, encode_vector


def test_a_batch_mixing_json_and_binary_decodes_to_the_same_events():
    rows = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    values = [
        (encode_vector_binary if i % 2 else encode_vector)(f"line-1/m{i}", row, ts=100.0 + i, seq=i)
        for i, row in enumerate(rows)
    ]
    events = decode_vectors(values)
    assert all(isinstance(e, VectorEvent) for e in events)
    assert np.array_equal(np.stack([e.values for e in events]), rows)
    assert [(e.source, e.ts, e.seq) for e in events] == [(f"line-1/m{i}", 100.0 + i, i) for i in range(6)]


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda b: b[:-2], "needs"),  # truncated values
        (lambda b: b + b"\x00\x00\x00\x00", "needs"),  # a value too many
        (lambda b: b[:10], "header"),
    ],
)
def test_broken_binary_vectors_are_bad_schema_dead_letters(mutate, why):
    event = decode_vectors([mutate(encode_vector_binary("line-1/m", [1.0, 2.0], ts=5.0))])[0]
    assert isinstance(event, BadEvent) and event.reason == "bad_schema" and why in event.message


def test_non_finite_binary_values_are_refused_like_json_ones():
    event = decode_vectors([encode_vector_binary("line-1/m", [1.0, float("nan")], ts=5.0)])[0]
    assert isinstance(event, BadEvent) and event.reason == "non_finite"


def test_a_binary_source_longer_than_the_limit_is_refused_like_a_json_one():
    for encode in (encode_vector, encode_vector_binary):
        event = decode_vectors([encode("m" * 300, [1.0, 2.0], ts=5.0)], max_source_chars=256)[0]
        assert isinstance(event, BadEvent) and event.reason == "bad_schema" and "limit is 256" in event.message


def test_a_batch_parses_each_value_as_the_single_message_parser_does():
    """The batched parser checks many values at once; every verdict, and every error message, is the one
    `parse_vector_binary` gives that value alone."""
    rng = np.random.default_rng(1)
    good = [encode_vector_binary(f"line-{i % 3}/m{i % 5}", rng.normal(size=4), ts=1e9 + i, seq=i if i % 2 else None)
            for i in range(60)]  # fmt: skip
    broken = [
        good[0][:-1],  # short
        b"LWV1" + b"\x00" * 40,  # zero-length source and no values
        good[1][:26] + b"\xff" + good[1][27:],  # source not UTF-8
        good[2][:6] + np.float64(np.nan).tobytes() + good[2][14:],  # ts not finite
        good[3][:6] + np.float64(-1.0).tobytes() + good[3][14:],  # ts negative
        b"LWV2" + good[4][4:],  # magic
        encode_vector_binary("line-1/m\x00", [1.0], ts=3.0),  # a NUL ending the source is kept
        good[5][:20],
    ]
    values = good + broken
    rng.shuffle(values)
    for value, parsed in zip(values, parse_vectors_binary(values), strict=True):
        try:
            alone = parse_vector_binary(value)
        except BinaryVectorError as exc:
            assert isinstance(parsed, BinaryVectorError) and str(parsed) == str(exc)
            continue
        assert not isinstance(parsed, BinaryVectorError)
        assert parsed[0] == alone[0] and parsed[1] == alone[1] and parsed[3] == alone[3]
        assert np.array_equal(parsed[2], alone[2])
