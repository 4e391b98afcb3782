"""The retraining window: verdict join, poisoning guard and margins, caps, holdout, and reading from real Kafka."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.retraining.window import evenly_spaced, guard_mask, read_window, select
from stream_app.settings import RetrainSettings, Settings
from stream_app.wire.codecs import encode_vector
from stream_app.wire.records import Record


@dataclass
class Event:
    """One input event and the verdict the test pretends a worker gave it (None: not judged yet)."""

    source: str
    values: Sequence[float]
    ts: float
    anomalous: bool | None = False
    incident_id: str | None = None
    model: str = "sensors"
    raw: bytes | None = None  # overrides the encoded value (bad records)


def verdict(event: Event, topic: str, partition: int, offset: int) -> dict:
    return {
        "source": event.source, "topic": topic, "partition": partition, "offset": offset, "ts": event.ts,
        "score": 9.0 if event.anomalous else 0.1, "threshold": 1.0, "anomalous": bool(event.anomalous),
        "model": event.model, "version": "0001", "incident_id": event.incident_id,
    }  # fmt: skip


async def produce_judged(settings: Settings, events: Sequence[Event], timestamp_ms: int | None = None) -> None:
    """Input events on the vectors topic, then their verdicts on the scores topic, as a worker would."""
    await ensure_topics(settings)
    topics = settings.topics
    async with AIOKafkaProducer(acks="all", linger_ms=20, **aiokafka_kwargs(settings.kafka)) as producer:
        futures = [
            await producer.send(
                topics.vectors, key=e.source.encode(), timestamp_ms=timestamp_ms,
                value=e.raw if e.raw is not None else encode_vector(e.source, e.values, ts=e.ts),
            )
            for e in events
        ]  # fmt: skip
        metas = [await f for f in futures]
        for e, meta in zip(events, metas, strict=True):
            if e.anomalous is not None:
                body = verdict(e, topics.vectors, meta.partition, meta.offset)
                await producer.send(topics.scores, key=e.source.encode(), value=orjson.dumps(body))
        await producer.flush()


def series(source: str, n: int, t0: float, tag: float, rng: np.random.Generator, **kw) -> list[Event]:
    """n events 1 s apart; values[0] = tag + position, so a test can tell which were kept."""
    return [Event(source, [tag + i, *rng.normal(size=3).tolist()], t0 + i, **kw) for i in range(n)]


# ----------------------------------------------------------------------------- pure functions


def test_guard_drops_a_margin_of_events_around_incident_events_of_the_same_source_only():
    src = ["a"] * 10 + ["b"] * 10
    ts = np.r_[np.arange(10.0), np.arange(10.0)]
    incident = np.zeros(20, bool)
    incident[4] = True
    keep = guard_mask(src, ts, np.ones(20, bool) & ~incident, incident, margin_events=2, margin_s=0)
    assert np.flatnonzero(~keep).tolist() == [2, 3, 4, 5, 6]


def test_guard_drops_events_close_in_time_to_an_incident():
    ts = np.array([0.0, 10.0, 20.0, 25.0, 40.0, 70.0])
    incident = np.array([0, 0, 0, 1, 0, 0], bool)
    keep = guard_mask(["s"] * 6, ts, ~incident, incident, margin_events=0, margin_s=15.0)
    assert keep.tolist() == [True, False, False, False, False, True]


def test_guard_orders_a_source_by_event_time_not_arrival():
    ts = np.array([5.0, 1.0, 2.0, 3.0, 4.0])  # the event at 5 s arrived first
    incident = np.array([0, 0, 0, 1, 0], bool)
    keep = guard_mask(["s"] * 5, ts, ~incident, incident, margin_events=1, margin_s=0)
    assert keep.tolist() == [True, True, False, False, False]


def test_unjudged_events_are_never_kept_and_lone_alarms_are():
    judged = np.array([1, 0, 1, 0], bool)  # 1: a verdict (normal or a lone alarm); 0: no verdict
    keep = guard_mask(["s"] * 4, np.arange(4.0), judged, np.zeros(4, bool), 5, 5.0)
    assert keep.tolist() == [True, False, True, False]


def test_evenly_spaced_caps_and_keeps_both_ends():
    idx = evenly_spaced(1000, 7)
    assert len(idx) == 7 and idx[0] == 0 and idx[-1] == 999 and np.all(np.diff(idx) > 0)


def _records(events: Sequence[Event], topic: str = "in") -> tuple[list[Record], dict]:
    records = [Record(topic, 0, i, e.source.encode(), e.raw or encode_vector(e.source, e.values, ts=e.ts), {},
                      int(e.ts * 1000)) for i, e in enumerate(events)]  # fmt: skip
    verdicts = {(0, i): verdict(e, topic, 0, i) for i, e in enumerate(events) if e.anomalous is not None}
    return records, verdicts


def _settings(**retrain) -> Settings:
    return Settings(retrain=RetrainSettings(**{"guard_margin_events": 3, "guard_margin_s": 0.0, **retrain}))


def test_select_keeps_lone_alarms_drops_incidents_with_margins_and_returns_incident_events():
    rng = np.random.default_rng(0)
    events = series("a", 40, 0.0, 0.0, rng)
    events[10].anomalous = True  # lone alarm, no incident id: drift's false alarms are what a retrain must learn
    for e in events[25:28]:
        e.anomalous, e.incident_id = True, "inc-1"
    events[28].incident_id = "inc-1"  # still inside the open incident, judged normal
    w = select(_settings(holdout_fraction=0.25), *_records(events), "in", "vectors", "sensors", guard=True)
    kept = sorted(np.r_[w.train[:, 0], w.holdout[:, 0]].astype(int).tolist())
    assert kept == [i for i in range(40) if not 22 <= i <= 31]
    assert w.incidents[:, 0].astype(int).tolist() == [25, 26, 27]
    assert w.incident_ids == ["inc-1"] * 3 and w.closed.tolist() == [True] * 3  # event 29 is outside it
    assert w.holdout[:, 0].min() > w.train[:, 0].max()  # the newest events are held back
    assert w.counts["anomalous"] == 4 and w.counts["incident_events"] == 4 and w.counts["confirmed"] == 3


def test_an_incident_still_open_at_the_end_of_the_window_is_not_confirmed():
    rng = np.random.default_rng(3)
    events = series("a", 30, 0.0, 0.0, rng) + series("b", 5, 30.0, 100.0, rng)
    for e in events[27:30]:
        e.anomalous, e.incident_id = True, "inc-open"
    w = select(_settings(), *_records(events), "in", "vectors", "sensors", guard=True)
    assert w.incident_ids == ["inc-open"] * 3 and not w.closed.any()  # source b's events do not close a's


def test_select_without_guard_keeps_everything_that_decodes_and_counts_bad_records():
    rng = np.random.default_rng(1)
    events = series("a", 20, 0.0, 0.0, rng, anomalous=True, incident_id="x")
    events += [Event("a", [], 30.0, anomalous=None, raw=b"{not json"), Event("a", [1.0, 2.0], 31.0)]
    w = select(_settings(), *_records(events), "in", "vectors", "sensors", guard=False)
    assert w.n_clean == 20 and w.bad == {"malformed_json": 1, "wrong_width": 1} and len(w.incidents) == 20


def test_select_keeps_only_the_requested_model_and_caps_samples():
    rng = np.random.default_rng(2)
    events = series("a", 100, 0.0, 0.0, rng) + series("b", 100, 0.0, 1000.0, rng, model="other")
    w = select(_settings(max_samples=10, holdout_fraction=0.2), *_records(events), "in", "vectors", "sensors", True)
    assert w.counts["other_model"] == 100 and w.counts["clean"] == 100 and (len(w.train), len(w.holdout)) == (8, 2)
    assert (np.r_[w.train[:, 0], w.holdout[:, 0]] < 1000).all()


def test_select_for_a_windowed_model_keeps_the_newest_rows_of_each_source_together_and_in_order():
    rng = np.random.default_rng(4)
    a, b = series("a", 30, 0.0, 0.0, rng), series("b", 30, 0.5, 1000.0, rng)
    events = [e for pair in zip(a, b, strict=True) for e in pair]  # the two sources interleaved in time
    settings = _settings(max_samples=40, holdout_fraction=0.25)
    w = select(settings, *_records(events), "in", "vectors", "sensors", True, sequences=True)
    assert w.train[:, 0].astype(int).tolist() == [*range(10, 25), *range(1010, 1025)]  # newest 40, not every 3rd
    assert w.holdout[:, 0].astype(int).tolist() == [*range(25, 30), *range(1025, 1030)]


# ----------------------------------------------------------------------------- real Kafka


@pytest.mark.integration
async def test_read_window_from_kafka_keeps_recent_normal_events_and_drops_incident_margins(make_settings):
    settings = make_settings(
        retrain=RetrainSettings(window_s=3600, guard_margin_events=5, guard_margin_s=0.0, holdout_fraction=0.2)
    )
    rng = np.random.default_rng(3)
    now = time.time()
    old = series("line-1/a", 20, now - 7200, 5000.0, rng)  # outside the one-hour window
    a = series("line-1/a", 120, now - 300, 0.0, rng)
    for e in a[50:60]:
        e.anomalous, e.incident_id = True, "inc-a"
    a[90].anomalous = True  # lone false alarm: kept
    b = series("line-1/b", 120, now - 300, 1000.0, rng)
    for e in b[-10:]:
        e.anomalous = None  # not judged yet
    extra = [Event("line-1/b", [], now - 10, raw=b"\xff not json"), Event("line-9/x", [0, 0, 0, 0], now - 5,
                                                                           model="cameras")]  # fmt: skip
    await produce_judged(settings, old, timestamp_ms=int((now - 7200) * 1000))
    await produce_judged(settings, a + b + extra)

    w = await read_window(settings, settings.topics.vectors, "vectors", model="sensors")
    kept = set(np.r_[w.train[:, 0], w.holdout[:, 0]].astype(int).tolist())
    expect_a = {i for i in range(120) if not 45 <= i <= 64}
    expect_b = {1000 + i for i in range(110)}
    assert kept == expect_a | expect_b
    assert w.counts["records"] == 242 and w.counts["other_model"] == 1 and w.bad == {"malformed_json": 1}
    assert sorted(w.incidents[:, 0].astype(int).tolist()) == list(range(50, 60)) and w.closed.all()
    assert len(w.holdout) == round(0.2 * len(kept)) and w.start_ts >= now - 301
    assert sum(end - start for start, end in w.offsets.values()) == 242


@pytest.mark.integration
async def test_read_window_by_count_reads_the_newest_events(make_settings):
    settings = make_settings(retrain=RetrainSettings(window_s=None, window_events=30, holdout_fraction=0.1))
    now = time.time()
    await produce_judged(settings, series("s", 100, now - 100, 0.0, np.random.default_rng(4)))
    w = await read_window(settings, settings.topics.vectors, "vectors", model="sensors")
    assert w.counts["records"] == 30, w.counts
    assert w.n_clean == 30, w.counts
    assert sorted(np.r_[w.train[:, 0], w.holdout[:, 0]].astype(int).tolist()) == list(range(70, 100))


def test_select_decodes_camera_frames_for_image_models():
    from stream_app.wire.codecs import encode_image, frame_headers

    rng = np.random.default_rng(5)
    records, verdicts = [], {}
    for i in range(6):
        image = rng.integers(0, 255, size=(16, 16), dtype=np.uint8)
        headers = dict(frame_headers("cam-1", ts=float(i)))
        records.append(Record("frames", 0, i, b"cam-1", encode_image(image), headers, i * 1000))
        verdicts[(0, i)] = verdict(Event("cam-1", [], float(i), model="camera"), "frames", 0, i)
    records.append(Record("frames", 0, 6, b"cam-1", b"not an image", {}, 6000))
    verdicts[(0, 6)] = verdict(Event("cam-1", [], 6.0, model="camera"), "frames", 0, 6)
    w = select(_settings(holdout_fraction=0.34), records, verdicts, "frames", "images", "camera", guard=True)
    assert w.train.shape == (4, 16, 16) and w.holdout.shape == (2, 16, 16) and w.train.dtype == np.uint8
    assert w.bad == {"undecodable_image": 1}
