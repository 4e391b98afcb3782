"""`linewatch smoke`: push events through the real stack (Kafka produce -> consume -> Redis) and show rates.

A quick end-to-end check of a deployment's plumbing, with no models involved.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

import orjson
import typer
from rich.console import Console

console = Console()


async def run_smoke(settings, events: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream_app.connections import aiokafka_kwargs, ensure_topics, redis_client

    topic = f"linewatch.smoke.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    kwargs = aiokafka_kwargs(settings.kafka)
    started = time.perf_counter()
    async with AIOKafkaProducer(linger_ms=5, **kwargs) as producer:
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
        "per_source": {k.decode(): int(v) for k, v in per_source.items()},
    }


def smoke(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="events to push through")] = 10_000,
) -> None:
    """Send events through Kafka and count them per source in Redis; print the rates."""
    result = asyncio.run(run_smoke(ctx.obj, events))
    console.print(
        f"[green]ok[/] {result['events']} events: produced {result['produce_per_s']:,.0f}/s, "
        f"consumed+counted in Redis {result['consume_and_count_per_s']:,.0f}/s; per source {result['per_source']}"
    )


def register(app: typer.Typer) -> None:
    app.command()(smoke)
