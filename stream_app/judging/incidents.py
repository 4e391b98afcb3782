"""Incident hysteresis per source: pure functions over anomaly flags, no I/O.

A flood of anomalies should page once, and a lone spike should not page at all. So an incident opens when
`open_k` of the last `open_n` events of a source are anomalous (on the anomalous event that completes the
count) and closes after `close_m` consecutive normal events. While one is open, every event of the source
carries its id, so downstream consumers (alerts, the retraining agent's "away from incidents" filter) can
group by it. The id is derived from the source and the alert id of the opening event, so replaying the
same events gives the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from stream_app.judging.stored import json_object
from stream_app.settings import IncidentSettings
from stream_app.wire.ids import alert_id_of

IncidentEvent = Literal["opened", "closed"]
ID_HEX = 16  # 64 bits of sha1: collisions are irrelevant at incident rates


def incident_id(source: str, opening_alert_id: str) -> str:
    """Deterministic incident id: truncated sha1 of the source and the opening event's alert id.

    >>> incident_id("line-3/press-2", "sensor.vectors:0:42")
    '938e31189aaeaacd'
    """
    return hashlib.sha1(f"{source}\x00{opening_alert_id}".encode()).hexdigest()[:ID_HEX]


@dataclass(frozen=True)
class IncidentState:
    """Recent anomaly flags (bit i = the event i steps back, newest in bit 0), the open incident and the
    run of normal events since its last anomaly. A few integers: cheap to keep next to the threshold."""

    recent: int = 0
    open_id: str | None = None
    normal_run: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"recent": self.recent, "open_id": self.open_id, "normal_run": self.normal_run}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IncidentState:
        try:
            return cls(recent=int(d["recent"]), open_id=d["open_id"], normal_run=int(d["normal_run"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a serialised incident state: {exc}") from exc

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def loads(cls, data: bytes | str) -> IncidentState:
        """Inverse of `dumps`.

        >>> IncidentState.loads(IncidentState(recent=5, open_id="ab", normal_run=2).dumps())
        IncidentState(recent=5, open_id='ab', normal_run=2)
        """
        return cls.from_dict(json_object(data, "incident state"))


def step(
    cfg: IncidentSettings,
    state: IncidentState,
    source: str,
    anomalous: Sequence[bool],
    event_keys: Sequence[str],
) -> tuple[list[tuple[str | None, IncidentEvent | None]], IncidentState]:
    """Advance one source's hysteresis over its events in order.

    Returns, per event, (the id of the incident open at that event or None, "opened" | "closed" | None),
    and the new state. The closing event still carries the id it closes. An incident's id derives from the alert
    id of its opening event (`ids.alert_id_of` of that event's key).

    >>> cfg = IncidentSettings(open_k=2, open_n=3, close_m=2)
    >>> out, st = step(cfg, IncidentState(), "s", [True, False, True, False, False, False], list("abcdef"))
    >>> [(i is not None, e) for i, e in out]
    [(False, None), (False, None), (True, 'opened'), (True, None), (True, 'closed'), (False, None)]
    """
    if len(anomalous) != len(event_keys):
        raise ValueError(f"need one event key per event: {len(anomalous)} flags, {len(event_keys)} keys")
    mask = (1 << cfg.open_n) - 1
    recent, open_id, run = state.recent, state.open_id, state.normal_run
    flags = [bool(f) for f in anomalous]
    out: list[tuple[str | None, IncidentEvent | None]] = []
    # Runs of normal events are handled in bulk (most batches have no anomaly at all); anomalies one by one.
    i, total = 0, len(flags)
    while i < total:
        try:
            j = flags.index(True, i)  # the next anomaly...
        except ValueError:
            j = total  # ...or the end
        if j > i:
            length = j - i
            recent = (recent << min(length, cfg.open_n)) & mask
            if open_id is None:
                out += [(None, None)] * length
            elif run + length < cfg.close_m:
                out += [(open_id, None)] * length
                run += length
            else:  # closes on the event that completes close_m normal ones
                closing = cfg.close_m - run - 1
                closed: IncidentEvent = "closed"
                out += [(open_id, None)] * closing + [(open_id, closed)] + [(None, None)] * (length - closing - 1)
                open_id, run = None, 0
            i = j
            continue
        recent = ((recent << 1) | 1) & mask
        if open_id is None:
            if recent.bit_count() >= cfg.open_k:
                open_id, run = incident_id(source, alert_id_of(event_keys[i])), 0
                out.append((open_id, "opened"))
            else:
                out.append((None, None))
        else:
            run = 0
            out.append((open_id, None))
        i += 1
    return out, IncidentState(recent=recent, open_id=open_id, normal_run=run)
