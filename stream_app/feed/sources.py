"""A live source onto `camera.frames`: capture thread -> (line-scan assembly) -> encoding threads -> Kafka.

Three stages overlap so none waits on another: the source's blocking `captures(stop)` runs in its own thread
(Aravis and FFmpeg calls block), images are encoded in a small thread pool (Pillow's PNG/JPEG encoders
release the GIL), and the event loop only moves bytes to Kafka (`feed.frames.feed_frames`). Queues between
them are bounded: when Kafka falls behind, the capture thread waits, the camera's buffer pool runs dry and
the camera's own underrun counter says so, instead of memory growing.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_app.feed.captures import Capture, Dropped, FrameSource, Item, Notice, SourceError
from stream_app.feed.encoding import Encoding, content_type, encoder
from stream_app.feed.frames import FeedReport, Frame, feed_frames
from stream_app.feed.linescan import LineScanAssembler, assemble
from stream_app.feed.video import Subsampler
from stream_app.ops.backoff import Backoff
from stream_app.settings import Settings

_END = object()


@dataclass(frozen=True)
class LiveOptions:
    """How captures become frames on the wire (defaults from `settings.camera`)."""

    encoding: Encoding = "png"
    jpeg_quality: int = 90
    png_level: int = 1
    encode_workers: int = 2
    fps: float | None = None  # keep at most this many frames per second of capture time
    max_frames: int | None = None  # stop after sending this many (None: until the source ends or Ctrl-C)
    lines_per_frame: int | None = None  # line-scan: assemble line buffers into frames of N lines
    overlap: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LiveOptions:
        cam = settings.camera
        base = {
            "encoding": cam.encoding,
            "jpeg_quality": cam.jpeg_quality,
            "png_level": cam.png_level,
            "encode_workers": cam.encode_workers,
        }
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def backoff(settings: Settings, give_up_s: float | None = None) -> Backoff:
    """Reconnect delays from `settings.camera`, exactly as configured (one feeder per camera: nothing to spread
    out, and the operator reads the delays it announces); `give_up_s` overrides its reconnect_give_up_s."""
    cam = settings.camera
    give_up = cam.reconnect_give_up_s if give_up_s is None else give_up_s
    return Backoff(cam.reconnect_initial_s, cam.reconnect_max_s, give_up, jitter=False)


async def threaded(produce: Callable[[threading.Event], Iterator[Any]], maxsize: int = 8) -> AsyncGenerator[Any, None]:
    """Items of a blocking iterator run in its own thread; closing this stops and joins the thread.

    The iterator's exception is raised here, in the consumer, when its turn comes.
    """
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        items = produce(stop)
        try:
            for item in items:
                if not put(item):
                    break
        except BaseException as exc:
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close:
                close()
            put(_END)

    thread = threading.Thread(target=pump, name="capture", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = await asyncio.to_thread(q.get, timeout=0.5)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)


def _pipeline(source: FrameSource, options: LiveOptions) -> Callable[[threading.Event], Iterator[Item]]:
    """The capture thread's work: the source, sub-sampled by capture time, assembled when line-scan."""

    def produce(stop: threading.Event) -> Iterator[Item]:
        items: Iterator[Item] = source.captures(stop)
        if options.lines_per_frame:
            items = assemble(items, LineScanAssembler(options.lines_per_frame, options.overlap))
        if options.fps:
            sampler = Subsampler(options.fps)
            items = (i for i in items if not isinstance(i, Capture) or sampler.keep(i.ts))
        return items

    return produce


async def encoded_frames(
    items: AsyncIterator[Item],
    options: LiveOptions,
    name: str,
    on_notice: Callable[[Notice], None],
) -> AsyncGenerator[Frame, None]:
    """Captures as encoded Frames, in order, several encoding at once; Dropped as Frames with `dropped` set."""
    loop = asyncio.get_running_loop()
    encode = encoder(options.encoding, options.jpeg_quality, options.png_level)
    ctype = content_type(options.encoding)
    pending: deque[asyncio.Future[Frame]] = deque()

    def job(capture: Capture) -> Frame:
        try:
            data = encode(capture.image)
        except Exception as exc:  # an array Pillow cannot encode: report it, keep streaming
            return Frame(f"{name}#{capture.frame_id}", error=f"frame {capture.frame_id}: cannot encode ({exc})")
        extra = {**capture.headers, "frame-id": str(capture.frame_id)}  # every live frame says which it was
        return Frame(f"{name}#{capture.frame_id}", data, ctype, ts=capture.ts, headers=extra)

    with ThreadPoolExecutor(options.encode_workers, thread_name_prefix="encode") as pool:
        try:
            async for item in items:
                if isinstance(item, Notice):
                    on_notice(item)
                    continue
                if isinstance(item, Dropped):
                    done: asyncio.Future[Frame] = loop.create_future()
                    done.set_result(Frame(f"{name}#{item.frame_id}", error=item.reason, dropped=True))
                    pending.append(done)
                else:
                    pending.append(loop.run_in_executor(pool, job, item))
                while pending and (len(pending) > 2 * options.encode_workers or pending[0].done()):
                    yield await pending.popleft()
        except Exception:  # the source gave up: what it captured before still goes out, then the error
            while pending:
                yield await pending.popleft()
            raise
        else:
            while pending:
                yield await pending.popleft()
        finally:
            for fut in pending:
                fut.cancel()


async def feed_source(
    settings: Settings,
    source: FrameSource,
    camera: str,
    options: LiveOptions,
    claim_check_dir: Path | None = None,
    inline_limit: int | None = None,
    on_frame: Callable[[Frame, bool], None] | None = None,
    on_notice: Callable[[Notice], None] | None = None,
) -> FeedReport:
    """Stream `source` to `settings.topics.frames` as camera `camera` until it ends, `max_frames` are sent, or
    the task is cancelled. When the source gives up (SourceError), the report's `failure` says why."""
    reconnects = 0

    def notice(n: Notice) -> None:
        nonlocal reconnects
        reconnects += n.reconnect
        if on_notice:
            on_notice(n)

    failure: str | None = None

    async def frames() -> AsyncIterator[Frame]:
        nonlocal failure
        sent = 0
        captured = threaded(_pipeline(source, options))
        stream = encoded_frames(captured, options, camera, notice)
        try:
            async for frame in stream:
                yield frame
                sent += frame.error is None
                if options.max_frames is not None and sent >= options.max_frames:
                    return
        except SourceError as exc:  # ends the feed; what was sent before is acknowledged and reported
            failure = str(exc)
        finally:
            await stream.aclose()
            await captured.aclose()  # stops and joins the capture thread (async for does not close it)

    report = await feed_frames(
        settings, frames(), camera, claim_check_dir=claim_check_dir, inline_limit=inline_limit, on_frame=on_frame
    )
    report.failure = failure
    report.reconnects = reconnects
    report.underruns = int(getattr(source, "stats", {}).get("underruns", 0))
    return report
