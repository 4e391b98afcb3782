"""Announcing promotions on `inspection.model-updates`, so running workers swap to the new version.

One message per promotion or rollback, keyed by model name (so a model's announcements stay in
order on one partition): `{model, version, sha256, path, promoted_at}`; see `registry.update_message`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from stream_app.ops.connections import send_json
from stream_app.registry.versions import ModelVersion, Registry, update_message
from stream_app.settings import Settings

log = logging.getLogger(__name__)


async def announce_version(settings: Settings, registry: Registry, mv: ModelVersion) -> dict[str, Any]:
    """Send the model-updates message for `mv` and wait for the broker's ack; returns the message."""
    message = update_message(registry, mv)
    await send_json(settings, settings.topics.model_updates, message["model"], message)
    log.info("announced %s version %s on %s", message["model"], message["version"], settings.topics.model_updates)
    return message


def parse_update(value: bytes) -> dict[str, Any]:
    """Decode and check a model-updates value; ValueError names what is missing."""
    message = orjson.loads(value)
    missing = [k for k in ("model", "version", "sha256") if not isinstance(message.get(k), str)]
    if missing:
        raise ValueError(f"model-updates message without {missing}: {message!r}"[:300])
    return message
