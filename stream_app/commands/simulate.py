"""`linewatch simulate`: put a simulated line (stream_app/simulator.py) on the input topics in real time.

Sensor vectors go to `topics.vectors` (key = source, JSON value, header `truth`), frames to `topics.frames`
(PNG bytes, headers source/ts/content-type/truth). `run_simulation` is importable so the demo runs it
in-process; it paces by a schedule (event i is due at i / rate), so a slow moment is caught up, never lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
_TICK_S = 0.02


async def run_simulation(
    settings,
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
    stop_event: asyncio.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Produce `rate` vectors/s in total and `fps` frames/s per camera for `duration` seconds (or until
    `stop_event` is set); return counts: vectors, frames, per-truth counts, sources, elapsed seconds."""
    from aiokafka import AIOKafkaProducer

    from stream_app import codecs
    from stream_app.connections import aiokafka_kwargs, ensure_topics
    from stream_app.simulator import LineSimulator

    sim = LineSimulator(lines, machines, cameras, n_features, fault_rate, defect_rate, drift, image_size, seed)
    topics = settings.topics
    await ensure_topics(settings, [topics.vectors, topics.frames])
    n_vectors = round(rate * duration) if sim.machines else 0
    n_frames = int(fps * duration) * len(sim.cameras)
    frame_rate = fps * len(sim.cameras)
    sent_v = sent_f = 0
    truth_v: Counter[str] = Counter()
    truth_f: Counter[str] = Counter()
    producer = AIOKafkaProducer(
        linger_ms=10,
        max_batch_size=256 * 1024,
        max_request_size=settings.kafka.max_message_bytes,
        **aiokafka_kwargs(settings.kafka),
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
                value = codecs.encode_vector(sample.source, sample.values.tolist(), sample.ts, seq=sent_v)
                headers = [("truth", sample.truth.encode())]
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


def _summary_table(result: dict) -> Table:
    table = Table(title=f"simulated {result['elapsed_s']:.1f} s")
    for col in ("kind", "sent", "per s", "ground truth"):
        table.add_column(col)
    for kind in ("vectors", "frames"):
        truth = ", ".join(f"{k} {v}" for k, v in sorted(result["truth"][kind].items()))
        table.add_row(kind, str(result[kind]), f"{result[kind] / max(result['elapsed_s'], 1e-9):.1f}", truth)
    return table


def simulate(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option(min=1, help="production lines")] = 2,
    machines: Annotated[int, typer.Option(min=0, help="sensor machines per line")] = 2,
    cameras: Annotated[int, typer.Option(min=0, help="cameras per line")] = 1,
    rate: Annotated[float, typer.Option(min=0.0, help="sensor vectors per second, all machines together")] = 200.0,
    fps: Annotated[float, typer.Option(min=0.0, help="frames per second per camera")] = 2.0,
    duration: Annotated[float, typer.Option(min=0.0, help="seconds to run")] = 60.0,
    fault_rate: Annotated[float, typer.Option(min=0.0, max=0.4, help="fraction of faulty sensor events")] = 0.02,
    defect_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="fraction of frames with a defect")] = 0.1,
    drift: Annotated[float, typer.Option(help="operating-point drift, channel sigmas per 1000 events")] = 0.0,
    features: Annotated[int, typer.Option(min=2, help="channels per sensor vector")] = 8,
    image_size: Annotated[int, typer.Option(min=16, help="frame width and height in pixels")] = 64,
    seed: Annotated[int, typer.Option(help="same seed, same line (and same training data)")] = 0,
) -> None:
    """Simulate production lines: sensor vectors and camera frames with labelled faults, in real time."""
    from tqdm import tqdm

    settings = ctx.obj
    bar = tqdm(total=0, unit="ev", desc="simulate", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    async def main() -> dict:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_simulation(
                settings, lines, machines, cameras, rate, fps, duration, fault_rate, defect_rate,
                drift, features, image_size, seed, stop_event=stop, on_progress=progress,
            )
        )  # fmt: skip
        try:
            return await asyncio.shield(task)
        except (asyncio.CancelledError, KeyboardInterrupt):
            stop.set()
            return await task

    try:
        result = asyncio.run(main())
    finally:
        bar.close()
    console.print(_summary_table(result))
    console.print(f"topics: {settings.topics.vectors}, {settings.topics.frames}")


def register(app: typer.Typer) -> None:
    """Add `simulate` to the root CLI."""
    app.command()(simulate)
