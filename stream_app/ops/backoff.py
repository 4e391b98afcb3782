"""Retry delays: exponential growth with jitter, so many workers retrying one dependency do not stampede it."""

from __future__ import annotations

import random


class Backoff:
    """Delays `base_s * 2**attempt`, capped at `cap_s`, each drawn uniformly from the upper half ("equal
    jitter": never less than half the nominal delay, never in lockstep with another worker). With `give_up_s`,
    `exhausted` says when the delays handed out since the last success exceed it (a camera that stays away).

    >>> b = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(0))
    >>> delays = [b.next_delay() for _ in range(6)]
    >>> [(nominal / 2 <= d <= nominal) for d, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4])]
    [True, True, True, True, True, True]
    >>> b.attempts
    6
    >>> b.reset(); b.attempts
    0
    >>> b = Backoff(0.5, 2.0, give_up_s=1.0, jitter=False)
    >>> [b.next_delay() for _ in range(3)], b.exhausted
    ([0.5, 1.0, 2.0], True)
    """

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 10.0,
        give_up_s: float | None = None,  # None: retry for ever
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self.base_s, self.cap_s, self.give_up_s, self.jitter = base_s, cap_s, give_up_s, jitter
        self.attempts = 0
        self._waited_s = 0.0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        nominal = min(self.cap_s, self.base_s * 2 ** min(self.attempts, 30))
        self.attempts += 1
        delay = self._rng.uniform(nominal / 2, nominal) if self.jitter else nominal
        self._waited_s += delay
        return delay

    @property
    def exhausted(self) -> bool:
        return self.give_up_s is not None and self._waited_s > self.give_up_s

    def reset(self) -> None:
        self.attempts, self._waited_s = 0, 0.0
