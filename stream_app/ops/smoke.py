"""Push events through the real stack (Kafka produce -> consume -> Redis) and measure the rates.

A quick end-to-end check of a deployment's plumbing, with no models involved.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, kafka_producer, redis_client
from stream_app.settings import Settings


async def run_smoke(settings: Settings, events: int) -> dict[str, Any]:
    """Produce `events` to a fresh topic, consume them and count per source in Redis; the rates."""
    topic = f"linewatch.smoke.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    kwargs = aiokafka_kwargs(settings.kafka)
    started = time.perf_counter()
    async with kafka_producer(settings.kafka, linger_ms=5) as producer:
        futures = [
            await producer.send(
                topic,
                key=f"line-{i % 3}/press-1".encode(),
                value=orjson.dumps({"source": f"line-{i % 3}/press-1", "ts": time.time(), "values": [0.1 * i] * 8}),
            )
            for i in range(events)
        ]
        await asyncio.gather(*futures)
    produced_s = time.perf_counter() - started

    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **kwargs)
    redis = redis_client(settings.redis)
    seen = 0
    started = time.perf_counter()
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while seen < events:
                for records in (await consumer.getmany(timeout_ms=500, max_records=1000)).values():
                    counts: dict[str, int] = {}
                    for record in records:
                        source = orjson.loads(record.value)["source"]
                        counts[source] = counts.get(source, 0) + 1
                    pipe = redis.pipeline(transaction=False)
                    for source, n in counts.items():
                        pipe.hincrby(f"{settings.redis.key_prefix}:smoke:{topic}", source, n)
                    await pipe.execute()
                    seen += len(records)
        per_source = await redis.hgetall(f"{settings.redis.key_prefix}:smoke:{topic}")
        await redis.delete(f"{settings.redis.key_prefix}:smoke:{topic}")
    finally:
        await consumer.stop()
        await redis.aclose()
    consumed_s = time.perf_counter() - started
    return {
        "events": events,
        "produce_per_s": events / produced_s,
        "consume_and_count_per_s": seen / consumed_s,
        "per_source": {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in per_source.items()},
    }
