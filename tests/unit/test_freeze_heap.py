"""The worker freezes its heap (imports, served models) so full collections skip it; a swap must still free the
model it replaces."""

from __future__ import annotations

import gc
import weakref

from stream_app.scoring.worker import freeze_heap


class Node:
    """Stands for a replaced model: a reference cycle, which only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


def test_a_swap_frees_what_the_frozen_heap_no_longer_holds() -> None:
    try:
        replaced = Node()
        alive = weakref.ref(replaced)
        freeze_heap()
        assert gc.get_freeze_count() > 0
        del replaced
        gc.collect()
        assert alive() is not None  # frozen objects are never collected...
        freeze_heap(collect=True)
        assert alive() is None  # ...so a swap unfreezes and collects before freezing again
    finally:
        gc.unfreeze()
