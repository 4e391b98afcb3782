"""The inspection worker: a faust-streaming app whose agents micro-batch input topics into the pipeline.

- Micro-batches come from one of two consumers (`batching.consumer`): by default an aiokafka `getmany` loop run
  as a task of the faust app (measured faster than faust's per-event stream path on this machine, see
  benchmarks/results/pipeline.json), committing offsets explicitly once the broker acknowledged every output
  `InspectionPipeline.submit` queued for them; or faust agents with `take_events(max_batch, within=max_wait)`, whose offsets faust acks
  when the agent loop resumes, i.e. also after the outputs are acknowledged. Either way delivery is
  at-least-once, and alert ids are deterministic so redeliveries de-duplicate.
- Model announcements (`inspection.model-updates`) must reach *every* worker, so they are read by a plain
  aiokafka consumer without a group, from the end of the topic; each one triggers a background load and a
  swap between batches. A worker always starts on the registry's production versions.
- Outputs go through one aiokafka producer (acks=all) owned by the app; inference runs on one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, kafka_ssl_context, redis_client
from stream_app.ops.metrics import WorkerMetrics, serve_http
from stream_app.ops.processes import PORT_FILES
from stream_app.registry.announcements import parse_update
from stream_app.registry.versions import Registry
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.model_manager import ModelManager
from stream_app.scoring.offsets import OffsetLedger
from stream_app.scoring.pipeline import InspectionPipeline
from stream_app.scoring.publishing import Publisher, output_producer
from stream_app.settings import KafkaSettings, Settings
from stream_app.wire.records import Record

log = logging.getLogger(__name__)


def faust_credentials(kafka: KafkaSettings) -> Any:
    """SASL/TLS from settings in faust's terms (None for PLAINTEXT)."""
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka_ssl_context(kafka),
        )
    if context := kafka_ssl_context(kafka):
        return faust.SSLCredentials(context)
    return None


def to_record(event: Any) -> Record:
    """A faust event's message as a pipeline `Record` (faust gives the timestamp in seconds)."""
    msg = event.message
    return Record.of(msg, None if msg.timestamp is None else round(msg.timestamp * 1000))


class Worker:
    """Owns the worker's resources (producer, Redis, executor, models, HTTP) and builds the faust app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.executor = InferenceExecutor()
        self.registry = Registry(settings.registry_dir)
        self.models = ModelManager(self.registry, device=settings.device, executor=self.executor.pool)
        self.redis = redis_client(settings.redis)
        self.store = ThresholdStore(self.redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
        self.pipeline = InspectionPipeline(settings, self.models, self.store, self.executor, self.metrics)
        self.producer: AIOKafkaProducer | None = None
        self.publisher: Publisher | None = None
        self._port_file: Path | None = None
        self.http_port: int | None = None
        self.batches = 0
        self.ready = asyncio.Event()
        self.partitions: list[str] = []  # input partitions this worker consumes now (getmany path)
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        datadir = Path(s.state_dir) / "faust" / s.app_id  # faust's default is the working directory
        datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
        app = faust.App(
            s.app_id,
            broker=f"kafka://{s.kafka.bootstrap}",
            broker_credentials=faust_credentials(s.kafka),
            store="memory://",
            datadir=datadir,
            web_enabled=False,
            topic_partitions=s.topics.partitions,
            broker_commit_interval=0.5,
            broker_session_timeout=10.0,  # a killed worker's partitions move on after 10 s, not faust's 60
            broker_heartbeat_interval=3.0,
            consumer_max_fetch_size=s.kafka.max_message_bytes,
            producer_max_request_size=s.kafka.max_message_bytes,
            consumer_auto_offset_reset="earliest",
        )
        vectors = app.topic(s.topics.vectors, key_serializer="raw", value_serializer="raw")
        frames = app.topic(s.topics.frames, key_serializer="raw", value_serializer="raw")
        within = s.batching.max_wait_ms / 1000.0

        async def run_batches(kind: str, stream: Any) -> None:
            await self.ready.wait()
            async for events in stream.take_events(s.batching.max_batch, within=within):
                records = [to_record(e) for e in events]
                try:
                    report = await self.pipeline.handle(kind, records, self.publisher)
                except Exception:
                    # Outputs were not all acknowledged: stop rather than ack offsets of unsent verdicts;
                    # the group rebalances and the batch is redelivered (at-least-once).
                    log.exception("batch of %d %s failed; stopping so it is redelivered", len(records), kind)
                    raise
                self.batches += 1
                self._observe_lag(
                    app.consumer.highwater, {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}
                )
                log.debug("batch kind=%s events=%d scored=%d alerts=%d", kind, report.events, report.scored,
                          report.alerts)  # fmt: skip

        if s.batching.consumer == "faust":

            @app.agent(vectors, name=f"{s.app_id}.vectors")
            async def score_vectors(stream: Any) -> None:
                await run_batches("vectors", stream)

            @app.agent(frames, name=f"{s.app_id}.frames")
            async def score_frames(stream: Any) -> None:
                await run_batches("images", stream)

        else:

            @app.task
            async def score_batches() -> None:
                await self._getmany_loop()

        @app.task
        async def follow_model_updates() -> None:
            await self._follow_model_updates()

        worker = self

        @app.service
        class Resources(faust.Service):  # type: ignore[misc]
            """Starts with the app, before agents get events; closes the producer, Redis and executor."""

            async def on_start(self) -> None:
                await worker._start()

            async def on_stop(self) -> None:
                await worker.close()

        return app

    async def _getmany_loop(self) -> None:
        """The aiokafka path: `getmany` returns what is there (up to max_batch) as soon as anything is, so
        batches grow with load and stay small (low latency) when traffic is light. While one batch's outputs
        wait for the broker's acks, the next batch is fetched and scored; offsets are committed in order,
        each only once its batch's outputs are all acknowledged (at-least-once)."""
        s = self.settings
        await self.ready.wait()
        kinds = {s.topics.vectors: "vectors", s.topics.frames: "images"}
        consumer = AIOKafkaConsumer(
            *kinds,
            group_id=f"{s.app_id}.inspect",  # faust's own consumer holds the group named app_id
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=s.kafka.max_message_bytes,
            fetch_max_bytes=max(s.kafka.max_message_bytes, 52428800),
            **aiokafka_kwargs(s.kafka),
        )
        ledger = OffsetLedger()
        in_flight: deque[tuple[int, asyncio.Future]] = deque()  # (ledger batch, its outputs' acks), fetch order

        async def rewind(seeks: dict[TopicPartition, int]) -> None:
            """Seek the failed partitions back to their oldest unacked offset (assigned ones only)."""
            for tp, offset in seeks.items():
                if tp in consumer.assignment():
                    consumer.seek(tp, offset)
            await asyncio.sleep(1.0)

        await consumer.start()
        try:
            while True:
                polled = await consumer.getmany(
                    timeout_ms=int(s.batching.max_wait_ms), max_records=s.batching.max_batch
                )
                ledger.assign(consumer.assignment())
                self.partitions = sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
                if polled:
                    offsets = {tp: (msgs[0].offset, msgs[-1].offset + 1) for tp, msgs in polled.items()}
                    batch = ledger.track(offsets)
                    by_kind: dict[str, list[Record]] = {}
                    for tp, msgs in polled.items():
                        by_kind.setdefault(kinds[tp.topic], []).extend(Record.of(m, m.timestamp) for m in msgs)
                    try:
                        submitted = await asyncio.gather(
                            *(self.pipeline.submit(k, recs, self.publisher) for k, recs in by_kind.items())
                        )
                    except Exception:  # not scored or not sent: rewind and retry (at-least-once), keep running
                        log.exception("batch failed; rewinding %d partitions to retry", len(polled))
                        await rewind(ledger.fail(batch))
                        continue
                    in_flight.append((batch, asyncio.gather(*(f for _, acks in submitted for f in acks))))
                    self.batches += 1
                    self._observe_lag(consumer.highwater, {tp: end for tp, (_, end) in offsets.items()})
                # Settle in order what the broker answered; at most one batch waits behind the next.
                while in_flight and (in_flight[0][1].done() or len(in_flight) > 1 or not polled):
                    batch, acked = in_flight.popleft()
                    try:
                        await acked
                    except Exception:
                        log.exception("outputs not acknowledged; rewinding to retry")
                        await rewind(ledger.fail(batch))
                        continue
                    ledger.ack(batch)
                positions = ledger.committable()
                if positions:
                    await consumer.commit(positions)
                    ledger.committed(positions)
        finally:
            await consumer.stop()

    def _observe_lag(
        self, highwater: Callable[[TopicPartition], int | None], next_offsets: dict[TopicPartition, int]
    ) -> None:
        """Consumer lag per partition after a batch: the partition's highwater minus the next offset."""
        for tp, offset in next_offsets.items():
            with contextlib.suppress(Exception):  # a partition revoked meanwhile has no highwater
                lag = (highwater(tp) or 0) - offset
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))

    async def _start(self) -> None:
        """Create topics, start the producer, load production models, serve /metrics and /health."""
        s = self.settings
        await ensure_topics(s)
        self.producer = output_producer(s.kafka)
        await self.producer.start()
        self.publisher = Publisher(self.producer)
        for name in {r.model for r in s.routes} | {r.model for r in s.image_routes}:
            try:
                loaded = await self.models.get(name)
                self.metrics.model_version.labels(name).set(int(loaded.version))
                log.info("serving %s version %s", name, loaded.version)
            except Exception as exc:
                log.warning("model %s not loaded yet (%s); its events go to the dead-letter topic", name, exc)
        if s.metrics_port >= 0:
            self._http, self.http_port = await serve_http(self.metrics, "0.0.0.0", s.metrics_port, self.health)
            log.info("metrics and health on port %d", self.http_port)
            # Tests and tools find a port-0 server here; removed again on close.
            s.state_dir.mkdir(parents=True, exist_ok=True)
            self._port_file = s.state_dir / PORT_FILES.replace("*", f"{socket.gethostname()}-{id(self)}")
            self._port_file.write_text(str(self.http_port))
        self.ready.set()

    async def _follow_model_updates(self) -> None:
        s = self.settings
        await self.ready.wait()
        consumer = AIOKafkaConsumer(s.topics.model_updates, auto_offset_reset="latest", **aiokafka_kwargs(s.kafka))
        await consumer.start()
        try:
            async for msg in consumer:
                try:
                    update = parse_update(msg.value)
                except ValueError as exc:
                    log.error("ignoring model update at offset %d: %s", msg.offset, exc)
                    continue
                loaded = await self.models.swap(update["model"], update["version"], update.get("sha256"))
                if loaded is None:
                    self.metrics.refused.labels(update["model"]).inc()
                else:
                    self.metrics.swaps.labels(loaded.name).inc()
                    self.metrics.model_version.labels(loaded.name).set(int(loaded.version))
        finally:
            await consumer.stop()

    def health(self) -> dict[str, Any]:
        serving = self.models.versions()
        return {
            "ok": self.producer is not None,
            "app_id": self.settings.app_id,
            "models": serving,
            "batches": self.batches,
            "partitions": self.partitions,
            "last_batch_age_s": None
            if self.metrics.last_batch_at is None
            else time.time() - self.metrics.last_batch_at,
            "uptime_s": time.time() - self.metrics.started_at,
        }

    async def close(self) -> None:
        if self._port_file is not None:
            self._port_file.unlink(missing_ok=True)
        if self.producer is not None:
            await self.producer.stop()
        await self.redis.aclose()
        self.executor.close()


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker in this process until SIGINT/SIGTERM (faust's worker owns the event loop)."""
    worker = Worker(settings)
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
