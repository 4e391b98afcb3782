"""Real servers for tests: started for the test's lifetime, stopped afterwards, never skipped silently."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import pytest


class Server(Protocol):
    def up(self) -> object: ...
    def down(self) -> object: ...


S = TypeVar("S", bound=Server)


@contextmanager
def started(server: S, what: str) -> Iterator[S]:
    """`server.up()`, then `down()` afterwards (also after a failed start, which fails the test with its reason)."""
    try:
        server.up()
    except Exception as exc:
        server.down()
        pytest.fail(f"{what} could not start: {exc}")
    try:
        yield server
    finally:
        server.down()
