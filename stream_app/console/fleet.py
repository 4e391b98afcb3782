"""Workers as the Fleet and Models pages see them: /health and /metrics of every worker, and the
retraining agent's schedule from the settings.

Workers are found through their port files in the state dir (`ops.processes.worker_ports`, local runs and
tests) plus `console.workers` (host:port, e.g. containers). Throughput is the change of the events counter
between two scrapes, so the first scrape of a worker shows none.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stream_app.ops.processes import worker_ports
from stream_app.settings import Settings


@dataclass
class WorkerView:
    address: str
    ok: bool = False
    error: str | None = None
    health: dict[str, Any] = field(default_factory=dict)
    events_total: float | None = None
    events_per_s: float | None = None
    lag: float | None = None
    inference_mean_ms: float | None = None
    latency_mean_ms: float | None = None
    batch_mean: float | None = None
    scraped_at: float = 0.0


def _get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # loopback or configured workers only
        return response.read()


def summarize_metrics(text: str) -> dict[str, float | None]:
    """The few numbers the Fleet page shows, from a worker's Prometheus exposition.

    >>> t = ('linewatch_events_total{topic="v"} 10.0\\nlinewatch_consumer_lag{topic="v",partition="0"} 3.0\\n'
    ...      'linewatch_inference_seconds_sum{model="m"} 0.5\\nlinewatch_inference_seconds_count{model="m"} 5.0\\n')
    >>> summarize_metrics(t)["events_total"], summarize_metrics(t)["lag"], summarize_metrics(t)["inference_mean_ms"]
    (10.0, 3.0, 100.0)
    """
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)

    def mean(name: str, scale: float = 1.0) -> float | None:
        n = sums.get(f"{name}_count")
        return scale * sums.get(f"{name}_sum", 0.0) / n if n else None

    return {
        "events_total": sums.get("linewatch_events_total"),
        "lag": sums.get("linewatch_consumer_lag"),
        "inference_mean_ms": mean("linewatch_inference_seconds", 1000.0),
        "latency_mean_ms": mean("linewatch_e2e_latency_seconds", 1000.0),
        "batch_mean": mean("linewatch_batch_size"),
    }


class Fleet:
    """Scrapes every known worker on demand (at most once per `min_interval_s`)."""

    def __init__(self, settings: Settings, timeout_s: float = 2.0, min_interval_s: float = 1.0):
        self.settings = settings
        self.timeout_s = timeout_s
        self.min_interval_s = min_interval_s
        self.workers: dict[str, WorkerView] = {}
        self._last = 0.0
        self._lock = asyncio.Lock()

    def addresses(self) -> list[str]:
        local = [f"127.0.0.1:{port}" for port in worker_ports(self.settings)]
        return list(dict.fromkeys([*local, *self.settings.console.workers]))

    async def refresh(self) -> list[WorkerView]:
        async with self._lock:
            if time.monotonic() - self._last >= self.min_interval_s:
                addresses = self.addresses()
                views = await asyncio.gather(*(self._scrape(a) for a in addresses))
                self.workers = {v.address: v for v in views}
                self._last = time.monotonic()
        return list(self.workers.values())

    async def _scrape(self, address: str) -> WorkerView:
        previous = self.workers.get(address)
        view = WorkerView(address, scraped_at=time.time())
        try:
            health, metrics = await asyncio.gather(
                asyncio.to_thread(_get, f"http://{address}/health", self.timeout_s),
                asyncio.to_thread(_get, f"http://{address}/metrics", self.timeout_s),
            )
        except Exception as exc:  # a worker that is down is shown as down, with why
            view.error = str(getattr(exc, "reason", exc)) or type(exc).__name__
            return view
        import orjson

        view.health = orjson.loads(health)
        view.ok = bool(view.health.get("ok"))
        for key, value in summarize_metrics(metrics.decode(errors="replace")).items():
            setattr(view, key, value)
        if previous and previous.events_total is not None and view.events_total is not None:
            dt = view.scraped_at - previous.scraped_at
            if dt > 0:
                view.events_per_s = max(0.0, view.events_total - previous.events_total) / dt
        return view

    def serving(self) -> dict[str, dict[str, list[str]]]:
        """model -> version -> worker addresses serving it (from the last scrape)."""
        out: dict[str, dict[str, list[str]]] = {}
        for view in self.workers.values():
            for model, version in (view.health.get("models") or {}).items():
                out.setdefault(model, {}).setdefault(str(version), []).append(view.address)
        return out


def retrain_schedule(settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """The retraining agent's schedules with their next run time (from settings; the agent runs elsewhere)."""
    from stream_app.retraining.agent import next_run

    now = time.time() if now is None else now
    rows = []
    for sched in settings.retrain.schedules:
        try:
            nxt: float | None = next_run(sched, now)
        except Exception:
            nxt = None
        rows.append({"model": sched.model, "cron": sched.cron, "interval_s": sched.interval_s, "next_run": nxt})
    return rows
