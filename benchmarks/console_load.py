"""Console under load: verdicts flow at several rates; does the console keep up within one core, and do its
live pages still update at least once a second?

A producer process writes realistic verdicts (the workers' own builder, 50 sources) to the scores topic at
each target rate for a while; the console (`linewatch console`, a child process) reads them. Measured per
rate: what was produced, what the console folded in (its /healthz counter), the console process's CPU
(/proc utime+stime), and the Server-Sent Events a source page and the overview received (count, largest gap).

    PYTHONPATH=. python benchmarks/console_load.py [--rates 5000 10000 20000] [--seconds 15]

Uses KAFKA_BOOTSTRAP/REDIS_URL when set, else starts its own Kafka + Redis on free ports.
Writes benchmarks/results/console_load.json and console_load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import orjson

from benchmarks._common import RESULTS, machine, write_json
from deploy.localstack import free_port
from stream_app.console.scene import verdicts
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.ops.processes import spawn, stop
from stream_app.settings import Settings, TopicSettings

SOURCES = [f"line-{line}/m{m}" for line in range(1, 6) for m in range(10)]
WATCHED = SOURCES[7]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) from /proc, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def healthz(base: str) -> dict:
    with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
        return orjson.loads(r.read())


# ------------------------------------------------------------------ producer (its own process)


def _produce(settings_json: str, rate: float, seconds: float, out: mp.Queue) -> None:
    asyncio.run(_produce_async(Settings.model_validate_json(settings_json), rate, seconds, out))


async def _produce_async(settings: Settings, rate: float, seconds: float, out: mp.Queue) -> None:
    """Verdict batches every 10 ms, sized to the target rate (record batches: the producer is not the limit)."""
    from aiokafka import AIOKafkaProducer

    # one pool of pre-encoded verdicts per source, reused (the console decodes each anyway)
    pool = []
    for i in range(2000):
        src = SOURCES[i % len(SOURCES)]
        score = 1.0 + (i * 7919 % 1000) / 400.0
        (o,) = verdicts(settings, src, [score], 4.0, "sensors", "0001", first_offset=i)
        pool.append((o.key, o.value))
    partitions = settings.topics.partitions
    sent, k = 0, 0
    async with AIOKafkaProducer(linger_ms=5, max_batch_size=1 << 20, **aiokafka_kwargs(settings.kafka)) as producer:
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int(rate * (now - start)) - sent
            if due > 0:
                futures = []
                for p in range(partitions):
                    batch = producer.create_batch()
                    for _ in range(due // partitions + (1 if p < due % partitions else 0)):
                        key, value = pool[k % len(pool)]
                        k += 1
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            futures.append(await producer.send_batch(batch, settings.topics.scores, partition=p))
                            batch = producer.create_batch()
                            batch.append(key=key, value=value, timestamp=None)
                    futures.append(await producer.send_batch(batch, settings.topics.scores, partition=p))
                await asyncio.gather(*futures)
                sent += due
            await asyncio.sleep(0.01)
        out.put({"sent": sent, "seconds": time.monotonic() - start})


# ------------------------------------------------------------------ live page listener


async def listen(url: str, stop_at: float) -> list[float]:
    """Arrival times of the SSE `data:` events of `url` until `stop_at` (monotonic)."""
    import aiohttp

    stamps: list[float] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        while time.monotonic() < stop_at:
            try:
                line = await asyncio.wait_for(response.content.readline(), timeout=max(0.1, stop_at - time.monotonic()))
            except TimeoutError:
                break
            if line.startswith(b"data: "):
                stamps.append(time.monotonic())
    return stamps


def gaps(stamps: list[float], start: float, end: float) -> float:
    points = [start, *stamps, end]
    return max(b - a for a, b in itertools.pairwise(points))


async def phase(settings: Settings, base: str, pid: int, rate: float, seconds: float) -> dict:
    out: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_produce, args=(settings.model_dump_json(), rate, seconds, out))
    h0, c0, t0 = healthz(base)["verdicts_seen"], cpu_seconds(pid), time.monotonic()
    proc.start()
    warm = 3.0  # the producer process starts and the console catches the first wave
    await asyncio.sleep(warm)
    h1, c1, t1 = healthz(base)["verdicts_seen"], cpu_seconds(pid), time.monotonic()
    window_end = t0 + seconds
    source_events, overview_events = await asyncio.gather(
        listen(f"{base}/events/source/{WATCHED}", window_end), listen(f"{base}/events/overview", window_end)
    )
    h2, c2, t2 = healthz(base)["verdicts_seen"], cpu_seconds(pid), time.monotonic()
    produced = out.get(timeout=60)
    proc.join(30)
    await asyncio.sleep(3.0)  # let the console drain what is left
    h3 = healthz(base)["verdicts_seen"]
    span = t2 - t1
    return {
        "target_per_s": rate,
        "produced_per_s": round(produced["sent"] / produced["seconds"], 1),
        "console_read_per_s": round((h2 - h1) / span, 1),
        "console_cpu_cores": round((c2 - c1) / span, 3),
        "console_kept_up": h3 - h0 >= produced["sent"],
        "window_s": round(span, 2),
        "source_page_updates_per_s": round(len(source_events) / span, 2),
        "source_page_max_gap_s": round(gaps(source_events, t1, t2), 3),
        "overview_updates_per_s": round(len(overview_events) / span, 2),
        "overview_max_gap_s": round(gaps(overview_events, t1, t2), 3),
        "idle_cpu_before": round((c1 - c0) / (t1 - t0), 3),
    }


async def run(args: argparse.Namespace, settings: Settings) -> list[dict]:
    t = settings.topics
    await ensure_topics(settings, [t.scores, t.alerts, t.deadletter, t.labels])
    base = f"http://127.0.0.1:{settings.console.port}"
    proc = spawn(settings, "console")
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                if healthz(base)["ready"]:
                    break
            await asyncio.sleep(0.3)
        results = []
        for rate in args.rates:
            row = await phase(settings, base, proc.pid, rate, args.seconds)
            print(orjson.dumps(row).decode(), flush=True)
            results.append(row)
        return results
    finally:
        stop(proc)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["produced_per_s"] / 1000 for r in rows]
    a.plot(x, [r["console_cpu_cores"] for r in rows], "o-", label="console CPU (cores)")
    a.axhline(1.0, color="grey", ls="--", lw=1)
    a.set_xlabel("verdicts produced (thousand/s)")
    a.set_ylabel("cores")
    a.set_title("console CPU")
    a.legend()
    b.plot(x, [r["source_page_updates_per_s"] for r in rows], "o-", label="source page updates/s")
    b.plot(x, [r["overview_updates_per_s"] for r in rows], "s-", label="overview updates/s")
    b.plot(x, [1 / max(r["source_page_max_gap_s"], 1e-3) for r in rows], "^--", label="1 / largest gap (source)")
    b.axhline(1.0, color="grey", ls="--", lw=1)
    b.set_xlabel("verdicts produced (thousand/s)")
    b.set_title("live page updates")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="console-load-"))
    stack = None
    bootstrap, redis_url = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("REDIS_URL")
    if not (bootstrap and redis_url):
        from deploy.localstack import LocalStack

        stack = LocalStack.on_free_ports(tmp / "stack", Path.home() / ".cache" / "linewatch")
        stack.up()
        bootstrap, redis_url = stack.bootstrap, stack.redis_url
    tag = f"load-{uuid.uuid4().hex[:8]}"
    settings = Settings(topics=TopicSettings().prefixed(tag, partitions=4), state_dir=tmp / "state", registry_dir=tmp)
    settings.kafka.bootstrap, settings.redis.url, settings.redis.key_prefix = bootstrap, redis_url, tag
    settings.console.port, settings.console.replay_s = free_port(), 0
    try:
        rows = asyncio.run(run(args, settings))
    finally:
        if stack is not None:
            stack.down()
    payload = {
        "machine": machine(),
        "sources": len(SOURCES),
        "update_interval_s": settings.console.update_interval_s,
        "bucket_s": settings.console.bucket_s,
        "note": "console CPU from /proc of the console process over the measuring window; the producer runs "
        "in its own process on the same machine",
        "rates": rows,
    }
    path = write_json("console_load", payload)
    plot(rows, RESULTS / "console_load.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
