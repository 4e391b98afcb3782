"""Judging cost per event against how many sources a micro-batch spreads over: the threshold store's whole
`judge` (thresholds, incidents, verdict memory, one Lua compare-and-set on the local Redis).

    make stack-up && python benchmarks/judging_sources.py      # writes results/judging_sources.{json,png}

Judging is one numpy pass per source per batch, so each source in a batch adds a fixed cost: a worker whose
batches hold a few events of many sources spends more per event than one with many events of a few. Each
figure is the median of 3 passes of wall time per event over `--events` exponential scores (SPOT, risk 1e-3),
event i from source i % sources, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import machine, save_figure, write_json
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import redis_client
from stream_app.settings import load_settings
from stream_app.wire.outputs import alert_id

SOURCES = (4, 16, 64, 256)
BATCHES = (256, 1024)


async def per_event_us(store: ThresholdStore, scores: np.ndarray, sources: int, batch: int, passes: int) -> float:
    cal = np.random.default_rng(1).exponential(size=2000)
    srcs = [f"line-{i % sources}/m" for i in range(scores.size)]
    keys = [alert_id("bench", 0, i) for i in range(scores.size * (passes + 1))]
    times = []
    for p in range(passes + 1):  # the first pass warms the cache and Lua; fresh keys each pass: no replays
        started = time.perf_counter()
        for lo in range(0, scores.size, batch):
            hi = min(lo + batch, scores.size)
            offset = p * scores.size
            await store.judge("m", "v", cal, srcs[lo:hi], scores[lo:hi], keys[offset + lo : offset + hi])
        if p:
            times.append((time.perf_counter() - started) / scores.size * 1e6)
    return statistics.median(times)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    redis = redis_client(settings.redis)
    scores = np.random.default_rng(0).exponential(size=args.events)
    out: dict[str, Any] = {"machine": machine(), "events": args.events, "us_per_event": {}}
    try:
        for batch in BATCHES:
            for sources in SOURCES:
                store = ThresholdStore(redis, settings.thresholds, settings.incidents, f"judging-sources-{time.time()}")
                us = await per_event_us(store, scores, sources, batch, args.passes)
                out["us_per_event"][f"{batch}/{sources}"] = us
                print(f"batch {batch}, {sources} sources: {us:.1f} us per event", flush=True)
                await store.clear()
    finally:
        await redis.aclose()
    return out


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in BATCHES:
        ax.plot(SOURCES, [results["us_per_event"][f"{batch}/{s}"] for s in SOURCES], "o-", label=f"max_batch {batch}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sources in a batch")
    ax.set_ylabel("judging, µs per event")
    ax.legend()
    fig.suptitle(results["machine"][:100], fontsize=7)
    save_figure(fig, "judging_sources")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20480)
    parser.add_argument("--passes", type=int, default=3)
    results = asyncio.run(run(parser.parse_args()))
    write_json("judging_sources", results)
    plot(results)


if __name__ == "__main__":
    main()
