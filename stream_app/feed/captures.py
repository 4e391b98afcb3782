"""What a live source (GenICam camera, video, RTSP stream) hands the feeder, before any encoding.

A source is an object with `captures(stop)`: a blocking iterator run in its own thread, yielding
`Capture` (an image with the camera's own time and frame id), `Dropped` (a buffer the camera lost or
delivered incomplete: counted, never sent) or `Notice` (something the operator should read, e.g. a
reconnect). It returns when `stop` is set or the source ends, and raises `SourceError` (a message
saying what was expected and what happened) when it cannot go on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from stream_app.ops.backoff import Backoff


class SourceError(RuntimeError):
    """A source cannot be opened or read and will not retry: the message says what and why."""


@dataclass(frozen=True)
class Capture:
    """One image as the scorers take it (uint8 [H, W] or [H, W, 3]) and where it came from."""

    image: np.ndarray
    ts: float  # epoch seconds: the event time on the wire
    frame_id: int  # the camera's own frame (block) id, or the frame's number in a video: header `frame-id`
    headers: Mapping[str, str] = field(default_factory=dict)  # other wire headers (camera-ts-ns, pts, ...)


@dataclass(frozen=True)
class Dropped:
    """A frame the source lost (incomplete buffer, undecodable packet): counted and reported, never sent."""

    reason: str
    frame_id: int | None = None


@dataclass(frozen=True)
class Notice:
    """A line for the operator; `reconnect` marks a lost connection that the source is retrying."""

    message: str
    reconnect: bool = False


Item = Capture | Dropped | Notice


class FrameSource(Protocol):
    name: str  # what the operator asked for, e.g. "genicam:Fake_1" or the URL

    def captures(self, stop: threading.Event) -> Iterator[Item]: ...


def wait_to_retry(backoff: Backoff, stop: threading.Event, why: str, action: str = "retrying") -> Iterator[Notice]:
    """Tell why the source is down, wait out the next backoff delay (or `stop`), or give up with SourceError."""
    delay = backoff.next_delay()
    if backoff.exhausted:
        raise SourceError(f"{why}; gave up after retrying for {backoff.give_up_s:g} s")
    yield Notice(f"{why}; {action} in {delay:.1f} s", reconnect=True)
    stop.wait(delay)
