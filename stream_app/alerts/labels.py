"""Operator feedback on alerts: "real defect" or "false alarm", on the labels topic, and read back.

One JSON message per label on `settings.topics.labels`, keyed by source (a source's labels stay in order):

    {label_id, alert_id, incident_id, source, model, version, label: "real_defect"|"false_alarm",
     note, user, labelled_at, ts, score, threshold, origin: {topic, partition, offset}}

An operator may change their mind: the newest label of an alert wins (`latest_per_alert`). The retraining
side reads them back with `read_labels` and splits them with `confirmed_anomalies` (a regression set: a new
version must still flag these) and `false_alarms` (normal events to put into the next training window);
`labelled_records` fetches the labelled input events themselves. `precision` is the share of labelled
alerts that were real, per (model, source) and per model.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer

from stream_app.alerts.origins import Origin, origin_of, read_origins
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, offset_ranges, send_json
from stream_app.settings import Settings
from stream_app.wire.records import Record

LabelKind = Literal["real_defect", "false_alarm"]
LABELS: tuple[LabelKind, ...] = ("real_defect", "false_alarm")
MAX_NOTE = 2000


@dataclass(frozen=True)
class Label:
    alert_id: str
    incident_id: str | None
    source: str
    model: str
    version: str
    label: LabelKind
    note: str
    user: str
    labelled_at: float
    ts: float | None
    score: float | None
    threshold: float | None
    origin: Origin

    @property
    def label_id(self) -> str:
        return hashlib.sha1(f"{self.alert_id}\x00{self.labelled_at!r}\x00{self.user}".encode()).hexdigest()[:16]

    def to_message(self) -> dict[str, Any]:
        topic, partition, offset = self.origin
        return {
            "label_id": self.label_id, "alert_id": self.alert_id, "incident_id": self.incident_id,
            "source": self.source, "model": self.model, "version": self.version, "label": self.label,
            "note": self.note, "user": self.user, "labelled_at": self.labelled_at, "ts": self.ts,
            "score": self.score, "threshold": self.threshold,
            "origin": {"topic": topic, "partition": partition, "offset": offset},
        }  # fmt: skip

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> Label:
        """Inverse of `to_message`; ValueError names the field that is missing or wrong."""
        if m.get("label") not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {m.get('label')!r}")
        try:
            return cls(
                alert_id=str(m["alert_id"]), incident_id=m.get("incident_id"), source=str(m["source"]),
                model=str(m["model"]), version=str(m["version"]), label=m["label"], note=str(m.get("note") or ""),
                user=str(m.get("user") or ""), labelled_at=float(m["labelled_at"]), ts=_num(m.get("ts")),
                score=_num(m.get("score")), threshold=_num(m.get("threshold")), origin=origin_of(m),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ValueError(f"label message without {exc}: {str(m)[:200]}") from None


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def label_for_alert(alert: dict[str, Any], label: str, note: str, user: str, now: float | None = None) -> Label:
    """The label an operator gives `alert` (an alert message as published by the workers).

    >>> a = {"alert_id": "a1", "incident_id": "i1", "source": "line-1/m0", "model": "sensors", "version": "0001",
    ...      "ts": 5.0, "score": 9.0, "threshold": 3.0, "origin": {"topic": "sensor.vectors", "partition": 0, "offset": 4}}
    >>> lab = label_for_alert(a, "false_alarm", "glare", "op", now=10.0)
    >>> Label.from_message(orjson.loads(orjson.dumps(lab.to_message()))) == lab
    True
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return Label.from_message(
        {
            **alert,
            "label": label,
            "note": note[:MAX_NOTE],
            "user": user,
            "labelled_at": time.time() if now is None else now,
        }
    )


async def publish_label(settings: Settings, label: Label) -> None:
    """Send one label (key: its source) and wait for the broker's ack."""
    await send_json(settings, settings.topics.labels, label.source, label.to_message())


def decode_labels(values: Iterable[bytes | None]) -> list[Label]:
    """Labels from raw topic values, skipping records that are not label messages."""
    out = []
    for value in values:
        try:
            out.append(Label.from_message(orjson.loads(value or b"")))
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            continue
    return out


async def read_labels(
    settings: Settings, model: str | None = None, since_s: float | None = None, timeout_s: float = 30.0
) -> list[Label]:
    """Every label on the labels topic (or of the last `since_s` seconds), newest label per alert, oldest first.

    `model` keeps one model's labels. Reads up to the topic's end as of the call, with no consumer group.
    """
    await ensure_topics(settings, [settings.topics.labels])
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **aiokafka_kwargs(settings.kafka))
    await consumer.start()
    values: list[bytes | None] = []
    try:
        since_ms = None if since_s is None else int((time.time() - since_s) * 1000)
        ranges = await offset_ranges(consumer, settings.topics.labels, since_ms, None)
        todo = {tp: end for tp, (start, end) in ranges.items() if end > start}
        if todo:
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, ranges[tp][0])
            deadline = time.monotonic() + timeout_s
            while todo and time.monotonic() < deadline:
                for tp, msgs in (await consumer.getmany(*todo, timeout_ms=500)).items():
                    values.extend(m.value for m in msgs if m.offset < todo[tp])
                for tp in list(todo):  # positions pass markers and compaction gaps too
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
    finally:
        await consumer.stop()
    labels = latest_per_alert(decode_labels(values))
    return [lab for lab in labels if model is None or lab.model == model]


def latest_per_alert(labels: Iterable[Label]) -> list[Label]:
    """The newest label of each alert (an operator may correct a label), ordered by labelling time."""
    newest: dict[str, Label] = {}
    for lab in labels:
        if lab.alert_id not in newest or lab.labelled_at >= newest[lab.alert_id].labelled_at:
            newest[lab.alert_id] = lab
    return sorted(newest.values(), key=lambda lab: lab.labelled_at)


def confirmed_anomalies(labels: Iterable[Label]) -> list[Label]:
    """Alerts an operator confirmed as real defects: a retrained candidate must still flag these."""
    return [lab for lab in labels if lab.label == "real_defect"]


def false_alarms(labels: Iterable[Label]) -> list[Label]:
    """Alerts an operator called false alarms: normal events the next training window should include."""
    return [lab for lab in labels if lab.label == "false_alarm"]


async def labelled_records(settings: Settings, labels: Iterable[Label]) -> list[tuple[Label, Record]]:
    """Each label with the input record it judged (labels whose record is no longer retained are dropped).

    Decode them as the worker does (`wire.kinds.data_kind(kind).decode`) to get vectors or frames.
    """
    labels = list(labels)
    found = await read_origins(settings, (lab.origin for lab in labels))
    return [(lab, found[lab.origin]) for lab in labels if lab.origin in found]


@dataclass(frozen=True)
class Precision:
    real: int
    false: int

    @property
    def labelled(self) -> int:
        return self.real + self.false

    @property
    def value(self) -> float | None:
        """real / labelled, None before any label."""
        return self.real / self.labelled if self.labelled else None


def precision(labels: Iterable[Label]) -> dict[tuple[str, str | None], Precision]:
    """Precision of labelled alerts per (model, source) and per (model, None) for the model as a whole.

    >>> mk = lambda src, kind: Label("a" + src + kind, None, src, "m", "1", kind, "", "", 0.0, None, None, None, ("t", 0, 0))
    >>> p = precision([mk("s1", "real_defect"), mk("s1", "false_alarm"), mk("s2", "real_defect")])
    >>> p[("m", None)].value, p[("m", "s1")].value, p[("m", "s2")].labelled
    (0.6666666666666666, 0.5, 1)
    """
    counts: dict[tuple[str, str | None], list[int]] = {}
    for lab in labels:
        for key in ((lab.model, lab.source), (lab.model, None)):
            c = counts.setdefault(key, [0, 0])
            c[0 if lab.label == "real_defect" else 1] += 1
    return {k: Precision(r, f) for k, (r, f) in counts.items()}


async def label_alerts(
    settings: Settings, alert_ids: Iterable[str], label: str, note: str = "", user: str = "cli", timeout_s: float = 30.0
) -> list[Label]:
    """Label alerts by id, as an operator does in the console: found on the alerts topic, published as labels.

    LookupError names the ids that are not (or no longer) on the alerts topic; nothing is published then.
    """
    from stream_app.ops.connections import read_records

    wanted = set(alert_ids)
    found: dict[str, dict[str, Any]] = {}

    def complete(records: list[Any]) -> bool:
        for rec in records[len(seen) :]:
            seen.append(rec)
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                body = orjson.loads(rec.value or b"")
                if body.get("alert_id") in wanted and body.get("incident_event") != "closed":
                    found[body["alert_id"]] = body
        return wanted <= found.keys()

    seen: list[Any] = []
    await read_records(settings, settings.topics.alerts, complete, timeout_s)
    if missing := sorted(wanted - found.keys()):
        raise LookupError(f"no alert {', '.join(missing)} on {settings.topics.alerts}")
    labels = [label_for_alert(found[i], label, note, user) for i in sorted(wanted)]
    for lab in labels:
        await publish_label(settings, lab)
    return labels
