"""Put a simulated line (`sim.simulator`) on the input topics in real time.

Sensor vectors go to `topics.vectors` (key = source, JSON value, header `truth`), frames to `topics.frames`
(PNG bytes, headers source/ts/content-type/truth). Paced by a schedule (event i is due at i / rate), so a
slow moment is caught up, never lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from stream_app.settings import Settings

_TICK_S = 0.02


async def run_simulation(
    settings: Settings,
    lines: int = 2,
    machines: int = 2,
    cameras: int = 1,
    rate: float = 200.0,
    fps: float = 2.0,
    duration: float = 60.0,
    fault_rate: float = 0.02,
    defect_rate: float = 0.1,
    drift: float = 0.0,
    n_features: int = 8,
    image_size: int = 64,
    seed: int = 0,
    encoding: str = "json",
    stop_event: asyncio.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Produce `rate` vectors/s in total and `fps` frames/s per camera for `duration` seconds (or until
    `stop_event` is set); return counts: vectors, frames, per-truth counts, sources, elapsed seconds."""
    from stream_app.ops.connections import ensure_topics, kafka_producer
    from stream_app.sim.simulator import LineSimulator
    from stream_app.wire import codecs
    from stream_app.wire.binary_vectors import CONTENT_TYPE as BINARY_CONTENT_TYPE
    from stream_app.wire.binary_vectors import encode_vector_binary

    if encoding not in ("json", "binary"):
        raise ValueError(f"expected encoding 'json' or 'binary', got {encoding!r}")
    encode = codecs.encode_vector if encoding == "json" else encode_vector_binary
    vector_headers = [] if encoding == "json" else [("content-type", BINARY_CONTENT_TYPE.encode())]
    sim = LineSimulator(lines, machines, cameras, n_features, fault_rate, defect_rate, drift, image_size, seed)
    topics = settings.topics
    await ensure_topics(settings, [topics.vectors, topics.frames])
    n_vectors = round(rate * duration) if sim.machines else 0
    n_frames = int(fps * duration) * len(sim.cameras)
    frame_rate = fps * len(sim.cameras)
    sent_v = sent_f = 0
    truth_v: Counter[str] = Counter()
    truth_f: Counter[str] = Counter()
    producer = kafka_producer(
        settings.kafka, linger_ms=10, max_batch_size=256 * 1024, max_request_size=settings.kafka.max_message_bytes
    )
    await producer.start()
    started = time.monotonic()
    try:
        while sent_v < n_vectors or sent_f < n_frames:
            if stop_event is not None and stop_event.is_set():
                break
            elapsed = time.monotonic() - started
            due_v = min(n_vectors, int(elapsed * rate) + 1)
            due_f = min(n_frames, int(elapsed * frame_rate) + 1) if frame_rate else 0
            acks = []
            while sent_v < due_v:
                sample = sim.machines[sent_v % len(sim.machines)].next(time.time())
                value = encode(sample.source, sample.values, sample.ts, seq=sent_v)
                headers = [("truth", sample.truth.encode()), *vector_headers]
                acks.append(await producer.send(topics.vectors, value, key=sample.source.encode(), headers=headers))
                truth_v[sample.truth] += 1
                sent_v += 1
            while sent_f < due_f:
                frame = sim.cameras[sent_f % len(sim.cameras)].next(time.time())
                headers = codecs.frame_headers(frame.source, frame.ts, extra={"truth": frame.truth})
                value = codecs.encode_image(frame.image)
                acks.append(await producer.send(topics.frames, value, key=frame.source.encode(), headers=headers))
                truth_f[frame.truth] += 1
                sent_f += 1
            if acks:
                await asyncio.gather(*acks)
            if on_progress:
                on_progress(sent_v + sent_f, n_vectors + n_frames)
            await asyncio.sleep(_TICK_S)
        await producer.flush()
    finally:
        await producer.stop()
    elapsed = time.monotonic() - started
    return {
        "vectors": sent_v,
        "frames": sent_f,
        "truth": {"vectors": dict(truth_v), "frames": dict(truth_f)},
        "sources": {"vectors": [m.source for m in sim.machines], "frames": [c.source for c in sim.cameras]},
        "elapsed_s": elapsed,
        "vectors_per_s": sent_v / elapsed if elapsed else 0.0,
    }
