"""The threshold store on one Redis, on a 3-master Redis Cluster and through Sentinel: what a micro-batch costs
and what a master's SIGKILL costs. Writes benchmarks/results/redis_modes.json + .png.

    PYTHONPATH=. python benchmarks/redis_modes.py [--batches 200]

Every server is a real local `redis-server` (deploy/redis_cluster.py, deploy/redis_sentinel.py), on loopback,
on the same machine as the client, so the figures are client CPU and loopback round trips, not a network.
A batch is 256 scores over 64 sources (4 each), judged by one store (SPOT). Per configuration: wall ms per
batch (p50, p99), the client's CPU ms per batch, and script calls per batch as the servers count them.
Failover: batches are judged back to back; the master holding the first source's key is SIGKILLed after
the last write was replicated; reported are the seconds until a batch succeeds again, the batches that
failed meanwhile (the worker retries those), and whether every source's state version went on from where
it was (not reset to calibration).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from benchmarks._common import machine, save_figure, write_json
from deploy.redis_cluster import RedisCluster, bindable, redis_cli, spawn_redis, stop_all, wait_pong, wait_replicated
from deploy.redis_sentinel import RedisSentinel
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import redis_client
from stream_app.settings import RedisSettings, Settings

SOURCES = [f"line-{i // 8}/press-{i % 8}" for i in range(64)]
CAL = np.random.default_rng(0).exponential(size=3000)


def batch(seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    scores = np.random.default_rng(seed).exponential(size=256)
    return [SOURCES[i % len(SOURCES)] for i in range(256)], scores, [f"b:{seed}:{i}" for i in range(256)]


def script_calls(ports: list[int]) -> int:
    stats = "".join(redis_cli(p, "INFO", "commandstats") for p in ports)
    return sum(int(n) for n in re.findall(r"cmdstat_eval(?:sha)?:calls=(\d+)", stats))


async def steady(cfg: RedisSettings, ports: list[int], batches: int) -> dict[str, float]:
    client = redis_client(cfg)
    s = Settings()
    store = ThresholdStore(client, s.thresholds, s.incidents, f"bench-{time.time_ns()}", slot_groups=cfg.slot_groups)
    try:
        for b in range(10):  # connections, slot map, every key written once
            await store.judge("m", "v1", CAL, *batch(b))
        calls0 = script_calls(ports)
        wall, cpu = [], []
        for b in range(10, 10 + batches):
            t, c = time.perf_counter(), time.process_time()
            await store.judge("m", "v1", CAL, *batch(b))
            wall.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
        calls = (script_calls(ports) - calls0) / batches
        await store.clear()
    finally:
        await client.aclose()
    return {
        "p50_ms": round(float(np.percentile(wall, 50)), 3),
        "p99_ms": round(float(np.percentile(wall, 99)), 3),
        "client_cpu_ms": round(float(np.mean(cpu)), 3),
        "script_calls_per_batch": round(calls, 2),
    }


async def failover(cfg: RedisSettings, master_of: Callable[[str], int], kill: Callable[[str], int]) -> dict[str, Any]:
    """`master_of(key)`: the port of the master holding `key`; `kill(key)` SIGKILLs it."""
    client = redis_client(cfg)
    s = Settings()
    store = ThresholdStore(client, s.thresholds, s.incidents, f"bench-{time.time_ns()}", slot_groups=cfg.slot_groups)
    try:
        for b in range(20):
            await store.judge("m", "v1", CAL, *batch(b))
        before = {src: int(await client.hget(store.key("m", "v1", src), "v") or 0) for src in SOURCES}
        key = store.key("m", "v1", SOURCES[0])
        await asyncio.to_thread(wait_replicated, master_of(key))  # the states so far survive the kill
        killed_at = time.perf_counter()
        kill(key)
        failed, b = 0, 20
        while True:
            try:
                await store.judge("m", "v1", CAL, *batch(b))
                break
            except (RedisError, RedisClusterException):
                failed += 1
                await asyncio.sleep(0.1)  # a worker backs off longer; this measures when Redis answers again
        resumed = time.perf_counter() - killed_at
        after = {src: int(await client.hget(store.key("m", "v1", src), "v") or 0) for src in SOURCES}
    finally:
        await client.aclose()
    return {
        "resumed_after_s": round(resumed, 2),
        "failed_batches": failed,
        "versions_continued": all(after[s] >= before[s] + 1 for s in SOURCES),
    }


def free_port() -> int:
    return next(p for p in random.sample(range(40000, 50000), 200) if bindable(p))


async def run(batches: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    single = spawn_redis(port, work / "single")
    try:
        wait_pong([port], time.monotonic() + 30, work)
        out["single"] = await steady(RedisSettings(url=f"redis://127.0.0.1:{port}/0"), [port], batches)
        print("single", out["single"], flush=True)
    finally:
        stop_all([single])

    cluster = RedisCluster(work / "cluster").up()
    try:
        for groups in (1, 4, 16):
            cfg = RedisSettings(url=cluster.url, mode="cluster", slot_groups=groups)
            out[f"cluster/{groups}"] = await steady(cfg, cluster.masters(), batches)
            print(f"cluster slot_groups={groups}", out[f"cluster/{groups}"], flush=True)
        out["cluster/16"]["failover"] = await failover(
            RedisSettings(url=cluster.url, mode="cluster", slot_groups=16),
            lambda key: cluster.master_of_slot(key_slot(key.encode())),
            lambda key: cluster.kill_master(key_slot(key.encode())),
        )
        print("cluster failover", out["cluster/16"]["failover"], flush=True)
    finally:
        cluster.down()

    group = RedisSentinel(work / "sentinel").up()
    try:
        cfg = RedisSettings(mode="sentinel", sentinels=group.addresses, sentinel_service=group.service)
        out["sentinel"] = await steady(cfg, [group.master()], batches)
        print("sentinel", out["sentinel"], flush=True)
        out["sentinel"]["failover"] = await failover(cfg, lambda _: group.master(), lambda _: group.kill_master())
        print("sentinel failover", out["sentinel"]["failover"], flush=True)
    finally:
        group.down()
    return out


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [results[n]["p50_ms"] for n in names], 0.4, label="wall p50")
    ax.bar(x + 0.2, [results[n]["client_cpu_ms"] for n in names], 0.4, label="client CPU")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("ms per batch (256 scores, 64 sources)")
    ax.legend()
    ax2.bar(x, [results[n]["script_calls_per_batch"] for n in names])
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set_ylabel("script calls per batch (server count)")
    fig.tight_layout()
    save_figure(fig, "redis_modes")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="redis-modes-") as work:
        results = asyncio.run(run(args.batches, Path(work)))
    write_json("redis_modes", {
        "results": results,
        "batches": args.batches,
        "batch": "256 scores over 64 sources, SPOT, one store",
        "machine": f"{machine()}; load average {os.getloadavg()[0]:.1f} at the end (shared, loaded VM)",
    })  # fmt: skip
    plot(results)


if __name__ == "__main__":
    main()
