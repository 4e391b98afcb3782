"""Fault drills on the real stack: steady traffic, workers as subprocesses, faults in turn, verdicts counted.

The truth is the topics themselves: every offset of the input topic is an event in, and must end with exactly
one verdict in the scores topic (redeliveries may repeat one, with the same content). Latency per event is the
first verdict's timestamp minus the input's CreateTime; a fault's recovery time is how long after the fault
was injected the last verdict delayed by more than `slow_s` arrived (the backlog it caused is cleared).
Used by tests/integration/test_chaos.py (short) and benchmarks/reliability.py (full).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stream_app.judging import incidents
from stream_app.ops.connections import aiokafka_kwargs, kafka_producer
from stream_app.ops.processes import spawn, stop, wait_consuming, worker_ports
from stream_app.settings import IncidentSettings, Settings
from stream_app.wire.codecs import encode_vector
from stream_app.wire.ids import alert_id_of, event_key

SOURCES = ("line-1/a", "line-1/b", "line-1/c", "line-1/d")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (None once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def health_of(port: int, timeout_s: float = 3.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a worker's /health; 0 when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_s) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


class Traffic:
    """Vectors at a fixed rate from a background task (idempotent producer, retried through outages)."""

    def __init__(self, settings: Settings, rate: float, n_features: int, seed: int = 0) -> None:
        self.settings, self.rate, self.n_features = settings, rate, n_features
        self.rng = np.random.default_rng(seed)
        self.sent = 0
        self.failed = 0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._started = asyncio.Event()

    async def start(self) -> None:
        """Start sending; returns once the producer is connected (raises what stopped it otherwise)."""
        self._task = asyncio.create_task(self._run())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait([self._task, started], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            started.cancel()
            self._task.result()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        producer = kafka_producer(self.settings.kafka, linger_ms=5, request_timeout_ms=120_000)  # outlive any outage
        await producer.start()
        self._started.set()
        pending: set[asyncio.Future] = set()

        def settled(fut: asyncio.Future) -> None:
            pending.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                self.failed += 1

        try:
            started, i = time.monotonic(), 0
            while not self._stop.is_set():
                source = SOURCES[i % len(SOURCES)]
                row = self.rng.normal(size=self.n_features).astype(np.float32)
                fut = await producer.send(
                    self.settings.topics.vectors, key=source.encode(), value=encode_vector(source, row)
                )
                pending.add(fut)
                fut.add_done_callback(settled)
                self.sent += 1
                i += 1
                await asyncio.sleep(max(0.0, started + i / self.rate - time.monotonic()))
            if pending:
                await asyncio.wait(pending, timeout=150)
        finally:
            await producer.stop()


async def topic_records(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record of `topic` up to its end offsets now."""
    consumer = AIOKafkaConsumer(auto_offset_reset="earliest", **aiokafka_kwargs(settings.kafka))
    await consumer.start()
    try:
        parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                break
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                records.extend(m for m in batch if m.offset < ends[TopicPartition(m.topic, m.partition)])
        return records
    finally:
        await consumer.stop()


@dataclass
class Fault:
    name: str
    started: float  # wall clock (time.time()), comparable with record timestamps
    ended: float | None = None
    rss_before_mb: dict[int, float | None] = field(default_factory=dict)
    rss_after_mb: dict[int, float | None] = field(default_factory=dict)
    health_503: bool = False
    health_reasons: list[str] = field(default_factory=list)
    max_lag: int = 0  # the largest total lag /health reported during the fault


@dataclass
class Tally:
    """Events in vs verdicts out, per input offset."""

    events_in: int
    verdicts_out: int
    lost: list[tuple[int, int]]
    duplicates: int
    inconsistent: list[tuple[int, int]]  # offsets whose copies differ in any field (judging is idempotent)
    threshold_differs: int  # duplicates whose threshold differs (judged twice against a moved threshold)
    max_score_spread: float  # the largest score difference between copies of one event
    incident_mismatches: list[tuple[str, str | None]]  # (alert id, event) in alerts xor implied by the verdicts
    first_verdict_ms: dict[tuple[int, int], int]
    input_ms: dict[tuple[int, int], int]

    def recovery_s(self, fault: Fault, slow_s: float = 2.0, until: float | None = None) -> float:
        """From the fault's injection until the last verdict delayed by more than `slow_s` arrived, over
        events sent from 5 s before the fault until `until` (the next fault); 0 when nothing was delayed."""
        start_ms, end_ms = (fault.started - 5) * 1000, (until or float("inf")) * 1000
        late = [
            self.first_verdict_ms[k]
            for k, sent_ms in self.input_ms.items()
            if start_ms <= sent_ms < end_ms and k in self.first_verdict_ms
            and self.first_verdict_ms[k] - sent_ms > slow_s * 1000
        ]  # fmt: skip
        return 0.0 if not late else max(0.0, max(late) / 1000 - fault.started)


async def tally(settings: Settings) -> Tally:
    inputs = await topic_records(settings, settings.topics.vectors)
    verdicts = await topic_records(settings, settings.topics.scores)
    by_offset: dict[tuple[int, int], list[dict]] = defaultdict(list)
    first: dict[tuple[int, int], int] = {}
    for r in verdicts:
        body = orjson.loads(r.value)
        key = (body["partition"], body["offset"])
        by_offset[key].append(body)
        first[key] = min(first.get(key, r.timestamp), r.timestamp)
    input_ms = {(r.partition, r.offset): r.timestamp for r in inputs}
    lost = sorted(k for k in input_ms if k not in by_offset)
    inconsistent = sorted(k for k, copies in by_offset.items() if any(c != copies[0] for c in copies[1:]))
    score_spread = max((float(np.ptp([c["score"] for c in copies])) for copies in by_offset.values()), default=0.0)
    threshold_differs = sum(1 for copies in by_offset.values() if len({c["threshold"] for c in copies}) > 1)
    return Tally(
        events_in=len(input_ms),
        verdicts_out=len(verdicts),
        lost=lost,
        duplicates=len(verdicts) - len(by_offset),
        inconsistent=inconsistent,
        threshold_differs=threshold_differs,
        max_score_spread=score_spread,
        incident_mismatches=await incident_mismatches(settings, by_offset),
        first_verdict_ms=first,
        input_ms=input_ms,
    )


def implied_incident_events(cfg: IncidentSettings, verdicts: list[dict]) -> set[tuple[str, str | None]]:
    """(alert id, "opened"/"closed") the incident rules give for these verdicts, each source's in offset order."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for v in sorted(verdicts, key=lambda v: (v["partition"], v["offset"])):
        by_source[v["source"]].append(v)
    implied: set[tuple[str, str | None]] = set()
    for source, seq in by_source.items():
        keys = [event_key(v["topic"], v["partition"], v["offset"]) for v in seq]
        steps, _ = incidents.step(cfg, incidents.IncidentState(), source, [v["anomalous"] for v in seq], keys)
        implied |= {(alert_id_of(key), event) for key, (_, event) in zip(keys, steps, strict=True) if event}
    return implied


async def incident_mismatches(
    settings: Settings, by_offset: dict[tuple[int, int], list[dict]]
) -> list[tuple[str, str | None]]:
    """Incident events on the alerts topic that the verdict sequence does not imply, and implied ones missing."""
    published = {
        (body["alert_id"], body["incident_event"])
        for r in await topic_records(settings, settings.topics.alerts)
        if (body := orjson.loads(r.value))["incident_event"]
    }
    implied = implied_incident_events(settings.incidents, [copies[0] for copies in by_offset.values()])
    return sorted(published ^ implied, key=str)


class Drill:
    """Workers (subprocesses), traffic and faults against one stack; `faults` records what was done when."""

    def __init__(self, settings: Settings, stack: Any, rate: float, n_features: int, log_dir: Path) -> None:
        self.settings, self.stack = settings, stack
        self.traffic = Traffic(settings, rate, n_features)
        self.log_dir = log_dir
        self.workers: list[subprocess.Popen] = []
        self.killed: set[int] = set()  # pids we ended on purpose
        self.faults: list[Fault] = []
        self._watch: asyncio.Task | None = None
        self._current: Fault | None = None

    # ---- workers ------------------------------------------------------------------------------------
    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        proc = spawn(self.settings, "worker", "-l", "info", log_file=self.log_dir / f"worker-{n}.log")
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def signal_worker(self, proc: subprocess.Popen, sig: int) -> None:
        self.killed.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    async def stop_worker(self, proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
        self.killed.add(proc.pid)
        return await asyncio.to_thread(stop, proc, timeout_s)

    async def wait_consuming(self, n: int, timeout_s: float = 90.0) -> None:
        """Until `n` workers answer /health and every input partition is held by one of them."""
        await wait_consuming(self.settings, self.settings.topics.vectors, n, timeout_s)

    def unexpected_exits(self) -> list[tuple[int, int | None]]:
        """Workers that ended without us ending them: (pid, exit code)."""
        return [(w.pid, w.returncode) for w in self.workers if w.poll() is not None and w.pid not in self.killed]

    def rss(self) -> dict[int, float | None]:
        return {w.pid: rss_mb(w.pid) for w in self.live_workers()}

    # ---- faults -------------------------------------------------------------------------------------
    async def __aenter__(self) -> Drill:
        await self.traffic.start()
        self._watch = asyncio.create_task(self._watch_health())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if not self.traffic._stop.is_set():
            await self.traffic.stop()
        for w in self.live_workers():
            await self.stop_worker(w)

    def begin(self, name: str) -> Fault:
        fault = Fault(name, time.time(), rss_before_mb=self.rss())
        self.faults.append(fault)
        self._current = fault
        return fault

    def end(self, fault: Fault) -> None:
        fault.ended = time.time()

    async def pause(self, service: str, seconds: float, name: str) -> Fault:
        """Freeze a stack service (SIGSTOP) for `seconds`, resume it (SIGCONT) and settle: a hung dependency."""
        fault = self.begin(name)
        self.stack.signal(service, signal.SIGSTOP)
        await asyncio.sleep(seconds)
        self.stack.signal(service, signal.SIGCONT)
        self.end(fault)
        await self.settle(fault)
        return fault

    async def crash(self, service: str, seconds: float, name: str) -> Fault:
        """SIGKILL a stack service, restart it on its own data after `seconds` and settle: a crashed dependency."""
        fault = self.begin(name)
        await asyncio.to_thread(self.stack.kill, service)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.stack.restart, service)
        self.end(fault)
        await self.settle(fault)
        return fault

    async def settle(self, fault: Fault, quiet_s: float = 2.0, timeout_s: float = 120.0) -> None:
        """Wait until every worker is healthy and the backlog is under a second of traffic, then record RSS."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answers = [await asyncio.to_thread(health_of, p) for p in worker_ports(self.settings)]
            answers = [(status, body) for status, body in answers if status]
            backlog = sum(sum(body.get("lag", {}).values()) for _, body in answers)
            if answers and all(status == 200 for status, _ in answers) and backlog <= self.traffic.rate:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(quiet_s)
        fault.rss_after_mb = self.rss()
        self._current = None

    async def _watch_health(self) -> None:
        """Sample /health of every worker; note whether a 503 (and why) was seen during the current fault."""
        while True:
            fault = self._current
            for port in worker_ports(self.settings):
                status, body = await asyncio.to_thread(health_of, port, 2.0)
                if fault is not None:
                    fault.max_lag = max(fault.max_lag, sum(body.get("lag", {}).values()))
                if fault is not None and status == 503:
                    fault.health_503 = True
                    for reason in body.get("problems", []):
                        head = reason.split(" (for ")[0][:160]
                        if head not in fault.health_reasons and len(fault.health_reasons) < 6:
                            fault.health_reasons.append(head)
            await asyncio.sleep(0.5)

    async def finish(self, timeout_s: float = 120.0) -> Tally:
        """Stop traffic, wait until every input offset has a verdict (or the timeout), count."""
        await self.traffic.stop()
        deadline = time.monotonic() + timeout_s
        while True:
            counted = await tally(self.settings)
            if not counted.lost or time.monotonic() > deadline:
                return counted
            await asyncio.sleep(2.0)


async def partition_leader(settings: Settings, topic: str, partition: int, timeout_s: float = 10.0) -> int | None:
    """The id of the broker leading `topic`/`partition` now, from a fresh metadata request (None: no leader).

    The admin client asks the broker it finds least loaded, which may be one just killed and not yet fenced by
    the cluster: such a request fails and is asked again (of another broker, once the failure marked it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings.kafka))
        try:
            await admin.start()
            (described,) = await admin.describe_topics([topic])
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    leader = next(p["leader"] for p in described["partitions"] if p["partition"] == partition)
    return leader if leader >= 0 else None


@dataclass
class LeaderKill:
    """What `kill_partition_leader` did: whom it killed, who took over and when (wall clock, like `Fault`)."""

    fault: Fault
    victim: int
    successor: int | None = None  # the partition's leader once it moved; None if it had not within the outage
    failover_s: float | None = None  # kill -> the partition had another leader (the cluster fenced the victim)
    restarted: float | None = None  # when the victim was started again


async def kill_partition_leader(
    drill: Drill, stack: Any, name: str, partition: int = 0, serve_s: float = 5.0, max_down_s: float = 60.0
) -> LeaderKill:
    """SIGKILL the broker leading input `partition` of a cluster (a deploy.localstack.LocalStack) while traffic
    flows; keep it down until another broker has led the partition for `serve_s` (at most `max_down_s` in all),
    then start it again on its log dir. The fault ends once the broker is back; `drill.settle` it afterwards."""
    topic = drill.settings.topics.vectors
    victim = await partition_leader(drill.settings, topic, partition)
    if victim is None:
        raise RuntimeError(f"{topic}/{partition} has no leader to kill")
    fault = drill.begin(name)
    kill = LeaderKill(fault, victim)
    await asyncio.to_thread(stack.kill, stack.node(victim).name)
    deadline = time.monotonic() + max_down_s
    while time.monotonic() < deadline and (
        kill.failover_s is None or time.time() < fault.started + kill.failover_s + serve_s
    ):
        if kill.successor is None:
            leader = await partition_leader(drill.settings, topic, partition)
            if leader is not None and leader != victim:
                kill.successor, kill.failover_s = leader, time.time() - fault.started
        await asyncio.sleep(0.5)
    kill.restarted = time.time()
    await asyncio.to_thread(stack.restart, stack.node(victim).name)
    drill.end(fault)
    return kill


def log_problems(log_dir: Path) -> dict[str, int]:
    """Tracebacks and ERROR lines in the workers' logs (a clean stop writes none)."""
    counts = {"tracebacks": 0, "errors": 0, "producer_closed": 0, "lines": 0}
    for path in log_dir.glob("worker-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            counts["lines"] += 1
            counts["tracebacks"] += line.startswith("Traceback")
            counts["errors"] += "ERROR" in line
            counts["producer_closed"] += "ProducerClosed" in line
    return counts


def kill_signal(name: str) -> int:
    return {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}[name]


def publish_tiny_model(settings: Settings, n_features: int, seed: int = 0) -> None:
    """A small RVAE for standard-normal vectors, promoted as `sensors` (drills measure delivery, not accuracy)."""
    from models import RVAEScorer
    from stream_app.registry.versions import Registry

    scorer = RVAEScorer(n_features=n_features, n_layers=1, hidden=16, latent=2, seed=seed, device="cpu")
    scorer.fit(np.random.default_rng(seed).normal(size=(1000, n_features)).astype(np.float32), epochs=8, batch_size=128)
    registry = Registry(settings.registry_dir)
    registry.promote("sensors", registry.publish("sensors", scorer).version)
