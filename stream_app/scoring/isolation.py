"""Finding the records that make a batch fail, so they become dead letters and the rest is scored.

A scorer that raises on one crafted input fails the whole micro-batch; retrying the batch fails again
forever. `isolate_failures` bisects instead: the batch is split in halves and each half retried, so
k poison records among n cost about 2·k·log2(n) extra calls, and every record that fails alone is
returned with its error. Errors that are not about the input (Redis down, the device lost) are passed
through by listing only input errors in `isolate`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# torch raises RuntimeError (or subclasses) for a failing GPU as for a bad input; these name the device.
DEVICE_ERROR_TYPES = ("OutOfMemoryError", "AcceleratorError")
DEVICE_ERROR_TEXT = ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS", "cuDNN error", "device-side assert", "NCCL")


class DeviceFailure(Exception):
    """Every record of a group failed on the device on its own: the device, not the input; the batch is retried."""


def is_device_failure(exc: BaseException) -> bool:
    """Whether a scorer's error names the accelerator rather than the input.

    >>> is_device_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    True
    >>> is_device_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x3 and 4x8)"))
    False
    """
    return type(exc).__name__ in DEVICE_ERROR_TYPES or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in DEVICE_ERROR_TEXT)
    )


@dataclass(frozen=True)
class Isolated(Generic[R]):
    """`results[i]` for every record that scored (None where it failed) and `failures`: index -> error."""

    results: list[R | None]
    failures: dict[int, BaseException]
    calls: int

    @property
    def all_failed(self) -> bool:
        """Every record failed on its own: more likely the model or device than poison (the caller decides)."""
        return bool(self.failures) and len(self.failures) == len(self.results)


async def isolate_failures(
    items: Sequence[T],
    run: Callable[[Sequence[T]], Awaitable[Iterable[R]]],
    isolate: tuple[type[BaseException], ...] = (Exception,),
) -> Isolated[R]:
    """Run `run(items)`; if it raises one of `isolate`, bisect to the items that fail on their own.

    `run` takes a slice of `items` and returns one result per item in order (e.g. the scores of a stacked
    batch). Exceptions outside `isolate` propagate unchanged (the batch is retried, not dead-lettered).

    >>> import asyncio
    >>> async def score(xs):
    ...     if any(x < 0 for x in xs):
    ...         raise ValueError("negative")
    ...     return [x * 10 for x in xs]
    >>> out = asyncio.run(isolate_failures([1, 2, -3, 4], score))
    >>> out.results, sorted(out.failures), out.calls
    ([10, 20, None, 40], [2], 5)
    """
    results: list[R | None] = [None] * len(items)
    failures: dict[int, BaseException] = {}
    calls = 0

    async def attempt(lo: int, hi: int) -> None:
        nonlocal calls
        calls += 1
        try:
            out = list(await run(items[lo:hi]))
        except isolate as exc:
            if hi - lo == 1:
                failures[lo] = exc
                return
            mid = (lo + hi) // 2
            await attempt(lo, mid)
            await attempt(mid, hi)
            return
        if len(out) != hi - lo:
            raise ValueError(f"batch function returned {len(out)} results for {hi - lo} items")
        results[lo:hi] = out

    if items:
        await attempt(0, len(items))
    return Isolated(results, failures, calls)
