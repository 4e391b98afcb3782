"""Follow alerts for a person or a script: JSON lines, or one formatted line per alert."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from stream_app.alerts.format import format_alert
from stream_app.alerts.subscribe import subscribe
from stream_app.settings import Settings


async def tail(
    settings: Settings,
    source: str = "*",
    as_json: bool = False,
    from_beginning: bool = False,
    group_id: str | None = None,
    max_alerts: int | None = None,
    idle_timeout: float | None = None,
    *,
    emit: Callable[[str], None],
) -> int:
    """Emit alerts (JSON lines or formatted lines) until `max_alerts` were shown or none arrived for
    `idle_timeout` seconds; return the count."""
    shown = 0
    alerts = subscribe(settings, source, group_id=group_id, from_beginning=from_beginning)
    try:
        while max_alerts is None or shown < max_alerts:
            try:
                async with asyncio.timeout(idle_timeout):
                    alert = await anext(alerts)
            except (TimeoutError, StopAsyncIteration):
                break
            emit(orjson.dumps(alert).decode() if as_json else format_alert(alert))
            shown += 1
    finally:
        await alerts.aclose()
    return shown
