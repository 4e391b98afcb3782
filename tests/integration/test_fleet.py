"""`linewatch worker --processes 2`: two inference processes in the consumer group, every event scored once."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records
from stream_app.ops.processes import running, worker_health, worker_ports
from stream_app.settings import Route
from stream_app.wire.codecs import encode_vector
from tests.integration.test_worker import F, fit_sensor_model, normal_vectors

pytestmark = pytest.mark.integration


async def test_two_processes_share_the_partitions_and_score_every_event_once(make_settings, tmp_path):
    settings = make_settings(routes=[Route(pattern="*", model="sensors")])
    settings.batching.max_wait_ms = 20
    fit_sensor_model(settings)
    await ensure_topics(settings)
    with running(settings, "worker", "--processes", "2") as supervisor:
        async with asyncio.timeout(120):  # both children up, each holding a partition of the vectors topic
            while True:
                ports = worker_ports(settings)
                healths = [await asyncio.to_thread(worker_health, p) for p in ports] if len(ports) == 2 else []
                held = [h.get("partitions", []) for h in healths]
                if len(held) == 2 and all(any(settings.topics.vectors in p for p in h) for h in held):
                    break
                assert supervisor.poll() is None, "the supervisor exited"
                await asyncio.sleep(0.5)
        rows = normal_vectors(np.random.default_rng(3), 400)
        async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
            for i, row in enumerate(rows):
                source = f"line-1/m{i % 8}"
                await producer.send(settings.topics.vectors, key=source.encode(), value=encode_vector(source, row))
        verdicts = await read_records(settings, settings.topics.scores, lambda recs: len(recs) >= 400, 120)
    offsets = Counter((v["partition"], v["offset"]) for v in (orjson.loads(r.value) for r in verdicts))
    assert len(offsets) == 400 and max(offsets.values()) == 1
    vector_partitions = [{p for p in h if p.startswith(settings.topics.vectors)} for h in held]
    assert not vector_partitions[0] & vector_partitions[1], "each partition is held by one process"
    assert rows.shape[1] == F
