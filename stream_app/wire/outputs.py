"""The records a worker writes: verdicts, alerts and dead letters (pure builders, no I/O).

Field names follow the message contract in docs/messages.md. Alert ids hash the origin topic/partition/offset, so a
redelivered event (at-least-once) yields the same id and subscribers can de-duplicate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from stream_app.settings import KafkaSettings, LimitSettings
from stream_app.wire.codecs import Event
from stream_app.wire.ids import alert_id
from stream_app.wire.records import Headers, Record

PASSTHROUGH_MAX_BYTES = 64 * 1024  # input headers a verdict or alert carries at most
# The default for callers that do not pass settings: the default broker limit less the default margin.
_DEADLETTER_MAX_BYTES = KafkaSettings().max_message_bytes - LimitSettings().deadletter_margin_bytes


@dataclass(slots=True)  # one per event: a frozen dataclass's __init__ costs ~4x
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _passthrough(headers: Mapping[str, bytes]) -> Headers:
    """Input headers travel with verdicts and alerts (ground truth, trace ids); the claim-check uri does not, nor
    headers over PASSTHROUGH_MAX_BYTES in all (replaced by `headers-dropped: <count>`): an input just under the
    broker's size limit in headers would give outputs the broker refuses, retried for ever."""
    if not headers:
        return []
    kept = [(k, v) for k, v in headers.items() if k not in ("uri", "content-type")]
    if record_size(None, b"", kept) > PASSTHROUGH_MAX_BYTES:
        return [("headers-dropped", str(len(kept)).encode())]
    return kept


class ModelId(Protocol):
    """The served model version a verdict names."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def flags(self) -> tuple[str, ...]: ...


class JudgementLike(Protocol):
    """What the threshold store says about one score."""

    @property
    def score(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def anomalous(self) -> bool: ...
    @property
    def severity(self) -> float: ...
    @property
    def incident_id(self) -> str | None: ...
    @property
    def incident_event(self) -> str | None: ...


def verdict_output(topic: str, rec: Record, event: Event, model: ModelId, judgement: JudgementLike) -> Output:
    """The verdict record every scored event gets on the scores topic."""
    return verdict_outputs(topic, [rec], [event], model, [judgement])[0]


def verdict_outputs(
    topic: str, records: Sequence[Record], events: Sequence[Event], model: ModelId, judgements: Sequence[JudgementLike]
) -> list[Output]:
    """`verdict_output` of each event of a batch, in one pass: one verdict per event is the vector path's largest
    per-event cost, so the model's fields and each source's key are looked up once."""
    name, version = model.name, model.version
    keys: dict[str, bytes] = {}
    out = []
    for rec, ev, j in zip(records, events, judgements, strict=True):
        source = ev.source
        key = keys.get(source)
        if key is None:
            key = keys[source] = source.encode()
        body = {
            "source": source, "topic": rec.topic, "partition": rec.partition, "offset": rec.offset, "ts": ev.ts,
            "score": j.score, "threshold": j.threshold, "anomalous": j.anomalous, "model": name, "version": version,
            "incident_id": j.incident_id,
        }  # fmt: skip
        out.append(Output(topic, key, _json(body), _passthrough(rec.headers)))
    return out


def alert_output(
    topic: str,
    rec: Record,
    event: Event,
    model: ModelId,
    judgement: JudgementLike,
    kind: str,
    explanation: dict[str, Any],
) -> Output:
    """The alert an anomalous event raises; `kind` is the wire label ("sensor" or "image")."""
    body = {
        "alert_id": alert_id(rec.topic, rec.partition, rec.offset),
        "incident_id": judgement.incident_id,
        "incident_event": judgement.incident_event,
        "source": event.source,
        "kind": kind,
        "ts": event.ts,
        "detected_at": time.time(),
        "score": float(judgement.score),
        "threshold": float(judgement.threshold),
        "severity": float(judgement.severity),
        "model": model.name,
        "version": model.version,
        "model_flags": list(model.flags),  # e.g. ["random-backbone"]: this model cannot be trusted yet
        "explanation": explanation,
        "origin": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
    }
    return Output(topic, event.source.encode(), _json(body), _passthrough(rec.headers))


def record_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    """Bytes a record's key, value and headers take (the broker adds a little framing on top: keep a margin)."""
    return len(key or b"") + len(value) + sum(len(k.encode()) + len(v) for k, v in headers)


def deadletter_output(
    topic: str, rec: Record, reason: str, message: str, max_bytes: int = _DEADLETTER_MAX_BYTES
) -> Output:
    """The original bytes and headers, plus why and where they came from, in at most `max_bytes`.

    A dead letter that the broker refuses would be retried forever and stall its partition, so one that would
    pass `max_bytes` (pass kafka.max_message_bytes minus limits.deadletter_margin_bytes) is cut: the value is
    truncated (headers `truncated: true`, `original-size`, `original-sha256` say what it was), input headers
    that alone would not fit are dropped (`headers-dropped: <count>`), and an oversized key is cut
    (`key-truncated: true`).
    """
    value = rec.value or b""
    ours = [
        ("reason", reason.encode()),
        ("error", message[:500].encode(errors="replace")),
        ("origin-topic", rec.topic.encode()[:300]),
        ("origin-partition", str(rec.partition).encode()),
        ("origin-offset", str(rec.offset).encode()),
    ]
    passthrough = list(rec.headers.items())
    key = rec.key
    if record_size(key, value, passthrough + ours) <= max_bytes:
        return Output(topic, key, value, passthrough + ours)

    ours += [
        ("truncated", b"true"),
        ("original-size", str(len(value)).encode()),
        ("original-sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    room = max_bytes // 4  # key and input headers may take a quarter; what they leave goes to the value
    if key is not None and len(key) > room:
        key = key[:room]
        ours.append(("key-truncated", b"true"))
    if record_size(None, b"", passthrough) > room:
        ours.append(("headers-dropped", str(len(passthrough)).encode()))
        passthrough = []
    headers = passthrough + ours
    left = max(0, max_bytes - record_size(key, b"", headers))
    return Output(topic, key, value[:left], headers)


def top_features(contributions: np.ndarray, values: np.ndarray, names: Sequence[str], k: int = 3) -> dict[str, Any]:
    """Explanation of a vector alert: the k features with the largest share of the score.

    >>> top_features(np.array([0.1, 2.0, 0.5]), np.array([1.0, 9.0, 3.0]), ["a", "b", "c"], k=2)["top_features"][0]
    {'feature': 'b', 'contribution': 2.0, 'value': 9.0}
    """
    order = np.argsort(-contributions)[:k]
    return {
        "top_features": [
            {"feature": names[i], "contribution": round(float(contributions[i]), 4), "value": float(values[i])}
            for i in order
        ]
    }


def coarse_grid(heatmap: np.ndarray, cells: int = 8) -> dict[str, Any]:
    """Explanation of an image alert: the patch heatmap averaged down to at most cells x cells, plus its peak.

    >>> g = coarse_grid(np.arange(16, dtype=np.float32).reshape(4, 4), cells=2)
    >>> g["heatmap"], g["peak"]
    ([[2.5, 4.5], [10.5, 12.5]], {'row': 1, 'col': 1})
    """
    h, w = heatmap.shape
    gh, gw = min(cells, h), min(cells, w)
    rows = np.array_split(np.arange(h), gh)
    cols = np.array_split(np.arange(w), gw)
    grid = np.array([[float(heatmap[np.ix_(r, c)].mean()) for c in cols] for r in rows])
    peak = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return {"heatmap": np.round(grid, 4).tolist(), "peak": {"row": int(peak[0]), "col": int(peak[1])}}
