"""A per-model cap on the distinct sources a worker keeps state for.

Thresholds and incidents are kept per (model, source), and the source is whatever string a producer
writes: a producer cycling through random source ids would grow that state without end. Sources a
worker has already seen always pass; new ones pass until the model has `max_sources`, after which
their events are dead letters with reason `source_limit` (the operator raises the limit or fixes
the producer). Memory: at most `max_sources` strings per model.
"""

from __future__ import annotations

from collections.abc import Iterable


class SourceAdmission:
    """Admits events by source, per model, up to `max_sources` distinct sources each.

    >>> gate = SourceAdmission(max_sources=2)
    >>> gate.admit("m", ["a", "b", "a", "c", "b"])
    [True, True, True, False, True]
    >>> gate.admit("other", ["c"]), gate.count("m")
    ([True], 2)
    """

    def __init__(self, max_sources: int):
        if max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, got {max_sources}")
        self.max_sources = max_sources
        self._seen: dict[str, set[str]] = {}
        self._last: dict[tuple[str, str], float] = {}  # (model, source) -> when it was last admitted

    def admit(self, model: str, sources: Iterable[str]) -> list[bool]:
        """One flag per event, in order: False means dead-letter it with reason `source_limit`."""
        seen = self._seen.setdefault(model, set())
        flags = []
        for source in sources:
            if source not in seen and len(seen) < self.max_sources:
                seen.add(source)
            flags.append(source in seen)
        return flags

    def touch(self, model: str, sources: Iterable[str], now: float) -> None:
        """Mark these sources of `model` active at `now` (for `evict_idle`)."""
        for source in set(sources):
            self._last[(model, source)] = now

    def evict_idle(self, now: float, idle_s: float) -> list[tuple[str, str]]:
        """Forget (model, source) pairs not touched for `idle_s` and return them (their state expires too).

        >>> gate = SourceAdmission(max_sources=1)
        >>> gate.admit("m", ["a"]), gate.touch("m", ["a"], now=0.0), gate.admit("m", ["b"])
        ([True], None, [False])
        >>> gate.evict_idle(now=100.0, idle_s=60.0), gate.admit("m", ["b"])
        ([('m', 'a')], [True])
        """
        idle = [pair for pair, last in self._last.items() if now - last >= idle_s]
        for model, source in idle:
            del self._last[(model, source)]
            self.forget(model, source)
        return idle

    def count(self, model: str) -> int:
        return len(self._seen.get(model, ()))

    def forget(self, model: str, source: str) -> None:
        """Free a slot (e.g. when the source's stored state expires)."""
        self._seen.get(model, set()).discard(source)
