"""End-to-end pipeline throughput and latency, side by side with its parts, on the real local stack.

For each data kind (sensor vectors, camera frames), in one run on one machine:

- `raw_consume_per_s`: a bare aiokafka `getmany` loop draining the input topic (no decoding, no scoring), timed
  once the consumer is connected (start-up excluded);
- `raw_model_per_s`: the bare scorer on pre-decoded arrays in `max_batch` chunks (no Kafka, no Redis);
- `naive_per_s`: the same pipeline fed one event at a time (score, Redis judge and acked publish per event);
- `getmany_per_s`: the pipeline fed `getmany(max_records=max_batch)` batches in-process (the aiokafka path);
- `e2e_per_s`: the product: a `linewatch worker` subprocess (default `getmany` micro-batches) draining a
  backlog written once it holds its partitions (so neither start-up nor a fleet's rebalance is timed), timed
  from the first to the last verdict's broker timestamp; `e2e_faust_per_s` the same worker with faust's
  `take_events` agents (`batching.consumer = "faust"`);
- `p50_ms`/`p99_ms`: event time -> verdict broker timestamp while events arrive live at about half of the
  e2e rate;
- vectors only: `e2e_binary_per_s` the same backlog sent in the compact binary encoding, `e2e_2proc_per_s`
  through `linewatch worker --processes 2`, `e2e_64_sources_per_s` the JSON backlog from 64 sources instead of
  4 (each source in a batch adds a fixed judging cost, see judging_sources.py), `e2e_batch256_per_s` with the
  default `max_batch` 256 instead of the 1024 of the other rows (the setting for vector-only workers; frames
  stay at `max_image_batch` 256), and two floors: `floor_consume_produce_per_s`, the getmany loop answering each
  event with one fixed verdict-sized record, and `floor_consume_model_produce_per_s`, the same with the bare
  model on each batch (no decoding, judging or verdict building: what one process writing one record per event
  reaches at most); `*_vs_bound` divides by min(raw consume, bare model).

Run: `make stack-up && python benchmarks/pipeline_bench.py` (writes results/pipeline.json and .png).

Windowed models: `python benchmarks/pipeline_bench.py --windows 1,8` measures only the vector path, once per
RVAE `window` (temporal context), in alternating rounds on one stack of its own (free ports, stopped at the end):
the bare `score_sequences` rate, the in-process getmany pipeline and the `e2e_per_s` of a worker subprocess,
and writes results/windowed.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import machine, own_stack, save_figure, write_json
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records, redis_client
from stream_app.ops.metrics import WorkerMetrics
from stream_app.ops.processes import running, wait_consuming
from stream_app.registry.versions import Registry
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.heap import freeze_heap
from stream_app.scoring.model_manager import ModelManager
from stream_app.scoring.pipeline import InspectionPipeline
from stream_app.scoring.publishing import Publisher, output_producer
from stream_app.settings import Settings, TopicSettings
from stream_app.sim.simulator import normal_images, normal_vectors
from stream_app.wire.binary_vectors import encode_vector_binary
from stream_app.wire.codecs import encode_image, encode_vector, frame_headers
from stream_app.wire.outputs import Output
from stream_app.wire.records import Record

SWEEP = (16, 64, 256, 1024, 4096)


def bench_settings(tmp: Path) -> Settings:
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    topics = TopicSettings().prefixed(tag, partitions=2)
    s = Settings(app_id=tag, topics=topics, registry_dir=tmp / "registry", state_dir=tmp / "state", metrics_port=-1)
    s.worker_processes = 1
    s.batching.max_batch = 1024  # the setting for vector-only workers; frames stay at max_image_batch (256)
    s.redis.key_prefix = tag
    return s


def fit_models(settings: Settings, images_side: int) -> dict[str, Any]:
    from models import RVAEScorer, TransformalyScorer

    registry = Registry(settings.registry_dir)
    vectors = normal_vectors(4000, seed=0)
    rvae = RVAEScorer(n_features=vectors.shape[1], n_layers=2, hidden=64, latent=8, device="cpu")
    rvae.fit(vectors, epochs=20)
    registry.promote("sensors", registry.publish("sensors", rvae).version)
    imgs = normal_images(96, size=images_side, seed=0)
    vit = TransformalyScorer(
        backbone="vit_tiny_patch16_224", pretrained=False, img_size=images_side, epochs=2, device="cpu"
    )
    vit.fit(imgs)
    registry.promote("camera", registry.publish("camera", vit).version)
    return {"vectors": (rvae, vectors), "images": (vit, imgs)}


async def produce(
    settings: Settings,
    kind: str,
    data: np.ndarray,
    n: int,
    rate: float | None = None,
    encoding: str = "json",
    sources: int = 4,
    in_order: bool = False,
) -> None:
    """The load generator: events leave as closed per-partition record batches (the worker's `Publisher`),
    so generating load costs little CPU next to the worker under test on a shared machine. Without `rate` (a
    backlog) every event is encoded before the first is sent, so the worker under test, already consuming,
    shares the cores only with the sending (~0.3 s for 100k vectors), not with the encoding too. With `rate`,
    the events due are sent every 5 ms, each stamped with the time it is sent. Event i comes from source i % sources with row i of `data`, or with `in_order` row i // sources (every
    source sends the rows in their order: a time series, for models with temporal context)."""
    topic = settings.topics.vectors if kind == "vectors" else settings.topics.frames
    payloads = [encode_image(img) for img in data[:64]] if kind == "images" else None

    def event(i: int, now: float) -> Output:
        source = f"line-{i % sources}/m"
        if kind == "vectors":
            encode = encode_vector if encoding == "json" else encode_vector_binary
            row = data[(i // sources if in_order else i) % len(data)]
            return Output(topic, source.encode(), encode(source, row, ts=now), [])
        return Output(topic, source.encode(), payloads[i % len(payloads)], frame_headers(source, ts=now))

    async with output_producer(settings.kafka) as producer:
        publisher, acks = Publisher(producer), []
        if rate is None:  # a backlog: encoded first, then sent as fast as the broker takes it
            backlog = [event(i, time.time()) for i in range(n)]
            for lo in range(0, n, 4096):
                acks += await publisher.send(backlog[lo : lo + 4096])
        else:  # live: the events due every 5 ms, stamped as they leave
            sent, start = 0, time.time()
            while sent < n:
                due = int((time.time() - start) * rate) + 1 - sent
                now = time.time()
                batch = [event(i, now) for i in range(sent, min(n, sent + max(0, due), sent + 1024))]
                acks += await publisher.send(batch)
                sent += len(batch)
                await asyncio.sleep(0.005)
        await asyncio.gather(*acks)


async def drain(settings: Settings, topic: str, n: int, timeout_s: float = 300) -> list:
    return await read_records(settings, topic, lambda r: len(r) >= n, timeout_s, max_records=4096)


async def raw_consume_rate(
    settings: Settings,
    topic: str,
    n: int,
    timeout_s: float = 300,
    passes: int = 3,
    max_records: int = 4096,
    work: Callable[[list], Awaitable[None]] | None = None,
) -> tuple[list, list[float]]:
    """The backlog's n records and the drain rate of each of `passes` passes of a bare aiokafka `getmany` loop,
    once connected (a first fetch warms the consumer up: connection, metadata, fetch sessions). Each pass reads
    the backlog from its start; `work`, if given, is awaited on each getmany's records (the floors below). On the
    shared VM passes come in two modes, ~250k and ~900k records/s: the slow ones wait on fetches, the fast ones
    are the client's per-record cost, so the fastest pass is the bound."""
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **aiokafka_kwargs(settings.kafka))
    await consumer.start()
    deadline = time.monotonic() + timeout_s
    rates, first = [], []
    try:
        while not await consumer.getmany(timeout_ms=500, max_records=1):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing to read on {topic} in {timeout_s} s")
        for i in range(passes):
            await consumer.seek_to_beginning()
            count, keep = 0, i == 0 and work is None  # the floors keep no records alive, as a worker does not
            started = time.perf_counter()
            while count < n and time.monotonic() < deadline:
                batches = (await consumer.getmany(timeout_ms=500, max_records=max_records)).values()
                got = [r for part in batches for r in part]
                if work is not None and got:
                    await work(got)
                count += len(got)
                if keep:
                    first.extend(got)
            rates.append(count / (time.perf_counter() - started))
            if count < n:
                raise RuntimeError(f"read {count} of {n} records of {topic} in {timeout_s} s")
    finally:
        await consumer.stop()
    return first, rates


async def floor_rates(settings: Settings, topic: str, n: int, scorer: Any, data: np.ndarray) -> dict[str, Any]:
    """What any one-process aiokafka worker that writes one record per event can reach at most: the getmany
    loop in `max_batch` batches, each event answered by a fixed verdict-sized record (`Publisher`, acks awaited
    at the end of the pass), and the same with the bare model scoring each batch's pre-decoded rows. No decoding,
    judging or verdict building: the product's e2e can only be slower. Fastest of 3 passes each."""
    verdict = orjson.dumps(
        {"source": "line-0/m", "topic": topic, "partition": 0, "offset": 123456, "ts": time.time(), "score": 0.1234,
         "threshold": 0.5678, "anomalous": False, "model": "sensors", "version": "v-0123456789ab", "incident_id": None}
    )  # fmt: skip
    size = settings.batching.size_for("vectors")
    reps = np.concatenate([data] * (size // len(data) + 1))[:size]
    out: dict[str, Any] = {}
    floor_topic = f"{topic}.floor"
    await ensure_topics(settings, [floor_topic])
    thresholds, threads = gc.get_threshold(), torch.get_num_threads()
    freeze_heap()  # the collector and torch's threads as a worker sets them
    torch.set_num_threads(1)
    async with output_producer(settings.kafka) as producer:
        publisher = Publisher(producer)
        for name, model in (("floor_consume_produce", None), ("floor_consume_model_produce", scorer)):
            acks: list[asyncio.Future] = []

            async def answer(records: list, model: Any = model, acks: list = acks) -> None:
                if model is not None:
                    model.score(reps[: len(records)])
                acks.extend(await publisher.send([Output(floor_topic, r.key, verdict, []) for r in records]))

            _, passes = await raw_consume_rate(settings, topic, n, max_records=size, work=answer)
            await asyncio.gather(*acks)
            out[f"{name}_per_s"], out[f"{name}_passes_per_s"] = max(passes), passes
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    torch.set_num_threads(threads)
    return out


async def in_process_rates(
    settings: Settings, kind: str, n: int, naive_n: int, sweep: tuple[int, ...] = ()
) -> dict[str, Any]:
    """raw consume, getmany pipeline and naive per-event pipeline, in this process."""
    topic = settings.topics.vectors if kind == "vectors" else settings.topics.frames
    records, passes = await raw_consume_rate(settings, topic, n)

    redis = redis_client(settings.redis)
    executor = InferenceExecutor()
    models = ModelManager(Registry(settings.registry_dir), device="cpu", executor=executor.pool)
    store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
    pipeline = InspectionPipeline(settings, models, store, executor, WorkerMetrics())
    recs = [Record.of(r, r.timestamp) for r in records]
    out: dict[str, Any] = {"raw_consume_per_s": max(passes), "raw_consume_passes_per_s": passes}
    try:
        async with output_producer(settings.kafka) as producer:
            publisher = Publisher(producer)
            await pipeline.handle(kind, recs[:8], publisher)  # warm up: model load, Lua registration
            b = settings.batching.size_for(kind)
            started = time.perf_counter()
            for i in range(0, len(recs), b):
                await pipeline.handle(kind, recs[i : i + b], publisher)
            out["getmany_per_s"] = len(recs) / (time.perf_counter() - started)
            if sweep:  # throughput and batch time against max_batch, same records; median of 3 passes
                out["max_batch_sweep"] = []
                for size in sweep:
                    rates, p99s = [], []
                    for _ in range(3):
                        times, started = [], time.perf_counter()
                        for i in range(0, len(recs), size):
                            t0 = time.perf_counter()
                            await pipeline.handle(kind, recs[i : i + size], publisher)
                            times.append(time.perf_counter() - t0)
                        rates.append(len(recs) / (time.perf_counter() - started))
                        p99s.append(float(np.percentile(times, 99) * 1000))
                    out["max_batch_sweep"].append(
                        {"max_batch": size, "per_s": float(np.median(rates)), "batch_p99_ms": float(np.median(p99s))}
                    )
            started = time.perf_counter()
            for rec in recs[:naive_n]:
                await pipeline.handle(kind, [rec], publisher)
            out["naive_per_s"] = naive_n / (time.perf_counter() - started)
    finally:
        executor.close()
        await redis.aclose()
    return out


def raw_model_rate(scorer: Any, data: np.ndarray, n: int, max_batch: int) -> float:
    reps = np.concatenate([data] * (n // len(data) + 1))[:n]
    scorer.score(reps[:8])
    started = time.perf_counter()
    for i in range(0, n, max_batch):
        scorer.score(reps[i : i + max_batch])
    return n / (time.perf_counter() - started)


def drain_rate(stamps_ms: np.ndarray) -> float:
    """Events/s from verdict broker timestamps: the first batch's verdicts mark the start, so they are not
    counted (counting them would credit the worker with a batch it scored before the clock started)."""
    first = stamps_ms.min()
    later = stamps_ms[stamps_ms > first + 5.0]
    return len(later) / max(1e-9, (stamps_ms.max() - first) / 1000.0)


def verdict_latencies_ms(records: list) -> np.ndarray:
    return np.array([r.timestamp - orjson.loads(r.value)["ts"] * 1000.0 for r in records])


async def bench_kind(settings: Settings, kind: str, scorer: Any, data: np.ndarray, n: int, naive_n: int) -> dict:
    await produce(settings, kind, data, n)
    result: dict[str, Any] = {"events": n}
    result["raw_model_per_s"] = raw_model_rate(scorer, data, n, settings.batching.size_for(kind))
    result |= await in_process_rates(settings, kind, n, naive_n, sweep=SWEEP if kind == "vectors" else ())
    if kind == "vectors":
        result |= await floor_rates(settings, settings.topics.vectors, n, scorer, data)

    # The product: worker subprocesses (own group, own input and verdict topics) drain a backlog written once they
    # all hold partitions; then the default getmany worker also serves live traffic for the latency figures.
    result["e2e_faust_per_s"] = await e2e_variant(settings, kind, data, n, "faust", consumer="faust")
    result["e2e_per_s"] = await e2e_variant(settings, kind, data, n, "getmany")
    worker_settings = variant_settings(settings, kind, "live")
    await ensure_topics(worker_settings, variant_topics(worker_settings))
    with running(worker_settings, "worker", "-l", "warning", "--processes", "1"):
        await wait_consuming(worker_settings, input_topic(worker_settings, kind), 1)
        live_n, rate = max(200, n // 20), result["e2e_per_s"] / 2
        live_start = time.time()
        await produce(worker_settings, kind, data, live_n, rate=rate)
        everything = await drain(worker_settings, worker_settings.topics.scores, live_n)
    live = [r for r in everything if orjson.loads(r.value)["ts"] >= live_start]
    if not live:
        raise RuntimeError(
            f"no live verdicts: {len(everything)} verdicts, ts range "
            f"{min(orjson.loads(r.value)['ts'] for r in everything) - live_start:.1f}.."
            f"{max(orjson.loads(r.value)['ts'] for r in everything) - live_start:.1f} s from live start"
        )
    lat = verdict_latencies_ms(live)
    result |= {
        "live_events": len(live),
        "live_rate_per_s": rate,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_batch": settings.batching.size_for(kind),
        "max_wait_ms": settings.batching.max_wait_ms,
        "machine": machine(),
    }
    result["e2e_vs_raw_model"] = result["e2e_per_s"] / result["raw_model_per_s"]
    result["e2e_vs_naive"] = result["e2e_per_s"] / result["naive_per_s"]
    result["e2e_vs_faust"] = result["e2e_per_s"] / result["e2e_faust_per_s"]
    result["e2e_vs_raw_consume"] = result["e2e_per_s"] / result["raw_consume_per_s"]
    bound = min(result["raw_consume_per_s"], result["raw_model_per_s"])
    result["e2e_vs_bound"] = result["e2e_per_s"] / bound  # bound = min(raw consume, bare model)
    if kind == "vectors":  # the same backlog as compact binary vectors, and through two inference processes
        variants = (("e2e_binary_per_s", "binary", 1, 4, None), ("e2e_2proc_per_s", "json", 2, 4, None),
                    ("e2e_64_sources_per_s", "json", 1, 64, None), ("e2e_batch256_per_s", "json", 1, 4, 256))  # fmt: skip
        for key, encoding, processes, sources, max_batch in variants:
            result[key] = await e2e_variant(
                settings, kind, data, n, key, encoding, processes, sources=sources, max_batch=max_batch
            )
            result[key.replace("_per_s", "_vs_bound")] = result[key] / bound
        for key in ("floor_consume_produce_per_s", "floor_consume_model_produce_per_s"):
            result[key.replace("_per_s", "_vs_bound")] = result[key] / bound
    return result


def variant_settings(settings: Settings, kind: str, tag: str, consumer: str = "getmany") -> Settings:
    """Settings of a worker phase: its own group, input, verdict topic and an idle topic for the other kind."""
    s = settings.model_copy(update={"app_id": f"{settings.app_id}-{kind}-{tag}", "metrics_port": 0}, deep=True)
    s.topics.vectors = f"{settings.topics.vectors}.{tag}" if kind == "vectors" else f"{s.app_id}.idle-vectors"
    s.topics.frames = f"{settings.topics.frames}.{tag}" if kind == "images" else f"{s.app_id}.idle-frames"
    s.topics.scores = f"{settings.topics.scores}.{kind}-{tag}"
    s.batching.consumer = consumer  # type: ignore[assignment]
    return s


def variant_topics(s: Settings) -> list[str]:
    return [s.topics.vectors, s.topics.frames, s.topics.scores]


def input_topic(s: Settings, kind: str) -> str:
    return s.topics.vectors if kind == "vectors" else s.topics.frames


async def e2e_variant(
    settings: Settings,
    kind: str,
    data: np.ndarray,
    n: int,
    tag: str,
    encoding: str = "json",
    processes: int = 1,
    consumer: str = "getmany",
    sources: int = 4,
    max_batch: int | None = None,
) -> float:
    """Drain rate of a worker (`processes` inference processes) over a backlog of n events from `sources`
    sources, written once every process holds its partitions (so no start-up or rebalance is timed)."""
    s = variant_settings(settings, kind, tag, consumer)
    s.batching.max_batch = max_batch or s.batching.max_batch
    await ensure_topics(s, variant_topics(s))
    with running(s, "worker", "-l", "warning", "--processes", str(processes)):
        await wait_consuming(s, input_topic(s, kind), processes)
        await produce(s, kind, data, n, encoding=encoding, sources=sources)
        verdicts = await drain(s, s.topics.scores, n)
    return drain_rate(np.array([r.timestamp for r in verdicts], np.float64))


def raw_sequence_rate(scorer: Any, data: np.ndarray, n: int, max_batch: int, sources: int) -> float:
    """The bare windowed scorer as the worker calls it: `score_sequences` on batches of `max_batch` rows from
    `sources` sources, each source's history carried from batch to batch."""
    in_order = np.repeat(data, sources, axis=0)  # event i: source i % sources, row i // sources (`produce`)
    reps = np.tile(in_order, (n // len(in_order) + 1, 1))[:n]
    history: list[np.ndarray | None] = [None] * sources
    scorer.score_sequences([(None, reps[:8])])  # warm up, as `raw_model_rate`
    started = time.perf_counter()
    for i in range(0, n, max_batch):
        batch = reps[i : i + max_batch]
        mine = [batch[(np.arange(len(batch)) + i) % sources == s] for s in range(sources)]
        live = [s for s in range(sources) if len(mine[s])]
        out = scorer.score_sequences([(history[s], mine[s]) for s in live])
        for s, (_, after) in zip(live, out, strict=True):
            history[s] = after
    return n / (time.perf_counter() - started)


async def windowed_round(settings: Settings, scorer: Any, data: np.ndarray, n: int, sources: int) -> dict[str, float]:
    """One measurement of one window: fresh topics and keys, the same n events from `sources` sources."""
    tag = uuid.uuid4().hex[:6]
    s = settings.model_copy(update={"app_id": f"{settings.app_id}-{tag}"}, deep=True)
    s.topics = TopicSettings().prefixed(s.app_id, partitions=2)
    s.redis.key_prefix = s.app_id
    await ensure_topics(s)
    await produce(s, "vectors", data, n, sources=sources, in_order=True)
    inproc = await in_process_rates(s, "vectors", n, naive_n=50)
    out = {k: inproc[k] for k in ("raw_consume_per_s", "getmany_per_s")}
    s.redis.key_prefix = f"{s.app_id}-worker"  # the worker judges the events afresh, not as replays
    with running(s, "worker", "-l", "warning"):
        verdicts = await drain(s, s.topics.scores, n)
    out["e2e_per_s"] = drain_rate(np.array([r.timestamp for r in verdicts], np.float64))
    out["anomalous_share"] = float(np.mean([orjson.loads(r.value)["anomalous"] for r in verdicts]))
    return out


def bare_rates(scorers: dict[int, Any], data: np.ndarray, n: int, max_batch: int, sources: int, passes: int) -> dict:
    """The bare scorer of each window called as the worker calls it (`score`, or `score_sequences` with carried
    history), on one torch thread (a second one mostly spins on a shared 2-CPU machine), alternating windows."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates: dict[int, list[float]] = {w: [] for w in scorers}
    try:
        for _ in range(passes):
            for w, scorer in scorers.items():
                rate = raw_sequence_rate if w > 1 else (lambda s, d, n, b, _: raw_model_rate(s, d, n, b))
                rates[w].append(rate(scorer, data, n, max_batch, sources))
    finally:
        torch.set_num_threads(threads)
    return rates


async def windowed(args: argparse.Namespace, stack: Any, tmp: Path) -> dict[str, Any]:
    """The vector path with RVAE windows side by side, rounds alternating so both share the machine's load."""
    from models import RVAEScorer

    windows = [int(w) for w in args.windows.split(",")]
    settings = bench_settings(tmp)
    settings.kafka.bootstrap, settings.redis.url = stack.bootstrap, stack.redis_url
    vectors = normal_vectors(4000, seed=0)
    registry, scorers, versions = Registry(settings.registry_dir), {}, {}
    for w in windows:  # one version of the model per window; each round promotes the one it measures
        scorers[w] = RVAEScorer(n_features=vectors.shape[1], n_layers=2, hidden=64, latent=8, window=w,
                                device="cpu")  # fmt: skip
        scorers[w].fit(vectors, epochs=args.epochs)
        versions[w] = registry.publish("sensors", scorers[w]).version
    load_before = os.getloadavg()
    rounds: dict[int, list[dict[str, float]]] = {w: [] for w in windows}
    for _ in range(args.rounds):
        for w in windows:
            registry.promote("sensors", versions[w])
            rounds[w].append(await windowed_round(settings, scorers[w], vectors, args.vectors, args.sources))
    bare = bare_rates(scorers, vectors, args.vectors, settings.batching.max_batch, args.sources, passes=5)
    load_after = os.getloadavg()
    keys = ["raw_consume_per_s", "getmany_per_s", "e2e_per_s", "anomalous_share"]
    per_window: dict[str, dict[str, Any]] = {
        str(w): {
            "window": w,
            "raw_model_per_s": float(np.median(bare[w])),
            **{k: float(np.median([r[k] for r in rounds[w]])) for k in keys},
            "raw_model_passes": bare[w],
            "rounds": rounds[w],
        }
        for w in windows
    }
    base = per_window[str(windows[0])]
    for r in per_window.values():
        r["e2e_vs_first"] = r["e2e_per_s"] / base["e2e_per_s"]
        r["raw_model_vs_first"] = r["raw_model_per_s"] / base["raw_model_per_s"]
    return {
        "windows": per_window,
        "events": args.vectors,
        "sources": args.sources,
        "rounds": args.rounds,
        "max_batch": Settings().batching.max_batch,
        "max_wait_ms": Settings().batching.max_wait_ms,
        "model": "RVAEScorer(n_features=8, n_layers=2, hidden=64, latent=8, window=W), CPU",
        "machine": machine(),
        "load_average_1m": {"before": load_before[0], "after": load_after[0]},
        "notes": "rates are medians over alternating rounds (window 1, window 8, window 1, ...) on one stack of its "
        "own; each source sends the model's training rows in order (a time series); raw_model_per_s is the bare "
        "scorer as the worker calls it, on 1 torch thread, median of 5 alternating passes; the worker uses torch's "
        "default threads. The machine was shared with other jobs (load_average_1m far above its 2 CPUs), so "
        "absolute rates are low and noisy: read the ratio between windows",
    }


def plot_windowed(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["raw_model_per_s", "getmany_per_s", "e2e_per_s"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(results["windows"])
    for n, (w, r) in enumerate(results["windows"].items()):
        ax.bar(np.arange(len(keys)) + n * width, [r[k] for k in keys], width, label=f"window {w}")
    labels = ["bare model (1 thread)", "pipeline in-process", "worker end to end"]
    ax.set_xticks(np.arange(len(keys)) + width * (len(results["windows"]) - 1) / 2, labels)
    ax.set_yscale("log")
    ax.set_ylabel("vectors/s")
    ax.legend(fontsize=8)
    ax.set_title(f"RVAE window: vector throughput, {results['sources']} sources (medians)", fontsize=9)
    fig.suptitle(f"{results['machine'][:100]}; load {results['load_average_1m']['before']:.1f}", fontsize=7)
    save_figure(fig, "windowed")


def plot(results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["raw_consume_per_s", "raw_model_per_s", "e2e_per_s", "e2e_faust_per_s", "getmany_per_s", "naive_per_s"]
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(6 * (len(results) + 1), 4))
    floors = ["floor_consume_produce_per_s", "floor_consume_model_produce_per_s"]
    for ax, (kind, r) in zip(axes[:-1], results.items(), strict=True):
        shown = keys + [k for k in floors if k in r]
        ax.bar([k.replace("_per_s", "").replace("floor_consume_", "floor_") for k in shown], [r[k] for k in shown])
        ax.set_yscale("log")
        ax.set_title(f"{kind}: events/s (p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms)")
        ax.tick_params(axis="x", rotation=30)
    sweep = results["vectors"]["max_batch_sweep"]
    ax = axes[-1]
    ax.plot([p["max_batch"] for p in sweep], [p["per_s"] for p in sweep], "o-", label="vectors/s (in-process getmany)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max_batch")
    ax2 = ax.twinx()
    ax2.plot([p["max_batch"] for p in sweep], [p["batch_p99_ms"] for p in sweep], "s--", color="tab:red",
             label="batch time p99 (ms)")  # fmt: skip
    ax.set_title("vectors: throughput and p99 batch time vs max_batch")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    fig.suptitle(machine()[:110], fontsize=8)
    save_figure(fig, "pipeline")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(Path(tmp))
        await ensure_topics(settings)
        fitted = fit_models(settings, args.image_side)
        return {
            "vectors": await bench_kind(settings, "vectors", *fitted["vectors"], n=args.vectors, naive_n=500),
            "images": await bench_kind(settings, "images", *fitted["images"], n=args.images, naive_n=60),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=100000)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--image-side", type=int, default=64)
    parser.add_argument("--windows", help="e.g. 1,8: only the vector path, once per RVAE window (windowed.json)")
    parser.add_argument("--sources", type=int, default=4, help="--windows: sources the events come from")
    parser.add_argument("--rounds", type=int, default=2, help="--windows: alternating rounds per window")
    parser.add_argument("--epochs", type=int, default=20, help="--windows: epochs of each model's fit")
    args = parser.parse_args()
    if args.windows:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="windowed-bench-") as tmp, own_stack(Path(tmp) / "stack") as stack:
            results = asyncio.run(windowed(args, stack, Path(tmp)))
        write_json("windowed", results)
        plot_windowed(results)
        print(json.dumps(results, indent=2))
        return

    from deploy.localstack import LocalStack

    LocalStack.from_settings(Settings()).up()  # the dev stack (make stack-up), started if needed
    results = asyncio.run(run(args))
    write_json("pipeline", results)
    plot(results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
