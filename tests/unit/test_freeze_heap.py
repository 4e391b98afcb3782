"""The worker freezes its heap (imports, served models) so full collections skip it; a swap must still free the
model it replaces."""

from __future__ import annotations

import gc
import weakref

from stream_app.scoring.heap import YOUNG_COLLECTION, ServedHeap, freeze_heap
from stream_app.scoring.model_manager import LoadedModel


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


def test_a_batch_of_live_objects_does_not_start_a_collection() -> None:
    """A vector batch keeps a few objects per event alive until it is published; the collector waits for more."""
    before = gc.get_threshold()
    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        freeze_heap()
        gc.callbacks.append(count)
        batch = [[i] for i in range(8 * 1024)]  # ~8 objects per event of a 1024-event batch (lists: GC-tracked)
        assert len(batch) < YOUNG_COLLECTION and collections == []
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*before)
        gc.unfreeze()


def test_a_model_replaced_while_a_batch_still_scores_with_it_is_freed_after_that_batch() -> None:
    """The swap itself, and a batch in flight, still hold the replaced version when it is replaced: a collection
    then would free nothing and freeze it for good. It is freed after the batch that held it."""
    heap = ServedHeap()
    try:
        old = LoadedModel("m", "1", Node())  # type: ignore[arg-type]
        heap.on_load(old, None)
        alive = weakref.ref(old.scorer)
        in_flight = old.scorer  # a batch scoring with version 1 when version 2 lands
        heap.on_load(LoadedModel("m", "2", Node()), old)  # type: ignore[arg-type]
        del old
        heap.after_batch()  # a batch that ended while the other still holds version 1
        assert alive() is not None
        del in_flight
        heap.after_batch()
        assert alive() is None
        collections: list[int] = []

        def count(phase: str, info: dict) -> None:
            if phase == "start":
                collections.append(info["generation"])

        gc.callbacks.append(count)
        heap.after_batch()  # nothing replaced: no collection
        gc.callbacks.remove(count)
        assert collections == []
    finally:
        gc.unfreeze()
