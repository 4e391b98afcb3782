"""Prometheus metrics and the health endpoint of a worker (one small aiohttp server: /metrics, /health).

Each worker gets its own CollectorRegistry so several pipelines (tests, benchmarks) can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("linewatch_events", "input events consumed", ["topic"], registry=r)
        self.batch_size = Histogram(
            "linewatch_batch_size", "events per micro-batch", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "linewatch_queue_wait_seconds", "broker append to batch start", ["kind"], buckets=TIME_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "linewatch_inference_seconds", "scorer time per batch", ["model"], buckets=TIME_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "linewatch_e2e_latency_seconds", "event ts to verdict sent", ["kind"], buckets=TIME_BUCKETS, registry=r
        )
        self.threshold = Gauge("linewatch_threshold", "current alert threshold", ["model", "source"], registry=r)
        self.alerts = Counter("linewatch_alerts", "alerts published", ["model"], registry=r)
        self.incidents = Counter("linewatch_incidents", "incidents opened/closed", ["model", "event"], registry=r)
        self.deadletters = Counter("linewatch_deadletters", "events dead-lettered", ["reason"], registry=r)
        self.lag = Gauge("linewatch_consumer_lag", "highwater - next offset", ["topic", "partition"], registry=r)
        self.model_version = Gauge("linewatch_model_version", "serving version", ["model"], registry=r)
        self.swaps = Counter("linewatch_model_swaps", "model versions swapped in", ["model"], registry=r)
        self.refused = Counter("linewatch_model_refused", "model versions refused", ["model"], registry=r)
        self.started_at = time.time()
        self.last_batch_at: float | None = None


async def serve_http(
    metrics: WorkerMetrics, host: str, port: int, health: Callable[[], dict[str, Any]]
) -> tuple[web.AppRunner, int]:
    """Start /metrics and /health on host:port (0 picks a free port); returns the runner and the bound port."""

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
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound
