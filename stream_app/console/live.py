"""What the live pages show: per-source state fed by a group-less Kafka consumer and by Redis, read-only.

One `AIOKafkaConsumer(group_id=None)` reads the scores, alerts, dead-letter and labels topics (nothing is
committed, so the console never joins or disturbs a worker's group). At start it seeks back a little by
time: `replay_s` of verdicts, `alert_history_s` of alerts, two dead-letter windows, and every label.
Verdicts are folded into fixed time buckets per source (count, min, max, sum, last threshold, anomalies)
as they arrive, so a page costs the same whether the topic carries 10 or 20,000 verdicts a second: the
browser gets one series of `timeline_s / bucket_s` points per update. Buckets use the verdict record's
Kafka timestamp (when the worker produced it), so a replay lands where it happened.

Redis adds what verdicts alone cannot: each source's current threshold and open incident, also for
sources that went silent (threshold keys as `judging.store.ThresholdStore.key` writes them).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.alerts.labels import Label, decode_labels, latest_per_alert, precision
from stream_app.judging import thresholds
from stream_app.judging.store import SourceState, ThresholdStore
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, redis_client
from stream_app.settings import Settings

log = logging.getLogger(__name__)

# bucket fields: start time, count, min score, max score, score sum, last threshold, anomalies
T, N, LO, HI, SUM, THR, ANOM = range(7)
MAX_SOURCE_ALERTS = 200  # alert ids kept per source for its page
MAX_DEADLETTER_STAMPS = 10_000  # per source; enough to tell "rising" at any realistic rate


def line_of(source: str) -> str:
    """The line a source belongs to: the part before the first '/'.

    >>> line_of("line-1/press-2"), line_of("cam7")
    ('line-1', 'cam7')
    """
    return source.split("/", 1)[0]


@dataclass
class SourceView:
    """Everything the console knows about one source."""

    source: str
    buckets: deque = field(default_factory=deque)
    last_seen: float | None = None  # wall time of the newest verdict's record
    score: float | None = None
    threshold: float | None = None
    anomalous: bool = False
    model: str | None = None
    version: str | None = None
    incident_id: str | None = None  # carried by the newest verdict
    events: int = 0
    anomalies: int = 0
    alert_ids: deque = field(default_factory=lambda: deque(maxlen=MAX_SOURCE_ALERTS))
    deadletters: deque = field(default_factory=lambda: deque(maxlen=MAX_DEADLETTER_STAMPS))
    redis: dict[str, Any] = field(default_factory=dict)  # {model, version, threshold, open_id} from Redis

    def open_incident(self) -> str | None:
        return self.incident_id or self.redis.get("open_id")


@dataclass
class IncidentView:
    incident_id: str
    source: str
    model: str | None
    version: str | None
    opened_at: float  # event time of its first alert seen (or of the verdict that carried it)
    last_at: float
    closed_at: float | None = None
    alerts: int = 0
    max_severity: float = 0.0
    first_alert_id: str | None = None


MAX_SOURCE_NAME = 256  # characters of a source name the console keeps (the worker refuses longer ones)


class LiveState:
    """The console's memory: pure folding of decoded messages, no I/O (so it is testable without servers).

    >>> s = LiveState(bucket_s=1.0, timeline_s=10.0, stale_after_s=5.0, deadletter_window_s=30.0, max_alerts=10)
    >>> for i, score in enumerate([1.0, 3.0, 9.0]):
    ...     s.add_verdict({"source": "line-1/m0", "score": score, "threshold": 5.0, "anomalous": score > 5,
    ...                    "model": "m", "version": "1", "incident_id": None}, 100.0 + i * 0.3)
    >>> s.sources["line-1/m0"].buckets[0][:5]
    [100.0, 3, 1.0, 9.0, 13.0]
    >>> s.tile("line-1/m0", now=101.0)["status"], s.tile("line-1/m0", now=120.0)["status"]
    ('ok', 'stale')
    """

    def __init__(
        self,
        bucket_s: float,
        timeline_s: float,
        stale_after_s: float,
        deadletter_window_s: float,
        max_alerts: int,
        max_sources: int = 5000,
    ):
        self.bucket_s = bucket_s
        self.n_buckets = max(2, int(timeline_s / bucket_s) + 1)
        self.stale_after_s = stale_after_s
        self.deadletter_window_s = deadletter_window_s
        self.max_alerts = max_alerts
        self.sources: dict[str, SourceView] = {}
        self.max_sources = max_sources
        self._deadletter_only: OrderedDict[str, None] = OrderedDict()  # sources with no verdict, oldest first
        self.alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.incidents: OrderedDict[str, IncidentView] = OrderedDict()
        self.labels: dict[str, Label] = {}  # alert id -> newest label
        self.verdicts_seen = 0
        self.changed = 0  # bumped on every fold: live pages send only when it moved

    def view(self, source: str, verdict: bool = False) -> SourceView:
        """The source's view, made on first sight. Dead letters carry whatever key or `source` header the input
        had, so names are cut to MAX_SOURCE_NAME and at most `max_sources` are held: a new one pushes out the
        oldest source that never had a verdict, else the one quiet the longest."""
        source = source[:MAX_SOURCE_NAME]
        sv = self.sources.get(source)
        if sv is None:
            if len(self.sources) >= self.max_sources:
                self._forget_one()
            sv = self.sources[source] = SourceView(source, deque(maxlen=self.n_buckets))
            if not verdict:
                self._deadletter_only[source] = None
        elif verdict and source in self._deadletter_only:
            del self._deadletter_only[source]
        return sv

    def _forget_one(self) -> None:
        if self._deadletter_only:
            gone, _ = self._deadletter_only.popitem(last=False)
        else:
            gone = min(self.sources, key=lambda name: self.sources[name].last_seen or 0.0)
        del self.sources[gone]

    # ---------------------------------------------------------------- folding messages in

    def add_verdict(self, v: dict[str, Any], t: float) -> None:
        """One verdict, produced at wall time `t`."""
        sv = self.view(str(v["source"]), verdict=True)
        score, thr, anomalous = float(v["score"]), float(v["threshold"]), bool(v["anomalous"])
        start = t - t % self.bucket_s
        b = sv.buckets[-1] if sv.buckets else None
        if b is None or start > b[T]:
            sv.buckets.append([start, 1, score, score, score, thr, int(anomalous)])
        else:  # same bucket (or a slightly late record: folded into the newest bucket)
            b[N] += 1
            if score < b[LO]:
                b[LO] = score
            if score > b[HI]:
                b[HI] = score
            b[SUM] += score
            b[THR] = thr
            b[ANOM] += anomalous
        if sv.last_seen is None or t >= sv.last_seen:
            sv.last_seen, sv.score, sv.threshold, sv.anomalous = t, score, thr, anomalous
            sv.model, sv.version = v.get("model"), v.get("version")
            incident = v.get("incident_id")
            if sv.incident_id and incident != sv.incident_id and sv.incident_id in self.incidents:
                self.incidents[sv.incident_id].closed_at = t
            if incident:
                inc = self._incident(incident, sv.source, sv.model, sv.version, t)
                inc.last_at = max(inc.last_at, t)
            sv.incident_id = incident
        sv.events += 1
        sv.anomalies += anomalous
        self.verdicts_seen += 1
        self.changed += 1

    def add_alert(self, a: dict[str, Any]) -> None:
        alert_id, source = str(a["alert_id"]), str(a["source"])
        self.alerts[alert_id] = a
        self.alerts.move_to_end(alert_id)
        while len(self.alerts) > self.max_alerts:
            self.alerts.popitem(last=False)
        sv = self.view(source)
        if alert_id not in sv.alert_ids:
            sv.alert_ids.append(alert_id)
        if incident := a.get("incident_id"):
            ts = float(a.get("ts") or a.get("detected_at") or time.time())
            inc = self._incident(incident, source, a.get("model"), a.get("version"), ts)
            inc.alerts += 1
            inc.max_severity = max(inc.max_severity, float(a.get("severity") or 0.0))
            inc.last_at = max(inc.last_at, ts)
            if inc.first_alert_id is None or a.get("incident_event") == "opened":
                inc.first_alert_id = alert_id
                inc.opened_at = min(inc.opened_at, ts)
        self.changed += 1

    def _incident(self, incident_id: str, source: str, model: Any, version: Any, t: float) -> IncidentView:
        inc = self.incidents.get(incident_id)
        if inc is None:
            inc = self.incidents[incident_id] = IncidentView(incident_id, source, model, version, t, t)
            while len(self.incidents) > self.max_alerts:
                self.incidents.popitem(last=False)
        return inc

    def add_deadletter(self, source: str, t: float) -> None:
        self.view(source).deadletters.append(t)
        self.changed += 1

    def add_labels(self, labels: list[Label]) -> None:
        for lab in latest_per_alert([*self.labels.values(), *labels]):
            self.labels[lab.alert_id] = lab
        self.changed += 1

    def set_redis(self, found: dict[str, list[dict[str, Any]]]) -> None:
        """Per source: the Redis state of the (model, version) its verdicts use, else the newest version."""
        for source, entries in found.items():
            sv = self.view(source)
            pick = [e for e in entries if (e["model"], e["version"]) == (sv.model, sv.version)]
            sv.redis = pick[0] if pick else max(entries, key=lambda e: e["version"])
        self.changed += 1

    # ---------------------------------------------------------------- what pages read

    def deadletter_counts(self, sv: SourceView, now: float) -> tuple[int, int]:
        """Dead letters in the last window and in the window before it."""
        stamps = sv.deadletters
        w = self.deadletter_window_s
        if not stamps:
            return 0, 0
        xs = list(stamps)
        a, b = bisect.bisect_left(xs, now - 2 * w), bisect.bisect_left(xs, now - w)
        return len(xs) - b, b - a

    def tile(self, source: str, now: float) -> dict[str, Any]:
        """A source's overview tile: status is incident > no data > dead letters rising > ok."""
        sv = self.sources[source]
        age = None if sv.last_seen is None else max(0.0, now - sv.last_seen)
        recent, before = self.deadletter_counts(sv, now)
        incident = sv.open_incident()
        if incident:
            status, detail = "incident", f"incident {incident[:8]} open"
        elif age is None or age > self.stale_after_s:
            status, detail = "stale", "no data yet" if age is None else f"no data for {age:.0f} s"
        elif recent > before:
            status, detail = "deadletters", f"dead letters rising: {recent} in {self.deadletter_window_s:.0f} s"
        else:
            status, detail = "ok", "ok"
        threshold = sv.redis.get("threshold", sv.threshold)
        return {
            "source": source, "line": line_of(source), "status": status, "detail": detail, "score": sv.score,
            "threshold": threshold, "age_s": age, "incident_id": incident, "deadletters": recent,
            "model": sv.model or sv.redis.get("model"), "version": sv.version or sv.redis.get("version"),
        }  # fmt: skip

    def overview(self, now: float) -> list[dict[str, Any]]:
        return [self.tile(s, now) for s in sorted(self.sources)]

    def timeline(self, source: str, now: float) -> dict[str, Any]:
        """The source's downsampled score/threshold series and its recent alerts (what its page draws)."""
        sv = self.sources.get(source)
        if sv is None:
            return {"source": source, "now": now, "points": [], "alerts": []}
        points = [[b[T], b[N], b[LO], b[HI], b[SUM] / b[N], b[THR], b[ANOM]] for b in sv.buckets]
        since = now - self.n_buckets * self.bucket_s
        alerts = []
        for alert_id in sv.alert_ids:
            a = self.alerts.get(alert_id)
            t = a and (a.get("_t") or a.get("ts"))
            if a and t and t >= since:
                alerts.append([t, a.get("score"), alert_id])
        return {"source": source, "now": now, "bucket_s": self.bucket_s, "points": points, "alerts": alerts}

    def source_incidents(self, source: str) -> list[IncidentView]:
        return sorted((i for i in self.incidents.values() if i.source == source), key=lambda i: -i.opened_at)

    def incident_alerts(self, incident_id: str) -> list[dict[str, Any]]:
        return sorted((a for a in self.alerts.values() if a.get("incident_id") == incident_id), key=lambda a: a["ts"])

    def precision(self) -> dict[tuple[str, str | None], Any]:
        return precision(self.labels.values())


def _json(value: bytes | None) -> dict[str, Any] | None:
    try:
        d = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return d if isinstance(d, dict) else None


def parse_redis_key(key: str, prefix: str) -> tuple[str, str, str] | None:
    """(model, version, source) of a threshold key (the store owns the format), None for other keys.

    >>> parse_redis_key("lw:thr:sensors:0003:spot-1a2b3c4d:line-1/m:0", "lw")
    ('sensors', '0003', 'line-1/m:0')
    """
    parsed = ThresholdStore.parse_key(key, prefix)
    return None if parsed is None else (parsed[0], parsed[1], parsed[3])


class LiveFeed:
    """Owns the consumer and the Redis poller that keep a `LiveState` current (`async with LiveFeed(...)`)."""

    def __init__(self, settings: Settings):
        c = settings.console
        self.settings = settings
        self.state = LiveState(
            c.bucket_s, c.timeline_s, c.stale_after_s, c.deadletter_window_s, c.max_alerts, c.max_sources
        )
        self._tasks: list[asyncio.Task] = []
        self.ready = asyncio.Event()  # set once the start-up replay is read
        self.error: str | None = None  # why the feed is reconnecting, if it is

    async def __aenter__(self) -> LiveFeed:
        self._tasks = [
            asyncio.create_task(self._consume(), name="console-consume"),
            asyncio.create_task(self._poll_redis(), name="console-redis"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _start_consumer(self, replay: bool = True) -> AIOKafkaConsumer:
        s, c = self.settings, self.settings.console
        topics = s.topics
        await ensure_topics(s, [topics.scores, topics.alerts, topics.deadletter, topics.labels])
        consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="latest", **aiokafka_kwargs(s.kafka)
        )
        await consumer.start()
        now_ms = int(time.time() * 1000)
        back = {
            topics.scores: c.replay_s,
            topics.alerts: c.alert_history_s,
            topics.deadletter: 2 * c.deadletter_window_s,
            topics.labels: None,  # every label: precision counts them all
        }
        tps = []
        for topic in back:
            parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        starts = await consumer.offsets_for_times(
            {tp: now_ms - int(b * 1000) for tp in tps if (b := back[tp.topic]) is not None}
        )
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        self._replay_ends = dict(ends)
        for tp in tps:
            if not replay:
                consumer.seek(tp, ends[tp])
            elif back[tp.topic] is None:
                consumer.seek(tp, begins[tp])
            else:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        return consumer

    async def _consume(self) -> None:
        """Keep reading; a failed consumer is replaced (from the topics' ends: nothing is counted twice)."""
        replay = True
        while True:
            try:
                await self._consume_once(replay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("console feed failed; reconnecting in 2 s")
                replay = False
                await asyncio.sleep(2.0)

    async def _consume_once(self, replay: bool) -> None:
        s = self.settings
        consumer = await self._start_consumer(replay)
        self.error = None
        state, topics = self.state, s.topics
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, msgs in batches.items():
                    if tp.topic == topics.scores:
                        for m in msgs:
                            v = _json(m.value)
                            if v is not None and "source" in v and "score" in v:
                                try:
                                    state.add_verdict(v, m.timestamp / 1000.0)
                                except (TypeError, ValueError, KeyError):
                                    continue
                    elif tp.topic == topics.alerts:
                        for m in msgs:
                            a = _json(m.value)
                            if a is not None and "alert_id" in a and "source" in a:
                                a["_t"] = m.timestamp / 1000.0
                                state.add_alert(a)
                    elif tp.topic == topics.deadletter:
                        for m in msgs:
                            headers = dict(m.headers or ())
                            src = (headers.get("source") or m.key or b"?").decode(errors="replace")
                            state.add_deadletter(src, m.timestamp / 1000.0)
                    elif tp.topic == topics.labels:
                        state.add_labels(decode_labels(m.value for m in msgs))
                if not self.ready.is_set():
                    positions = {tp: await consumer.position(tp) for tp in self._replay_ends}
                    if all(positions[tp] >= end for tp, end in self._replay_ends.items()):
                        self.ready.set()
                await asyncio.sleep(0)  # let page handlers run between big batches
        finally:
            await consumer.stop()

    async def _poll_redis(self) -> None:
        s = self.settings
        redis = redis_client(s.redis)
        prefix = s.redis.key_prefix
        try:
            while True:
                try:
                    self.state.set_redis(await read_redis_states(redis, prefix, s))
                except Exception as exc:  # Redis down: the page keeps the last state and says nothing worse
                    log.warning("reading thresholds from Redis failed: %s", exc)
                await asyncio.sleep(s.console.redis_poll_s)
        finally:
            await redis.aclose()


async def read_redis_states(redis: Any, prefix: str, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """source -> [{model, version, threshold, open_id}] for every threshold key under `prefix` (read-only)."""
    keys = [
        k.decode() if isinstance(k, bytes) else k async for k in redis.scan_iter(match=f"{prefix}:thr:*", count=1000)
    ]
    parsed = [(k, p) for k in keys if (p := parse_redis_key(k, prefix))]
    if not parsed:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for k, _ in parsed:
            pipe.hmget(k, "s", "a")
        blobs = await pipe.execute()
    found: dict[str, list[dict[str, Any]]] = {}
    for (_, (model, version, source)), (blob, arrays) in zip(parsed, blobs, strict=True):
        if not blob:
            continue
        try:
            st = SourceState.loads(blob, arrays)
            thr = thresholds.current_threshold(settings.thresholds, st.threshold)
        except ValueError:
            continue
        found.setdefault(source, []).append(
            {"model": model, "version": version, "threshold": thr, "open_id": st.incident.open_id}
        )
    return found
