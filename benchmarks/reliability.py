"""Reliability drills: steady traffic through real workers while workers, brokers and Redis fail in turn.

For each scenario, on its own topics against a local stack (deploy/localstack.py, started here on free
ports: one Kafka node, or three for the scenarios that need a cluster): events in, verdicts out, input offsets without a verdict (lost, must be 0), duplicates (and whether
their content differs), recovery seconds (fault injected -> the last verdict delayed by more than 2 s
arrived), worker RSS before/after, whether /health said 503 and why, and unexpected worker exits.

    PYTHONPATH=. nice -n 10 python benchmarks/reliability.py                 # every scenario, getmany path
    PYTHONPATH=. python benchmarks/reliability.py --consumer faust --only redis-stop worker-kill
    PYTHONPATH=. python benchmarks/reliability.py --only leader-kill   # one scenario, merged into the JSON
    PYTHONPATH=. python benchmarks/reliability.py --worker-code /tmp/old --label "before" --only worker-kill
        (workers run another checkout's code, e.g. `git archive <commit> | tar -x -C /tmp/old`: before/after)

Writes benchmarks/results/reliability.json (one section per consumer path; a scenario run again replaces its
row, and each row says when and where it was measured) and reliability.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks._common import RESULTS, machine, save_figure, write_json
from deploy.localstack import LocalStack, free_port
from stream_app.ops.connections import ensure_topics
from stream_app.ops.drills import Drill, kill_partition_leader, log_problems, publish_tiny_model
from stream_app.settings import Route, Settings, TopicSettings

F = 4


def drill_settings(stack: LocalStack, base: Path, consumer: str, metrics_port: int | None) -> Settings:
    tag = f"rel-{uuid.uuid4().hex[:8]}"
    s = Settings(
        app_id=f"lw-{tag}",
        topics=TopicSettings().prefixed(tag, partitions=6),
        routes=[Route(pattern="line-*", model="sensors")],
        registry_dir=base / tag / "registry",
        state_dir=base / tag / "state",
        metrics_port=free_port() if metrics_port is None else metrics_port,  # one setting for all workers
        worker_processes=1,  # each worker a single process, as the drills count them
    )
    s.kafka.bootstrap, s.redis.url, s.redis.key_prefix = stack.bootstrap, stack.redis_url, tag
    s.kafka.request_timeout_ms = 10_000
    s.kafka.session_timeout_ms, s.kafka.heartbeat_interval_ms = 10_000, 3_000
    s.batching.max_wait_ms = 20
    s.batching.consumer = consumer  # type: ignore[assignment]
    return s


Fault = Callable[[Drill, LocalStack], Awaitable[dict[str, Any] | None]]  # may return figures of its own


async def worker_signal(drill: Drill, stack: LocalStack, sig: int, name: str) -> None:
    victim = drill.live_workers()[0]
    fault = drill.begin(name)
    drill.signal_worker(victim, sig)
    await asyncio.to_thread(victim.wait)
    drill.start_worker()
    await drill.wait_consuming(2)
    drill.end(fault)
    await drill.settle(fault)


async def scale(drill: Drill, stack: LocalStack) -> None:
    fault = drill.begin("scale 1 -> 3 -> 1")
    added = [drill.start_worker(), drill.start_worker()]
    await drill.wait_consuming(3)
    await asyncio.sleep(5)
    for proc in added:
        await drill.stop_worker(proc)
    drill.end(fault)
    await drill.settle(fault)


async def broker_kill(drill: Drill, stack: LocalStack) -> None:
    await drill.crash("kafka", 10, "broker SIGKILL, restart after 10 s")


async def redis_kill(drill: Drill, stack: LocalStack) -> None:
    await drill.crash("redis", 3, "Redis SIGKILL + restart (AOF)")


async def redis_stop(drill: Drill, stack: LocalStack) -> None:
    await drill.pause("redis", 20, "Redis SIGSTOP 20 s, SIGCONT")


async def publish_failure(drill: Drill, stack: LocalStack) -> None:
    await drill.pause("kafka", 15, "broker SIGSTOP 15 s (scored, acks time out)")


async def leader_kill(drill: Drill, stack: LocalStack) -> dict[str, Any]:
    name = "broker leader SIGKILL (3 brokers), restart 10 s after failover"
    kill = await kill_partition_leader(drill, stack, name, partition=0, serve_s=10)
    await drill.settle(kill.fault)
    return {
        "killed_broker": kill.victim,
        "new_leader": kill.successor,
        "leader_failover_s": None if kill.failover_s is None else round(kill.failover_s, 2),
    }


class Scenario(NamedTuple):
    workers: int  # at the start
    fault: Fault
    brokers: int = 1  # Kafka nodes of the stack it runs on


SCENARIOS: dict[str, Scenario] = {
    "worker-kill": Scenario(2, lambda d, s: worker_signal(d, s, signal.SIGKILL, "worker SIGKILL + restart")),
    "worker-term": Scenario(2, lambda d, s: worker_signal(d, s, signal.SIGTERM, "worker SIGTERM + restart")),
    "scale": Scenario(1, scale),
    "broker-kill": Scenario(1, broker_kill),
    "redis-kill": Scenario(1, redis_kill),
    "redis-stop": Scenario(1, redis_stop),
    "publish-failure": Scenario(1, publish_failure),
    "leader-kill": Scenario(1, leader_kill, brokers=3),
}


async def run_scenario(
    name: str, stack: LocalStack, base: Path, consumer: str, rate: float, label: str, metrics_port: int | None
) -> dict[str, Any]:
    workers, fault_fn, brokers = SCENARIOS[name]
    settings = drill_settings(stack, base, consumer, metrics_port)
    publish_tiny_model(settings, F)
    await ensure_topics(settings)
    logs = base / f"logs-{name}-{consumer}"
    logs.mkdir(parents=True)
    drill = Drill(settings, stack, rate, F, logs)
    for _ in range(workers):
        drill.start_worker()
    started = time.monotonic()
    error, figures = None, None
    async with drill:
        try:
            await drill.wait_consuming(workers)
            await asyncio.sleep(10)  # steady state before the fault
            figures = await fault_fn(drill, stack)
            await asyncio.sleep(5)
        except Exception as exc:  # the drill could not go on (a worker died, never recovered): count anyway
            error = f"{type(exc).__name__}: {exc}"
        counted = await drill.finish(timeout_s=60 if error else 120)
    fault = drill.faults[0] if drill.faults else drill.begin(name)
    problems = log_problems(logs)
    return {
        "scenario": fault.name,
        "consumer": consumer,
        "code": label,
        "workers": workers,
        "brokers": brokers,
        "events_in": counted.events_in,
        "verdicts_out": counted.verdicts_out,
        "lost": len(counted.lost),
        "duplicates": counted.duplicates,
        "duplicates_not_identical": len(counted.inconsistent),
        "incident_events_not_implied_or_missing": len(counted.incident_mismatches),
        "duplicates_with_other_threshold": counted.threshold_differs,
        "max_score_spread_of_duplicates": counted.max_score_spread,
        "recovery_s": round(counted.recovery_s(fault), 2),
        "fault_duration_s": round((fault.ended or fault.started) - fault.started, 2),
        "rss_before_mb": sorted(round(v, 1) for v in fault.rss_before_mb.values() if v),
        "rss_after_mb": sorted(round(v, 1) for v in fault.rss_after_mb.values() if v),
        "max_lag_reported": fault.max_lag,
        "health_503_seen": fault.health_503,
        "health_reasons": fault.health_reasons,
        "workers_exited_by_themselves": len(drill.unexpected_exits()),
        "traffic_sends_failed": drill.traffic.failed,
        "log_error_lines": problems["errors"],
        "log_tracebacks": problems["tracebacks"],
        "producer_closed_lines": problems["producer_closed"],
        "wall_s": round(time.monotonic() - started, 1),
        "drill_error": error,
        **(figures or {}),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # a shared machine: how busy it was
    }


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [k for k, v in results.items() if isinstance(v, dict) and "scenarios" in v]
    names = list(dict.fromkeys(r["scenario"] for k in sections for r in results[k]["scenarios"]))
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.7 * len(names) + 2), sharey=True)
    height = 0.8 / max(1, len(sections))
    for i, section in enumerate(sections):
        rows = {r["scenario"]: r for r in results[section]["scenarios"]}
        y = [j + i * height for j, n in enumerate(names) if n in rows]
        for ax, key in zip(axes, ("recovery_s", "lost"), strict=True):
            values = [rows[n][key] for n in names if n in rows]
            ax.barh(y, values, height=height, label=section)
            for yy, v in zip(y, values, strict=True):
                ax.annotate(f"{v:g}", (v, yy), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("recovery seconds (fault -> last verdict delayed > 2 s)")
    axes[1].set_xlabel("input offsets without a verdict (lost)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("linewatch reliability drills: " + results.get("machine", ""), fontsize=8)
    save_figure(fig, "reliability")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="scenarios to run (default: all)")
    parser.add_argument("--consumer", choices=["getmany", "faust"], default="getmany")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second, steady")
    parser.add_argument("--worker-code", type=Path, help="run the workers from this checkout (before/after)")
    parser.add_argument("--metrics-port", type=int, help="for every worker (default: one free port for all)")
    parser.add_argument("--label", help="results section (default: the consumer path)")
    args = parser.parse_args()
    label = args.label or args.consumer
    if args.worker_code:  # `python -m` puts the working directory first: spawned workers import that code
        os.environ["PYTHONPATH"] = str(args.worker_code.resolve())
        os.chdir(args.worker_code)

    path = RESULTS / "reliability.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    names = args.only or list(SCENARIOS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lw-reliability-") as tmp:
        base = Path(tmp)
        for brokers in dict.fromkeys(SCENARIOS[n].brokers for n in names):  # one stack per cluster size
            stack = LocalStack.on_free_ports(base / f"stack-{brokers}", Path.home() / ".cache" / "linewatch", brokers)
            try:
                await asyncio.to_thread(stack.up)  # it runs its own event loop for its probes
                for name in (n for n in names if SCENARIOS[n].brokers == brokers):
                    row = await run_scenario(name, stack, base, args.consumer, args.rate, label, args.metrics_port)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                stack.down()
    section = results.setdefault(label, {"scenarios": []})
    done = {r["scenario"] for r in rows}
    section["scenarios"] = [r for r in section["scenarios"] if r["scenario"] not in done] + rows
    section["rate_events_per_s"] = args.rate
    section["consumer"] = args.consumer
    section["worker_code"] = str(args.worker_code) if args.worker_code else "this checkout"
    if not args.only:  # a partial run leaves the date and machine of the full one; its rows carry their own
        results["machine"] = machine()
        results["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["recovery_definition"] = "seconds from the fault's injection until the last verdict delayed > 2 s arrived"
    write_json("reliability", results)
    plot(results)


if __name__ == "__main__":
    asyncio.run(main())
