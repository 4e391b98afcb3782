"""Every producer linewatch builds waits for all in-sync replicas and is idempotent (no servers needed)."""

from __future__ import annotations

import re
from pathlib import Path

from stream_app.ops.connections import kafka_producer
from stream_app.scoring.publishing import output_producer
from stream_app.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


async def test_producers_wait_for_every_in_sync_replica_and_are_idempotent():
    kafka = KafkaSettings()
    producers = {
        "kafka_producer": kafka_producer(kafka, linger_ms=5),
        "asked for acks=1": kafka_producer(kafka, acks=1),
        "the worker's": output_producer(kafka),
    }
    for name, producer in producers.items():
        assert producer._sender._acks == -1, name  # aiokafka's "all"
        assert producer._txn_manager is not None, name  # present exactly when idempotent


async def test_options_reach_the_producer():
    producer = kafka_producer(KafkaSettings(request_timeout_ms=5000), request_timeout_ms=120_000, max_request_size=4096)
    assert producer._request_timeout_ms == 120_000 and producer._max_request_size == 4096


def test_no_module_builds_a_producer_of_its_own():
    builds = re.compile(r"AIOKafkaProducer\(")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "stream_app").rglob("*.py")
        if path.name != "connections.py" and builds.search(path.read_text())
    ]
    assert offenders == [], "build producers with stream_app.ops.connections.kafka_producer"
