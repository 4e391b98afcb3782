"""A small Python client for alerts: `async for alert in subscribe(settings, "line-1/*"): ...`.

Alerts are JSON objects on `settings.topics.alerts` (schema in docs/messages.md). The generator owns
its Kafka consumer and closes it when the loop ends (break, return, exception or `aclose()`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import AsyncGenerator

import orjson

log = logging.getLogger(__name__)


def matches(alert: dict, source_pattern: str) -> bool:
    """fnmatch on the alert's source (case-sensitive, `*` spans `/`).

    >>> matches({"source": "line-1/press-2"}, "line-1/*"), matches({"source": "line-2/cam-1"}, "line-1/*")
    (True, False)
    """
    return fnmatch.fnmatchcase(str(alert.get("source", "")), source_pattern)


def decode_alert(value: bytes | None) -> dict | None:
    """The alert object, or None (logged) for a record that is not a JSON object."""
    try:
        alert = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        log.warning("skipping an alert record that is not JSON: %r", (value or b"")[:80])
        return None
    return alert if isinstance(alert, dict) else None


async def subscribe(
    settings,
    source_pattern: str = "*",
    group_id: str | None = None,
    from_beginning: bool = False,
) -> AsyncGenerator[dict, None]:
    """Yield decoded alerts whose source matches `source_pattern`, as they arrive.

    `group_id` None: an independent reader (no committed offsets; every subscriber sees every alert); a
    group id shares the alerts among the group's members and resumes where the group left off.
    `from_beginning` starts at the oldest retained alert instead of the newest.
    """
    from aiokafka import AIOKafkaConsumer

    from stream_app.ops.connections import aiokafka_kwargs, ensure_topics

    topic = settings.topics.alerts
    await ensure_topics(settings, [topic])
    consumer = AIOKafkaConsumer(
        topic,
        group_id=group_id,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group_id is not None,
        **aiokafka_kwargs(settings.kafka),
    )
    await consumer.start()
    try:
        async for record in consumer:
            alert = decode_alert(record.value)
            if alert is not None and matches(alert, source_pattern):
                yield alert
    finally:
        await consumer.stop()
