"""Retry delays: exponential growth with jitter, so many workers retrying one dependency do not stampede it."""

from __future__ import annotations

import random


class Backoff:
    """Delays `base_s * 2**attempt`, capped at `cap_s`, each drawn uniformly from the upper half ("equal
    jitter": never less than half the nominal delay, never in lockstep with another worker).

    >>> b = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(0))
    >>> delays = [b.next_delay() for _ in range(6)]
    >>> [(nominal / 2 <= d <= nominal) for d, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4])]
    [True, True, True, True, True, True]
    >>> b.attempts
    6
    >>> b.reset(); b.attempts
    0
    """

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self.base_s, self.cap_s = base_s, cap_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        nominal = min(self.cap_s, self.base_s * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return self._rng.uniform(nominal / 2, nominal)

    def reset(self) -> None:
        self.attempts = 0
