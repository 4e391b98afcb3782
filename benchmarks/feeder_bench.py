"""Camera feeder throughput: frames/s and CPU per frame, PNG vs JPEG, 512x512 and 2048x512 mono, from Aravis's
Fake camera and from an H.264 MP4, through the real feeder (`feed.sources.feed_source`) into a real Kafka broker.

Each case sends `--frames` frames as fast as the source gives them: the Fake camera is asked for
`--camera-fps` frames per second (it generates them in its own thread, so the rate reached says whether the
feeder kept up; frames it had no free buffer for are the `underruns`), the MP4 is decoded as fast as FFmpeg can.
Rates and CPU are measured from the first acknowledged frame to the last (opening the camera or file and
connecting to Kafka are `startup_s`). CPU per frame is the process's CPU time (all threads: capture, decode,
encode, Kafka client) per frame. On a shared machine `cpu_cores_busy` well below the cores available means the
process was waiting for a CPU: frames/s then says more about the machine's load than about the feeder.
`encode_only_ms` is one PNG/JPEG encode of that frame size in one thread, for comparison.

Run: `python benchmarks/feeder_bench.py` (starts its own Kafka on free ports in a temporary directory and stops
it at the end; writes results/feeder.json and .png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine, save_figure, write_json
from stream_app.feed.captures import Backoff
from stream_app.feed.encoding import encode
from stream_app.feed.genicam import GenicamConfig, GenicamSource
from stream_app.feed.sources import LiveOptions, feed_source
from stream_app.feed.video import VideoSource
from stream_app.settings import Settings, TopicSettings

SIZES = {"512x512": (512, 512), "2048x512": (2048, 512)}  # width x height
ENCODINGS = ("png", "jpeg")


def write_clip(path: Path, width: int, height: int, n: int) -> Path:
    """A grey H.264 MP4 of a moving woven texture: what a line camera's recording looks like."""
    import av

    rng = np.random.default_rng(0)
    xx = np.arange(width, dtype=np.float32)[None, :]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            img = 110 + 40 * np.sin(0.3 * xx + i * 0.2) + rng.normal(0, 6, (height, width))
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="gray")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def encode_only_ms(width: int, height: int, encoding: str, repeats: int = 10) -> float:
    rng = np.random.default_rng(1)
    xx = np.arange(width, dtype=np.float32)[None, :]
    img = np.clip(110 + 40 * np.sin(0.3 * xx) + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)
    encode(img, encoding)  # type: ignore[arg-type]
    start = time.process_time()
    for _ in range(repeats):
        encode(img, encoding)  # type: ignore[arg-type]
    return (time.process_time() - start) / repeats * 1e3


async def one_case(settings: Settings, source: Any, encoding: str, frames: int, workers: int) -> dict[str, Any]:
    """Steady-state figures from the first acknowledged frame to the last (start-up excluded, reported apart)."""
    sizes: list[int] = []
    marks: list[tuple[float, float]] = []  # (wall, process CPU) at each acknowledged frame

    def on_frame(frame, sent: bool) -> None:
        if sent:
            sizes.append(len(frame.data))
            marks.append((time.perf_counter(), time.process_time()))

    options = LiveOptions(encoding=encoding, max_frames=frames, encode_workers=workers)  # type: ignore[arg-type]
    wall0 = time.perf_counter()
    report = await feed_source(settings, source, "bench-cam", options, on_frame=on_frame)
    if report.failure or len(marks) < 2:
        raise RuntimeError(report.failure or f"only {len(marks)} frames sent")
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    n = len(marks) - 1  # frames acknowledged after the first
    return {
        "frames": report.sent,
        "frames_per_s": round(n / (w1 - w0), 1),
        "cpu_ms_per_frame": round((c1 - c0) / n * 1e3, 2),
        "cpu_cores_busy": round((c1 - c0) / (w1 - w0), 2),
        "startup_s": round(w0 - wall0, 2),
        "kb_per_frame": round(float(np.mean(sizes)) / 1024, 1),
        "dropped": report.dropped,
        "underruns": report.underruns,
    }


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> list[dict[str, Any]]:
    settings = Settings(topics=TopicSettings().prefixed(f"bench-{os.getpid()}", partitions=1))
    settings.kafka.bootstrap = bootstrap
    rows = []
    for size, (width, height) in SIZES.items():
        clip = write_clip(tmp / f"{size}.mp4", width, height, args.frames + 10)
        for encoding in ENCODINGS:
            camera = GenicamConfig(
                "Fake_1", "Mono8", (0, 0, width, height), frame_rate=args.camera_fps, buffers=32, buffer_timeout_s=1.0
            )
            sources = {
                "fake_camera": GenicamSource(camera, Backoff(give_up_s=0)),
                "mp4": VideoSource(str(clip), mono=True),
            }
            for name, source in sources.items():
                row = {"source": name, "size": size, "encoding": encoding}
                row |= await one_case(settings, source, encoding, args.frames, args.workers)
                row["encode_only_ms"] = round(encode_only_ms(width, height, encoding), 2)
                if name == "fake_camera":
                    row["camera_fps_requested"] = args.camera_fps
                print(json.dumps(row))
                rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['source']}\n{r['size']}\n{r['encoding']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(rows))
    ax1.bar(x, [r["frames_per_s"] for r in rows], color=["C0" if r["encoding"] == "png" else "C1" for r in rows])
    ax1.set_ylabel("frames/s into Kafka")
    ax2.bar(x, [r["cpu_ms_per_frame"] for r in rows], color=["C0" if r["encoding"] == "png" else "C1" for r in rows])
    ax2.set_ylabel("CPU ms per frame (all threads)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"feeder: PNG (blue) vs JPEG (orange) — {machine()[:100]}", fontsize=8)
    save_figure(fig, "feeder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=150, help="frames sent per case")
    parser.add_argument("--camera-fps", type=float, default=200.0, help="frame rate asked of the Fake camera")
    parser.add_argument("--workers", type=int, default=2, help="encoding threads")
    args = parser.parse_args()

    from deploy.localstack import LocalStack

    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack.on_free_ports(Path(tmp) / "stack", Settings().stack.cache_dir)
        try:
            stack.up(services=("kafka",))
            rows = asyncio.run(run(args, stack.bootstrap, Path(tmp)))
        finally:
            stack.down(services=("kafka",))
    payload = {
        "machine": machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "frames_per_case": args.frames,
        "encode_workers": args.workers,
        "png_level": Settings().camera.png_level,
        "jpeg_quality": Settings().camera.jpeg_quality,
        "cases": rows,
    }
    write_json("feeder", payload)
    plot(rows)
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
