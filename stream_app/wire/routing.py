"""Which registry model scores a source: the first route whose fnmatch pattern matches, cached per source."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from stream_app.settings import Route


class Router:
    """Source id -> model name, or None (the event goes to the dead-letter topic as `unknown_source`).

    >>> r = Router([Route(pattern="line-1/*", model="press"), Route(pattern="*", model="sensors")])
    >>> r.model_for("line-1/press-2"), r.model_for("line-9/x"), Router([]).model_for("a")
    ('press', 'sensors', None)
    """

    def __init__(self, routes: Sequence[Route]):
        self.routes = list(routes)
        self._cache: dict[str, str | None] = {}

    def model_for(self, source: str) -> str | None:
        if source not in self._cache:
            if len(self._cache) > 100_000:  # sources are few in practice; never grow without bound
                self._cache.clear()
            self._cache[source] = next((r.model for r in self.routes if fnmatchcase(source, r.pattern)), None)
        return self._cache[source]
