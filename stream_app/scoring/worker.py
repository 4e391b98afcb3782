"""The inspection worker: a faust-streaming app that owns the resources and runs the consume loop.

- Micro-batches come from one of two consumers (`batching.consumer`): by default the aiokafka `getmany` loop
  of `scoring/consumer.py` (measured faster than faust's per-event stream path on this machine, see
  benchmarks/results/pipeline.json; rebalance-safe, pauses and retries while Redis or Kafka is unreachable,
  commits only acknowledged work); or faust agents with `take_events(max_batch, within=max_wait)`, which
  retry a failed batch in place (with backoff) until its outputs are acknowledged, because faust acks the
  events it handed out even when the agent raises. Either way delivery is at-least-once and alert ids are
  deterministic, so redeliveries de-duplicate.
- Model announcements (`inspection.model-updates`) must reach *every* worker, so they are read by a plain
  aiokafka consumer without a group, from the end of the topic; each one triggers a background load and a
  swap between batches. A worker always starts on the registry's production versions.
- Outputs go through one aiokafka producer (acks=all) owned by the worker; inference runs on one thread.
  On shutdown consumption stops (in-flight batches settle, offsets commit) before the producer closes.
- /metrics and /health bind `metrics_host` (127.0.0.1 by default) on the first free port from
  `metrics_port` (`metrics_port_range` ports), so several workers share a host; /health answers 503 with the
  reasons while a dependency is unreachable, consumption is paused or a partition with lag does not advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faust
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_app.judging.store import ThresholdStore
from stream_app.ops.backoff import Backoff
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, kafka_ssl_context, offset_ranges, redis_client
from stream_app.ops.health import HealthState
from stream_app.ops.logthrottle import throttle_repeats
from stream_app.ops.metrics import WorkerMetrics, serve_http
from stream_app.ops.processes import live_port_files, port_file
from stream_app.registry.announcements import ControlRejected, parse_update
from stream_app.registry.versions import Registry, version_number
from stream_app.scoring.consumer import BatchConsumer, cause_of, describe
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.heap import ServedHeap, freeze_heap
from stream_app.scoring.model_manager import ModelManager, SwapResult
from stream_app.scoring.pipeline import InspectionPipeline
from stream_app.scoring.publishing import Publisher, output_producer
from stream_app.settings import KafkaSettings, Settings, secret_value
from stream_app.wire.records import Record

log = logging.getLogger(__name__)


def faust_credentials(kafka: KafkaSettings) -> Any:
    """SASL/TLS from settings in faust's terms (None for PLAINTEXT)."""
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=secret_value(kafka.sasl_password),
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
    """Owns the worker's resources (producer, Redis, executor, models, HTTP, consumer) and builds the faust app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.executor = InferenceExecutor(settings.torch_threads)
        torch.set_num_threads(1)  # this thread's: CPU vector models run inline on the event loop, one per process
        self.registry = Registry(settings.registry_dir)
        self.heap = ServedHeap()
        self.models = ModelManager(
            self.registry,
            device=settings.device,
            executor=self.executor.pool,
            on_load=self.heap.on_load,
        )  # a model loaded or swapped in mid-stream is frozen too, and the one it replaces freed after its batch
        self.redis = redis_client(settings.redis)
        self.store = ThresholdStore(
            self.redis, settings.thresholds, settings.incidents, settings.redis.key_prefix,
            state_ttl_s=settings.limits.source_state_ttl_s, replay_batches=settings.recovery.replay_batches,
            slot_groups=settings.redis.slot_groups,
        )  # fmt: skip
        self.pipeline = InspectionPipeline(settings, self.models, self.store, self.executor, self.metrics)
        self.health_state = HealthState(settings.recovery.stall_after_s)
        self.consumer = BatchConsumer(
            settings, self._submit, self.metrics, self.health_state, {"redis": self.redis.ping}
        )
        self.producer: AIOKafkaProducer | None = None
        self.publisher: Publisher | None = None
        self._http: Any = None
        self._port_file: Path | None = None
        self._consume_task: asyncio.Task | None = None
        self._updates: AIOKafkaConsumer | None = None  # model-updates follower, positioned before models load
        self.http_port: int | None = None
        self._faust_batches = 0
        self.ready = asyncio.Event()
        self.app = self._build_app()

    @property
    def batches(self) -> int:
        return self.consumer.batches + self._faust_batches

    async def _submit(self, kind: str, records: Sequence[Record]) -> list[asyncio.Future]:
        assert self.publisher is not None, "the producer starts before consumption"
        _, acks = await self.pipeline.submit(kind, records, self.publisher)
        self.heap.after_batch()
        return acks

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
            broker_session_timeout=s.kafka.session_timeout_ms / 1000,  # a killed worker's partitions move on
            broker_heartbeat_interval=s.kafka.heartbeat_interval_ms / 1000,
            consumer_max_fetch_size=s.kafka.max_message_bytes,
            producer_max_request_size=s.kafka.max_message_bytes,
            consumer_auto_offset_reset="earliest",
        )
        vectors = app.topic(s.topics.vectors, key_serializer="raw", value_serializer="raw")
        frames = app.topic(s.topics.frames, key_serializer="raw", value_serializer="raw")
        within = s.batching.max_wait_ms / 1000.0

        async def run_batches(kind: str, stream: Any) -> None:
            await self.ready.wait()
            async for events in stream.take_events(s.batching.size_for(kind), within=within):
                records = [to_record(e) for e in events]
                await self._handle_until_acknowledged(kind, records)
                self.heap.after_batch()
                self._faust_batches += 1
                self._observe_lag(
                    app.consumer.highwater, {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}
                )

        if s.batching.consumer == "faust":

            @app.agent(vectors, name=f"{s.app_id}.vectors")
            async def score_vectors(stream: Any) -> None:
                await run_batches("vectors", stream)

            @app.agent(frames, name=f"{s.app_id}.frames")
            async def score_frames(stream: Any) -> None:
                await run_batches("images", stream)

        @app.task
        async def follow_model_updates() -> None:
            await self._follow_model_updates()

        @app.timer(s.recovery.model_check_s)
        async def check_production_pointers() -> None:
            await self.check_production_pointers()

        worker = self

        @app.service
        class Resources(faust.Service):
            """Starts with the app, before agents get events; stops consuming, then closes the producer."""

            async def on_start(self) -> None:
                await worker._start()

            async def on_stop(self) -> None:
                await worker.close()

        return app

    async def _handle_until_acknowledged(self, kind: str, records: list[Record]) -> None:
        """The faust path: faust acks a batch's offsets once the agent body moves on, even when it raised, so a
        failed batch is retried here (backoff and jitter) until its outputs are acknowledged."""
        assert self.publisher is not None
        backoff = Backoff(self.settings.recovery.retry_base_s, self.settings.recovery.retry_max_s)
        while True:
            try:
                await self.pipeline.handle(kind, records, self.publisher)
            except Exception as exc:
                cause = cause_of(exc)
                delay = backoff.next_delay()
                self.metrics.retries.labels(cause).inc()
                self.metrics.paused.set(1)
                self.health_state.problem("consumption", f"retrying a failed batch ({cause}: {describe(exc)})")
                log.warning("batch of %d %s failed (%s); retrying it with backoff", len(records), kind, describe(exc))
                await asyncio.sleep(delay)
                continue
            if backoff.attempts:
                self.metrics.paused.set(0)
                self.health_state.resolved("consumption")
                log.info("batch of %d %s done after %d retries", len(records), kind, backoff.attempts)
            return

    def _observe_lag(
        self, highwater: Callable[[TopicPartition], int | None], next_offsets: dict[TopicPartition, int]
    ) -> None:
        """Consumer lag per partition after a batch (faust path): the partition's highwater minus the next offset."""
        for tp, offset in next_offsets.items():
            with contextlib.suppress(Exception):  # a partition revoked meanwhile has no highwater
                lag = (highwater(tp) or 0) - offset
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))

    async def _start(self) -> None:
        """Create topics, start the producer, load production models, serve /metrics and /health, consume."""
        s = self.settings
        throttle_repeats(s.recovery.log_repeat_s)  # faust has configured logging by now
        await ensure_topics(s)
        self.producer = output_producer(s.kafka)
        await self.producer.start()
        self.publisher = Publisher(self.producer)
        # Follow announcements from the end of the topic *before* loading: one that arrives during a slow
        # load is applied after it (swaps are serialised with first loads), never missed.
        self._updates = await self._updates_consumer()
        for name in self.served_models:
            try:
                loaded = await self.models.get(name)
                self.metrics.model_version.labels(name).set(version_number(loaded.version) or 0)
                log.info("serving %s version %s%s", name, loaded.version,
                         f" [{', '.join(loaded.flags)}]" if loaded.flags else "")  # fmt: skip
            except Exception as exc:
                log.warning("model %s not loaded yet (%s); its events go to the dead-letter topic", name, exc)
        freeze_heap()  # the imports (each model loaded is frozen as it starts serving: `ModelManager.on_load`)
        if s.metrics_port >= 0:
            self._http, self.http_port = await serve_http(
                self.metrics, s.metrics_host, s.metrics_port, self.health, tries=s.metrics_port_range
            )
            log.info("metrics and health on http://%s:%d", s.metrics_host, self.http_port)
            # Tests and tools find the port here (stale files of dead workers are removed); removed on close.
            s.state_dir.mkdir(parents=True, exist_ok=True)
            live_port_files(s.state_dir)
            self._port_file = port_file(s.state_dir)
            tmp = self._port_file.with_suffix(".tmp")
            tmp.write_text(str(self.http_port))
            tmp.replace(self._port_file)
        if s.batching.consumer == "getmany":
            self._consume_task = asyncio.create_task(self.consumer.run(), name="linewatch-consume")
        self.ready.set()

    @property
    def served_models(self) -> set[str]:
        """Model names this worker's routes point at (announcements for other names are refused)."""
        s = self.settings
        return {r.model for r in s.routes} | {r.model for r in s.image_routes}

    async def _updates_consumer(self) -> AIOKafkaConsumer:
        """A group-less consumer of the model-updates topic, positioned at its end now."""
        s = self.settings
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(s.kafka))
        await consumer.start()
        ends = await offset_ranges(consumer, s.topics.model_updates, since_ms=None, last_n=0)
        consumer.assign(list(ends))
        for tp, (_, end) in ends.items():
            consumer.seek(tp, end)
        return consumer

    async def _follow_model_updates(self) -> None:
        """Apply checked announcements; anything else is logged, counted by reason and ignored."""
        await self.ready.wait()
        consumer = self._updates
        if consumer is None:
            return
        try:
            async for msg in consumer:
                try:
                    update = parse_update(msg.value)
                except ControlRejected as exc:
                    self.metrics.control_rejected.labels(exc.reason).inc()
                    log.error("ignoring model update at offset %d: %s", msg.offset, exc)
                    continue
                self._count_swap(await self.models.apply_update(update, served=self.served_models))
        finally:
            await consumer.stop()

    async def check_production_pointers(self) -> None:
        """Serve what each model's production pointer names: announcements are how workers hear of a promotion
        at once, this is how they catch one they missed (the broker was away, the follower was restarting)."""
        if not self.ready.is_set():
            return
        for name in sorted(self.served_models):
            served = self.models.versions().get(name)
            result = await self.models.refresh(name)
            if result.loaded is not None and result.loaded.version != served:
                log.warning("%s: production is version %s, not announced to this worker; now serving it",
                            name, result.loaded.version)  # fmt: skip
                self._count_swap(result)

    def _count_swap(self, result: SwapResult) -> None:
        if result.loaded is None:
            self.metrics.control_rejected.labels(result.rejected or "load_failed").inc()
            self.metrics.refused.labels(result.rejected or "load_failed").inc()
        else:
            self.metrics.swaps.labels(result.loaded.name).inc()
            self.metrics.model_version.labels(result.loaded.name).set(version_number(result.loaded.version) or 0)

    def health(self) -> dict[str, Any]:
        problems = self.health_state.report()
        if self.producer is None:
            problems.insert(0, "starting: the output producer is not started")
        elif self._consume_task is not None and self._consume_task.done():
            problems.insert(0, "the consume loop has ended")
        return {
            "ok": not problems,
            "problems": problems,
            "app_id": self.settings.app_id,
            "models": self.models.versions(),
            "model_flags": self.models.flags(),  # e.g. {"camera": ["random-backbone"]}
            "batches": self.batches,
            "partitions": self._partitions(),
            "lag": self.health_state.lag(),
            "last_batch_age_s": None
            if self.metrics.last_batch_at is None
            else time.time() - self.metrics.last_batch_at,
            "uptime_s": time.time() - self.metrics.started_at,
        }

    def _partitions(self) -> list[str]:
        """Input partitions this worker consumes now (the faust path: its app consumer's assignment)."""
        if self.settings.batching.consumer == "getmany":
            return self.consumer.partitions
        try:
            return sorted(f"{tp.topic}/{tp.partition}" for tp in self.app.consumer.assignment())
        except Exception:  # not started yet
            return []

    async def close(self) -> None:
        """Stop consuming first (in-flight batches settle and commit), then close what their outputs went to."""
        r, k = self.settings.recovery, self.settings.kafka
        if self._consume_task is not None:
            await self.consumer.stop()
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._consume_task), r.revoke_wait_s + k.request_timeout_ms / 1000
                )
            except Exception:
                log.warning("the consume loop did not stop in time; cancelling it")
                self._consume_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._consume_task
        if self._port_file is not None:
            self._port_file.unlink(missing_ok=True)
        if self._http is not None:
            await self._http.cleanup()
        if self.producer is not None:
            await self.producer.stop()
        await self.redis.aclose()
        self.executor.close()


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker in this process until SIGINT/SIGTERM (faust's worker owns the event loop)."""
    worker = Worker(settings)
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
