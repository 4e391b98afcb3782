"""The binary vector encoding decodes like its JSON twin, and broken binary input is a dead letter."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.wire.binary_vectors import encode_vector_binary
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
