"""Temporal context of windowed models in the threshold store: each source's last raw rows, and a batch to score.

A vector model with `window` W > 1 scores an event together with the W - 1 events of its source before it.
Those rows are part of the source's state: `History` is stored in the same Redis value as the source's
threshold and incident state, so it is written by the same compare-and-set, survives restarts and partition
moves, and a conflict (another worker wrote, or a cold cache) brings back the true rows together with the
true threshold. `Sequences` hands a batch's raw rows and a scoring call to `ThresholdStore.judge`, which
scores each source's new events after the history it is about to compare-and-set from.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

# [(history rows or None, new rows)] -> [(scores, the last W - 1 rows after them)], one entry per source
ScoreSequences = Callable[[list[tuple[np.ndarray | None, np.ndarray]]], Awaitable[list[tuple[np.ndarray, np.ndarray]]]]


@dataclass(frozen=True)
class History:
    """A source's last raw rows (at most W - 1), oldest first, as little-endian float32 bytes: exact, and about
    5 characters a value in the stored JSON (base64) instead of ~19 as JSON floats.

    >>> h = History.of(np.array([[1.5, 2.0], [3.0, -4.25]], np.float32))
    >>> History.from_dict(h.to_dict()) == h, h.rows().tolist(), len(h)
    (True, [[1.5, 2.0], [3.0, -4.25]], 2)
    """

    width: int
    data: bytes

    @classmethod
    def of(cls, rows: np.ndarray) -> History:
        rows = np.asarray(rows, "<f4")
        if rows.ndim != 2:
            raise ValueError(f"expected history rows [n, width], got shape {rows.shape}")
        return cls(int(rows.shape[1]), rows.tobytes())

    def rows(self) -> np.ndarray:
        """float32 [n, width], a writable copy (torch warns on read-only arrays)."""
        return np.frombuffer(self.data, "<f4").reshape(-1, self.width).astype(np.float32)

    def __len__(self) -> int:
        return len(self.data) // (4 * self.width) if self.width else 0

    def to_dict(self) -> dict:
        return {"w": self.width, "f32": base64.b64encode(self.data).decode()}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        width, data = int(d["w"]), base64.b64decode(d["f32"], validate=True)
        if width < 1 or len(data) % (4 * width):
            raise ValueError(f"history of {len(data)} bytes is not rows of {width} float32 values")
        return cls(width, data)


@dataclass
class Sequences:
    """A windowed model's batch for `ThresholdStore.judge`: one raw row per event and the call that scores rows
    after a history (it runs the model off the event loop; one call per compare-and-set attempt, all sources).

    judge() fills in, per source, the history its new events were scored after (`followed`, None for a new
    source: its first rows are padded) and which events those were (`fresh`: events already judged get their
    remembered verdicts and are not scored again); `before` gives an event's preceding rows for explanations.
    """

    rows: np.ndarray
    score: ScoreSequences
    window: int  # W: a source's first W - 1 events are warm-up (padded windows: never anomalous, not learned)
    followed: dict[str, np.ndarray | None] = field(default_factory=dict)
    fresh: dict[str, list[int]] = field(default_factory=dict)
    calls: int = 0  # scoring calls made: 1 per batch in the steady state, 1 more per conflicted attempt

    def before(self, i: int, source: str, same_source: list[int]) -> np.ndarray | None:
        """The rows event `i` was scored after, oldest first (None: none, a new source's first event).

        `same_source`: the batch's events of `source`, in order. A new event follows its stored history and the
        batch's new events before it; an event judged in an earlier delivery follows the batch's events of its
        source before it (its original history is no longer stored).
        """
        fresh = self.fresh.get(source, [])
        if i in fresh:
            prior = self.rows[fresh[: fresh.index(i)]]
            history = self.followed.get(source)
            rows = prior if history is None else np.concatenate([history, prior])
        else:
            rows = self.rows[same_source[: same_source.index(i)]]
        return rows if len(rows) else None
