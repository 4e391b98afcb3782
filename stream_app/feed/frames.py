"""Camera frames onto `topics.frames`: from a folder or a multi-frame image file here; live sources (GenICam
cameras, video files, RTSP streams) come through `feed.sources`, which feeds `feed_frames` too.

Files travel as they are (PNG/JPEG/BMP bytes, no re-encoding) with headers source/ts/content-type. A frame
too large for one Kafka message goes as a claim-check: the bytes stay in (or are copied to) a directory the
workers can read, and the message carries only a `uri` header `file://...` with an empty value. Files Pillow
cannot read are skipped and counted, never a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.settings import Settings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp"}
HEADROOM_BYTES = 16 * 1024  # headers and record overhead inside one Kafka message


@dataclass(frozen=True)
class Frame:
    """Encoded image bytes ready to send, or the reason they cannot be."""

    name: str
    data: bytes = b""
    content_type: str = "image/png"
    path: Path | None = None  # the file the bytes came from (kept as a claim-check when large)
    error: str | None = None
    ts: float | None = None  # event time (epoch s) when the source knows it; None: the time it is sent
    headers: Mapping[str, str] = field(default_factory=dict)  # extra wire headers, e.g. frame-id
    dropped: bool = False  # the source lost it (incomplete buffer, undecodable packet): counted, never sent


MAX_ERRORS = 100  # a long camera run keeps the first errors, and counts the rest


@dataclass
class FeedReport:
    sent: int = 0
    claim_checked: int = 0
    skipped: int = 0  # unreadable files, frames that could not be encoded
    dropped: int = 0  # frames the source lost (incomplete camera buffers, undecodable video packets)
    reconnects: int = 0  # times a live source was lost and retried
    underruns: int = 0  # frames the camera had no free buffer for (the feeder fell behind)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    failure: str | None = None  # why a live source stopped early (it gave up reconnecting, a file is corrupt)

    def count_unsent(self, frame: Frame) -> None:
        if frame.dropped:
            self.dropped += 1
        else:
            self.skipped += 1
        if len(self.errors) < MAX_ERRORS and frame.error:
            self.errors.append(frame.error)


def read_image_file(path: Path) -> Frame:
    """A file's bytes if Pillow can decode them as an image; else a Frame with `error` set."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            img.load()
    except Exception as exc:  # Pillow raises many types for corrupt files; all mean "skip it"
        why = "not a known image format or corrupt header" if isinstance(exc, UnidentifiedImageError) else str(exc)
        return Frame(path.name, path=path, error=f"{path.name}: cannot read as an image ({why})")
    content_type = CONTENT_TYPES.get(fmt)
    if content_type is None:  # readable but not a type the worker expects on the wire: re-encode as PNG
        from stream_app.wire.codecs import encode_image, image_array

        with Image.open(io.BytesIO(data)) as img:
            data = encode_image(image_array(img))
        return Frame(path.name, data, "image/png")
    return Frame(path.name, data, content_type, path=path)


def folder_frames(directory: Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def video_frames(path: Path) -> Iterator[Frame]:
    """Frames of a multi-frame image (animated GIF/PNG/WebP, multi-frame TIFF) as PNG bytes.

    Raises ValueError naming what is supported, at once (not on first iteration), when Pillow cannot read it.
    """
    return _iter_frames(path, open_multiframe(path))


def open_multiframe(path: Path) -> Any:
    """The opened Pillow image, or a ValueError naming what --video supports."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(
            f"cannot read {path} as a multi-frame image ({exc}). --video supports what Pillow reads: animated GIF, "
            f"multi-frame TIFF, animated PNG or WebP. For MP4/AVI/MKV/MOV files and streams use --url {path}"
        ) from None


def _iter_frames(path: Path, img) -> Iterator[Frame]:
    """Every frame with the colour layout of the file's first: Pillow gives a GIF's first frame as a palette
    image and later ones as RGB, so a palette that is not grey makes every frame RGB, and a grey one every frame
    grey."""
    from PIL import ImageSequence

    from stream_app.wire.codecs import encode_image, grey_mode, image_array

    with img:
        colour = img.mode == "P" and _colour_palette(img)
        grey = not colour and grey_mode(img.mode)
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            try:
                pixels = np.asarray(frame.convert("RGB")) if colour else image_array(frame)
                if grey and pixels.ndim == 3:  # a grey file's later frame that Pillow gives as RGB
                    pixels = np.asarray(frame.convert("L"))
                yield Frame(f"{path.name}#{i}", encode_image(pixels), "image/png")
            except Exception as exc:
                yield Frame(f"{path.name}#{i}", error=f"{path.name} frame {i}: cannot decode ({exc})")


def _colour_palette(img: Any) -> bool:
    """Whether a palette image's colours are not all grey."""
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def _claim_check(frame: Frame, claim_dir: Path | None) -> str:
    """Keep the bytes where a worker can read them; return the file:// URI."""
    if claim_dir is None and frame.path is not None:
        return frame.path.resolve().as_uri()
    if claim_dir is None:
        raise ValueError(f"{frame.name} is too large for one message and has no file; pass --claim-check-dir")
    claim_dir.mkdir(parents=True, exist_ok=True)
    target = claim_dir / f"{hashlib.sha256(frame.data).hexdigest()[:20]}{Path(frame.name.split('#')[0]).suffix}"
    if not target.exists():
        if frame.path is not None:
            shutil.copyfile(frame.path, target)
        else:
            target.write_bytes(frame.data)
    return target.resolve().as_uri()


async def feed_frames(
    settings: Settings,
    frames: Iterable[Frame] | AsyncIterable[Frame],
    camera: str,
    fps: float | None = None,
    claim_check_dir: Path | None = None,
    inline_limit: int | None = None,
    on_frame: Callable[[Frame, bool], None] | None = None,
) -> FeedReport:
    """Send `frames` to `settings.topics.frames` as camera `camera`, at most `fps` per second.

    Frames over `inline_limit` bytes (default: Kafka's max message size less some headroom) go as claim-checks
    into `claim_check_dir` (default: the first of settings.claim_check_dirs, else the file stays where it is).
    Up to `settings.camera.in_flight` sends await their acknowledgement at once; all are acknowledged on return.
    """
    from stream_app.ops.connections import ensure_topics, kafka_producer
    from stream_app.wire import codecs

    topic = settings.topics.frames
    limit = inline_limit if inline_limit is not None else settings.kafka.max_message_bytes - HEADROOM_BYTES
    if claim_check_dir is None and settings.claim_check_dirs:
        claim_check_dir = Path(settings.claim_check_dirs[0])
    await ensure_topics(settings, [topic])
    report = FeedReport()
    started = time.monotonic()
    producer = kafka_producer(settings.kafka, linger_ms=5, max_request_size=settings.kafka.max_message_bytes)
    in_flight: deque[tuple[asyncio.Future, Frame]] = deque()

    async def acknowledged(limit: int) -> None:
        while len(in_flight) > limit:
            delivery, sent = in_flight.popleft()
            await delivery
            report.sent += 1
            if on_frame:
                on_frame(sent, True)

    await producer.start()
    try:
        i = 0
        async for frame in _as_async(frames):
            if fps:
                await asyncio.sleep(max(0.0, started + i / fps - time.monotonic()))
            i += 1
            if frame.error:
                report.count_unsent(frame)
                if on_frame:
                    on_frame(frame, False)
                continue
            uri, value = None, frame.data
            if len(frame.data) > limit:
                uri, value = _claim_check(frame, claim_check_dir), b""
                report.claim_checked += 1
            ts = time.time() if frame.ts is None else frame.ts
            headers = codecs.frame_headers(camera, ts, frame.content_type, uri=uri, extra=frame.headers)
            in_flight.append((await producer.send(topic, value, key=camera.encode(), headers=headers), frame))
            await acknowledged(settings.camera.in_flight)
        await acknowledged(0)
    finally:
        await producer.stop()
    report.elapsed_s = time.monotonic() - started
    return report


async def _as_async(frames: Iterable[Frame] | AsyncIterable[Frame]) -> AsyncIterator[Frame]:
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame
