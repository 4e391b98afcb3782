"""Reading input records back by their origin (topic, partition, offset), as alerts and labels name them.

A group-less consumer is assigned the one partition and seeks to the offset, so nothing is committed and
no consumer group rebalances. Used for an alert's camera frame and for labelled events fed to retraining.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.ops.connections import aiokafka_kwargs
from stream_app.settings import Settings
from stream_app.wire.records import Record

Origin = tuple[str, int, int]  # topic, partition, offset


def origin_of(message: dict) -> Origin:
    """(topic, partition, offset) of an alert or label's `origin`; ValueError names what is missing.

    >>> origin_of({"origin": {"topic": "camera.frames", "partition": 1, "offset": 7}})
    ('camera.frames', 1, 7)
    """
    o = message.get("origin")
    try:
        return str(o["topic"]), int(o["partition"]), int(o["offset"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"expected origin {{topic, partition, offset}}, got {o!r}") from None


async def read_origins(settings: Settings, origins: Iterable[Origin], timeout_s: float = 10.0) -> dict[Origin, Record]:
    """The records at `origins` (one consumer, one seek per origin); origins no longer retained are absent."""
    wanted = sorted(set(origins))
    found: dict[Origin, Record] = {}
    if not wanted:
        return found
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="latest", **aiokafka_kwargs(settings.kafka)
    )
    await consumer.start()
    try:
        tps = sorted({TopicPartition(t, p) for t, p, _ in wanted})
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        for topic, partition, offset in wanted:
            tp = TopicPartition(topic, partition)
            if not begin[tp] <= offset < end[tp]:
                continue  # deleted by retention, or never written
            consumer.seek(tp, offset)
            try:
                async with asyncio.timeout(timeout_s):
                    while True:
                        batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                        msgs = batch.get(tp, [])
                        if msgs:
                            msg = msgs[0]
                            if msg.offset == offset:
                                found[(topic, partition, offset)] = Record.of(msg, msg.timestamp)
                            break
            except TimeoutError:
                continue
    finally:
        await consumer.stop()
    return found
