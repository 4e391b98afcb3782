"""The consumed record every stage reads, independent of the Kafka client that consumed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream_app.wire.codecs import headers_dict

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)  # one per event: a frozen dataclass's __init__ costs ~4x
class Record:
    """One consumed Kafka record, independent of the client that consumed it (faust or aiokafka)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int | None = None

    @classmethod
    def of(cls, message: Any, timestamp_ms: int | None) -> Record:
        """From an aiokafka `ConsumerRecord` or a faust `Message` (they differ only in timestamp units)."""
        headers = headers_dict(message.headers)
        return cls(message.topic, message.partition, message.offset, message.key, message.value, headers, timestamp_ms)
