"""What /health says: unreachable dependencies, paused consumption and partitions that do not advance.

Pure bookkeeping (a clock is injected): the worker's monitors report problems and partition progress here,
`report()` turns them into the reasons /health answers 503 with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass


@dataclass
class _Progress:
    position: int | None
    end: int
    advanced_at: float


class HealthState:
    """Problems by name (a dependency, or "consumption") and per-partition lag; not ok while any problem is
    set or a partition with lag has not advanced for `stall_after_s`.

    >>> now = [0.0]
    >>> h = HealthState(stall_after_s=30, clock=lambda: now[0])
    >>> h.problem("redis", "TimeoutError: Timeout reading from socket")
    >>> h.report()
    ['redis: TimeoutError: Timeout reading from socket (for 0 s)']
    >>> h.resolved("redis"); h.progress("t/0", 100, 500); now[0] = 31.0; h.progress("t/0", 100, 900)
    >>> h.report()
    ['partition t/0 has not advanced for 31 s with lag 800 (at offset 100 of 900)']
    >>> h.progress("t/0", 400, 900); h.report()
    []
    """

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._problems: dict[str, tuple[str, float]] = {}  # name -> (reason, since)
        self._partitions: dict[Hashable, _Progress] = {}

    def problem(self, name: str, reason: str) -> None:
        """Set or update a problem; its age counts from the first report."""
        since = self._problems.get(name, (reason, self._clock()))[1]
        self._problems[name] = (reason, since)

    def resolved(self, name: str) -> None:
        self._problems.pop(name, None)

    def has_problem(self, name: str) -> bool:
        return name in self._problems

    def progress(self, tp: Hashable, position: int | None, end: int) -> None:
        """The partition's done position (None: unknown yet) and the broker's end offset."""
        now = self._clock()
        known = self._partitions.get(tp)
        lagging_before = known is not None and known.position is not None and known.end > known.position
        if known is None or position != known.position or not lagging_before:
            self._partitions[tp] = _Progress(position, end, now)  # moved, or had nothing to do until now
        else:
            known.end = end

    def forget(self, tps: Iterable[Hashable]) -> None:
        for tp in tps:
            self._partitions.pop(tp, None)

    def lag(self) -> dict[str, int]:
        return {str(tp): max(0, p.end - p.position) for tp, p in self._partitions.items() if p.position is not None}

    def stalled(self) -> dict[str, float]:
        """Partitions with lag whose position has not moved for `stall_after_s`: seconds since it last did."""
        now = self._clock()
        return {
            str(tp): now - p.advanced_at
            for tp, p in self._partitions.items()
            if p.position is not None and p.end > p.position and now - p.advanced_at >= self.stall_after_s
        }

    def report(self) -> list[str]:
        now = self._clock()
        reasons = [f"{name}: {reason} (for {now - since:.0f} s)" for name, (reason, since) in self._problems.items()]
        for tp, idle in self.stalled().items():
            p = next(p for t, p in self._partitions.items() if str(t) == tp)
            reasons.append(
                f"partition {tp} has not advanced for {idle:.0f} s with lag {p.end - p.position} "  # type: ignore[operator]
                f"(at offset {p.position} of {p.end})"
            )
        return reasons
