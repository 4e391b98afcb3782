"""Which scorer version serves each model name, and swapping it without stopping the worker.

The worker asks `current(name)` once per micro-batch, so a swap takes effect between batches:
no event is scored by half a model, none twice. New versions load in a background thread with
their hashes verified (and the announced manifest digest, when given); a bad version is refused
and the current one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from models import Scorer
from stream_app.registry.backbones import model_flags
from stream_app.registry.versions import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    scorer: Scorer
    flags: tuple[str, ...] = ()  # warnings from its manifest, e.g. "random-backbone": shown in /health and alerts


class ModelManager:
    def __init__(self, registry: Registry, device: str | None = None, executor: Executor | None = None):
        self.registry = registry
        self.device = device
        self.executor = executor  # load off the event loop, ideally on the thread that owns the device
        self._serving: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # first loads and swaps, one at a time; serving reads need no lock
        self.refused: list[tuple[str, str, str]] = []  # (name, version, reason), for metrics and tests

    def current(self, name: str) -> LoadedModel | None:
        return self._serving.get(name)

    def versions(self) -> dict[str, str]:
        """Model name -> the version serving now (for health checks)."""
        return {name: loaded.version for name, loaded in self._serving.items()}

    def flags(self) -> dict[str, list[str]]:
        """Model name -> the serving version's warnings, for models that have any (for health checks)."""
        return {name: list(loaded.flags) for name, loaded in self._serving.items() if loaded.flags}

    async def get(self, name: str) -> LoadedModel:
        """The serving version of `name`, loading production on first use."""
        if (loaded := self._serving.get(name)) is not None:
            return loaded
        async with self._lock:
            if name not in self._serving:
                self._serving[name] = await self._load(name, None)
            return self._serving[name]

    async def swap(self, name: str, version: str, sha256: str | None = None) -> LoadedModel | None:
        """Load `version` in the background and serve it from the next batch; None if refused.

        `sha256` is the announced manifest digest (model-updates message); a mismatch is refused.
        Swaps are serialised with first loads, so announcements apply in the order they arrive and a
        production load in `get` never overwrites a newer swap.
        """
        async with self._lock:
            current = self._serving.get(name)
            if current is not None and current.version == version:
                return current
            try:
                loaded = await self._load(name, version, sha256)
            except Exception as exc:  # hash mismatch, unreadable file, unknown kind...
                log.error("refusing %s version %s, keeping %s: %s", name, version, current and current.version, exc)
                self.refused.append((name, version, str(exc)))
                return None
            self._serving[name] = loaded
            log.info("now serving %s version %s (was %s)", name, version, current and current.version)
            return loaded

    async def _load(self, name: str, version: str | None, sha256: str | None = None) -> LoadedModel:
        loop = asyncio.get_running_loop()
        mv, scorer = await loop.run_in_executor(self.executor, self.registry.load, name, version, self.device, sha256)
        flags = tuple(model_flags(self.registry.manifest(name, mv.version)))
        if flags:
            log.warning("%s version %s is marked %s", name, mv.version, ", ".join(flags))
        return LoadedModel(name, mv.version, scorer, flags)
