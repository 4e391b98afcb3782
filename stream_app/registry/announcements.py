"""Announcing promotions on `inspection.model-updates`, and checking what arrives there before anyone acts on it.

One message per promotion or rollback, keyed by model name (so a model's announcements stay in
order on one partition): `{model, version, sha256, path, promoted_at}`; see `registry.update_message`.

The control topics are writable by anyone who can produce, so every message is checked against a schema
and safe names before a worker or agent acts on it; a refused message is a `ControlRejected` whose `reason`
(one of CONTROL_REJECT_REASONS) labels the `linewatch_control_rejected_total{reason}` metric.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from stream_app.ops.connections import send_json
from stream_app.registry.versions import InvalidName, ModelVersion, Registry, check_name, update_message
from stream_app.settings import Settings

log = logging.getLogger(__name__)

CONTROL_REJECT_REASONS = (
    "malformed_json",  # not JSON at all
    "bad_schema",  # not an object, a field missing or of the wrong type, a sha256 that is not 64 hex digits
    "invalid_name",  # a model name or version outside [A-Za-z0-9_.-], with '..' or a leading '.'
    "unknown_model",  # a model this worker (or agent) does not serve
    "not_production",  # a version other than the registry's production pointer (set by promote or rollback)
    "digest_mismatch",  # the announced sha256 is not the version's manifest digest
    "load_failed",  # the registry refused the files (hash mismatch, unexpected file, unknown kind...)
    "unsupported_action",  # a control message asking for something other than a retrain
    "stale",  # a retrain request older than retrain.control_max_age_s (or dated in the future)
)


class ControlRejected(ValueError):
    """A control-plane message that is ignored; `reason` is one of CONTROL_REJECT_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class ModelUpdate(BaseModel):
    """The `inspection.model-updates` value (extra fields are ignored, so the message can grow)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: StrictStr
    version: StrictStr
    sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    path: StrictStr | None = None
    promoted_at: float | None = Field(None, allow_inf_nan=False)


class RetrainRequest(BaseModel):
    """An `inspection.control` value: `{"action": "retrain", "model": str, "requested_at": epoch seconds}`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: StrictStr
    model: StrictStr
    requested_at: float = Field(allow_inf_nan=False)


def load_json_object(value: bytes | None) -> dict[str, Any]:
    """A control message's JSON object; ControlRejected (`malformed_json`, `bad_schema`) otherwise."""
    try:
        message = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ControlRejected("malformed_json", f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ControlRejected("bad_schema", f"expected a JSON object, got {type(message).__name__}")
    return message


def validated(schema: type[BaseModel], message: dict[str, Any]) -> Any:
    """`message` as `schema`, ControlRejected(`bad_schema`) naming the first wrong field otherwise."""
    try:
        return schema.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "message"
        raise ControlRejected("bad_schema", f"{where}: {first['msg']}"[:300]) from None


def checked_name(what: str, value: str) -> str:
    try:
        return check_name(what, value)
    except InvalidName as exc:
        raise ControlRejected("invalid_name", str(exc)) from None


async def announce_version(settings: Settings, registry: Registry, mv: ModelVersion) -> dict[str, Any]:
    """Send the model-updates message for `mv` and wait for the broker's ack; returns the message."""
    message = update_message(registry, mv)
    await send_json(settings, settings.topics.model_updates, message["model"], message)
    log.info("announced %s version %s on %s", message["model"], message["version"], settings.topics.model_updates)
    return message


def parse_update(value: bytes | None) -> dict[str, Any]:
    """A checked model-updates message as a dict (`model`, `version`, `sha256`, `path`, `promoted_at`).

    Raises ControlRejected (a ValueError) for anything else; nothing here touches the registry, so whether
    the version may be served is the model manager's check (`ModelManager.apply_update`).

    >>> parse_update(b'{"model": "press", "version": "0002", "sha256": "' + b"a" * 64 + b'"}')["version"]
    '0002'
    >>> parse_update(b"[]")
    Traceback (most recent call last):
    ...
    stream_app.registry.announcements.ControlRejected: bad_schema: expected a JSON object, got list
    """
    update = validated(ModelUpdate, load_json_object(value))
    checked_name("model name", update.model)
    checked_name("version", update.version)
    return update.model_dump()
