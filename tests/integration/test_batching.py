"""Micro-batch sizes on the real broker: a poll holds up to `max_batch` records, of which at most
`max_image_batch` camera frames; the frames left over are fetched by the next poll, none lost or repeated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaProducer

from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.ops.health import HealthState
from stream_app.ops.metrics import WorkerMetrics
from stream_app.scoring.consumer import BatchConsumer
from stream_app.wire.records import Record

pytestmark = pytest.mark.integration


async def test_a_poll_holds_at_most_max_image_batch_frames(make_settings) -> None:
    settings = make_settings()
    settings.batching.max_batch, settings.batching.max_image_batch = 512, 8
    await ensure_topics(settings)
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        sends = [producer.send(settings.topics.frames, key=f"cam-{i % 3}".encode(), value=b"f") for i in range(100)]
        sends += [producer.send(settings.topics.vectors, key=f"m-{i % 3}".encode(), value=b"v") for i in range(600)]
        await asyncio.gather(*[await s for s in sends])

    batches: dict[str, list[list[tuple[int, int]]]] = {"vectors": [], "images": []}

    async def submit(kind: str, records: Sequence[Record]) -> list[asyncio.Future]:
        batches[kind].append([(r.partition, r.offset) for r in records])
        return []  # nothing to acknowledge: the batch settles at once

    def seen(kind: str) -> list[tuple[int, int]]:
        return [event for batch in batches[kind] for event in batch]

    consumer = BatchConsumer(settings, submit, WorkerMetrics(), HealthState(stall_after_s=60), probes={})
    running = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + 60
    while (len(seen("images")) < 100 or len(seen("vectors")) < 600) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await consumer.stop()
    await running

    assert sorted(seen("images")) == sorted(set(seen("images"))) and len(seen("images")) == 100
    assert max(len(b) for b in batches["images"]) <= 8
    assert len(seen("vectors")) == 600 and max(len(b) for b in batches["vectors"]) > 8  # vectors are not capped
