"""Prometheus metrics and the health endpoint of a worker (one small aiohttp server: /metrics, /health).

Each worker gets its own CollectorRegistry so several pipelines (tests, benchmarks) can live in one process.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class BatchHistogram:
    """A labelled Prometheus histogram that takes a whole micro-batch of observations in one numpy call.

    `Histogram.observe` costs microseconds per value (a lock and a Python loop over buckets); per-event
    latencies at tens of thousands of events/s made it a visible share of the worker's CPU. The exposition
    is the standard histogram (`_bucket{le=...}`, `_sum`, `_count`).

    >>> r = CollectorRegistry()
    >>> h = BatchHistogram("wait_seconds", "demo", ["kind"], (0.1, 1.0), registry=r)
    >>> h.observe_many(("vectors",), [0.05, 0.1, 0.5, 7.0])
    >>> [r.get_sample_value("wait_seconds_bucket", {"kind": "vectors", "le": le}) for le in ("0.1", "1.0", "+Inf")]
    [2.0, 3.0, 4.0]
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float], registry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._bounds = np.array([*buckets, float("inf")])
        self._counts: dict[tuple[str, ...], np.ndarray] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()  # the HTTP scrape reads while the event loop writes
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Sequence[float] | np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._bounds))
        with self._lock:
            self._counts[labels] = self._counts.get(labels, 0) + counts
            self._sums[labels] = self._sums.get(labels, 0.0) + float(v.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            for labels, counts in self._counts.items():
                cumulative = np.cumsum(counts).astype(np.float64).tolist()
                buckets = [(floatToGoString(b), c) for b, c in zip(self._bounds.tolist(), cumulative, strict=True)]
                family.add_metric(list(labels), buckets, self._sums[labels])
        yield family


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter(
            "linewatch_events", "input events consumed (redeliveries included)", ["topic"], registry=r
        )
        self.redelivered = Counter(
            "linewatch_redelivered_events", "events consumed again after a rewind (subtract from events)", ["topic"],
            registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "linewatch_retries", "failed batches and dependency probes retried", ["cause"], registry=r
        )
        self.paused = Gauge("linewatch_consumption_paused", "1 while a dependency is unreachable", registry=r)
        self.dependency_up = Gauge("linewatch_dependency_up", "last reachability probe", ["dependency"], registry=r)
        self.rebalances = Counter("linewatch_rebalances", "partitions revoked or assigned", ["event"], registry=r)
        self.batch_size = Histogram(
            "linewatch_batch_size", "events per micro-batch", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = BatchHistogram(
            "linewatch_queue_wait_seconds", "broker append to batch start", ["kind"], TIME_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "linewatch_inference_seconds", "scorer time per batch", ["model"], buckets=TIME_BUCKETS, registry=r
        )
        self.latency = BatchHistogram(
            "linewatch_e2e_latency_seconds", "event ts to verdict sent", ["kind"], TIME_BUCKETS, registry=r
        )
        self.threshold = Gauge("linewatch_threshold", "current alert threshold", ["model", "source"], registry=r)
        self.alerts = Counter("linewatch_alerts", "alerts published", ["model"], registry=r)
        self.incidents = Counter("linewatch_incidents", "incidents opened/closed", ["model", "event"], registry=r)
        self.deadletters = Counter("linewatch_deadletters", "events dead-lettered", ["reason"], registry=r)
        self.lag = Gauge(
            "linewatch_consumer_lag",
            "broker end offset - first offset not yet done",
            ["topic", "partition"],
            registry=r,
        )
        self.model_version = Gauge("linewatch_model_version", "serving version", ["model"], registry=r)
        self.swaps = Counter("linewatch_model_swaps", "model versions swapped in", ["model"], registry=r)
        self.refused = Counter("linewatch_model_refused", "model versions refused", ["model"], registry=r)
        # Reasons only as labels: model names in hostile messages are unbounded.
        self.control_rejected = Counter(
            "linewatch_control_rejected", "control-plane messages ignored", ["reason"], registry=r
        )
        self.started_at = time.time()
        self.last_batch_at: float | None = None


async def serve_http(
    metrics: WorkerMetrics, host: str, port: int, health: Callable[[], dict[str, Any]], tries: int = 1
) -> tuple[web.AppRunner, int]:
    """Start /metrics and /health on host at the first free port of port .. port+tries-1 (0 picks any free
    port), so several workers on one host get predictable ports; returns the runner and the bound port.
    Raises OSError naming the range when none is free."""

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_page(_: web.Request) -> web.Response:
        body = health()
        return web.json_response(body, status=200 if body.get("ok") else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/health", health_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    candidates = [0] if port == 0 else list(range(port, port + max(1, tries)))
    for candidate in candidates:
        site = web.TCPSite(runner, host, candidate)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                await runner.cleanup()
                raise
            continue
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()
    raise OSError(
        errno.EADDRINUSE,
        f"no free port for /metrics and /health on {host} in {candidates[0]}..{candidates[-1]} (all in use); "
        "set LINEWATCH_METRICS_PORT to another first port, 0 for any free port, or widen LINEWATCH_METRICS_PORT_RANGE",
    )
