"""The two data kinds the product reads, each described once: its input topic, routes, decoder and alert label.

Code that differs by kind looks the difference up here instead of branching on `kind == "vectors"`.
The alert field `kind` keeps its wire values ("sensor", "image").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models import DataKindName
from stream_app.settings import Route, Settings, TopicSettings
from stream_app.wire.codecs import (
    BadEvent,
    Event,
    FrameEvent,
    VectorEvent,
    decode_frame_records,
    decode_vector_records,
)


@dataclass(frozen=True)
class DataKind:
    """Everything that differs between sensor vectors and camera frames on their way through a worker."""

    name: DataKindName
    alert_kind: str  # the alert's `kind` field on the wire
    dtype: type[np.generic]  # of the scorer's input array
    input_topic: Callable[[TopicSettings], str]
    routes: Callable[[Settings], list[Route]]
    _decode: Callable[[Sequence[Any], Settings], Sequence[Event | BadEvent]]
    _array: Callable[[Event], np.ndarray]

    def decode(self, records: Sequence[Any], settings: Settings) -> list[Event | BadEvent]:
        """One event, or the reason it cannot be scored, per record, in order."""
        return list(self._decode(records, settings))

    def shape(self, event: Event) -> tuple[int, ...]:
        """The shape of one event's array: (F,) or (H, W(, 3))."""
        return tuple(self._array(event).shape)

    def stack(self, events: Sequence[Event]) -> np.ndarray:
        """The scorer's input for these events: [N, F] floats or [N, H, W(, 3)] pixels."""
        return np.stack([self._array(ev) for ev in events])


def _vector_values(ev: Event) -> np.ndarray:
    assert isinstance(ev, VectorEvent)
    return ev.values


def _frame_pixels(ev: Event) -> np.ndarray:
    assert isinstance(ev, FrameEvent)
    return ev.image


VECTORS: Final = DataKind(
    "vectors",
    "sensor",
    np.float32,
    lambda topics: topics.vectors,
    lambda settings: settings.routes,
    lambda records, s: decode_vector_records(records, s.limits),
    _vector_values,
)
IMAGES: Final = DataKind(
    "images",
    "image",
    np.uint8,
    lambda topics: topics.frames,
    lambda settings: settings.image_routes,
    lambda records, s: decode_frame_records(records, s.max_image_bytes, s.claim_check_dirs, s.limits),
    _frame_pixels,
)
DATA_KINDS: Final[dict[str, DataKind]] = {k.name: k for k in (VECTORS, IMAGES)}


def data_kind(name: str) -> DataKind:
    """The kind called `name` ("vectors" or "images"); ValueError naming both otherwise.

    >>> data_kind("images").alert_kind
    'image'
    """
    try:
        return DATA_KINDS[name]
    except KeyError:
        raise ValueError(f"expected a data kind in {sorted(DATA_KINDS)}, got {name!r}") from None


def kinds_by_topic(topics: TopicSettings) -> dict[str, DataKind]:
    """Input topic name -> its data kind."""
    return {kind.input_topic(topics): kind for kind in DATA_KINDS.values()}
