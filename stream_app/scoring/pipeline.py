"""One micro-batch through the product: decode -> route -> score -> judge -> verdicts, alerts, dead letters.

Transport-free: `process` takes `Record`s (from a faust `take_events` batch or an aiokafka `getmany`) and
returns the outputs to publish; `InspectionPipeline.handle` publishes them and waits for the broker's acks,
so a caller that commits offsets after `handle` returns gets at-least-once delivery. The model version is
looked up once per batch and model, so a hot swap lands between batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_app.judging.store import ThresholdStore
from stream_app.ops.metrics import WorkerMetrics
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.model_manager import LoadedModel, ModelManager
from stream_app.scoring.publishing import Publisher
from stream_app.settings import Settings
from stream_app.wire.codecs import BadEvent, FrameEvent, VectorEvent, decode_records
from stream_app.wire.outputs import (
    Output,
    alert_id,
    alert_output,
    coarse_grid,
    deadletter_output,
    top_features,
    verdict_output,
)
from stream_app.wire.records import Record
from stream_app.wire.routing import Router

log = logging.getLogger(__name__)

Event = VectorEvent | FrameEvent


@dataclass
class BatchReport:
    """What one batch produced (counts for logs, tests and benchmarks)."""

    events: int = 0
    scored: int = 0
    alerts: int = 0
    deadletters: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


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
        self.vector_router = Router(settings.routes)
        self.image_router = Router(settings.image_routes)

    # ------------------------------------------------------------------ decoding

    def decode(self, kind: str, records: Sequence[Record]) -> list[Event | BadEvent]:
        """One event, or the reason it cannot be scored, per record (vectors decode as one batch)."""
        return decode_records(kind, records, self.settings.max_image_bytes, self.settings.claim_check_dirs)

    # ------------------------------------------------------------------ the batch

    async def process(self, kind: str, records: Sequence[Record]) -> tuple[list[Output], BatchReport]:
        topics = self.settings.topics
        report = BatchReport(events=len(records))
        outputs: list[Output] = []
        router = self.vector_router if kind == "vectors" else self.image_router
        by_model: dict[str, list[tuple[Record, Event]]] = defaultdict(list)

        def reject(rec: Record, reason: str, message: str) -> None:
            outputs.append(deadletter_output(topics.deadletter, rec, reason, message))
            report.deadletters[reason] = report.deadletters.get(reason, 0) + 1
            self.metrics.deadletters.labels(reason).inc()
            log.warning("dead letter %s/%d@%d: %s: %s", rec.topic, rec.partition, rec.offset, reason, message)

        for rec, event in zip(records, self.decode(kind, records), strict=True):
            if isinstance(event, BadEvent):
                reject(rec, event.reason, event.message)
                continue
            model = router.model_for(event.source)
            if model is None:
                reject(rec, "unknown_source", f"no route matches source {event.source!r}")
                continue
            by_model[model].append((rec, event))

        for model_name, items in by_model.items():
            try:
                loaded = await self.models.get(model_name)
            except Exception as exc:  # no production version, unreadable registry: the events are kept, not lost
                for rec, _ in items:
                    reject(rec, "model_unavailable", f"model {model_name!r}: {exc}")
                continue
            report.versions[model_name] = loaded.version
            outputs += await self._score_model(kind, loaded, items, reject, report)
        return outputs, report

    async def _score_model(self, kind, loaded: LoadedModel, items, reject, report: BatchReport) -> list[Output]:
        scorer = loaded.scorer
        if getattr(scorer, "data_kind", kind) != kind:  # a route points a camera at a vector model or back
            for rec, _ in items:
                reject(rec, "rejected_by_model", f"model {loaded.name} scores {scorer.data_kind}, not {kind}")
            return []
        if kind == "vectors":
            width = scorer.n_features
            good = []
            for rec, ev in items:
                if ev.values.shape[0] != width:
                    reject(rec, "wrong_width", f"model {loaded.name} expects {width} values, got {ev.values.shape[0]}")
                else:
                    good.append((rec, ev))
            groups = [good] if good else []
        else:  # one tensor per image shape (cameras usually send one size)
            shapes: dict[tuple[int, ...], list] = defaultdict(list)
            for rec, ev in items:
                shapes[ev.image.shape].append((rec, ev))
            groups = list(shapes.values())

        outputs: list[Output] = []
        for group in groups:
            data = np.stack([ev.values if kind == "vectors" else ev.image for _, ev in group])
            started = time.perf_counter()
            try:
                scores = await self.executor.run(scorer.score, data)
            except ValueError as exc:  # the scorer's own input check: dead-letter the group, keep running
                for rec, _ in group:
                    reject(rec, "rejected_by_model", str(exc))
                continue
            self.metrics.inference.labels(loaded.name).observe(time.perf_counter() - started)
            outputs += await self._judge_and_emit(kind, loaded, group, data, scores)
            report.scored += len(group)
        report.alerts += sum(1 for o in outputs if o.topic == self.settings.topics.alerts)
        return outputs

    async def _judge_and_emit(self, kind, loaded: LoadedModel, group, data: np.ndarray, scores) -> list[Output]:
        topics = self.settings.topics
        sources = [ev.source for _, ev in group]
        keys = [alert_id(rec.topic, rec.partition, rec.offset) for rec, _ in group]
        calibration = loaded.scorer.calibration_scores
        judgements = await self.store.judge(loaded.name, loaded.version, calibration, sources, scores, keys)

        anomalous = [i for i, j in enumerate(judgements) if j.anomalous]
        explanations = await self._explain(kind, loaded, data, anomalous) if anomalous else {}

        outputs = []
        now = time.time()
        for i, ((rec, ev), j) in enumerate(zip(group, judgements, strict=True)):
            outputs.append(
                verdict_output(
                    topics.scores,
                    rec,
                    ev.source,
                    ev.ts,
                    float(j.score),
                    float(j.threshold),
                    bool(j.anomalous),
                    loaded.name,
                    loaded.version,
                    j.incident_id,
                )
            )
            if j.incident_event:
                self.metrics.incidents.labels(loaded.name, j.incident_event).inc()
            if j.anomalous:
                outputs.append(
                    alert_output(
                        topics.alerts,
                        rec,
                        source=ev.source,
                        kind="sensor" if kind == "vectors" else "image",
                        ts=ev.ts,
                        score=float(j.score),
                        threshold=float(j.threshold),
                        severity=float(j.severity),
                        model=loaded.name,
                        version=loaded.version,
                        incident_id=j.incident_id,
                        incident_event=j.incident_event,
                        explanation=explanations.get(i, {}),
                    )
                )
                self.metrics.alerts.labels(loaded.name).inc()
        self.metrics.latency.observe_many((kind,), np.maximum(0.0, now - np.array([ev.ts for _, ev in group])))
        for source, threshold in {j.source: j.threshold for j in judgements}.items():  # each source's last
            self.metrics.threshold.labels(loaded.name, source).set(threshold)
        return outputs

    async def _explain(self, kind: str, loaded: LoadedModel, data: np.ndarray, rows: list[int]) -> dict[int, Any]:
        """Top sensors (vectors) or a coarse heatmap (images) for the anomalous rows only."""
        scorer = loaded.scorer
        try:
            if kind == "vectors":
                contrib = await self.executor.run(scorer.explain, data[rows])
                names = getattr(scorer, "feature_names", [f"f{i}" for i in range(data.shape[1])])
                return {r: top_features(contrib[n], data[r], names) for n, r in enumerate(rows)}
            if hasattr(scorer, "heatmap"):
                maps = await self.executor.run(scorer.heatmap, data[rows])
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
