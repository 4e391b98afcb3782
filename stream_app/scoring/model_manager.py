"""Which scorer version serves each model name, and swapping it without stopping the worker.

The worker asks `current(name)` once per micro-batch, so a swap takes effect between batches:
no event is scored by half a model, none twice. New versions load in a background thread with
their hashes verified and the announced manifest digest compared; a bad version is refused and
the current one keeps serving.

Announcements are only a hint that something changed: the registry's production pointer (which
`models promote` and `models rollback` set) is what a worker serves, so a message naming any other
version, a traversal path or a rejected candidate is refused with a reason and nothing is loaded.

Start-up order for a worker (so no announcement is lost while a slow first load runs): start the
model-updates consumer at the end of the topic and feed its messages to `apply_update` *before* the
first `get`; `apply_update` and `get` are serialised, so whichever comes second sees the other's
result. `refresh(name)` re-reads the pointer (e.g. after the consumer reconnects).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from models import Scorer
from stream_app.judging.thresholds import checked_calibration
from stream_app.registry.announcements import ControlRejected, checked_name
from stream_app.registry.backbones import model_flags
from stream_app.registry.versions import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    scorer: Scorer
    flags: tuple[str, ...] = ()  # warnings from its manifest, e.g. "random-backbone": shown in /health and alerts

    @property
    def runs_inline(self) -> bool:
        """Whether its inference runs on the event loop instead of the inference thread: a vector model on the CPU.

        Its batch is a millisecond of many small torch ops, and from a second thread each op waits for the GIL the
        busy loop holds (up to the 5 ms switch interval): the worker drained ~10x fewer events per second that way
        at max_batch 256 (docs/benchmarks.md). Image models and CUDA keep the thread: their ops are long.
        """
        device = getattr(self.scorer, "device", None)
        return self.scorer.data_kind == "vectors" and getattr(device, "type", "cpu") == "cpu"


@dataclass(frozen=True)
class SwapResult:
    """What an announcement did: `loaded` (now serving) or `rejected` (a CONTROL_REJECT_REASONS entry)."""

    loaded: LoadedModel | None
    rejected: str | None = None
    detail: str = ""


class ModelManager:
    def __init__(
        self,
        registry: Registry,
        device: str | None = None,
        executor: Executor | None = None,
        on_load: Callable[[LoadedModel, LoadedModel | None], None] | None = None,
    ):
        self.registry = registry
        self.device = device
        self.executor = executor  # load off the event loop, ideally on the thread that owns the device
        self.on_load = on_load  # called with each version that starts serving and the one it replaces (or None)
        self._serving: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # first loads and swaps, one at a time; serving reads need no lock
        self.refused: list[tuple[str, str, str]] = []  # (name, version, message), for logs and tests
        self.rejections: Counter[str] = Counter()  # reason -> count (linewatch_control_rejected_total)

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
                self._serve(await self._load(name, None))
            return self._serving[name]

    async def apply_update(self, update: Mapping[str, Any], served: Collection[str] | None = None) -> SwapResult:
        """Act on a checked model-updates message (`announcements.parse_update`); never raises for its content.

        `served` is the set of model names this worker routes to: announcements for others are refused as
        `unknown_model` (they would otherwise load models nobody asked for). Safe before the first `get`.
        """
        name, version = update.get("model"), update.get("version")
        try:
            if not isinstance(name, str) or not isinstance(version, str):
                raise ControlRejected("bad_schema", f"model and version must be strings, got {name!r}, {version!r}")
            if served is not None and name not in served:
                raise ControlRejected("unknown_model", f"this worker serves {sorted(served)}, not {name!r}")
            loaded = await self._swap(name, version, update.get("sha256"))
        except ControlRejected as exc:
            self._refuse(str(name), str(version), exc)
            return SwapResult(None, exc.reason, exc.message)
        return SwapResult(loaded)

    async def swap(self, name: str, version: str, sha256: str | None = None) -> LoadedModel | None:
        """Serve `version` from the next batch if it is the production version and loads; None if refused.

        `sha256` is the announced manifest digest (model-updates message); a mismatch is refused.
        Swaps are serialised with first loads, so announcements apply in the order they arrive and a
        production load in `get` never overwrites a newer swap.
        """
        return (await self.apply_update({"model": name, "version": version, "sha256": sha256})).loaded

    async def refresh(self, name: str) -> SwapResult:
        """Serve whatever the production pointer names now (catches up on an announcement that was missed)."""
        try:
            version = self.registry.production(name).version
        except (LookupError, ValueError) as exc:
            return SwapResult(None, "not_production", str(exc))
        return await self.apply_update({"model": name, "version": version})

    async def _swap(self, name: str, version: str, sha256: str | None) -> LoadedModel:
        checked_name("model name", name)
        checked_name("version", version)
        async with self._lock:
            current = self._serving.get(name)
            try:
                production = self.registry.production(name).version
            except (LookupError, ValueError, OSError) as exc:
                raise ControlRejected("not_production", f"cannot read the production pointer: {exc}") from None
            if version != production:
                raise ControlRejected(
                    "not_production", f"{name} version {version} is not production (the pointer names {production})"
                )
            if current is not None and current.version == version:
                return current
            if sha256 is not None:
                try:
                    actual = self.registry.digest(name, version)
                except OSError as exc:
                    raise ControlRejected("load_failed", f"cannot read {name} version {version}: {exc}") from None
                if actual != sha256:
                    raise ControlRejected(
                        "digest_mismatch", f"manifest sha256 {actual[:12]}… is not the announced {sha256[:12]}…"
                    )
            try:
                loaded = await self._load(name, version, sha256)
            except Exception as exc:  # hash mismatch, unreadable file, unknown kind...
                raise ControlRejected("load_failed", f"{type(exc).__name__}: {exc}") from None
            self._serve(loaded)
            log.info("now serving %s version %s (was %s)", name, version, current and current.version)
            return loaded

    def _serve(self, loaded: LoadedModel) -> None:
        replaced = self._serving.get(loaded.name)
        self._serving[loaded.name] = loaded
        if self.on_load is not None:
            self.on_load(loaded, replaced)

    def _refuse(self, name: str, version: str, exc: ControlRejected) -> None:
        current = self._serving.get(name)
        log.error("refusing %s version %s, keeping %s: %s", name, version, current and current.version, exc)
        self.refused.append((name, version, exc.message))
        self.rejections[exc.reason] += 1

    async def _load(self, name: str, version: str | None, sha256: str | None = None) -> LoadedModel:
        loop = asyncio.get_running_loop()
        mv, scorer = await loop.run_in_executor(self.executor, self.registry.load, name, version, self.device, sha256)
        checked_calibration(scorer.calibration_scores)  # a version no threshold can start from is refused here
        flags = tuple(model_flags(self.registry.manifest(name, mv.version)))
        if flags:
            log.warning("%s version %s is marked %s", name, mv.version, ", ".join(flags))
        return LoadedModel(name, mv.version, scorer, flags)
