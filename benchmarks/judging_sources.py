"""Judging cost per event against how many sources a micro-batch spreads over: the threshold store's whole
`judge` (thresholds, incidents, verdict memory, one Lua compare-and-set on the local Redis).

    make stack-up && python benchmarks/judging_sources.py      # writes results/judging_sources.{json,png}

Each source in a batch adds a fixed cost (its Redis key, its state, its verdicts), so a worker whose batches hold
a few events of many sources spends more per event than one with many events of a few. Two states: `fresh`
(calibrated on 2,000 scores: 40 peaks kept) and `full` (calibrated on 100,000: the 2,000-peak window a source
reaches after a day at 1 Hz, the steady state). Each figure is the median of 3 passes of wall time per event over
`--events` exponential scores (SPOT, risk 1e-3), event i from source i % sources, after one warm-up pass.
`--label` names the run in the JSON (e.g. the commit), so a run of an earlier version sits beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from stream_app.wire.ids import event_key

SOURCES = (4, 16, 64, 256)
BATCHES = (256, 1024)
WINDOWS = {"fresh": 2000, "full": 100_000}  # calibration scores: 40 and 2,000 peaks above t (the 0.98 quantile)


async def per_event_us(
    store: ThresholdStore, scores: np.ndarray, sources: int, batch: int, passes: int, calibration: int = 2000
) -> float:
    cal = np.random.default_rng(1).exponential(size=calibration)
    srcs = [f"line-{i % sources}/m" for i in range(scores.size)]
    keys = [event_key("bench", 0, i) for i in range(scores.size * (passes + 1))]
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
    out: dict[str, Any] = {"machine": machine(), "events": args.events, "label": args.label, "us_per_event": {}}
    try:
        for window, calibration in WINDOWS.items():
            for batch in BATCHES:
                for sources in SOURCES:
                    prefix = f"judging-sources-{time.time()}"
                    store = ThresholdStore(redis, settings.thresholds, settings.incidents, prefix)
                    us = await per_event_us(store, scores, sources, batch, args.passes, calibration)
                    out["us_per_event"][f"{window}/{batch}/{sources}"] = us
                    print(f"{window} window, batch {batch}, {sources} sources: {us:.1f} us per event", flush=True)
                    await store.clear()
    finally:
        await redis.aclose()
    return out


def plot(results: dict[str, Any], before: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WINDOWS), figsize=(10, 4), sharey=True)
    for ax, window in zip(axes, WINDOWS, strict=True):
        for batch, color in zip(BATCHES, ("C0", "C1"), strict=True):
            keys = [f"{window}/{batch}/{s}" for s in SOURCES]
            ax.plot(SOURCES, [results["us_per_event"][k] for k in keys], "o-", color=color,
                    label=f"max_batch {batch} ({results['label']})")  # fmt: skip
            if before and all(k in before["us_per_event"] for k in keys):
                ax.plot(SOURCES, [before["us_per_event"][k] for k in keys], "o--", color=color, alpha=0.5,
                        label=f"max_batch {batch} ({before['label']})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sources in a batch")
        ax.set_title(f"{window} peak window", fontsize=9)
    axes[0].set_ylabel("judging, µs per event")
    axes[0].legend(fontsize=7)
    fig.suptitle(results["machine"][:100], fontsize=7)
    save_figure(fig, "judging_sources")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20480)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--label", default="this version", help="what this run measures (e.g. a commit)")
    parser.add_argument("--before", type=Path, help="a JSON this script wrote for an earlier version: kept beside")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    before = json.loads(args.before.read_text()) if args.before else None
    if before:
        results["before"] = before
    write_json("judging_sources", results)
    plot(results, before)


if __name__ == "__main__":
    main()
