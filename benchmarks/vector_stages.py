"""Where a vector event's microseconds go inside a worker: each pipeline stage timed alone, per event.

    make stack-up && python benchmarks/vector_stages.py [--batch 256] [--events 20000] [--encoding binary]

The same records pass through each stage in the order the worker runs them, batch by batch:
decode (JSON or binary -> arrays), route (source -> model), score (the bare RVAE forward), judge (the
Redis threshold store: one round trip per batch plus the threshold math), build (verdict/alert records as
bytes) and publish (producer send + broker acks). `process_total` is the whole `InspectionPipeline.process`
on the same batches (decode through build, no publish), and `handle_total` adds publishing. Figures are
microseconds per event, medians of 3 passes; writes results/vector_stages.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import machine, write_json
from models import RVAEScorer
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import ensure_topics, redis_client
from stream_app.ops.metrics import WorkerMetrics
from stream_app.registry.versions import Registry
from stream_app.scoring.executor import InferenceExecutor
from stream_app.scoring.heap import freeze_heap
from stream_app.scoring.model_manager import ModelManager
from stream_app.scoring.pipeline import InspectionPipeline
from stream_app.scoring.publishing import Publisher, output_producer
from stream_app.settings import Settings, TopicSettings, load_settings
from stream_app.sim.simulator import normal_vectors
from stream_app.wire.binary_vectors import encode_vector_binary
from stream_app.wire.codecs import encode_vector
from stream_app.wire.ids import event_key
from stream_app.wire.kinds import VECTORS
from stream_app.wire.outputs import verdict_outputs
from stream_app.wire.records import Record

F = 8


def records(data: np.ndarray, topic: str, encoding: str) -> list[Record]:
    encode = encode_vector_binary if encoding == "binary" else encode_vector
    out = []
    for i, row in enumerate(data):
        source = f"line-{i % 2 + 1}/m{i % 4}"
        out.append(Record(topic, i % 2, i // 2, source.encode(), encode(source, row, ts=time.time()), {}))
    return out


async def per_event_us(fn: Callable[[list[Record]], Awaitable[Any] | Any], recs: list[Record], batch: int) -> float:
    """Median over 3 passes of microseconds per event for fn applied to each batch."""
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(recs), batch):
            result = fn(recs[i : i + batch])
            if asyncio.iscoroutine(result):
                await result
        passes.append((time.perf_counter() - started) / len(recs) * 1e6)
    return statistics.median(passes)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = load_settings()
    tmp = Path(tempfile.mkdtemp(prefix="stages-"))
    tag = f"stages-{int(time.time())}"
    settings = Settings(
        app_id=tag, topics=TopicSettings().prefixed(tag, partitions=2), registry_dir=tmp / "registry", state_dir=tmp
    )
    settings.kafka, settings.redis = base.kafka, base.redis
    settings.redis.key_prefix = tag
    scorer = RVAEScorer(n_features=F, device="cpu")
    data = normal_vectors(4000 + args.events, n_features=F, seed=0)  # one line: fit on the first rows
    scorer.fit(data[:4000], epochs=30)
    registry = Registry(settings.registry_dir)
    registry.promote("sensors", registry.publish("sensors", scorer).version)
    await ensure_topics(settings)

    recs = records(data[4000:], settings.topics.vectors, args.encoding)
    redis = redis_client(settings.redis)
    executor = InferenceExecutor()
    models = ModelManager(registry, device="cpu", executor=executor.pool)
    store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
    pipeline = InspectionPipeline(settings, models, store, executor, WorkerMetrics())
    loaded = await models.get("sensors")
    b = args.batch
    out: dict[str, Any] = {
        "machine": machine(),
        "batch": b,
        "events": len(recs),
        "features": F,
        "encoding": args.encoding,
    }
    try:
        async with output_producer(settings.kafka) as producer:
            publisher = Publisher(producer)
            await pipeline.handle("vectors", recs[:b], publisher)  # warm up: Lua, thresholds, caches
            freeze_heap()  # as a worker does once its models are loaded

            def decode(batch: list[Record]) -> list:
                return VECTORS.decode(batch, settings)

            events = {id(r): e for r, e in zip(recs, VECTORS.decode(recs, settings), strict=True)}
            router = pipeline.routers["vectors"]

            def route(batch: list[Record]) -> None:
                for r in batch:
                    router.model_for(events[id(r)].source)

            data = {id(r): events[id(r)].values for r in recs}

            def score(batch: list[Record]) -> np.ndarray:
                return scorer.score(np.stack([data[id(r)] for r in batch]))

            scores = {id(r): s for r, s in zip(recs, scorer.score(np.stack(list(data.values()))), strict=True)}

            async def judge(batch: list[Record]) -> list:
                srcs = [events[id(r)].source for r in batch]
                keys = [event_key(r.topic, r.partition, r.offset) for r in batch]
                sc = np.array([scores[id(r)] for r in batch], np.float32)
                return await store.judge("sensors", loaded.version, scorer.calibration_scores, srcs, sc, keys)

            judgements = []
            for i in range(0, len(recs), b):
                judgements += await judge(recs[i : i + b])
            verdicts = {id(r): j for r, j in zip(recs, judgements, strict=True)}

            def build(batch: list[Record]) -> list:
                evs, js = [events[id(r)] for r in batch], [verdicts[id(r)] for r in batch]
                return verdict_outputs(settings.topics.scores, batch, evs, loaded, js)

            outputs = {id(r): o for r, o in zip(recs, build(recs), strict=True)}

            async def publish(batch: list[Record]) -> None:
                acks = await publisher.send([outputs[id(r)] for r in batch])
                await asyncio.gather(*acks)

            async def process(batch: list[Record]) -> None:
                await pipeline.process("vectors", batch)

            async def handle(batch: list[Record]) -> None:
                await pipeline.handle("vectors", batch, publisher)

            stages = {"decode": decode, "route": route, "score": score, "judge": judge, "build": build}
            stages |= {"publish": publish, "process_total": process, "handle_total": handle}
            out["us_per_event"] = {name: await per_event_us(fn, recs, b) for name, fn in stages.items()}
            print(out["us_per_event"], flush=True)
    finally:
        executor.close()
        await redis.aclose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--encoding", choices=("json", "binary"), default="json")
    p.add_argument("--name", default="vector_stages", help="results/<name>.json")
    args = p.parse_args()
    result = asyncio.run(run(args))
    write_json(args.name, result)


if __name__ == "__main__":
    main()
