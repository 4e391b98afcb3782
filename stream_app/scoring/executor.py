"""The one thread that runs image models and CUDA work, so the event loop keeps consuming, decoding and
producing meanwhile.

A single worker thread owns the device: CUDA work from one thread keeps kernels ordered and memory
predictable, and torch releases the GIL while it computes, so asyncio code overlaps with inference. A CPU
vector model runs on the event loop itself (`LoadedModel.runs_inline`). torch's CPU thread count is a
per-thread setting, so this thread gets its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class InferenceExecutor:
    """`await executor.run(fn, *args)` runs `fn` on the inference thread.

    >>> async def demo():
    ...     with InferenceExecutor() as ex:
    ...         return await ex.run(sum, [1, 2, 3])
    >>> asyncio.run(demo())
    6
    """

    def __init__(self, threads: int | None = None) -> None:
        """`threads`: torch CPU threads of the inference thread (None: torch's default, one per core)."""
        self.pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="inference",
            initializer=torch.set_num_threads,
            initargs=(threads or torch.get_num_threads(),),
        )

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> InferenceExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
