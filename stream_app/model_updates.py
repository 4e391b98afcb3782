"""Announcing promotions on `inspection.model-updates`, so running workers swap to the new version.

One message per promotion or rollback, keyed by model name (so a model's announcements stay in
order on one partition): `{model, version, sha256, path, promoted_at}`; see `registry.update_message`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stream_app.connections import aiokafka_kwargs, ensure_topics
from stream_app.registry import ModelVersion, Registry, update_message
from stream_app.settings import Settings

log = logging.getLogger(__name__)


async def announce(settings: Settings, message: dict[str, Any], producer: AIOKafkaProducer | None = None) -> None:
    """Send one model-updates message and wait for the broker's ack (own producer unless one is given)."""
    topic = settings.topics.model_updates
    key, value = message["model"].encode(), orjson.dumps(message)
    if producer is not None:
        await producer.send_and_wait(topic, key=key, value=value)
    else:
        await ensure_topics(settings, [topic])
        async with AIOKafkaProducer(acks="all", **aiokafka_kwargs(settings.kafka)) as own:
            await own.send_and_wait(topic, key=key, value=value)
    log.info("announced %s version %s on %s", message["model"], message["version"], topic)


async def announce_version(
    settings: Settings, registry: Registry, mv: ModelVersion, producer: AIOKafkaProducer | None = None
) -> dict[str, Any]:
    message = update_message(registry, mv)
    await announce(settings, message, producer)
    return message


def parse_update(value: bytes) -> dict[str, Any]:
    """Decode and check a model-updates value; ValueError names what is missing."""
    message = orjson.loads(value)
    missing = [k for k in ("model", "version", "sha256") if not isinstance(message.get(k), str)]
    if missing:
        raise ValueError(f"model-updates message without {missing}: {message!r}"[:300])
    return message
