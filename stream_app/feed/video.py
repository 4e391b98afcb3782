"""Video files, RTSP/HTTP streams and V4L2 devices through PyAV (FFmpeg's demuxers and decoders).

`VideoSource(url).captures(stop)` decodes the first video stream and yields each frame as a `Capture`:
grey when `mono`, else RGB; `frame-id` is the frame's number in the stream (its presentation time times the
frame rate, so frames lost to corruption leave gaps) and `pts` its presentation time in seconds. A file's frames carry event times `opened_at + pts`; a live stream's carry their decode time (RTSP
presentation times count from the session start, not the epoch). `fps` keeps at most that many frames per
second of stream time. A packet FFmpeg cannot decode is `Dropped`, and the file goes on. A live source
(rtsp://, rtmp://, http(s)://, udp://, tcp://, srt://, /dev/video*) that ends or fails is reopened with
exponential backoff; a file that cannot be opened or read is a `SourceError` naming it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from stream_app.feed.captures import Capture, Dropped, Item, Notice, SourceError, wait_to_retry
from stream_app.ops.backoff import Backoff

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://", "/dev/video")


def is_live(url: str) -> bool:
    """A stream that can end and come back (reconnect), as opposed to a file read once.

    >>> is_live("rtsp://127.0.0.1:8554/line-1"), is_live("/dev/video0"), is_live("clip.mp4")
    (True, True, False)
    """
    return url.startswith(LIVE_PREFIXES)


class Subsampler:
    """Keeps at most `fps` frames per second of stream time (None keeps every frame).

    >>> s = Subsampler(fps=2.0)
    >>> [t for t in (0.0, 0.1, 0.4, 0.5, 0.9, 1.0, 1.6) if s.keep(t)]
    [0.0, 0.5, 1.0, 1.6]
    """

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._next: float | None = None

    def keep(self, t: float) -> bool:
        if not self.period:
            return True
        if self._next is not None and t < self._next - 1e-9:
            return False
        self._next = (t if self._next is None or t - self._next > self.period else self._next) + self.period
        return True


class VideoSource:
    """Frames of one video file, stream or capture device."""

    def __init__(
        self,
        url: str,
        fps: float | None = None,
        mono: bool = False,
        backoff: Backoff | None = None,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.name = url
        self.fps = fps
        self.mono = mono
        self.live = is_live(url)
        self.backoff = backoff or Backoff(jitter=False)
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s

    def captures(self, stop: threading.Event) -> Iterator[Item]:
        while not stop.is_set():
            try:
                container = self._open()
            except SourceError as exc:
                if not self.live:
                    raise
                yield from self._wait(stop, str(exc))
                continue
            try:
                yield from self._decode(container, stop)
            except SourceError as exc:
                if not self.live:
                    raise
                yield from self._wait(stop, str(exc))
                continue
            finally:
                container.close()
            if not self.live:
                return
            if not stop.is_set():
                yield from self._wait(stop, f"{self.url} ended")

    def _wait(self, stop: threading.Event, why: str) -> Iterator[Notice]:
        return wait_to_retry(self.backoff, stop, why, "reconnecting")

    def _open(self) -> Any:
        import av

        options = {"rtsp_transport": "tcp"} if self.url.startswith(("rtsp://", "rtsps://")) else {}
        fmt = "v4l2" if self.url.startswith("/dev/video") else None
        try:
            container = av.open(
                self.url, format=fmt, options=options, timeout=(self.open_timeout_s, self.read_timeout_s)
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self.url} as video: {_reason(exc)}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.url} has no video stream (streams: {[s.type for s in container.streams]})")
        return container

    def _decode(self, container: Any, stop: threading.Event) -> Iterator[Item]:
        import av

        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        opened_at = time.time()
        sampler = Subsampler(self.fps)
        index = 0  # frames decoded so far; a frame's id is its pts in frames when known (gaps stay gaps)
        packets = container.demux(stream)
        while not stop.is_set():
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:  # the container itself is broken or the stream stalled
                raise SourceError(f"stopped reading {self.url} after {index} frames: {_reason(exc)}") from None
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:  # a corrupt packet: its frame is lost, the next keyframe resyncs
                at = float(packet.pts * packet.time_base) if packet.pts is not None and packet.time_base else None
                yield Dropped(f"undecodable packet at {at if at is None else round(at, 3)} s: {_reason(exc)}")
                continue
            for frame in frames:
                pts = float(frame.time) if frame.time is not None else index / (rate or 25.0)
                frame_id = round(pts * rate) if frame.time is not None and rate else index
                index += 1
                now = time.time()
                if sampler.keep(now if self.live else pts):
                    image = frame.to_ndarray(format="gray" if self.mono else "rgb24")
                    ts = now if self.live else opened_at + pts
                    self.backoff.reset()
                    yield Capture(image, ts, frame_id, {"pts": f"{pts:.6f}"})


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words (e.g. 'Connection refused', 'Invalid data found when processing input')."""
    return getattr(exc, "strerror", None) or str(exc)
