"""One micro-batch through the product: decode -> route -> score -> judge -> verdicts, alerts, dead letters.

Transport-free: `process` takes `Record`s (from a faust `take_events` batch or an aiokafka `getmany`) and
returns the outputs to publish; `InspectionPipeline.handle` publishes them and waits for the broker's acks,
so a caller that commits offsets after `handle` returns gets at-least-once delivery. The model version is
looked up once per batch and model, so a hot swap lands between batches. A model with temporal context
(`window` > 1) scores while judging: the threshold store scores each source's new events after the rows kept
with that source's state (`stream_app/judging/history.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from models import ImageScorer, SequenceScorer, VectorScorer
from stream_app.judging.history import ScoreSequences, Sequences
from stream_app.judging.store import ThresholdStore
from stream_app.ops.metrics import WorkerMetrics
from stream_app.scoring.admission import SourceAdmission
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.isolation import DeviceFailure, is_device_failure, isolate_failures
from stream_app.scoring.model_manager import LoadedModel, ModelManager
from stream_app.scoring.publishing import Publisher
from stream_app.settings import Settings
from stream_app.wire.codecs import BadEvent, Event
from stream_app.wire.ids import event_key
from stream_app.wire.kinds import DATA_KINDS, DataKind, data_kind
from stream_app.wire.outputs import (
    Output,
    alert_output,
    coarse_grid,
    deadletter_output,
    top_features,
    verdict_outputs,
)
from stream_app.wire.records import Record
from stream_app.wire.routing import Router

T = TypeVar("T")

log = logging.getLogger(__name__)

# A scorer raising one of these on a group is bisected to the records that cause it (poison); other errors,
# and device errors that every record meets alone (a lost GPU: `DeviceFailure`), fail the batch, which is retried.
POISON_ERRORS = (ValueError, TypeError, IndexError, RuntimeError)
EVICT_EVERY_S = 60.0  # how often idle sources are looked for


@dataclass
class BatchReport:
    """What one batch produced (counts for logs, tests and benchmarks)."""

    events: int = 0
    scored: int = 0
    alerts: int = 0
    deadletters: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchOutputs:
    """The outputs of one batch as they accumulate, and its report; `reject` dead-letters one record."""

    deadletter_topic: str
    deadletter_max_bytes: int  # the broker's message limit less a margin: a refused dead letter would stall
    metrics: WorkerMetrics
    report: BatchReport
    outputs: list[Output] = field(default_factory=list)

    def reject(self, rec: Record, reason: str, message: str) -> None:
        self.outputs.append(deadletter_output(self.deadletter_topic, rec, reason, message, self.deadletter_max_bytes))
        self.report.deadletters[reason] = self.report.deadletters.get(reason, 0) + 1
        self.metrics.deadletters.labels(reason).inc()
        log.warning("dead letter %s/%d@%d: %s: %s", rec.topic, rec.partition, rec.offset, reason, message)


@dataclass
class Routed:
    """Records of one batch routed to one model, each with its decoded event."""

    records: list[Record] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def add(self, rec: Record, event: Event) -> None:
        self.records.append(rec)
        self.events.append(event)


@dataclass
class ScoredGroup:
    """Events scored together in one tensor: records, events, the model's input and its scores (None for a
    windowed model: its events are scored while they are judged, after each source's stored history)."""

    records: list[Record]
    events: list[Event]
    data: np.ndarray
    scores: np.ndarray | None
    alerts: int = 0  # anomalous events (closing records on the alerts topic are not alerts)


class ScoringFailed(Exception):
    """A windowed model's scorer raised inside judging: the group is bisected like one whose scoring failed."""


def window_of(scorer: object) -> int:
    """Rows of one source a vector scorer sees at once (1: each row alone)."""
    return int(getattr(scorer, "window", 1))


def lag_explanations(scorer: SequenceScorer, sources: list[str], rows: list[int], windows: Sequences) -> dict[int, Any]:
    """A windowed model's explanations of rows of a batch judged with `windows` (one pass for all of them): the
    inputs with the largest error, named with sensor and lag ("f2@t-1"), each with its raw value in the window
    the row was scored in."""
    w = window_of(scorer)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, src in enumerate(sources):
        by_source[src].append(i)
    pairs = []
    for r in rows:
        before = windows.before(r, sources[r], by_source[sources[r]])
        pairs.append((None if before is None else before[-(w - 1) :], windows.rows[r : r + 1]))
    out = {}
    for r, (history, row), contrib in zip(rows, pairs, scorer.explain_sequences(pairs), strict=True):
        seq = row if history is None else np.concatenate([history, row])
        window = np.concatenate([np.repeat(seq[:1], w - len(seq), axis=0), seq])  # padded as the scorer pads
        out[r] = top_features(contrib[0], window.reshape(-1), scorer.input_names)
    return out


class InspectionPipeline:
    """Scores micro-batches of one data kind ("vectors" or "images") with the routed registry models."""

    def __init__(
        self,
        settings: Settings,
        models: ModelManager,
        store: ThresholdStore,
        executor: InferenceExecutor,
        metrics: WorkerMetrics,
    ):
        self.settings = settings
        self.models = models
        self.store = store
        self.executor = executor
        self.metrics = metrics
        self.routers = {name: Router(kind.routes(settings)) for name, kind in DATA_KINDS.items()}
        self.admission = SourceAdmission(settings.limits.max_sources_per_model)
        self._next_eviction = time.monotonic() + EVICT_EVERY_S

    # ------------------------------------------------------------------ decoding

    def decode(self, kind: str, records: Sequence[Record]) -> list[Event | BadEvent]:
        """One event, or the reason it cannot be scored, per record (vectors decode as one batch)."""
        return data_kind(kind).decode(records, self.settings)

    # ------------------------------------------------------------------ the batch

    async def process(self, kind_name: str, records: Sequence[Record]) -> tuple[list[Output], BatchReport]:
        kind = data_kind(kind_name)
        s = self.settings
        dead_max = s.kafka.max_message_bytes - s.limits.deadletter_margin_bytes
        batch = BatchOutputs(s.topics.deadletter, dead_max, self.metrics, BatchReport(events=len(records)))
        router = self.routers[kind.name]
        by_model: dict[str, Routed] = defaultdict(Routed)
        for rec, event in zip(records, kind.decode(records, self.settings), strict=True):
            if isinstance(event, BadEvent):
                batch.reject(rec, event.reason, event.message)
                continue
            model = router.model_for(event.source)
            if model is None:
                batch.reject(rec, "unknown_source", f"no route matches source {event.source!r}")
                continue
            by_model[model].add(rec, event)

        for model_name, routed in by_model.items():
            routed = self._admit(model_name, routed, batch)
            if not routed.records:
                continue
            try:
                loaded = await self.models.get(model_name)
            except Exception as exc:  # no production version, unreadable registry: the events are kept, not lost
                for rec in routed.records:
                    batch.reject(rec, "model_unavailable", f"model {model_name!r}: {exc}")
                continue
            batch.report.versions[model_name] = loaded.version
            await self._score_model(kind, loaded, routed, batch)
        return batch.outputs, batch.report

    def _groups(self, kind: DataKind, loaded: LoadedModel, routed: Routed, batch: BatchOutputs) -> list[Routed]:
        """Events the model can take as one tensor each: vectors of its width; images by shape."""
        scorer = loaded.scorer
        if scorer.data_kind != kind.name:  # a route points a camera at a vector model or back
            for rec in routed.records:
                batch.reject(
                    rec, "rejected_by_model", f"model {loaded.name} scores {scorer.data_kind}, not {kind.name}"
                )
            return []
        width = (scorer.n_features,) if isinstance(scorer, VectorScorer) else None  # (a Protocol check is slow)
        groups: dict[tuple[int, ...], Routed] = defaultdict(Routed)
        for rec, ev in zip(routed.records, routed.events, strict=True):
            shape = kind.shape(ev)
            if width is not None and shape != width:
                batch.reject(rec, "wrong_width", f"model {loaded.name} expects {width[0]} values, got {shape[0]}")
            else:
                groups[shape].add(rec, ev)
        return list(groups.values())

    def _evict_idle_sources(self) -> None:
        """Sources silent for limits.source_state_ttl_s leave the admission set, the cache and the metrics."""
        ttl, now = self.settings.limits.source_state_ttl_s, time.monotonic()
        if ttl is None or now < self._next_eviction:
            return
        self._next_eviction = now + EVICT_EVERY_S
        for model, source in self.admission.evict_idle(now, ttl):
            self.store.forget(model, source)
            with contextlib.suppress(KeyError):  # never judged: no series
                self.metrics.threshold.remove(model, source)
            log.info("source %s of model %s idle for %.0f s: its state expires", source, model, ttl)

    def _admit(self, model: str, routed: Routed, batch: BatchOutputs) -> Routed:
        """Events of sources the model may track; a new source beyond limits.max_sources_per_model is refused."""
        self._evict_idle_sources()
        sources = [ev.source for ev in routed.events]
        admitted = self.admission.admit(model, sources)
        self.admission.touch(model, (src for src, ok in zip(sources, admitted, strict=True) if ok), time.monotonic())
        if all(admitted):
            return routed
        kept = Routed()
        for rec, ev, ok in zip(routed.records, routed.events, admitted, strict=True):
            if ok:
                kept.add(rec, ev)
            else:
                batch.reject(rec, "source_limit", f"model {model!r} already tracks {self.admission.max_sources} "
                             f"sources (limits.max_sources_per_model); {ev.source!r} is new")  # fmt: skip
        return kept

    async def _score_model(self, kind: DataKind, loaded: LoadedModel, routed: Routed, batch: BatchOutputs) -> None:
        for group in self._groups(kind, loaded, routed, batch):
            data = kind.stack(group.events)
            scored = await self._scored(loaded, group, data, batch)
            if scored is None:
                continue
            try:
                batch.outputs += await self._judge_and_emit(kind, loaded, scored)
            except ScoringFailed:  # a windowed model refused a record: bisect, then judge the others
                kept = await self._isolate(loaded, group, data, batch)
                if kept is None:
                    continue
                scored = ScoredGroup(kept[0].records, kept[0].events, kept[1], None)
                batch.outputs += await self._judge_and_emit(kind, loaded, scored)
            batch.report.scored += len(scored.records)
            batch.report.alerts += scored.alerts

    async def _infer(self, loaded: LoadedModel, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` where the model's inference runs: on the event loop or the inference thread (`runs_inline`)."""
        if loaded.runs_inline:
            return fn(*args)
        return await self.executor.run(fn, *args)

    async def _scored(
        self, loaded: LoadedModel, group: Routed, data: np.ndarray, batch: BatchOutputs
    ) -> ScoredGroup | None:
        """The group with its scores (None if every record failed); a windowed model's are computed when judged."""
        if window_of(loaded.scorer) > 1:
            return ScoredGroup(group.records, group.events, data, None)
        started = time.perf_counter()
        try:  # one call, and no copies, when the group scores (the common case)
            scores = await self._infer(loaded, loaded.scorer.score, data)
        except POISON_ERRORS:  # bisect to the records that fail on their own
            kept = await self._isolate(loaded, group, data, batch)
            if kept is None:
                return None
            group, data, scores = kept
        self.metrics.inference.labels(loaded.name).observe(time.perf_counter() - started)
        return ScoredGroup(group.records, group.events, data, scores)

    def _sequence_scoring(self, loaded: LoadedModel) -> ScoreSequences:
        """The call `ThresholdStore.judge` scores a windowed model's rows with: where the model's inference runs
        (`_infer`), all sources of the batch in one forward pass; the scorer's own errors come out as `ScoringFailed`."""
        scorer = cast(SequenceScorer, loaded.scorer)

        async def score(pairs: list[tuple[np.ndarray | None, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
            started = time.perf_counter()
            try:
                out = await self._infer(loaded, scorer.score_sequences, pairs)
            except POISON_ERRORS as exc:
                raise ScoringFailed(f"{type(exc).__name__}: {exc}") from exc
            self.metrics.inference.labels(loaded.name).observe(time.perf_counter() - started)
            return out

        return score

    async def _isolate(
        self, loaded: LoadedModel, group: Routed, data: np.ndarray, batch: BatchOutputs
    ) -> tuple[Routed, np.ndarray, np.ndarray] | None:
        """Dead-letter the records that make the scorer raise on their own; the rest with their scores (None: all
        failed: the model refuses this input, `rejected_by_model`; some failed: those records are `poison`)."""

        def score_rows(rows: Sequence[int]) -> Awaitable[np.ndarray]:
            return self._infer(loaded, loaded.scorer.score, data[list(rows)])

        isolated = await isolate_failures(range(len(data)), score_rows, POISON_ERRORS)
        errors = list(isolated.failures.values())
        if isolated.all_failed and all(map(is_device_failure, errors)):  # a lost GPU, not input: retry the batch
            raise DeviceFailure(f"every record failed on the device ({type(errors[0]).__name__}: {errors[0]})")
        reason = "rejected_by_model" if isolated.all_failed else "poison"
        for i, exc in isolated.failures.items():
            batch.reject(group.records[i], reason, f"{type(exc).__name__}: {exc}")
        keep = [i for i in range(len(data)) if i not in isolated.failures]
        if not keep:
            return None
        scores = np.asarray([isolated.results[i] for i in keep], np.float32)
        return Routed([group.records[i] for i in keep], [group.events[i] for i in keep]), data[keep], scores

    async def _judge_and_emit(self, kind: DataKind, loaded: LoadedModel, group: ScoredGroup) -> list[Output]:
        topics = self.settings.topics
        sources = [ev.source for ev in group.events]
        keys = [event_key(rec.topic, rec.partition, rec.offset) for rec in group.records]
        calibration = loaded.scorer.calibration_scores
        windows = None
        if group.scores is None:
            window = cast(SequenceScorer, loaded.scorer).window
            windows = Sequences(group.data, self._sequence_scoring(loaded), window)
        judgements = await self.store.judge(
            loaded.name, loaded.version, calibration, sources, group.scores, keys, windows
        )

        notable = [i for i, j in enumerate(judgements) if j.anomalous or j.incident_event]  # few: alerts, closings
        anomalous = [i for i in notable if judgements[i].anomalous]
        explanations = await self._explain(loaded, group, anomalous, windows) if anomalous else {}

        now = time.time()
        outputs = verdict_outputs(topics.scores, group.records, group.events, loaded, judgements)
        for i in notable:
            rec, ev, j = group.records[i], group.events[i], judgements[i]
            if j.incident_event:
                self.metrics.incidents.labels(loaded.name, j.incident_event).inc()
            if j.anomalous or j.incident_event == "closed":  # subscribers see an incident close, too
                outputs.append(
                    alert_output(topics.alerts, rec, ev, loaded, j, kind.alert_kind, explanations.get(i, {}))
                )
        batch_alerts = len(anomalous)
        if batch_alerts:
            self.metrics.alerts.labels(loaded.name).inc(batch_alerts)
        self.metrics.latency.observe_many((kind.name,), np.maximum(0.0, now - np.array([ev.ts for ev in group.events])))
        for source, threshold in {j.source: j.threshold for j in judgements}.items():  # each source's last
            self.metrics.threshold.labels(loaded.name, source).set(threshold)
        group.alerts = batch_alerts
        return outputs

    async def _explain(
        self, loaded: LoadedModel, group: ScoredGroup, rows: list[int], windows: Sequences | None
    ) -> dict[int, Any]:
        """Top sensors (vectors; with the lag for a windowed model) or a coarse heatmap (images), anomalous rows only."""
        scorer, data = loaded.scorer, group.data
        try:
            if windows is not None:
                sources = [ev.source for ev in group.events]
                return await self._infer(loaded, lag_explanations, cast(SequenceScorer, scorer), sources, rows, windows)
            if isinstance(scorer, VectorScorer):
                contrib = await self._infer(loaded, scorer.explain, data[rows])
                return {r: top_features(contrib[n], data[r], scorer.feature_names) for n, r in enumerate(rows)}
            if isinstance(scorer, ImageScorer):
                maps = await self._infer(loaded, scorer.heatmap, data[rows])
                return {r: coarse_grid(maps[n]) for n, r in enumerate(rows)}
        except Exception:  # an explanation is a courtesy: the alert goes out without it
            log.exception("explanation failed for %s version %s", loaded.name, loaded.version)
        return {}

    # ------------------------------------------------------------------ publishing

    async def submit(self, kind: str, records: Sequence[Record], publisher: Publisher) -> tuple[BatchReport, list]:
        """Process a batch and queue its outputs; returns the report and the futures of the broker's acks."""
        started = time.time()
        self.metrics.batch_size.labels(kind).observe(len(records))
        for topic, count in Counter(rec.topic for rec in records).items():
            self.metrics.events.labels(topic).inc(count)
        stamps = np.array([rec.timestamp_ms for rec in records if rec.timestamp_ms], dtype=np.float64)
        self.metrics.queue_wait.observe_many((kind,), np.maximum(0.0, started - stamps / 1000))
        outputs, report = await self.process(kind, records)
        acks = await publisher.send(outputs)
        self.metrics.last_batch_at = time.time()
        return report, acks

    async def handle(self, kind: str, records: Sequence[Record], publisher: Publisher) -> BatchReport:
        """Process a batch and return once every output is acknowledged by the broker."""
        report, acks = await self.submit(kind, records, publisher)
        if acks:
            await asyncio.gather(*acks)
        return report
