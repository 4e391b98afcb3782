"""The retraining agent's data: a recent window of a model's input topic, filtered by its verdicts.

Reading: every partition of the input topic is assigned by hand (no consumer group, nothing committed),
from the offset of the window's start time (`offsets_for_times`) and/or the newest `window_events`, up to
the end offsets seen when the read began. The verdicts in `inspection.scores` for those offsets are read
the same way and joined on (topic, partition, offset).

Poisoning guard (`guard=True`): a candidate must learn normal traffic only, so an event is kept when

- it has a verdict from this model (unjudged events are not trusted), and
- it lies more than `guard_margin_events` events and `guard_margin_s` seconds away from every incident
  event of its source. Incident events are those the worker tagged with an `incident_id` (the hysteresis
  in `incidents.py`), or every anomalous verdict when verdicts carry no `incident_id` field.

A lone alarm outside any incident stays: lone false alarms are common right after drift, which is when
retraining matters, and leaving them out would teach the candidate that the drifted tail is abnormal.
`guard=False` keeps everything of this model that decodes (experiments, e.g. the poisoning test).
Anomalous verdicts inside incidents with severity >= `incident_min_severity` are returned separately,
with their incident ids and whether the incident closed inside the window: likely true anomalies, which
the candidate must still flag (see `decision.py` and `regression.py`). Bad records are skipped and counted by dead-letter reason; the
clean events are capped at `max_samples`, evenly spaced in time, and the newest `holdout_fraction` of
them is held back for validation.

A model with temporal context (`window` > 1) reads its rows as time-ordered sequences of one source
(`sequences=True`): the cap keeps the newest `max_samples` clean events instead (evenly spaced ones would
put rows far apart side by side in a window), and the training and held-back rows are each grouped by
source, every source's rows in offset order (its order on its partition). The W - 1 windows at each
boundary between two sources, or across the gap left by a guarded incident, mix rows that were not
neighbours: a small share for sources with hundreds of events in the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.judging.store import severity
from stream_app.ops.connections import aiokafka_kwargs, offset_ranges
from stream_app.settings import Settings
from stream_app.wire.codecs import BadEvent
from stream_app.wire.kinds import data_kind
from stream_app.wire.records import Record
from stream_app.wire.routing import Router

# ----------------------------------------------------------------------------- pure selection


def _near(x: np.ndarray, marks: np.ndarray, margin: float) -> np.ndarray:
    """x[i] lies within `margin` of some value in sorted `marks`."""
    j = np.searchsorted(marks, x)
    left = np.abs(x - marks[np.clip(j - 1, 0, len(marks) - 1)])
    right = np.abs(marks[np.clip(j, 0, len(marks) - 1)] - x)
    return np.minimum(left, right) <= margin


def guard_mask(
    sources: Sequence[str],
    ts: np.ndarray,
    judged: np.ndarray,
    incident: np.ndarray,
    margin_events: int,
    margin_s: float,
) -> np.ndarray:
    """Which events the poisoning guard keeps: judged, and away from its source's incident events.

    Events of a source are ordered by `ts` (ties keep input order); the margin counts events of the same
    source on both sides of each incident event, and seconds of event time. Lone alarms are kept.

    >>> keep = guard_mask(["a"] * 7, np.arange(7.0), np.array([1, 0, 1, 1, 1, 1, 1], bool),
    ...                   np.array([0, 0, 0, 1, 0, 0, 0], bool), margin_events=1, margin_s=0)
    >>> keep.astype(int).tolist()
    [1, 0, 0, 0, 0, 1, 1]
    """
    ts = np.asarray(ts, np.float64)
    keep = np.asarray(judged, bool) & ~np.asarray(incident, bool)
    incident = np.asarray(incident, bool)
    if not incident.any():
        return keep
    _, group = np.unique(np.asarray(sources, dtype=object), return_inverse=True)
    for g in np.unique(group[incident]):
        idx = np.flatnonzero(group == g)
        order = idx[np.argsort(ts[idx], kind="stable")]
        marks = np.flatnonzero(incident[order])
        near = _near(np.arange(len(order)), marks, margin_events)
        near |= _near(ts[order], np.sort(ts[order][marks]), margin_s)
        keep[order[near]] = False
    return keep


def evenly_spaced(n: int, cap: int) -> np.ndarray:
    """Indices of at most `cap` of `n` items, evenly spaced, first and last included.

    >>> evenly_spaced(10, 4).tolist(), evenly_spaced(3, 5).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    if n <= cap:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


# ----------------------------------------------------------------------------- result


@dataclass
class TrainingWindow:
    """What a retraining cycle trains and validates on, and where it came from (for the manifest)."""

    topic: str
    model: str | None
    kind: str  # "vectors" | "images"
    guard: bool
    train: np.ndarray
    holdout: np.ndarray
    incidents: np.ndarray  # anomalous events inside incidents: likely true anomalies
    incident_ids: list[str] = field(default_factory=list)  # one per row of `incidents`
    closed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # its incident closed in the window
    start_ts: float | None = None  # event time of the oldest / newest record read
    end_ts: float | None = None
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> [start, end)
    counts: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)  # dead-letter reason -> records skipped

    @property
    def n_clean(self) -> int:
        return len(self.train) + len(self.holdout)

    def manifest(self) -> dict[str, Any]:
        """JSON-able summary stored with a candidate as `training_window`."""
        return {
            "topic": self.topic,
            "model": self.model,
            "kind": self.kind,
            "guard": self.guard,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "offsets": {str(p): v for p, v in self.offsets.items()},
            "counts": dict(self.counts),
            "bad": dict(self.bad),
        }


# ----------------------------------------------------------------------------- Kafka reading


async def read_range(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], stall_s: float = 30.0
) -> list[Record]:
    """Every record in the given offset ranges (the consumer must have no subscription)."""
    todo = {tp: r for tp, r in ranges.items() if r[0] < r[1]}
    if not todo:
        return []
    consumer.assign(list(todo))
    for tp, (start, _) in todo.items():
        consumer.seek(tp, start)
    out: list[Record] = []
    last_progress = time.monotonic()
    while todo:
        batches = await consumer.getmany(*todo, timeout_ms=500, max_records=5000)
        for tp, msgs in batches.items():
            end = todo.get(tp, (0, 0))[1]
            for m in msgs:
                if m.offset < end:
                    out.append(Record.of(m, m.timestamp))
        if batches:
            last_progress = time.monotonic()
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp][1]:
                del todo[tp]
        if todo and time.monotonic() - last_progress > stall_s:
            raise TimeoutError(f"reading {sorted(str(tp) for tp in todo)} made no progress for {stall_s:.0f} s")
    return out


def _verdict_index(records: Sequence[Record], topic: str) -> dict[tuple[int, int], dict[str, Any]]:
    """(partition, offset) -> verdict for `topic`; a redelivered event's verdicts merge (anomalous wins)."""
    index: dict[tuple[int, int], dict[str, Any]] = {}
    for rec in records:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            v = orjson.loads(rec.value or b"")
            if not isinstance(v, dict) or v.get("topic") != topic:
                continue
            key = (int(v["partition"]), int(v["offset"]))
            if key not in index or (v.get("anomalous") and not index[key].get("anomalous")):
                index[key] = v
    return index


async def read_window(
    settings: Settings,
    topic: str,
    kind: str,
    model: str | None = None,
    now: float | None = None,
    guard: bool | None = None,
    sequences: bool = False,
) -> TrainingWindow:
    """Read, judge, guard, decode and sample the recent window of `topic` for `model` (see module doc).

    `kind` is the input's data kind ("vectors" or "images"); `model` None keeps events of every model.
    `guard` overrides `settings.retrain.guard`; `sequences`: rows grouped by source, in order (windowed models).
    """
    cfg = settings.retrain
    guard = cfg.guard if guard is None else guard
    now = time.time() if now is None else now
    since_ms = int((now - cfg.window_s) * 1000) if cfg.window_s is not None else None
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=max(settings.kafka.max_message_bytes, 52428800),
        max_partition_fetch_bytes=settings.kafka.max_message_bytes,
        **aiokafka_kwargs(settings.kafka),
    )
    await consumer.start()
    try:
        ranges = await offset_ranges(consumer, topic, since_ms, cfg.window_events)
        records = await read_range(consumer, ranges)
        if cfg.window_events is not None and len(records) > cfg.window_events:
            records.sort(key=lambda r: (r.timestamp_ms or 0, r.partition, r.offset))
            records = records[-cfg.window_events :]
        verdicts: dict[tuple[int, int], dict[str, Any]] = {}
        if records:
            first_ms = min(r.timestamp_ms or 0 for r in records)
            score_ranges = await offset_ranges(consumer, settings.topics.scores, first_ms - 1000, None)
            verdicts = _verdict_index(await read_range(consumer, score_ranges), topic)
    finally:
        await consumer.stop()
    # Decoding (images especially) is CPU work: keep it off the event loop.
    window = await asyncio.to_thread(select, settings, records, verdicts, topic, kind, model, guard, sequences)
    window.offsets = {tp.partition: [s, e] for tp, (s, e) in ranges.items()}
    return window


# ----------------------------------------------------------------------------- join, guard, decode


def select(
    settings: Settings,
    records: Sequence[Record],
    verdicts: dict[tuple[int, int], dict[str, Any]],
    topic: str,
    kind: str,
    model: str | None,
    guard: bool,
    sequences: bool = False,
) -> TrainingWindow:
    """The pure part of `read_window`: join records with verdicts, guard, cap, decode, split (see module doc)."""
    cfg = settings.retrain
    router = Router(data_kind(kind).routes(settings))
    counts: dict[str, int] = {"records": len(records), "other_model": 0}
    rows: list[tuple[Record, str, float, dict[str, Any] | None]] = []
    for rec in records:
        v = verdicts.get((rec.partition, rec.offset))
        source = str(v["source"]) if v and "source" in v else (rec.key or b"").decode(errors="replace")
        if model is not None and (v.get("model") if v else router.model_for(source)) != model:
            counts["other_model"] += 1
            continue
        event_ts = float(v["ts"]) if v and isinstance(v.get("ts"), int | float) else (rec.timestamp_ms or 0) / 1000
        rows.append((rec, source, event_ts, v))
    rows.sort(key=lambda r: (r[2], r[0].partition, r[0].offset))
    n = len(rows)
    sources = [r[1] for r in rows]
    ts = np.array([r[2] for r in rows], np.float64)
    judged = np.array([r[3] is not None for r in rows], bool)
    anomalous = np.array([bool(r[3] and r[3].get("anomalous")) for r in rows], bool)
    in_incident = np.array(
        [bool(r[3] and (r[3].get("incident_id") is not None if "incident_id" in r[3] else r[3].get("anomalous")))
         for r in rows],
        bool,
    )  # fmt: skip
    if guard:
        keep = guard_mask(sources, ts, judged, in_incident, cfg.guard_margin_events, cfg.guard_margin_s)
    else:
        keep = np.ones(n, bool)
    counts.update(
        {
            "events": n,
            "judged": int(judged.sum()),
            "anomalous": int(anomalous.sum()),
            "incident_events": int(in_incident.sum()),
            "guard_dropped": int(n - keep.sum()),
            "clean": int(keep.sum()),
        }
    )
    kept = np.flatnonzero(keep)
    kept = kept[-cfg.max_samples :] if sequences else kept[evenly_spaced(len(kept), cfg.max_samples)]
    # Detection is checked on clear anomalies only: incident events well above their threshold. Drift-induced
    # false alarms sit just above it, and a candidate that stops flagging those is the point of retraining.
    severity = np.array([_severity(r[3]) for r in rows], np.float64)
    true_anomalies = np.flatnonzero(anomalous & in_incident & (severity >= cfg.incident_min_severity))
    true_anomalies = true_anomalies[evenly_spaced(len(true_anomalies), cfg.max_samples)]
    inc_ids = [str((rows[i][3] or {}).get("incident_id") or f"{sources[i]}@{ts[i]:.3f}") for i in true_anomalies]
    closed_ids = _closed_incidents(sources, [r[3] for r in rows])

    bad: Counter[str] = Counter()
    clean, decoded = _decode(settings, kind, [rows[i][0] for i in kept], bad)
    shape = clean.shape[1:] if len(clean) else None
    decoded_inc = _decode(settings, kind, [rows[i][0] for i in true_anomalies], bad, shape)
    kept_inc = [j for j, ok in enumerate(decoded_inc[1]) if ok]
    incidents, inc_ids = decoded_inc[0], [inc_ids[j] for j in kept_inc]
    n_hold = round(len(clean) * cfg.holdout_fraction) if len(clean) >= 2 else 0
    train, holdout = clean[: len(clean) - n_hold], clean[len(clean) - n_hold :]
    if sequences:
        order = [
            (rows[i][1], rows[i][0].partition, rows[i][0].offset) for i, ok in zip(kept, decoded, strict=True) if ok
        ]
        train, holdout = _by_source(train, order[: len(train)]), _by_source(holdout, order[len(train) :])
    closed = np.array([i in closed_ids for i in inc_ids], bool)
    counts |= {"sampled": len(kept), "train": len(train), "holdout": len(holdout), "incidents": len(incidents),
               "confirmed": int(closed.sum())}  # fmt: skip
    counts["bad"] = int(sum(bad.values()))
    return TrainingWindow(
        topic=topic,
        model=model,
        kind=kind,
        guard=guard,
        train=train,
        holdout=holdout,
        incidents=incidents,
        incident_ids=inc_ids,
        closed=closed,
        start_ts=float(ts.min()) if n else None,
        end_ts=float(ts.max()) if n else None,
        counts=dict(counts),
        bad=dict(bad),
    )


def _by_source(rows: np.ndarray, order: list[tuple[str, int, int]]) -> np.ndarray:
    """Rows regrouped by (source, partition, offset): each source's rows together, in the order it sent them."""
    return rows[sorted(range(len(rows)), key=order.__getitem__)] if len(rows) else rows


def _closed_incidents(sources: Sequence[str], verdicts: Sequence[dict[str, Any] | None]) -> set[str]:
    """Incident ids followed, on their source (rows in time order), by a verdict outside that incident."""
    current: dict[str, str | None] = {}
    closed: set[str] = set()
    for src, v in zip(sources, verdicts, strict=True):
        if v is None:
            continue
        inc = v.get("incident_id")
        prev = current.get(src)
        if prev is not None and inc != prev:
            closed.add(prev)
        current[src] = inc
    return closed


def _decode(
    settings: Settings, kind: str, records: Sequence[Record], bad: Counter[str], shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, list[bool]]:
    """Decoded arrays stacked in the given order, all of `shape` (default: the most common one; others count
    as `wrong_width`), and which of `records` made it (to keep per-event labels aligned)."""
    spec = data_kind(kind)
    decoded: list[np.ndarray | None] = []
    for event in spec.decode(records, settings):
        if isinstance(event, BadEvent):
            bad[event.reason] += 1
            decoded.append(None)
        else:
            decoded.append(spec.stack([event])[0])
    if shape is None and any(a is not None for a in decoded):
        shape = Counter(a.shape for a in decoded if a is not None).most_common(1)[0][0]
    ok = [a is not None and a.shape == shape for a in decoded]
    if wrong := sum(1 for a, good in zip(decoded, ok, strict=True) if a is not None and not good):
        bad["wrong_width"] += wrong
    arrays = [a for a, good in zip(decoded, ok, strict=True) if good and a is not None]  # good implies not None
    if not arrays:
        return np.zeros((0, *(shape or (0,))), spec.dtype), ok
    return np.stack(arrays), ok


def _severity(verdict: dict[str, Any] | None) -> float:
    """The worker's Judgement.severity of a verdict (inf when the verdict lacks its score or threshold)."""
    try:
        return severity(float(verdict["score"]), float(verdict["threshold"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return float("inf")
