"""The worker's consume loop: aiokafka `getmany` micro-batches, committed at-least-once, through rebalances
and outages of Redis or Kafka.

- `getmany` returns what is there (up to max_batch) as soon as anything is, so batches grow with load and
  stay small when traffic is light. While one batch's outputs wait for the broker's acks the next is fetched
  and scored (at most `MAX_IN_FLIGHT` batches unsettled). The `OffsetLedger` decides what may be committed
  (in order, only acknowledged work) and where a failed partition rewinds to.
- Rebalances: a `ConsumerRebalanceListener` waits (up to `recovery.revoke_wait_s`) for the in-flight batches
  of revoked partitions, commits what is acknowledged and forgets the rest, so the next owner resumes from
  the committed offset; nothing is committed or sought for a partition that is not assigned.
- A failed batch (Redis or Kafka unreachable, a bug) rewinds its partitions, pauses consumption and retries
  with exponential backoff and jitter; a probe of the failed dependency decides when to resume. /health
  reports the pause, unreachable dependencies and partitions that do not advance; lag comes from the
  broker's end offsets every `recovery.probe_interval_s`, also while batches fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisClusterException, RedisError

from stream_app.ops.backoff import Backoff
from stream_app.ops.connections import aiokafka_kwargs
from stream_app.ops.health import HealthState
from stream_app.ops.metrics import WorkerMetrics
from stream_app.scoring.isolation import DeviceFailure
from stream_app.scoring.offsets import OffsetLedger
from stream_app.settings import Settings
from stream_app.wire.records import Record

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # batches scored but not yet acknowledged: enough to overlap scoring with the broker's acks
Submit = Callable[[str, Sequence[Record]], Awaitable[list[asyncio.Future]]]
Probe = Callable[[], Awaitable[Any]]


def cause_of(exc: BaseException) -> str:
    """Which dependency a failed batch points at (the retry metric's label and the probe to ask).

    A cluster client's "no node reachable" and "slot not covered" (mid-failover) are `RedisClusterException`s,
    which do not derive from `RedisError`.
    """
    if isinstance(exc, (RedisError, RedisClusterException)):
        return "redis"
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, DeviceFailure):
        return "device"
    return "pipeline"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _quiet(futures: Sequence[asyncio.Future]) -> None:
    """Mark these futures' exceptions as seen: a batch that failed elsewhere leaves them unawaited."""
    for f in futures:
        f.add_done_callback(lambda f: f.cancelled() or f.exception())


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner.on_assigned(assigned)


class BatchConsumer:
    """Consumes the input topics into `submit(kind, records) -> ack futures` until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        submit: Submit,
        metrics: WorkerMetrics,
        health: HealthState,
        probes: dict[str, Probe],
    ) -> None:
        """`probes`: dependency name -> a call that raises while it is unreachable (Redis); Kafka's probe is
        the end-offsets request this consumer makes anyway."""
        self.settings = settings
        self.submit = submit
        self.metrics = metrics
        self.health = health
        self.probes = probes
        r = settings.recovery
        self.backoff = Backoff(r.retry_base_s, r.retry_max_s)
        self.kinds = {settings.topics.vectors: "vectors", settings.topics.frames: "images"}
        self.ledger = OffsetLedger()
        self.batches = 0
        self.partitions: list[str] = []
        self.consumer: AIOKafkaConsumer | None = None
        self._settled: dict[int, asyncio.Future] = {}  # batch -> done once acked or failed
        self._settling: set[asyncio.Task] = set()
        self._committing: asyncio.Task | None = None  # the offset commit in flight, at most one
        self._hold: tuple[str, float] | None = None  # (cause, retry at) while consumption is paused
        self._stopping = asyncio.Event()
        self.running = False

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until `stop()`; an unexpected error restarts the consumer after a backoff, never the worker."""
        restarts = Backoff(self.settings.recovery.retry_base_s, self.settings.recovery.retry_max_s)
        while not self._stopping.is_set():
            try:
                await self._run_consumer()
            except Exception as exc:
                self.metrics.retries.labels("consumer").inc()
                self.health.problem("consumption", f"consumer restarting after {describe(exc)}")
                log.exception("consumer failed; restarting it")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), restarts.next_delay())
            else:
                restarts.reset()

    async def stop(self) -> None:
        """Stop fetching; the loop settles in-flight batches, commits and leaves the group."""
        self._stopping.set()

    async def _run_consumer(self) -> None:
        s = self.settings
        consumer = self.consumer = AIOKafkaConsumer(
            group_id=f"{s.app_id}.inspect",  # faust's own consumer holds the group named app_id
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka.session_timeout_ms,
            heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
            max_partition_fetch_bytes=s.kafka.max_message_bytes,
            fetch_max_bytes=max(s.kafka.max_message_bytes, 52428800),
            **aiokafka_kwargs(s.kafka),
        )
        consumer.subscribe(list(self.kinds), listener=_Listener(self))
        self.ledger = OffsetLedger()
        self._settled.clear()
        self.health.forget(list(self.health.lag()))  # a restarted consumer reports afresh
        try:
            await consumer.start()
        except BaseException:  # the broker is away: close this client, the next restart makes a new one
            with contextlib.suppress(Exception):
                await consumer.stop()
            self.consumer = None
            raise
        self.running = True
        monitor = asyncio.create_task(self._monitor(consumer))
        try:
            while not self._stopping.is_set():
                await self._step(consumer)
        finally:
            self.running = False
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await monitor
            try:
                await self._settle_all(self.settings.recovery.revoke_wait_s)
                await self._commit_finished()
                await self._commit(consumer)
            finally:
                await consumer.stop()
                self.consumer = None

    # ---- one step -----------------------------------------------------------------------------------
    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        s = self.settings
        if self._hold is not None:
            await self._retry_when_due(consumer)
            if self._hold is not None:
                self._seek_rewinds(consumer)
                # Polling paused partitions returns nothing but keeps within max.poll.interval (group membership).
                self._unread(consumer, await consumer.getmany(timeout_ms=200))
                return
        await self._wait_for_room()
        polled = await consumer.getmany(timeout_ms=int(s.batching.max_wait_ms), max_records=s.batching.max_batch)
        self.partitions = sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
        rewound = self._seek_rewinds(consumer)  # records of those partitions were fetched before the seek
        polled = {tp: msgs for tp, msgs in polled.items() if tp not in rewound and tp in self.ledger.assigned}
        polled = self._cap_frames(consumer, polled)
        if polled and self._hold is None:
            await self._submit(polled)
        else:
            self._unread(consumer, polled)
        self._commit_soon(consumer)

    def _cap_frames(
        self, consumer: AIOKafkaConsumer, polled: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """The poll with at most `batching.max_image_batch` camera frames: a poll holds up to `max_batch` records,
        which suits vectors (per-batch costs amortise) but not frames (decoded pixels, a long inference); the
        frames beyond the cap are fetched again by the next poll."""
        room = self.settings.batching.max_image_batch
        capped = {}
        for tp, msgs in polled.items():
            if self.kinds.get(tp.topic) == "images":
                if len(msgs) > room:
                    self._unread(consumer, {tp: msgs[room:]})
                    msgs = msgs[:room]
                room -= len(msgs)
            if msgs:
                capped[tp] = msgs
        return capped

    def _unread(self, consumer: AIOKafkaConsumer, polled: dict[TopicPartition, list[Any]]) -> None:
        """Records fetched while paused (a partition assigned meanwhile): fetch them again once resumed."""
        for tp, msgs in polled.items():
            with contextlib.suppress(Exception):  # revoked meanwhile: the next owner reads them
                consumer.seek(tp, msgs[0].offset)

    async def _wait_for_room(self) -> None:
        while len(self._settled) >= MAX_IN_FLIGHT and not self._stopping.is_set():
            oldest = self._settled[min(self._settled)]
            await asyncio.wait([oldest], timeout=0.5)

    async def _submit(self, polled: dict[TopicPartition, list[Any]]) -> None:
        offsets = {tp: (msgs[0].offset, msgs[-1].offset + 1) for tp, msgs in polled.items()}
        for tp, count in ((tp, self.ledger.redelivered({tp: r})) for tp, r in offsets.items()):
            if count:
                self.metrics.redelivered.labels(tp.topic).inc(count)
        batch = self.ledger.track(offsets)
        self._settled[batch] = asyncio.get_running_loop().create_future()
        by_kind: dict[str, list[Record]] = {}
        for tp, msgs in polled.items():
            by_kind.setdefault(self.kinds[tp.topic], []).extend(Record.of(m, m.timestamp) for m in msgs)
        results = await asyncio.gather(*(self.submit(k, recs) for k, recs in by_kind.items()), return_exceptions=True)
        acks = [f for r in results if not isinstance(r, BaseException) for f in r]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            _quiet(acks)
            self._failed(batch, failure)
            return
        self.batches += 1
        task = asyncio.create_task(self._settle(self.ledger, batch, acks))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, ledger: OffsetLedger, batch: int, acks: list[asyncio.Future]) -> None:
        """Wait for the broker's answer on a batch's outputs, then ack or fail it in the ledger. A batch of a
        consumer that was restarted meanwhile is left alone: that consumer committed what it could and closed, its
        other records are read again, and the new ledger numbers its batches from 0 again."""
        results = await asyncio.gather(*acks, return_exceptions=True)
        if ledger is not self.ledger:
            return
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            self._failed(batch, failure)
            return
        self.ledger.ack(batch)
        self._done(batch)
        if self._hold is None and self.backoff.attempts:
            self.backoff.reset()

    def _done(self, batch: int) -> None:
        settled = self._settled.pop(batch, None)
        if settled is not None and not settled.done():
            settled.set_result(None)

    # ---- failures and retries -----------------------------------------------------------------------
    def _failed(self, batch: int, exc: BaseException) -> None:
        """Rewind the batch's partitions and pause consumption until the dependency answers again."""
        self.ledger.fail(batch)
        self._done(batch)
        cause = cause_of(exc)
        self.metrics.retries.labels(cause).inc()
        delay = self.backoff.next_delay()
        log.warning(
            "batch failed (%s); consumption paused, retrying with backoff",
            describe(exc),
            exc_info=exc if cause == "pipeline" else None,  # our own bug: show where, once per interval
        )
        self._pause(cause, delay, f"paused after a failed batch ({cause}: {describe(exc)})")

    def _pause(self, cause: str, delay: float, reason: str) -> None:
        self._hold = (cause, time.monotonic() + delay)
        self.metrics.paused.set(1)
        self.health.problem("consumption", f"{reason}; retry {self.backoff.attempts} in {delay:.1f} s")
        if self.consumer is not None:
            self.consumer.pause(*self.consumer.assignment())

    async def _retry_when_due(self, consumer: AIOKafkaConsumer) -> None:
        cause, retry_at = self._hold  # type: ignore[misc]
        if time.monotonic() < retry_at or self._settled:
            return
        probe = self._probe_for(cause, consumer)
        if probe is not None:
            try:
                await asyncio.wait_for(probe(), self._probe_timeout())
            except Exception as exc:
                self.metrics.retries.labels(cause).inc()
                log.warning("%s still unreachable (%s); consumption stays paused", cause, describe(exc))
                self._pause(cause, self.backoff.next_delay(), f"{cause} unreachable ({describe(exc)})")
                return
        self._hold = None
        self.metrics.paused.set(0)
        self.health.resolved("consumption")
        self._seek_rewinds(consumer)
        consumer.resume(*consumer.assignment())
        log.info("resuming consumption after %d retries (%s answered)", self.backoff.attempts, cause)

    def _seek_rewinds(self, consumer: AIOKafkaConsumer) -> set[TopicPartition]:
        """Perform the ledger's pending rewinds on assigned partitions; returns the partitions sought."""
        assigned = consumer.assignment()
        done = set()
        for tp, offset in self.ledger.rewinds().items():
            if tp in assigned:
                try:
                    consumer.seek(tp, offset)
                except Exception as exc:  # revoked between the check and the seek: the next owner resumes
                    log.warning("could not rewind %s to %d: %s", tp, offset, describe(exc))
                    continue
            self.ledger.rewound(tp)
            done.add(tp)
        return done

    def _probe_for(self, name: str, consumer: AIOKafkaConsumer) -> Probe | None:
        if name == "kafka":
            return lambda: self._measure_lag(consumer)
        return self.probes.get(name)

    def _probe_timeout(self) -> float:
        return min(5.0, self.settings.kafka.request_timeout_ms / 1000, self.settings.redis.socket_timeout_s + 1)

    # ---- commits and rebalances ---------------------------------------------------------------------
    def _commit_soon(self, consumer: AIOKafkaConsumer) -> None:
        """Commit what is acknowledged in the background, unless a commit is still in flight (the next step's
        covers these positions too): awaiting the coordinator's round trip after every batch idled the loop
        ~8% of the time under a backlog."""
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit(consumer))

    async def _commit_finished(self) -> None:
        """Wait for the background commit (at most a request timeout: `_commit` handles its own errors), so a later
        commit (revoke, stop) is the last word on a position."""
        if self._committing is not None:
            await asyncio.wait([self._committing], timeout=self.settings.kafka.request_timeout_ms / 1000)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        positions = {tp: offset for tp, offset in self.ledger.committable().items() if tp in assigned}
        if not positions:
            return
        try:
            # No wait_for around it: aiokafka shields the commit's request task, so cancelling it on our timeout
            # left that task failing unobserved ("Task exception was never retrieved" tracebacks during a
            # leader failover); the request has its own kafka.request_timeout_ms.
            await consumer.commit(positions)
        except Exception as exc:  # a rebalance or an outage: committed later, or redone by the next owner
            self.metrics.retries.labels("commit").inc()
            log.warning("offset commit failed (%s); it is retried with the next batch", describe(exc))
            return
        self.ledger.committed(positions)

    async def _settle_all(self, timeout_s: float, tps: set[TopicPartition] | None = None) -> None:
        waiting = [f for b, f in self._settled.items() if tps is None or b in self.ledger.in_flight(tps)]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before the group rebalances: finish (or give up on) the revoked partitions' in-flight batches and
        commit what the broker acknowledged, so the next owner starts where this worker's work ends."""
        self.metrics.rebalances.labels("revoked").inc(len(revoked))
        revoked = set(revoked) & self.ledger.assigned
        if not revoked:
            return
        if self.consumer is not None:
            self.consumer.pause(*(revoked & self.consumer.assignment()))  # no new batches of them meanwhile
        await self._settle_all(self.settings.recovery.revoke_wait_s, revoked)
        await self._commit_finished()
        final = self.ledger.revoke(revoked)
        consumer = self.consumer
        if final and consumer is not None:
            final = {tp: offset for tp, offset in final.items() if tp in consumer.assignment()}
            try:
                await consumer.commit(final)  # bounded by kafka.request_timeout_ms (see `_commit`)
            except Exception as exc:
                log.warning("commit on revoke failed (%s); the next owner redoes that work", describe(exc))
        self.health.forget(f"{tp.topic}/{tp.partition}" for tp in revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc(len(assigned))
        self.ledger.assign(assigned)
        if self._hold is not None and self.consumer is not None:
            self.consumer.pause(*assigned)
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    # ---- monitoring ---------------------------------------------------------------------------------
    async def _monitor(self, consumer: AIOKafkaConsumer) -> None:
        """Every probe interval: each dependency's reachability and every assigned partition's lag."""
        while True:
            await asyncio.sleep(self.settings.recovery.probe_interval_s)
            # Concurrently: a Redis that does not answer must not hold back the lag measurement.
            await asyncio.gather(
                *(self._probe(name, self._probe_for(name, consumer)) for name in [*self.probes, "kafka"])  # type: ignore[arg-type]
            )

    async def _probe(self, name: str, probe: Probe) -> None:
        try:
            await asyncio.wait_for(probe(), self._probe_timeout())
        except Exception as exc:
            self.metrics.dependency_up.labels(name).set(0)
            if not self.health.has_problem(name):
                log.warning("%s unreachable: %s", name, describe(exc))
            self.health.problem(name, f"unreachable: {describe(exc)}")
            return
        self.metrics.dependency_up.labels(name).set(1)
        if self.health.has_problem(name):
            log.info("%s reachable again", name)
            self.health.resolved(name)

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag = the broker's end offset minus the first offset not yet done (acknowledged)."""
        assigned = sorted(consumer.assignment() & self.ledger.assigned)
        if not assigned:
            await consumer.topics()  # still a round trip to the cluster
            return
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            position = self.ledger.low_watermark(tp)
            if position is None:
                with contextlib.suppress(Exception):
                    position = await consumer.committed(tp)
            if position is None or tp not in ends:
                continue
            self.health.progress(f"{tp.topic}/{tp.partition}", position, ends[tp])
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - position))
