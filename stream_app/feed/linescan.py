"""Line-scan frame assembly: line buffers (one line or a short strip each) -> frames of N lines.

A line-scan camera never delivers a frame: the web moves under one sensor line and each buffer holds a
few lines. The scorers need frames, so lines are stacked into frames of `lines_per_frame` rows. With
`overlap` K, consecutive frames share K rows (frame i starts at line i * (N - K)), so a defect up to K
lines tall that crosses a frame boundary still appears whole in one frame. A frame's time and id are
those of its first line's buffer.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from stream_app.feed.captures import Capture, Dropped, Item, Notice


@dataclass(frozen=True)
class LineFrame:
    image: np.ndarray  # [lines_per_frame, W] or [lines_per_frame, W, 3]
    ts: float  # time of the first line's buffer
    frame_id: int  # camera frame (buffer) id of the first line
    first_line: int  # index of the first line since the assembler started (or was reset)


class LineScanAssembler:
    """Stacks incoming lines into frames of `lines_per_frame` rows, `overlap` rows shared between neighbours.

    >>> a = LineScanAssembler(lines_per_frame=4, overlap=1)
    >>> rows = lambda lo, hi: np.arange(lo, hi, dtype=np.uint8)[:, None].repeat(2, axis=1)
    >>> [f.image[:, 0].tolist() for f in a.push(rows(0, 6), ts=10.0, frame_id=1)]
    [[0, 1, 2, 3]]
    >>> [(f.image[:, 0].tolist(), f.ts, f.frame_id, f.first_line) for f in a.push(rows(6, 10), ts=11.0, frame_id=2)]
    [([3, 4, 5, 6], 10.0, 1, 3), ([6, 7, 8, 9], 11.0, 2, 6)]
    """

    def __init__(self, lines_per_frame: int, overlap: int = 0) -> None:
        if lines_per_frame < 2:
            raise ValueError(f"lines_per_frame must be at least 2, got {lines_per_frame}")
        if not 0 <= overlap < lines_per_frame:
            raise ValueError(f"overlap must be in [0, lines_per_frame={lines_per_frame}), got {overlap}")
        self.lines_per_frame = lines_per_frame
        self.overlap = overlap
        self.reset()

    def reset(self) -> None:
        """Forget buffered lines (after a gap: a frame spanning lost lines would show the web wrongly)."""
        self._chunks: deque[tuple[np.ndarray, float, int]] = deque()  # buffered (lines, ts, frame id), oldest first
        self._count = 0  # lines buffered
        self._first = 0  # line index of the first buffered line
        self.lines_seen = 0

    @property
    def buffered(self) -> int:
        return self._count

    def push(self, lines: np.ndarray, ts: float, frame_id: int) -> list[LineFrame]:
        """Add one buffer of lines ([h, W] or [h, W, 3]; a 1-D array is one line); return the frames it completes.
        Lines are copied once on arrival and once into their frame, whatever the frame's height.

        Raises ValueError when the line width or channels differ from the lines already buffered.
        """
        lines = lines[None] if lines.ndim == 1 else lines
        if lines.ndim not in (2, 3):
            raise ValueError(f"expected lines as [h, W] or [h, W, 3], got shape {lines.shape}")
        if self._chunks and lines.shape[1:] != self._chunks[0][0].shape[1:]:
            raise ValueError(f"line shape changed from {self._chunks[0][0].shape[1:]} to {lines.shape[1:]}")
        self._chunks.append((lines.copy(), ts, frame_id))
        self._count += len(lines)
        self.lines_seen += len(lines)
        out = []
        n, step = self.lines_per_frame, self.lines_per_frame - self.overlap
        while self._count >= n:
            parts, need = [], n
            for chunk, _, _ in self._chunks:
                parts.append(chunk[:need])
                need -= len(parts[-1])
                if not need:
                    break
            _, first_ts, first_id = self._chunks[0]
            out.append(LineFrame(np.concatenate(parts), float(first_ts), int(first_id), self._first))
            self._drop(step)
        return out

    def _drop(self, k: int) -> None:
        """Forget the oldest k buffered lines."""
        self._count -= k
        self._first += k
        while k:
            chunk, ts, frame_id = self._chunks[0]
            if len(chunk) <= k:
                self._chunks.popleft()
                k -= len(chunk)
            else:
                self._chunks[0] = (chunk[k:], ts, frame_id)
                k = 0


def follows(previous: int | None, frame_id: int | None) -> bool:
    """Whether `frame_id` is the buffer right after `previous` (GigE Vision 1 block ids wrap from 65535 to 1).

    >>> follows(7, 8), follows(7, 9), follows(65535, 1), follows(None, 5)
    (True, False, True, True)
    """
    if previous is None or frame_id is None:
        return True
    return frame_id == previous + 1 or (previous == 0xFFFF and frame_id in (0, 1))


def assemble(items: Iterable[Item], assembler: LineScanAssembler) -> Iterator[Item]:
    """A source's captures (line buffers) as captures of assembled frames; notices pass through.

    An assembled frame carries the headers of its first line's buffer plus `first-line` and `lines`. A dropped
    buffer is a gap in the web: the partly assembled frame is discarded (reported, not sent).
    """
    headers: OrderedDict[int, Mapping[str, str]] = OrderedDict()  # recent buffers' headers by frame id
    previous: int | None = None  # the last buffer's frame id
    for item in items:
        if isinstance(item, Notice):
            if item.reconnect and assembler.buffered:  # lines from before the camera went away
                yield Dropped(f"{item.message}; {assembler.buffered} buffered lines discarded")
                assembler.reset()
            previous = None if item.reconnect else previous
            yield item
            continue
        if isinstance(item, Dropped):
            lost = assembler.buffered
            assembler.reset()
            previous = item.frame_id
            yield Dropped(f"{item.reason}; {lost} buffered lines discarded", item.frame_id)
            continue
        if not follows(previous, item.frame_id):  # an underrun: the camera dropped buffers without a word
            assert previous is not None
            missing = f"frames {previous + 1}..{item.frame_id - 1}" if item.frame_id > previous else "frames"
            yield Dropped(f"{missing} never arrived; {assembler.buffered} buffered lines discarded", previous + 1)
            assembler.reset()
        previous = item.frame_id
        headers[item.frame_id] = item.headers
        headers.move_to_end(item.frame_id)
        while len(headers) > assembler.lines_per_frame + 1:  # a frame spans at most N buffers
            headers.popitem(last=False)
        try:
            frames = assembler.push(item.image, item.ts, item.frame_id)
        except ValueError as exc:
            assembler.reset()
            yield Notice(f"line-scan assembly restarted: {exc}")
            frames = assembler.push(item.image, item.ts, item.frame_id)
        for f in frames:
            extra = {**headers.get(f.frame_id, {}), "first-line": str(f.first_line), "lines": str(f.image.shape[0])}
            yield Capture(f.image, f.ts, f.frame_id, extra)
