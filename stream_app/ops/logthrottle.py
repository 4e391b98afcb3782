"""One log line per interval for a repeated identical warning or error, with a count.

During a broker outage aiokafka logs the same connection error many times a second (measured: ~4,800 ERROR
lines in 27 s); the first occurrence says everything, later ones only how often it happened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RepeatFilter(logging.Filter):
    """Passes the first WARNING+ record of each distinct (logger, level, message) and drops identical ones for
    `interval_s`; the first one after that carries "(repeated N times in X s)". Lower levels pass untouched.

    >>> now = [0.0]
    >>> f = RepeatFilter(30.0, clock=lambda: now[0])
    >>> rec = lambda: logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Unable connect to %s", ("node 1",), None)
    >>> [f.filter(rec()) for _ in range(3)]
    [True, False, False]
    >>> now[0] = 31.0
    >>> r = rec(); f.filter(r), r.getMessage()
    (True, 'Unable connect to node 1 (repeated 2 times in the last 31 s)')
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (last logged at, dropped since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logging's problem to report, not ours
            return True
        key = (record.name, record.levelno, message)
        now = self._clock()
        with self._lock:
            logged_at, dropped = self._seen.get(key, (None, 0))
            if logged_at is not None and now - logged_at < self.interval_s:
                self._seen[key] = (logged_at, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:  # many distinct messages: forget the old ones rather than grow
                self._seen = {key: (now, 0)}
        if dropped:
            assert logged_at is not None  # drops are counted only on a message logged before
            record.msg, record.args = f"{message} (repeated {dropped} times in the last {now - logged_at:.0f} s)", ()
        return True


def throttle_repeats(interval_s: float, logger: logging.Logger | None = None) -> RepeatFilter:
    """Install one `RepeatFilter` on every handler of `logger` (the root logger by default); idempotent."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        for existing in handler.filters:
            if isinstance(existing, RepeatFilter):
                return existing
    shared = RepeatFilter(interval_s)
    for handler in logger.handlers:
        handler.addFilter(shared)
    return shared
